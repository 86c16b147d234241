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
import itertools
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
        return tuple(self.box(i) for i in range(len(self)))

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def box(self, index: int) -> Box:
        row, col = divmod(index, len(self.xs))
        h, w = self.shape
        return Box(
            self.ys[row],
            self.xs[col],
            self._extent(self.ys, row, h),
            self._extent(self.xs, col, w),
        )

    def _extent(self, starts: tuple[int, ...], index: int, length: int) -> int:
        """Size of tile ``index`` along an axis: ``tile``, except that a block plan's tiles moved
        inward to the last start reach the slide edge (that start is rounded down onto the
        fuser's cell grid, so ``tile`` px from it may end up to ``grid - 1`` px short)."""
        if self.block and starts[index] == starts[-1]:
            return max(self.tile, length - starts[index])
        return self.tile

    def touching(self, block: Box) -> list[int]:
        """Indices of the tiles that intersect ``block`` (in plan order); for blended plans,
        whose tiles are all ``tile`` px square."""
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
    grid: int = 1,
) -> TilePlan:
    """The tiles of a run: the tiling given, else the one chosen for the fuser.

    Learned fusers get the design's 512/128 tiles, blended. A fuser whose output is exact beyond
    its ``margin`` gets a block plan: each ``block``-px output block is fused once, with a halo of
    the margin rounded up to the fuser's cell ``grid`` (:attr:`Fuser.cell_grid`, e.g. the depth
    surface's ``pool_step``), and written as it is, where 512/128 tiles compute every pixel 1.78
    times and blending reads them all back.
    """
    if tile is not None or overlap is not None or learned:
        return make_plan(
            shape,
            DEFAULT_TILE if tile is None else tile,
            DEFAULT_OVERLAP if overlap is None else overlap,
            margin,
        )
    return block_plan(shape, block, grid_halo(margin, grid), margin, grid)


def block_plan(
    shape: tuple[int, int], block: int, halo: int, margin: int = 0, grid: int = 1
) -> TilePlan:
    """One tile per ``block``-px output block: the block with at least ``halo`` px around it.

    Every tile starts on the ``grid`` (a multiple of it, counted from the slide origin), so a
    fuser whose decisions are pooled on ``grid``-px cells sees the same cells as when it fuses
    the whole slide at once. Tiles are ``block + 2 * halo`` px, plus ``grid - 1`` px where
    ``block`` is not a multiple of the grid (a block's tile start is then rounded down onto the
    grid, and the extra px keep ``halo`` px of context after the block).

    A tile that would cross the slide edge is moved inward, to the grid point at or before
    ``length - tile``, and then reaches the edge (so it may be up to ``grid - 1`` px longer than
    ``tile``): the edge is the tile's own (mirrored in both, so the result is the same), no tile
    reads past the slide, and the block keeps at least ``halo`` px of context on every inner
    side. A slide smaller than a tile is read in one tile from 0, padded past the slide.

    Raises :class:`ConfigError` when the halo is below the margin or off the grid.
    """
    if halo < margin:
        raise ConfigError(f"halo {halo} px is smaller than the fuser's margin ({margin} px)")
    if grid < 1 or halo % grid:
        raise ConfigError(f"halo {halo} px is not a multiple of the fuser's {grid}-px cell grid")
    h, w = shape
    if h <= 0 or w <= 0:
        raise ConfigError(f"cannot tile an empty slide of shape {shape}")
    # k * block - halo is on the grid for every k only if the block is a multiple of it;
    # otherwise starts round down by up to grid - 1 px, which the tile makes up for.
    tile = block + 2 * halo + (grid - 1 if block % grid else 0)

    def on_grid(position: int) -> int:
        return position - position % grid

    def starts(length: int) -> tuple[int, ...]:
        last = max(on_grid(length - tile), 0)
        return tuple(
            min(max(on_grid(k * block - halo), 0), last) for k in range(-(-length // block))
        )

    return TilePlan(
        shape=(h, w),
        tile=tile,
        overlap=2 * halo,
        margin=margin,
        ys=starts(h),
        xs=starts(w),
        block=block,
    )


def grid_halo(margin: int, grid: int) -> int:
    """``margin`` rounded up to a ``grid``-px grid (a fuser's :attr:`~Fuser.cell_grid`): a tile
    or chunk whose corner is on that grid, extended by this halo, starts on it too."""
    return -(-margin // grid) * grid


def grid_chunks(chunks: tuple[int, ...], grid: int, minimum: int) -> tuple[int, ...]:
    """Chunk sizes along one axis of the same total as ``chunks``, every chunk boundary moved
    down onto the ``grid`` and no chunk smaller than ``minimum`` unless it is the only one.

    A chunk left too small is merged with the one before it (the last one too), which keeps the
    remaining boundaries on the grid; chunks already on the grid and large enough are kept.
    """
    length = sum(chunks)
    bounds = [0]
    for end in itertools.accumulate(chunks[:-1]):
        end -= end % grid
        if end - bounds[-1] >= max(minimum, 1):
            bounds.append(end)
    while len(bounds) > 1 and length - bounds[-1] < minimum:
        bounds.pop()
    bounds.append(length)
    return tuple(b - a for a, b in itertools.pairwise(bounds))


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
