"""Tile plans: where the overlapping fusion tiles lie on the slide.

Tiles are ``tile`` pixels square with ``overlap`` pixels shared between neighbours. The last
row/column of tiles is shifted inward so it ends exactly at the slide edge: no tile needs padding
(unless the slide is smaller than one tile) and every slide pixel is covered. A tile edge that lies
on the slide edge is an *outer* edge; only *inner* edges get the blending ramp.

A *block plan* (:func:`block_plan`) has one tile per output block instead: the block with a halo
around it. Its tiles are not blended; each one's block is written straight into the output.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from wsi_fusion._types import Box
from wsi_fusion.errors import ConfigError


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile start positions along one axis, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _overlapping(starts: tuple[int, ...], tile: int, lo: int, hi: int) -> range:
    """Indices of sorted ``starts`` whose ``[start, start + tile)`` meets ``[lo, hi)``."""
    first = bisect.bisect_right(starts, lo - tile)
    last = bisect.bisect_left(starts, hi)
    return range(first, last)


@dataclass(frozen=True)
class TilePlan:
    """Overlapping tiles covering a ``shape`` slide."""

    shape: tuple[int, int]
    tile: int
    overlap: int
    margin: int
    #: Tile start rows and columns; tile ``i`` is at ``(ys[i // len(xs)], xs[i % len(xs)])``.
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    #: 0: tiles are blended into output blocks. > 0: a block plan, tile ``i`` holds output block
    #: ``i`` (row-major over a grid of ``block``-px blocks) with a halo around it.
    block: int = 0

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(Box(y, x, self.tile, self.tile) for y in self.ys for x in self.xs)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def box(self, index: int) -> Box:
        row, col = divmod(index, len(self.xs))
        return Box(self.ys[row], self.xs[col], self.tile, self.tile)

    def touching(self, block: Box) -> list[int]:
        """Indices of the tiles that intersect ``block`` (in plan order)."""
        rows = _overlapping(self.ys, self.tile, block.y, block.y1)
        cols = _overlapping(self.xs, self.tile, block.x, block.x1)
        return [r * len(self.xs) + c for r in rows for c in cols]

    def inner_edges(self, index: int) -> tuple[bool, bool, bool, bool]:
        """Whether the top, left, bottom, right edges of tile ``index`` are inside the slide."""
        b = self.box(index)
        h, w = self.shape
        return b.y > 0, b.x > 0, b.y1 < h, b.x1 < w


#: The design's tiling (the cytology cGAN paper's 512/128), kept for learned fusers.
DEFAULT_TILE, DEFAULT_OVERLAP = 512, 128


def fusion_plan(
    shape: tuple[int, int],
    tile: int | None,
    overlap: int | None,
    margin: int,
    learned: bool,
    block: int,
) -> TilePlan:
    """The tiles of a run: the tiling given, else the one chosen for the fuser.

    Learned fusers get the design's 512/128 tiles, blended. A fuser whose output is exact beyond
    its ``margin`` gets a block plan: each ``block``-px output block is fused once, with a halo of
    the margin rounded up to 4 px (the depth surface's grid), and written as it is, where 512/128
    tiles compute every pixel 1.78 times and blending reads them all back.
    """
    if tile is not None or overlap is not None or learned:
        return make_plan(
            shape,
            DEFAULT_TILE if tile is None else tile,
            DEFAULT_OVERLAP if overlap is None else overlap,
            margin,
        )
    return block_plan(shape, block, grid_halo(margin), margin)


def block_plan(shape: tuple[int, int], block: int, halo: int, margin: int = 0) -> TilePlan:
    """One ``block + 2 * halo`` px tile per ``block``-px output block, centred on it.

    A tile that would cross the slide edge is moved inward until it ends on it: the edge is then
    the tile's own (mirrored in both, so the result is the same) and the block keeps at least
    ``halo`` px of context on every inner side.
    """
    if halo < margin:
        raise ConfigError(f"halo {halo} px is smaller than the fuser's margin ({margin} px)")
    h, w = shape
    if h <= 0 or w <= 0:
        raise ConfigError(f"cannot tile an empty slide of shape {shape}")
    tile = block + 2 * halo

    def starts(length: int) -> tuple[int, ...]:
        last = max(length - tile, 0)
        return tuple(min(max(k * block - halo, 0), last) for k in range(-(-length // block)))

    return TilePlan(
        shape=(h, w),
        tile=tile,
        overlap=2 * halo,
        margin=margin,
        ys=starts(h),
        xs=starts(w),
        block=block,
    )


def grid_halo(margin: int, grid: int = 4) -> int:
    """``margin`` rounded up to a ``grid``-px grid (default: the default fuser's 4-px depth-surface
    grid): a tile or chunk whose corner is on that grid, extended by this halo, starts on it too."""
    return -(-margin // grid) * grid


def make_plan(
    shape: tuple[int, int], tile: int = 512, overlap: int = 128, margin: int = 0
) -> TilePlan:
    """Plan ``tile``-square tiles with ``overlap`` over a slide of ``shape`` (height, width).

    Raises :class:`ConfigError` when the overlap cannot hide a fuser's ``margin`` (it must be at
    least ``2 * margin``) or the numbers are inconsistent.
    """
    if tile < 16:
        raise ConfigError(f"tile size {tile} is too small; use at least 16 (default 512)")
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap {overlap} must be in [0, tile) = [0, {tile}) (default 128)")
    if overlap < 2 * margin:
        raise ConfigError(
            f"overlap {overlap} px is smaller than twice the fuser's margin ({margin} px): tile "
            f"borders would show seams; use --overlap {2 * margin} or more"
        )
    h, w = shape
    if h <= 0 or w <= 0:
        raise ConfigError(f"cannot tile an empty slide of shape {shape}")
    stride = tile - overlap
    return TilePlan(
        shape=(h, w),
        tile=tile,
        overlap=overlap,
        margin=margin,
        ys=tuple(_starts(h, tile, stride)),
        xs=tuple(_starts(w, tile, stride)),
    )
