"""End-to-end pipeline: invariants, resume after a crash, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import wsi_fusion.pipeline as pipeline
from wsi_fusion._types import Box
from wsi_fusion.config import RunConfig
from wsi_fusion.pipeline import fuse_slide
from wsi_fusion.tiling.plan import make_plan


def write_z_stack(path: Path, planes: np.ndarray, mpp: float = 0.5) -> Path:
    """Write (Z, H, W, 3) uint8 planes as an OME-TIFF with a Z axis."""
    tifffile.imwrite(
        path,
        planes,
        photometric="rgb",
        tile=(128, 128),
        metadata={"axes": "ZYXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp},
    )
    return path


@pytest.fixture
def textured_stack(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 256, size=(3, 700, 900, 3), dtype=np.uint8)
    return write_z_stack(tmp_path / "stack.ome.tif", planes), planes


def level0(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")["0"]).transpose(1, 2, 0)


SMALL = {
    "tile": 256,
    "overlap": 64,
    "chunk": 256,
    "tiles_per_task": 4,
    # Registration has its own tests; random planes give it nothing to correlate.
    "registration": {"mode": "off"},
}


def test_identity_fusion_reproduces_the_plane_bit_for_bit(textured_stack, tmp_path: Path) -> None:
    stack, planes = textured_stack
    out = tmp_path / "out.ome.zarr"
    config = RunConfig(fuser="plane", fuser_params={"index": 2}, tissue={"enabled": False}, **SMALL)
    report = fuse_slide([stack], out, config)
    assert np.array_equal(level0(out), planes[2])
    assert report.tiles == len(make_plan((700, 900), 256, 64))
    assert not (tmp_path / "out.ome.zarr.partial").exists()
    assert not (tmp_path / "out.ome.zarr.cache").exists()
    run = json.loads(report.run_json.read_text())
    assert run["fuser"]["name"] == "plane" and run["inputs"] == [str(stack)]


def test_focus_map_and_tiff_outputs(textured_stack, tmp_path: Path) -> None:
    stack, planes = textured_stack
    config = RunConfig(
        fuser="plane", fuser_params={"index": 1}, focus_map=True, tissue={"enabled": False}, **SMALL
    )
    out = tmp_path / "out.ome.zarr"
    fuse_slide([stack], out, config)
    labels = np.asarray(zarr.open_group(out, mode="r")["labels/focus_map/0"])
    assert labels.shape == (700, 900) and (labels == 1).all()

    tif = tmp_path / "out.ome.tif"
    config = config.model_copy(update={"compression": "deflate"})
    report = fuse_slide([stack], tif, config)
    with tifffile.TiffFile(tif) as f:
        assert np.array_equal(f.series[0].levels[0].asarray(), planes[1])
    assert report.extra_outputs == [tmp_path / "out.focus.tif"]


def _crash_after(monkeypatch: pytest.MonkeyPatch, name: str, calls: int) -> None:
    """Make the phase task ``name`` raise after ``calls`` successful task calls."""
    real = getattr(pipeline, name)
    count = {"n": 0}

    def flaky(*args):  # type: ignore[no-untyped-def]
        count["n"] += 1
        if count["n"] > calls:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(pipeline, name, flaky)


@pytest.mark.parametrize("phase", ["fuse_tiles", "blend_blocks"])
def test_rerun_after_a_crash_resumes_and_gives_the_same_output(
    textured_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    stack, _ = textured_stack
    config = RunConfig(fuser="focus_measure", tissue={"enabled": False}, scheduler="sync", **SMALL)
    reference = tmp_path / "reference.ome.zarr"
    fuse_slide([stack], reference, config)

    out = tmp_path / "out.ome.zarr"
    with monkeypatch.context() as m:
        _crash_after(m, phase, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            fuse_slide([stack], out, config)
    assert not out.exists(), "a crashed run must not leave an output that looks complete"
    report = fuse_slide([stack], out, config)
    assert report.tiles_resumed > 0
    if phase == "blend_blocks":
        assert report.blocks_resumed > 0
    assert np.array_equal(level0(out), level0(reference))


def test_changed_settings_do_not_reuse_the_cache(textured_stack, tmp_path: Path) -> None:
    stack, planes = textured_stack
    out = tmp_path / "out.ome.zarr"
    cache = tmp_path / "cache"
    base = RunConfig(fuser="plane", fuser_params={"index": 0}, tissue={"enabled": False}, **SMALL)
    fuse_slide([stack], out, base, keep_cache=True, cache_dir=cache)
    other = base.model_copy(update={"fuser_params": {"index": 2}})
    report = fuse_slide([stack], out, other, overwrite=True, cache_dir=cache)
    assert report.tiles_resumed == 0
    assert np.array_equal(level0(out), planes[2])


def test_default_fuser_beats_every_plane_on_a_synthetic_stack(tmp_path: Path) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    from wsi_fusion.io.readers import open_stack
    from wsi_fusion.synth.defocus import make_stack
    from wsi_fusion.synth.demo import demo_source_path

    source = open_stack([str(demo_source_path())])
    sharp = source.read(0, Box(600, 600, 640, 768))
    source.close()
    synthetic = make_stack(sharp, n_planes=5, seed=3)
    stack = write_z_stack(tmp_path / "synth.ome.tif", synthetic.planes)
    out = tmp_path / "fused.ome.zarr"
    fuse_slide([stack], out, RunConfig(**SMALL))
    fused_psnr = peak_signal_noise_ratio(synthetic.ground_truth, level0(out))
    best_plane = max(peak_signal_noise_ratio(synthetic.ground_truth, p) for p in synthetic.planes)
    # Measured: see the comment in the assertion message when this is tuned.
    assert fused_psnr > best_plane + 3.0, (fused_psnr, best_plane)


def test_learned_settings_reach_only_learned_fusers() -> None:
    config = RunConfig(
        fuser_params={"batch_size": 2}, learned={"batch_size": 16, "precision": "bf16"}
    )
    assert config.effective_fuser_params(needs_weights=False) == {"batch_size": 2}
    # fuser_params win over the learned section; unset learned keys stay unset (automatic).
    assert config.effective_fuser_params(needs_weights=True) == {
        "batch_size": 2,
        "precision": "bf16",
    }
    assert RunConfig().effective_fuser_params(needs_weights=True) == {}
