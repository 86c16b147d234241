"""``focus_measure`` in torch gives the numpy reference's output (CPU here, CUDA when present).

Targets: fused values within 1 grey level of the numpy fuser and the same plane decision on at
least 99.9 % of the pixels (on the CPU the two are in fact bit-identical on these stacks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("torch")

from wsi_fusion.errors import ConfigError  # noqa: E402
from wsi_fusion.fusers import create_fuser  # noqa: E402
from wsi_fusion.fusers import focus_measure as fm  # noqa: E402
from wsi_fusion.fusers import focus_measure_torch as fmt  # noqa: E402
from wsi_fusion.fusers.base import FusionResult  # noqa: E402

Stack = npt.NDArray[np.float32]

#: Every kind of decision the algorithm makes: defaults, the other measure and step, no
#: refinement, no depth surface, a stricter leave-the-surface factor.
PARAMS: list[dict[str, object]] = [
    {},
    {"measure": "laplacian_energy", "step": 2, "radius": 3},
    {"refine": False},
    {"depth_radius": 0},
    {"clearly_sharper": 2.0, "guided_radius": 4, "hard_above": 0.95},
]


def assert_matches(ours: FusionResult, ref: FusionResult) -> None:
    """Within 1 grey level, >= 99.9 % identical decisions, weights that sum to 1."""
    assert ours.weights is not None and ref.weights is not None
    assert ours.fused.shape == ref.fused.shape and ours.fused.dtype == np.float32
    assert ours.weights.shape == ref.weights.shape and ours.weights.dtype == np.float32
    grey = np.abs(ours.fused.astype(np.float64) - ref.fused) * 255.0
    assert grey.max() <= 1.0, f"fused differs by {grey.max():.3f} grey levels"
    same = np.mean(ours.weights.argmax(axis=0) == ref.weights.argmax(axis=0))
    assert same >= 0.999, f"decisions agree on {same:.5f} of the pixels"
    np.testing.assert_allclose(ours.weights.sum(axis=0), 1.0, atol=1e-5)


def real_like_stack(side: int = 512) -> Stack:
    """5 planes rendered by ``wsi_fusion.synth`` from the bundled H&E region (noise, JPEG)."""
    import tifffile

    from wsi_fusion._types import Box
    from wsi_fusion.synth.defocus import array_reader, render_box, resolve_params
    from wsi_fusion.synth.demo import demo_source_path

    image = tifffile.imread(demo_source_path(), key=0)[:side, :side]
    params = resolve_params()
    tile = render_box(
        array_reader(np.ascontiguousarray(image)),
        Box(0, 0, side, side),
        5,
        seed=7,
        params=params,
        drift=np.zeros((5, 2)),
    )
    planes = tile.planes.transpose(0, 3, 1, 2).astype(np.float32)
    return planes / np.float32(255.0)


@pytest.fixture(scope="module")
def real_like() -> Stack:
    return real_like_stack()


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(p) or "defaults")
def test_cpu_matches_numpy_on_the_test_stack(
    truth_and_stack: tuple[Stack, Stack, Stack], params: dict[str, object]
) -> None:
    _, _, stack = truth_and_stack
    ref = create_fuser("focus_measure", **params).fuse(stack)
    ours = create_fuser("focus_measure", device="cpu", **params).fuse(stack)
    assert_matches(ours, ref)


def test_cpu_matches_numpy_on_a_real_like_stack(real_like: Stack) -> None:
    ref = create_fuser("focus_measure").fuse(real_like)
    ours = create_fuser("focus_measure", device="cpu").fuse(real_like)
    assert_matches(ours, ref)


def test_batched_tiles_each_match_their_own_fusion(
    truth_and_stack: tuple[Stack, Stack, Stack], real_like: Stack
) -> None:
    """Tiles in one call use different planes (one is blank glass, one a single plane): each
    gets what the reference gives it alone; odd sizes and tiles smaller than the pads too."""
    _, _, stack = truth_and_stack
    blank = np.full_like(stack[:, :, :200, :200], 0.8)
    single = np.repeat(stack[2:3, :, :200, :200], 5, axis=0) * np.linspace(
        1.0, 0.6, 5, dtype=np.float32
    ).reshape(5, 1, 1, 1)
    tiles = [
        stack[:, :, :200, :200].copy(),
        blank,
        single,
        real_like[:, :, 100:300, 50:250].copy(),
        stack[:, :, 7:38, 300:323].copy(),  # 31 x 23: pads wider than the tile
        stack[:, :, 300:301, :5].copy(),  # one row
    ]
    fuser = create_fuser("focus_measure", device="cpu", batch_size=4)
    ref = create_fuser("focus_measure")
    for ours, tile in zip(fuser.fuse_batch(tiles), tiles, strict=True):
        assert_matches(ours, ref.fuse(tile))
    # Blank glass takes the middle plane, as in the reference.
    assert np.all(fuser.fuse(blank).weights[2] == 1.0)  # type: ignore[index]


def test_whole_image_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large image goes through in blocks with a margin halo, like the reference."""
    rng = np.random.default_rng(0)
    sharp = rng.random((3, 150, 170)).astype(np.float32)
    planes = np.stack([sharp, sharp * 0.5 + 0.25, sharp[:, ::-1, :].copy()])
    whole = create_fuser("focus_measure", device="cpu").fuse(planes)
    monkeypatch.setattr(fm, "_BLOCK", 40)  # 4 x 5 blocks for both implementations
    blocked = create_fuser("focus_measure", device="cpu").fuse(planes)
    ref = create_fuser("focus_measure").fuse(planes)
    assert_matches(blocked, ref)
    assert_matches(blocked, whole)


def test_symmetric_padding_matches_numpy() -> None:
    import torch

    x = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    for r in (1, 2, 4, 7, 12):
        want = np.pad(x, [(0, 0), (r, r)], mode="symmetric")
        got = fmt._pad(torch.from_numpy(x), r, -1).numpy()
        np.testing.assert_array_equal(got, want)
        want = np.pad(x, [(r, r), (0, 0)], mode="symmetric")
        np.testing.assert_array_equal(fmt._pad(torch.from_numpy(x), r, -2).numpy(), want)


def test_wide_box_matches_scipy() -> None:
    import torch

    from wsi_fusion.fusers._filters import box_mean

    rng = np.random.default_rng(3)
    x = (rng.random((2, 70, 45)) ** 4).astype(np.float32)
    for r in (9, 24):
        want = box_mean(x, r)
        got = fmt._box_mean(torch.from_numpy(x), r).numpy()
        np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-12)


def test_device_parameter_selects_the_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(create_fuser("focus_measure")) is fm.FocusMeasureFuser
    assert type(create_fuser("focus_measure", device="numpy")) is fm.FocusMeasureFuser
    torch_fuser = create_fuser("focus_measure", device="cpu", radius=3)
    assert isinstance(torch_fuser, fmt.FocusMeasureTorchFuser)
    # The decision's reach (3 + 2 + 51 + 4) or, farther, the low band's along the surface
    # (surface 51 + low band 15 - the cell counted twice 3 + gradient 1).
    assert torch_fuser.name == "focus_measure" and torch_fuser.margin == 51 + 15 - 3 + 1
    monkeypatch.setattr(fmt, "_cuda_available", lambda: False)
    auto = create_fuser("focus_measure", device="auto", batch_size=8)
    assert type(auto) is fm.FocusMeasureFuser  # no CUDA: the numpy reference
    monkeypatch.setattr(fmt, "_cuda_available", lambda: True)
    assert isinstance(create_fuser("focus_measure", device="auto"), fmt.FocusMeasureTorchFuser)
    with pytest.raises(ConfigError, match="fuser_params.device"):
        create_fuser("focus_measure", device="tpu")
    with pytest.raises(ConfigError, match="fuser_params.radius"):
        create_fuser("focus_measure", device="cpu", radius=-1)


def test_default_fuser_does_not_import_torch() -> None:
    code = (
        "import sys, wsi_fusion; from wsi_fusion.fusers import create_fuser; "
        "create_fuser('focus_measure'); create_fuser('focus_measure', device='numpy'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_worker_cache_runs_it_like_a_learned_fuser() -> None:
    """With a device the worker keeps one instance with a device lock and its batch size."""
    from wsi_fusion.scheduling.workers import FuserCache

    cache = FuserCache()
    entry = cache.get(
        "focus_measure",
        {"device": "cpu", "batch_size": 3},
        planes=5,
        channels=3,
        tile=64,
        default_batch=4,
    )
    assert isinstance(entry.fuser, fmt.FocusMeasureTorchFuser)
    assert entry.batch_size == 3 and entry.lock is not None
    plain = cache.get("focus_measure", {}, planes=5, channels=3, tile=64, default_batch=4)
    assert type(plain.fuser) is fm.FocusMeasureFuser and plain.lock is None


def test_pipeline_with_the_torch_fuser(tmp_path: Path) -> None:
    """``fuser_params: {device: cpu}`` through the pipeline: within 1 grey level of numpy."""
    import tifffile
    import zarr

    from wsi_fusion.config import RunConfig
    from wsi_fusion.pipeline import fuse_slide

    planes = (real_like_stack(256).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    source = tmp_path / "stack.ome.tif"
    tifffile.imwrite(source, planes, photometric="rgb", metadata={"axes": "ZYXS"})
    common = {
        "tile": 192,
        "overlap": 128,
        "chunk": 128,
        "tissue": {"enabled": False},
        "registration": {"mode": "off"},
        "scheduler": "sync",
    }
    outputs = []
    for name, params in (("numpy", {}), ("torch", {"device": "cpu"})):
        config = RunConfig(fuser_params=params, **common)  # type: ignore[arg-type]
        report = fuse_slide([source], tmp_path / f"{name}.ome.zarr", config)
        outputs.append(np.asarray(zarr.open_group(report.output, mode="r")["0"]))
    diff = np.abs(outputs[0].astype(int) - outputs[1].astype(int))
    assert diff.max() <= 1


@pytest.mark.gpu
@pytest.mark.parametrize("params", PARAMS[:2], ids=["defaults", "laplacian_energy"])
def test_cuda_matches_numpy(
    truth_and_stack: tuple[Stack, Stack, Stack], real_like: Stack, params: dict[str, object]
) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _, _, stack = truth_and_stack
    fuser = create_fuser("focus_measure", device="cuda", batch_size=4, **params)
    ref = create_fuser("focus_measure", **params)
    tiles = [stack, real_like, stack[:, :, 7:38, 300:323].copy(), np.full_like(stack, 0.8)]
    for ours, tile in zip(fuser.fuse_batch(tiles), tiles, strict=True):
        assert_matches(ours, ref.fuse(tile))


def test_gpu_workers_run_the_default_fuser_with_device_auto() -> None:
    """On a cluster with GPU workers and no device given, tasks get ``device: auto``."""
    from dataclasses import replace

    from wsi_fusion.pipeline import _on_gpu_workers
    from wsi_fusion.scheduling.gpu import runs_on_device
    from wsi_fusion.scheduling.tasks import FusionJob

    class Runner:
        gpu_workers = 0

    job = FusionJob(
        inputs=("a.tif",),
        fuser="focus_measure",
        fuser_params={},
        plan=None,  # type: ignore[arg-type]
        planes=5,
        reference_plane=2,
        fuse_mask=(),
        cache_root="",
        image_path="",
        chunk=64,
        focus_map=False,
    )
    fuser = create_fuser("focus_measure")
    assert _on_gpu_workers(job, fuser, Runner()) == (job, fuser)  # type: ignore[arg-type]
    Runner.gpu_workers = 2
    on_gpu, placed = _on_gpu_workers(job, fuser, Runner())  # type: ignore[arg-type]
    assert on_gpu.fuser_params == {"device": "auto"} and runs_on_device(placed)
    chosen = replace(job, fuser_params={"device": "numpy"})
    assert _on_gpu_workers(chosen, fuser, Runner())[0] is chosen  # type: ignore[arg-type]
    other = replace(job, fuser="laplacian_pyramid")
    assert _on_gpu_workers(other, fuser, Runner())[0] is other  # type: ignore[arg-type]
