from __future__ import annotations

import numpy as np
import pytest

from wsi_fusion._types import Box
from wsi_fusion.errors import ConfigError
from wsi_fusion.tiling.plan import block_plan, fusion_plan, grid_chunks, make_plan


@pytest.mark.parametrize("shape", [(1000, 1300), (512, 512), (300, 200), (513, 2000), (5000, 384)])
def test_plan_covers_every_pixel_without_padding(shape: tuple[int, int]) -> None:
    plan = make_plan(shape, tile=512, overlap=128)
    covered = set()
    for box in plan.boxes:
        if shape[0] >= 512:
            assert 0 <= box.y and box.y1 <= shape[0]
        if shape[1] >= 512:
            assert 0 <= box.x and box.x1 <= shape[1]
        covered.add((box.y, box.x))
    # Each row/column start is at most a stride after the previous one: no gaps.
    for starts in (plan.ys, plan.xs):
        assert starts[0] == 0
        assert all(0 < b - a <= 512 - 128 for a, b in zip(starts, starts[1:], strict=False))
    assert plan.ys[-1] + 512 >= shape[0] and plan.xs[-1] + 512 >= shape[1]
    assert len(covered) == len(plan)


def test_touching_matches_brute_force() -> None:
    plan = make_plan((2100, 1700), tile=256, overlap=64)
    for block in [
        Box(0, 0, 100, 100),
        Box(500, 700, 300, 1),
        Box(2000, 1600, 100, 100),
        Box(0, 0, 2100, 1700),
    ]:
        brute = [i for i, b in enumerate(plan.boxes) if b.intersect(block) is not None]
        assert plan.touching(block) == brute


def test_overlap_smaller_than_twice_the_margin_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice the fuser's margin"):
        make_plan((1000, 1000), tile=512, overlap=60, margin=31)


@pytest.mark.parametrize("tile, overlap", [(8, 0), (512, 512), (512, -1)])
def test_bad_tile_numbers_are_refused(tile: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        make_plan((1000, 1000), tile=tile, overlap=overlap)


def test_fusion_plan_fuses_each_block_once_for_margin_bounded_fusers() -> None:
    shape = (4096, 3000)
    # Learned fusers keep the design's 512/128 tiles; given values always win.
    for tile, overlap, learned, expected in [
        (None, None, True, (512, 128)),
        (768, None, False, (768, 128)),
        (None, 64, False, (512, 64)),
    ]:
        plan = fusion_plan(shape, tile, overlap, margin=9, learned=learned, block=1024)
        assert (plan.tile, plan.overlap, plan.block) == (*expected, 0)
    # Others: one tile per 1024-px block, with a halo of the margin rounded up to the 4-px grid.
    plan = fusion_plan(shape, None, None, margin=59, learned=False, block=1024, grid=4)
    assert (plan.tile, plan.overlap, plan.block) == (1024 + 120, 120, 1024)
    assert len(plan) == 4 * 3  # one per output block: each pixel fused (1144 / 1024)² = 1.25 times
    assert plan.ys == (0, 1024 - 60, 2048 - 60, 4096 - 1144)  # the last one ends on the edge
    assert plan.xs == (0, 1024 - 60, 3000 - 1144)
    assert all(y % 4 == 0 for y in plan.ys[:-1])  # on the depth surface's grid
    # Each tile holds its block with at least the halo of context on every inner side.
    for index in range(len(plan)):
        tile_box = plan.box(index)
        row, col = divmod(index, len(plan.xs))
        y, x = row * 1024, col * 1024
        y1, x1 = min(y + 1024, shape[0]), min(x + 1024, shape[1])
        assert tile_box.y <= max(y - 60, 0) and tile_box.y1 >= min(y1 + 60, shape[0])
        assert tile_box.x <= max(x - 60, 0) and tile_box.x1 >= min(x1 + 60, shape[1])
    assert fusion_plan(shape, None, None, margin=0, learned=False, block=1024, grid=4).tile == 1024


def test_block_plan_refuses_a_halo_below_the_margin() -> None:
    with pytest.raises(ConfigError, match="margin"):
        block_plan((2048, 2048), 1024, halo=8, margin=9)


@pytest.mark.parametrize(
    "shape, block, grid",
    [((4096, 3001), 1024, 4), ((1000, 1003), 96, 8), ((1001, 700), 100, 3), ((300, 200), 512, 8)],
)
def test_block_plan_tiles_start_on_the_cell_grid_and_hold_their_block(
    shape: tuple[int, int], block: int, grid: int
) -> None:
    halo = 8 * grid
    plan = block_plan(shape, block, halo, margin=halo - 1, grid=grid)
    for index in range(len(plan)):
        tile_box = plan.box(index)
        row, col = divmod(index, len(plan.xs))
        y, x = row * block, col * block
        y1, x1 = min(y + block, shape[0]), min(x + block, shape[1])
        assert tile_box.y % grid == 0 and tile_box.x % grid == 0
        assert tile_box.y <= max(y - halo, 0) and tile_box.y1 >= min(y1 + halo, shape[0])
        assert tile_box.x <= max(x - halo, 0) and tile_box.x1 >= min(x1 + halo, shape[1])
        # No tile reads past the slide unless the slide is smaller than a tile.
        assert tile_box.y1 <= max(shape[0], plan.tile) and tile_box.x1 <= max(shape[1], plan.tile)


def test_block_plan_refuses_a_halo_off_the_grid() -> None:
    with pytest.raises(ConfigError, match="8-px cell grid"):
        block_plan((2048, 2048), 1024, halo=60, margin=59, grid=8)


def test_grid_chunks_keep_the_total_on_the_grid_and_above_the_minimum() -> None:
    assert grid_chunks((128, 128, 44), 4, 64) == (128, 172)  # a short last chunk is merged
    assert grid_chunks((100, 100, 100, 37), 8, 72) == (96, 104, 137)
    assert grid_chunks((300,), 4, 64) == (300,)
    assert grid_chunks((20, 20, 1), 1, 0) == (20, 20, 1)


@pytest.mark.parametrize(
    "pool_step, shape, block",
    [(4, (301, 302), 96), (8, (300, 340), 96), (3, (301, 343), 100), (5, (302, 299), 100)],
)
def test_block_planned_fusion_is_the_whole_image_fusion(
    pool_step: int, shape: tuple[int, int], block: int
) -> None:
    """Known answer: with any depth-surface cell size, and slide sides or blocks off its grid,
    fusing the block plan's tiles gives the whole-image fusion bit for bit (tiles off the grid
    moved surface boundaries: 2-8 thousand px differed here before the plan kept to it)."""
    from wsi_fusion.fusers import create_fuser

    stack = _defocused_stack(shape)
    fuser = create_fuser("focus_measure", pool_step=pool_step)
    whole = fuser.fuse(stack).fused
    plan = fusion_plan(shape, None, None, fuser.margin, False, block, fuser.cell_grid)
    blocks = np.full_like(whole, np.nan)
    for index in range(len(plan)):
        row, col = divmod(index, len(plan.xs))
        out = Box(row * block, col * block, block, block).intersect(Box(0, 0, *shape))
        assert out is not None
        tile_box = plan.box(index)
        assert tile_box.y1 <= shape[0] and tile_box.x1 <= shape[1]
        fused = fuser.fuse(stack[(slice(None), slice(None), *tile_box.slices())]).fused
        blocks[(slice(None), *out.slices())] = fused[(slice(None), *out.slices(tile_box))]
    np.testing.assert_array_equal(blocks, whole)


def _defocused_stack(shape: tuple[int, int]) -> np.ndarray:
    """A ``(5, 3, H, W)`` float32 stack of the demo tissue, defocused plane by plane."""
    from wsi_fusion.io.readers import open_stack
    from wsi_fusion.synth.defocus import make_stack
    from wsi_fusion.synth.demo import demo_source_path

    source = open_stack([str(demo_source_path())])
    try:
        sharp = source.read(0, Box(600, 600, *shape))
    finally:
        source.close()
    planes = make_stack(sharp, n_planes=5, seed=3).planes
    return np.moveaxis(planes, -1, 1) / np.float32(255)
