"""Task bodies of the two pipeline phases.

Each task gets a :class:`FusionJob` (plain, picklable data) and a list of tile or block indices;
readers and fusers are opened per worker thread (:mod:`.workers`). Tasks skip work whose done
marker exists, so a rerun after a crash computes only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from wsi_fusion._types import Box, TileStack
from wsi_fusion.errors import ConfigError
from wsi_fusion.fusers.base import one_hot_weights
from wsi_fusion.io.writers.ome_zarr import image_levels, label_levels
from wsi_fusion.registration import DriftField
from wsi_fusion.scheduling.tile_cache import TileCache, quantize
from wsi_fusion.scheduling.workers import (
    thread_registered_stack,
    thread_stack,
    worker_fuser_cache,
)
from wsi_fusion.stitching.blend import blend_block
from wsi_fusion.tiling.plan import TilePlan


@dataclass(frozen=True)
class FusionJob:
    """Everything a task needs, as plain data."""

    inputs: tuple[str, ...]
    fuser: str
    fuser_params: dict[str, Any]
    plan: TilePlan
    planes: int
    reference_plane: int
    #: Per tile: fuse it (tissue) or copy the reference plane (background).
    fuse_mask: tuple[bool, ...]
    cache_root: str
    #: The OME-Zarr image group the blended level 0 is written into.
    image_path: str
    chunk: int
    focus_map: bool
    #: 512² tiles per ``fuse_batch`` call of a classical fuser (learned fusers use their own);
    #: larger tiles go fewer at a time, so a call holds the same pixels.
    batch_size: int = 4
    channels: int = field(default=3)
    #: Lateral drift of the planes to correct while reading tiles (``None``: read as stored).
    drift: DriftField | None = None
    #: Extra outputs of the fuser to cache, blend and write as labels (e.g. ``blur_mask``).
    extras: tuple[str, ...] = ()

    def block(self, index: int) -> Box:
        """Output block ``index`` (row-major over a ``chunk`` grid)."""
        h, w = self.plan.shape
        cols = -(-w // self.chunk)
        row, col = divmod(index, cols)
        y, x = row * self.chunk, col * self.chunk
        return Box(y, x, min(self.chunk, h - y), min(self.chunk, w - x))

    @property
    def n_blocks(self) -> int:
        h, w = self.plan.shape
        return (-(-h // self.chunk)) * (-(-w // self.chunk))


def read_tile_stack(job: FusionJob, box: Box) -> TileStack:
    """Read all planes of ``box`` as a (Z, C, H, W) float32 stack in [0, 1]."""
    stack = (
        thread_stack(job.inputs)
        if job.drift is None
        else thread_registered_stack(job.inputs, job.drift)
    )
    out = np.empty((job.planes, job.channels, box.h, box.w), dtype=np.float32)
    for z in range(job.planes):  # straight into the float stack: no uint8 copy of all planes
        out[z] = stack.read(z, box).transpose(2, 0, 1)
    return np.divide(out, np.float32(255.0), out=out)


#: Where phase 1 puts a tile: ``(index, fused, weights, extras)``, all uint8.
_TileStore = Callable[
    [int, npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None, Mapping[str, npt.NDArray[np.uint8]]],
    None,
]


def fuse_tiles(job: FusionJob, indices: Sequence[int]) -> int:
    """Phase 1: fuse (or copy) tiles ``indices``; return how many were done.

    A blended plan's tiles go into the cache for phase 2; a block plan's tiles hold one output
    block each, written straight into the output (no cache round trip, no phase 2).
    """
    cache = TileCache(job.cache_root)
    done = cache.done_blocks() if job.plan.block else cache.done_tiles()
    todo = [i for i in indices if i not in done]
    if not todo:
        return 0
    # Opened only when there is work: a resumed task whose tiles are done touches nothing.
    store: _TileStore = _BlockWriter(job, cache) if job.plan.block else cache.write_tile
    fuser = worker_fuser_cache().get(
        job.fuser,
        job.fuser_params,
        planes=job.planes,
        channels=job.channels,
        tile=job.plan.tile,
        default_batch=max(1, job.batch_size * 512 * 512 // job.plan.tile**2),
        extras=job.extras,
    )
    batch: list[int] = []

    def flush() -> None:
        # Groups of tiles go through one fuse_batch call: learned fusers batch forward passes.
        stacks = [read_tile_stack(job, job.plan.box(i)) for i in batch]
        for i, result in zip(batch, fuser.fuse_batch(stacks), strict=True):
            if job.focus_map and result.weights is None:
                # Blending missing weights would give an all-zero map that looks like a result.
                raise ConfigError(
                    f"fuser {job.fuser!r} generates its output and gives no plane weights, so "
                    "there is no focus map to write; drop --focus-map (focus_map: false)"
                )
            weights = (
                quantize(result.weights) if job.focus_map and result.weights is not None else None
            )
            extras = {name: quantize(result.extras[name]) for name in job.extras}
            # Positional: tests wrap write_tile with a plain ``*args`` signature.
            store(i, quantize(result.fused), weights, extras)
        batch.clear()

    for i in todo:
        if job.fuse_mask[i]:
            batch.append(i)
            if len(batch) >= fuser.batch_size:
                flush()
        else:
            _copy_reference(job, store, i)
    if batch:
        flush()
    return len(todo)


class _OutputLevels:
    """Level 0 of the output OME-Zarr and its label images, written one block at a time."""

    def __init__(self, job: FusionJob) -> None:
        # Written blocks are never all fill value: zarr's check for such chunks (to skip
        # storing them) compares every byte of every block for nothing (3 % of a run's CPU).
        with zarr.config.set({"array.write_empty_chunks": True}):
            image = zarr.open_group(job.image_path, mode="r+")
            self.pixels = image_levels(image)[0]
            self.focus_map = label_levels(image, "focus_map")[0] if job.focus_map else None
            self.extras = {name: label_levels(image, name)[0] for name in job.extras}

    def write(
        self,
        block: Box,
        fused: npt.NDArray[np.uint8],
        weights: npt.NDArray[Any] | None,
        extras: Mapping[str, npt.NDArray[np.uint8]],
    ) -> None:
        """Store ``block``'s pixels ``(C, h, w)``, plane weights ``(Z, h, w)`` and extras
        ``(h, w)``."""
        where = block.slices()
        self.pixels[(slice(None), *where)] = fused
        if self.focus_map is not None and weights is not None:
            self.focus_map[where] = focus_index(weights)
        for name, target in self.extras.items():
            target[where] = extras[name]


class _BlockWriter:
    """Phase 1 of a block plan: tile ``i``'s output block ``i`` goes straight to the output."""

    def __init__(self, job: FusionJob, cache: TileCache) -> None:
        self.job = job
        self.cache = cache
        self.output = _OutputLevels(job)

    def __call__(
        self,
        index: int,
        fused: npt.NDArray[np.uint8],
        weights: npt.NDArray[np.uint8] | None,
        extras: Mapping[str, npt.NDArray[np.uint8]],
    ) -> None:
        block = self.job.block(index)
        inner = block.slices(self.job.plan.box(index))
        self.output.write(
            block,
            fused[(slice(None), *inner)],
            None if weights is None else weights[(slice(None), *inner)],
            {name: values[inner] for name, values in extras.items()},
        )
        # The marker is created only after the block is in the output.
        self.cache.mark_block(index)


def _copy_reference(job: FusionJob, store: _TileStore, index: int) -> None:
    """Background tile: the reference plane unchanged, all weight on it, extras 0.

    Extras are 0 because a copied tile was not fused: nothing in it was synthesised.
    """
    box = job.plan.box(index)
    pixels = thread_stack(job.inputs).read(job.reference_plane, box).transpose(2, 0, 1)
    weights = None
    if job.focus_map:
        choice = np.full((box.h, box.w), job.reference_plane, dtype=np.int64)
        weights = quantize(one_hot_weights(choice, job.planes))
    extras = {name: np.zeros((box.h, box.w), dtype=np.uint8) for name in job.extras}
    store(index, np.ascontiguousarray(pixels), weights, extras)


def blend_blocks(job: FusionJob, indices: Sequence[int]) -> int:
    """Phase 2: blend cached tiles into output blocks ``indices``; return how many were done."""
    cache = TileCache(job.cache_root)
    done = cache.done_blocks()
    todo = [i for i in indices if i not in done]
    if not todo:
        return 0
    output = _OutputLevels(job)
    for index in todo:
        block = job.block(index)
        fused = _to_uint8_levels(blend_block(job.plan, block, cache.read_fused, job.channels))
        weights = (
            blend_block(job.plan, block, cache.read_weights, job.planes) if job.focus_map else None
        )
        # The same distance ramps as the pixels: an extra lines up with the fused image.
        extras = {
            name: _to_uint8_levels(
                blend_block(job.plan, block, partial(cache.read_extra, name), 1)[0]
            )
            for name in job.extras
        }
        output.write(block, fused, weights, extras)
        cache.mark_block(index)
    return len(todo)


def _to_uint8_levels(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Blended uint8-scaled values back to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def focus_index(weights: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The focus/depth map: per pixel, the plane with the largest stitched weight."""
    return np.argmax(weights, axis=0).astype(np.uint8)
