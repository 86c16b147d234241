from __future__ import annotations

import numpy as np

from wsi_fusion._types import Box
from wsi_fusion.tiling.tissue import tile_fractions, tissue_mask


def slide_thumbnail() -> np.ndarray:
    """White glass with one pink, textured tissue blob in the top-left quarter."""
    rng = np.random.default_rng(0)
    thumb = np.full((200, 300, 3), 245, dtype=np.uint8)
    yy, xx = np.mgrid[:200, :300]
    blob = (yy - 50) ** 2 + (xx - 70) ** 2 < 40**2
    tissue = np.stack(
        [
            200 + rng.integers(-20, 20, blob.sum()),
            120 + rng.integers(-30, 30, blob.sum()),
            170 + rng.integers(-20, 20, blob.sum()),
        ],
        axis=1,
    )
    thumb[blob] = tissue.astype(np.uint8)
    return thumb


def test_mask_finds_the_blob_and_not_the_glass() -> None:
    mask = tissue_mask(slide_thumbnail())
    assert mask[50, 70] and mask[30, 50]
    assert not mask[150, 250] and not mask[10, 290]


def test_tile_fractions_on_level0_boxes() -> None:
    mask = tissue_mask(slide_thumbnail())
    shape = (2000, 3000)  # level 0 is 10x the thumbnail
    boxes = [Box(300, 500, 400, 400), Box(1500, 2500, 400, 400), Box(0, 0, 2000, 3000)]
    inside, glass, whole = tile_fractions(mask, shape, boxes)
    assert inside > 0.95 and glass == 0.0
    assert abs(whole - mask.mean()) < 1e-6


def test_uniform_image_is_all_tissue() -> None:
    # Nothing to tell glass from tissue: fuse everything rather than copy unfused tissue.
    assert tissue_mask(np.full((50, 50, 3), 128, dtype=np.uint8)).all()
