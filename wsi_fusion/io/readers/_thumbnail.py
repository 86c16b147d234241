"""Thumbnails in bounded memory, also of slides without a (small enough) pyramid level.

Slide libraries make a thumbnail by decoding the pyramid level closest to the requested size;
a plane without a pyramid then decodes its full resolution at once (about 40 GB for a
10⁵ × 10⁵ px RGBA plane). :func:`tiled_thumbnail` instead reads the level in tiles, one at a time,
and sums each into the thumbnail's pixels (an area mean), so memory is one tile plus the
thumbnail whatever the plane's size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wsi_fusion._types import Box, RGBRegion

#: Side of the tiles read (px): 512² RGBA is 1 MB, the size slides store their tiles in.
READ_TILE = 512
#: A level of at most this many times the thumbnail's pixels is decoded in one read.
DIRECT_READ_FACTOR = 4


def direct_read_is_bounded(level_hw: tuple[int, int], target_hw: tuple[int, int]) -> bool:
    """Whether decoding the whole level ``level_hw`` for a ``target_hw`` thumbnail is cheap."""
    return level_hw[0] * level_hw[1] <= DIRECT_READ_FACTOR * max(1, target_hw[0] * target_hw[1])


def tiled_thumbnail(
    read: Callable[[Box], RGBRegion], level_hw: tuple[int, int], target_hw: tuple[int, int]
) -> RGBRegion:
    """Area-mean thumbnail of a level read tile by tile.

    Parameters
    ----------
    read
        Reads a box (in the level's own pixels, inside the level) as (h, w, 3) uint8.
    level_hw
        Size of the level (h, w).
    target_hw
        Wanted size; the result is at least this big (integer reduction factor), so that the
        caller's final resize only trims it.

    Returns
    -------
    numpy.ndarray
        (ceil(h / f), ceil(w / f), 3) uint8, ``f`` the largest integer reduction keeping at
        least ``target_hw``.
    """
    h, w = level_hw
    factor = max(1, min(h // max(1, target_hw[0]), w // max(1, target_hw[1])))
    out_h, out_w = -(-h // factor), -(-w // factor)
    # uint32 sums are exact up to factor 4104 (factor² x 255 < 2³²), far beyond real slides.
    sums = np.zeros((out_h, out_w, 3), dtype=np.uint32 if factor < 4096 else np.uint64)
    # Tiles aligned to the reduction grid, so every output pixel is summed from whole tiles.
    side = factor * max(1, READ_TILE // factor)
    for y in range(0, h, side):
        for x in range(0, w, side):
            box = Box(y, x, min(side, h - y), min(side, w - x))
            block = read(box)
            oy, ox = y // factor, x // factor
            reduced = _block_sums(block, factor, sums.dtype)
            sums[oy : oy + reduced.shape[0], ox : ox + reduced.shape[1]] += reduced
    # In place: int64 temporaries would be the largest arrays of the whole thumbnail.
    counts = np.outer(_counts(h, factor), _counts(w, factor)).astype(sums.dtype)[:, :, None]
    sums += counts // 2  # round half up
    sums //= counts
    return sums.astype(np.uint8)


def _block_sums(block: RGBRegion, factor: int, dtype: np.dtype) -> np.ndarray:
    """Sum of each ``factor`` x ``factor`` cell of ``block`` (partial cells at its far edges)."""
    rows = np.add.reduceat(block, np.arange(0, block.shape[0], factor), axis=0, dtype=dtype)
    return np.add.reduceat(rows, np.arange(0, block.shape[1], factor), axis=1, dtype=dtype)


def _counts(length: int, factor: int) -> np.ndarray:
    """Pixels of each output cell along one axis (the last may be short)."""
    counts = np.full(-(-length // factor), factor, dtype=np.int64)
    counts[-1] = length - factor * (len(counts) - 1)
    return counts
