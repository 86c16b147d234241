from __future__ import annotations

import pytest

from wsi_fusion._types import Box
from wsi_fusion.errors import ConfigError
from wsi_fusion.tiling.plan import fusion_tiling, make_plan


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


def test_fusion_tiling_fuses_each_block_once_for_margin_bounded_fusers() -> None:
    # Learned fusers keep the design's 512/128 tiles; given values always win.
    assert fusion_tiling(None, None, margin=60, learned=True, block=1024) == (512, 128)
    assert fusion_tiling(768, None, margin=60, learned=False, block=1024) == (768, 128)
    assert fusion_tiling(None, 64, margin=9, learned=False, block=1024) == (512, 64)
    # Others: a 1024-px block plus a halo of the margin rounded up to the 4-px grid.
    tile, overlap = fusion_tiling(None, None, margin=59, learned=False, block=1024)
    assert (tile, overlap) == (1024 + 120, 120)
    plan = make_plan((4096, 4096), tile, overlap, margin=59)
    assert len(plan) == 16  # 4 x 4 tiles: each pixel fused (4 * 1144 / 4096)² = 1.25 times
    assert all(y % 4 == 0 for y in plan.ys[:-1])  # on the depth surface's grid
    assert fusion_tiling(None, None, margin=0, learned=False, block=1024) == (1024, 0)
