from __future__ import annotations

import numpy as np
import pytest

from wsi_fusion._types import Box
from wsi_fusion.stitching.blend import blend_block, edge_ramp, tile_weight
from wsi_fusion.tiling.plan import make_plan


@pytest.mark.parametrize("overlap, margin", [(128, 0), (128, 16), (128, 64), (64, 8)])
def test_facing_ramps_sum_to_one(overlap: int, margin: int) -> None:
    a = edge_ramp(512, overlap, margin, inner_start=False, inner_end=True)
    b = edge_ramp(512, overlap, margin, inner_start=True, inner_end=False)
    # Tile b starts `overlap` pixels before tile a ends.
    total = a[512 - overlap :] + b[:overlap]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert not a[512 - margin :].any() and not b[:margin].any()


def test_outer_edges_keep_full_weight() -> None:
    plan = make_plan((1000, 1000), tile=512, overlap=128, margin=8)
    weight = tile_weight(plan, 0)
    assert weight[0, 0] == 1.0 and weight[0, 300] == 1.0  # top/left are the slide border
    assert weight[-1, -1] == 0.0  # bottom/right are inner edges


@pytest.mark.parametrize("margin", [0, 8, 64])
def test_identical_tiles_stitch_back_exactly(margin: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(3, 1100, 1333)).astype(np.uint8)
    plan = make_plan(image.shape[1:], tile=512, overlap=128, margin=margin)

    def load(i: int) -> np.ndarray:
        b = plan.box(i)
        return image[:, b.y : b.y1, b.x : b.x1]

    for block in [Box(0, 0, 1100, 1333), Box(256, 512, 512, 512), Box(1024, 1024, 76, 309)]:
        out = blend_block(plan, block, load, 3)
        assert np.array_equal(
            np.rint(out).astype(np.uint8), image[:, block.y : block.y1, block.x : block.x1]
        )


def test_blend_has_no_seam_between_different_tiles() -> None:
    # Two tiles disagreeing by a constant: the blend must cross-fade, never jump.
    plan = make_plan((512, 896), tile=512, overlap=128, margin=0)
    values = {0: 100.0, 1: 140.0}
    out = blend_block(plan, Box(0, 0, 512, 896), lambda i: np.full((1, 512, 512), values[i]), 1)
    steps = np.abs(np.diff(out[0, 0]))
    assert steps.max() <= 40.0 / 128 + 1e-4
    assert out[0, 0, 0] == 100.0 and out[0, 0, -1] == 140.0
