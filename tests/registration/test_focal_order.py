"""Focal order from the planes: the shortest path through them, and the pipeline's two modes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from registration_helpers import ArrayStack, sharp_rgb
from scipy import ndimage as ndi

from wsi_fusion.config import RunConfig
from wsi_fusion.errors import ConfigError
from wsi_fusion.pipeline import fuse_slide
from wsi_fusion.registration.focal_order import (
    OUT_OF_ORDER_RATIO,
    estimate_focal_order,
    shortest_path,
)

#: Seven planes between two layers of a thick specimen, one in focus just above the first plane, one
#: just below the last: each plane is a step sharper on one layer and blurrier on the other, so no
#: two planes look alike (one layer seen through its focus looks the same at +-k, the module
#: docstring's caveat).
N_PLANES = 7
#: A focus sweep saved in capture order: down through focus, then back up between the planes.
SWEEP = [0, 2, 4, 6, 5, 3, 1]


def _planes() -> np.ndarray:
    top = sharp_rgb("astronaut")[::2, ::2].astype(np.float32)
    bottom = sharp_rgb("chelsea")[:256, :256].astype(np.float32)  # 300 x 451: cropped to top's
    planes = [
        0.5 * ndi.gaussian_filter(top, (1.2 * (z + 1),) * 2 + (0,))
        + 0.5 * ndi.gaussian_filter(bottom, (1.2 * (N_PLANES - z),) * 2 + (0,))
        for z in range(N_PLANES)
    ]
    return np.stack([np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in planes])


def test_shortest_path_recovers_a_line_from_shuffled_points() -> None:
    positions = np.array([5.0, 0.0, 9.0, 2.0, 7.5, 1.0])
    distance = np.abs(positions[:, None] - positions[None, :])
    assert shortest_path(distance) == [1, 5, 3, 0, 4, 2]  # by position, lower end index first


def test_planes_in_focal_order_are_left_as_they_are() -> None:
    focal = estimate_focal_order(ArrayStack(_planes()))
    assert focal.order == tuple(range(N_PLANES))
    assert focal.ratio == pytest.approx(1.0) and not focal.looks_out_of_order


def test_a_sweep_in_capture_order_is_recognised_and_put_back_in_focal_order() -> None:
    focal = estimate_focal_order(ArrayStack(_planes()[SWEEP]))
    assert focal.looks_out_of_order and focal.ratio > OUT_OF_ORDER_RATIO
    # Positions in the sweep of planes 0..6, in focal order (either direction would do).
    recovered = [SWEEP[k] for k in focal.order]
    assert recovered in (sorted(recovered), sorted(recovered, reverse=True))


def _write_sweep(folder: Path) -> list[Path]:
    """The sweep as numbered frames, in capture order."""
    files = [folder / f"frame_{k:02d}.png" for k in range(len(SWEEP))]
    for path, plane in zip(files, _planes()[SWEEP], strict=True):
        Image.fromarray(plane).save(path)
    return files


def test_fuse_warns_about_a_sweep_and_reorders_it_on_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _write_sweep(tmp_path)
    base = {"registration": {"mode": "off"}, "tissue": {"enabled": False}, "scheduler": "sync"}
    with caplog.at_level(logging.WARNING, logger="wsi_fusion.pipeline"):
        fuse_slide(files, tmp_path / "given.ome.zarr", RunConfig(**base))
    assert any("look out of focal order" in r.getMessage() for r in caplog.records)
    given = json.loads((tmp_path / "given.ome.zarr.run.json").read_text())
    assert given["plane_order"]["mode"] == "given"
    assert given["inputs"] == [f.name for f in files]

    config = RunConfig(**base, plane_order="similarity")
    fuse_slide(files, tmp_path / "reordered.ome.zarr", config)
    record = json.loads((tmp_path / "reordered.ome.zarr.run.json").read_text())
    order = record["plane_order"]["estimated_order"]
    # The run fused (and records) the files in the estimated order: focal order of the sweep.
    assert record["inputs"] == [files[k].name for k in order]
    focal_positions = [SWEEP[k] for k in order]
    assert focal_positions in (sorted(focal_positions), sorted(focal_positions, reverse=True))


def test_similarity_order_refuses_a_multi_plane_file(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, _planes()[:3], photometric="rgb", metadata={"axes": "ZYXS"})
    with pytest.raises(ConfigError, match="reorders per-plane files.*stack.ome.tif"):
        fuse_slide([path], tmp_path / "out.ome.zarr", RunConfig(plane_order="similarity"))
