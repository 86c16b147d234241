"""A real learned fuser through the pipeline on the CPU: batched forward passes, fallback log."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

pytest.importorskip("torch")

from wsi_fusion.config import RunConfig  # noqa: E402
from wsi_fusion.fusers._weights import save_weights  # noqa: E402
from wsi_fusion.fusers.fmb_net import HALO, FmbNetFuser  # noqa: E402
from wsi_fusion.pipeline import fuse_slide  # noqa: E402


@pytest.mark.slow  # ~13 s on the shared 2-core machine (CPU forward passes)
def test_learned_fuser_batches_tiles_and_says_it_runs_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    torch.set_num_threads(1)
    weights = tmp_path / "random.safetensors"
    save_weights(FmbNetFuser.untrained(seed=0).model, weights)  # random, not a trained model
    rng = np.random.default_rng(0)
    stack = tmp_path / "stack.ome.tif"
    planes = rng.integers(0, 256, size=(3, 160, 250, 3), dtype=np.uint8)
    tifffile.imwrite(stack, planes, photometric="rgb", metadata={"axes": "ZYXS"})

    batches: list[int] = []
    real = FmbNetFuser.fuse_batch

    def spy(self: FmbNetFuser, stacks: list[np.ndarray]):  # type: ignore[no-untyped-def]
        batches.append(len(stacks))
        return real(self, stacks)

    monkeypatch.setattr(FmbNetFuser, "fuse_batch", spy)
    config = RunConfig(
        fuser="fmb_net",
        # The network alone (no depth surface): its margin is HALO, so small tiles stay valid.
        fuser_params={"weights": str(weights), "depth_radius": 0},
        learned={"batch_size": 3},
        tile=96,
        overlap=2 * HALO,
        chunk=128,
        tiles_per_task=8,
        tissue={"enabled": False},
        registration={"mode": "off"},
        scheduler="sync",
    )
    with caplog.at_level(logging.INFO, logger="wsi_fusion.scheduling.gpu"):
        report = fuse_slide([stack], tmp_path / "out.ome.zarr", config)
    assert "fuser fmb_net runs on the CPU" in caplog.text
    assert caplog.text.count("runs on the CPU") == 1, "the model is loaded once per worker"
    # Tiles go to the fuser in groups of batch_size (the last group of a task may be smaller).
    assert sum(batches) == report.tiles and max(batches) == 3
    assert batches.count(3) >= report.tiles // 3 - 1
    fused = np.asarray(zarr.open_group(report.output, mode="r")["0"])
    assert fused.shape == (3, 160, 250) and fused.dtype == np.uint8
