"""Distance-weighted blending of overlapping tiles into one output block.

Each tile gets a separable weight that is 0 within ``margin`` of an inner edge (where the fuser
output is unreliable), rises linearly across the rest of the overlap and is 1 elsewhere; edges on
the slide border keep weight 1. In a two-tile overlap the two ramps sum to exactly 1, so the blend
is a cross-fade with no seam; the blend is normalised by the summed weights everywhere.

Blending is a pure function of the tiles touching a block, summed in plan order, so the result is
the same under any scheduler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from wsi_fusion._types import Box
from wsi_fusion.tiling.plan import TilePlan


def edge_ramp(
    length: int, overlap: int, margin: int, inner_start: bool, inner_end: bool
) -> npt.NDArray[np.float32]:
    """1-D blending weights along one tile axis.

    ``ramp(d) = clip((d - margin + 0.5) / (overlap - 2 * margin), 0, 1)`` with ``d`` the distance
    to an inner edge; two facing ramps over an ``overlap`` sum to 1.
    """
    d = np.arange(length, dtype=np.float32)
    span = overlap - 2 * margin

    def ramp(dist: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if span <= 0:  # no room for a ramp: a hard switch in the middle of the overlap
            return (dist >= margin).astype(np.float32)
        return np.clip((dist - margin + 0.5) / span, 0.0, 1.0)

    weight = np.ones(length, dtype=np.float32)
    if inner_start:
        weight = np.minimum(weight, ramp(d))
    if inner_end:
        weight = np.minimum(weight, ramp(d[::-1]))
    return weight


def tile_weight(plan: TilePlan, index: int) -> npt.NDArray[np.float32]:
    """The (tile, tile) blending weight of tile ``index``."""
    top, left, bottom, right = plan.inner_edges(index)
    wy = edge_ramp(plan.tile, plan.overlap, plan.margin, top, bottom)
    wx = edge_ramp(plan.tile, plan.overlap, plan.margin, left, right)
    return wy[:, None] * wx[None, :]


def blend_block(
    plan: TilePlan,
    block: Box,
    load_tile: Callable[[int], npt.NDArray[np.floating] | npt.NDArray[np.integer]],
    channels: int,
) -> npt.NDArray[np.float32]:
    """Blend the tiles touching ``block`` into a ``(channels, h, w)`` float32 array.

    ``load_tile(i)`` returns tile ``i`` as ``(channels, tile, tile)``; only its part inside the
    slide is used.
    """
    acc = np.zeros((channels, block.h, block.w), dtype=np.float32)
    total = np.zeros((block.h, block.w), dtype=np.float32)
    slide = Box(0, 0, *plan.shape)
    for index in plan.touching(block):
        box = plan.box(index)
        part = box.intersect(block)
        inside = part.intersect(slide) if part is not None else None
        if inside is None:
            continue
        weight = tile_weight(plan, index)[inside.slices(box)]
        if not weight.any():
            continue
        values = np.asarray(load_tile(index))[(slice(None), *inside.slices(box))]
        dst = inside.slices(block)
        acc[(slice(None), *dst)] += values.astype(np.float32) * weight
        total[dst] += weight
    return (acc / np.maximum(total, np.float32(1e-12))).astype(np.float32, copy=False)
