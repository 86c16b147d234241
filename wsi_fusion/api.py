"""The public Python API beyond the pipeline itself: ``fuse`` (files in, slide out) and
``fuse_array`` (array in, array out, for notebooks).

Both are re-exported by :mod:`wsi_fusion`, lazily, so ``import wsi_fusion`` stays cheap.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from wsi_fusion.errors import ConfigError, UnsupportedInput

if TYPE_CHECKING:
    from wsi_fusion.fusers.base import Fuser
    from wsi_fusion.pipeline import ProgressReporter, RunReport

Layout = Literal["auto", "zhwc", "zchw"]


def fuse(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    keep_cache: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressReporter | None = None,
    **options: Any,
) -> RunReport:
    """Fuse a slide's focal planes into one all-in-focus pyramid: ``wsi-fusion fuse`` in Python.

    Parameters
    ----------
    inputs
        One multi-plane file/store (OME-TIFF with Z, NDPI z-stack, OME-Zarr with a z axis, DICOM
        with focal planes), or one file per focal plane in focal order.
    output
        Output path; the suffix picks the format (``.ome.zarr``, ``.ome.tif``, ``.tif``).
    config
        A YAML run config (a path, or the name of a shipped one such as ``"lossless-focus-map"``).
    overwrite, keep_cache, cache_dir, progress
        As for :func:`wsi_fusion.pipeline.fuse_slide`.
    **options
        Run settings on top of ``config``: any field of :class:`wsi_fusion.config.RunConfig`
        (``fuser="gacn"``, ``focus_map=True``, ``tile=512``, ``scheduler="sync"``, …). An
        unknown name raises :class:`~wsi_fusion.errors.ConfigError`.

    Returns
    -------
    RunReport
        Output paths, tile counts and timings (also in ``OUTPUT.run.json``).
    """
    from wsi_fusion.config import load_config
    from wsi_fusion.pipeline import fuse_slide

    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    return fuse_slide(
        paths,
        output,
        load_config(None if config is None else os.fspath(config), **options),
        overwrite=overwrite,
        keep_cache=keep_cache,
        cache_dir=cache_dir,
        progress=progress,
    )


def fuse_array(
    stack: npt.ArrayLike,
    fuser: str | Fuser = "focus_measure",
    *,
    layout: Layout = "auto",
    tile: int | None = None,
    overlap: int = 128,
    **params: Any,
) -> np.ndarray:
    """Fuse an in-memory focal stack into one all-in-focus image.

    Parameters
    ----------
    stack
        The focal planes, first axis Z: a numpy array (or anything ``numpy.asarray`` takes), or
        a dask array, fused lazily chunk by chunk (see Returns). Two layouts:

        - ``(Z, H, W, C)`` **uint8**, the image convention (``layout="zhwc"``); returns
          ``(H, W, C)`` uint8.
        - ``(Z, C, H, W)`` **float** in [0, 1], the fusers' tile convention
          (``layout="zchw"``); returns ``(C, H, W)`` float32.

        ``layout="auto"`` picks by dtype: uint8 is ``zhwc``, floats are ``zchw``. Floats in
        ``(Z, H, W, C)`` need ``layout="zhwc"`` (returns ``(H, W, C)`` float32).
    fuser
        A registered fuser name (:func:`wsi_fusion.list_fusers`) or a fuser instance
        (:func:`wsi_fusion.create_fuser`).
    tile, overlap
        ``None`` (default): one fuser call on the whole array. A tile size: fuse ``tile``-square
        tiles overlapping by ``overlap`` px and blend them as the slide pipeline does (bounded
        memory for learned fusers on large arrays; equal to whole-image fusion for fusers whose
        margin fits in half the overlap, except that the default fuser's depth surface lies on a
        4-px grid from each tile's corner, so where two planes tie a tile may pick the other
        (~0.02 % of pixels); an array no larger than one tile is fused in one call,
        one narrower than a tile in one direction is padded with white there, as slides are).
    **params
        Fuser parameters when ``fuser`` is a name (e.g. ``weights=PATH`` for learned fusers).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The fused image, in the input's layout without the Z axis. For a dask array: a dask
        array with the input's chunks in y and x, their boundaries moved down onto the fuser's
        cell grid (:attr:`~wsi_fusion.fusers.base.Fuser.cell_grid`: 4 px for the default fuser)
        and chunks smaller than the margin merged with a neighbour; each chunk is fused with a
        halo of the margin rounded up to that grid, so a margin-bounded fuser gives exactly the
        whole-image result (Z and channels made whole; ``tile`` is not used). Fuser names get
        one fuser instance per thread.

    Raises
    ------
    UnsupportedInput
        Wrong number of dimensions, a dtype other than uint8/float, floats outside [0, 1], or
        fewer planes than the fuser needs.

    Examples
    --------
    >>> import numpy as np
    >>> import wsi_fusion
    >>> planes = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    >>> wsi_fusion.fuse_array(planes).shape
    (64, 64, 3)
    """
    from wsi_fusion.fusers import create_fuser

    if params and not isinstance(fuser, str):
        raise ConfigError("fuser parameters go to create_fuser(); pass a fuser name with them")
    if _is_dask(stack):
        return _fuse_dask(stack, fuser, params, _layout(stack, layout))  # type: ignore[arg-type]
    arr = np.asarray(stack)
    chosen = _layout(arr, layout)
    planes = _to_tile_stack(arr, chosen)
    engine = create_fuser(fuser, **params) if isinstance(fuser, str) else fuser
    if planes.shape[0] < engine.min_planes:
        raise UnsupportedInput(
            f"fuser {engine.name!r} needs at least {engine.min_planes} planes, the stack has "
            f"{planes.shape[0]} (first axis is Z)"
        )
    if tile is None or max(planes.shape[-2:]) <= tile:
        fused = engine.fuse(planes).fused
    else:
        fused = _fuse_tiled(engine, planes, tile, overlap)
    grey = planes.shape[1] != (arr.shape[3] if chosen == "zhwc" else arr.shape[1])
    return _from_fused(fused.mean(axis=0, keepdims=True) if grey else fused, arr.dtype, chosen)


def _is_dask(stack: Any) -> bool:
    """Whether ``stack`` is a dask array (without importing dask when it is not loaded)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(stack, module.Array)


def _fuse_dask(
    arr: Any, fuser: str | Fuser, params: dict[str, Any], layout: Literal["zhwc", "zchw"]
) -> Any:
    """Lazy :func:`fuse_array` of a dask array: chunks fused with a margin-wide halo."""
    import dask.array as da

    from wsi_fusion.fusers import create_fuser
    from wsi_fusion.tiling.plan import grid_chunks, grid_halo

    local = threading.local()

    def engine() -> Fuser:
        if isinstance(fuser, str):  # fusers are not shared between threads (the pipeline's rule)
            if not hasattr(local, "fuser"):
                local.fuser = create_fuser(fuser, **params)
            return local.fuser  # type: ignore[no-any-return]
        return fuser

    first = engine()
    ch_axis, ys, xs = (3, 1, 2) if layout == "zhwc" else (1, 2, 3)
    if arr.shape[0] < first.min_planes:
        raise UnsupportedInput(
            f"fuser {first.name!r} needs at least {first.min_planes} planes, the stack has "
            f"{arr.shape[0]} (first axis is Z)"
        )
    # Chunks that start on the fuser's cell grid (the depth surface's pool_step), extended by a
    # halo on that grid, give exactly the whole image: their tiles see the whole image's cells.
    grid = first.cell_grid
    margin = grid_halo(first.margin, grid)
    arr = arr.rechunk({0: -1, ch_axis: -1})
    arr = arr.rechunk({axis: grid_chunks(arr.chunks[axis], grid, margin) for axis in (ys, xs)})
    padded = da.overlap.overlap(arr, depth={ys: margin, xs: margin}, boundary="none")
    n_y, n_x = len(arr.chunks[ys]), len(arr.chunks[xs])
    channels = arr.shape[ch_axis]

    def fuse_block(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        where = block_info[0]["chunk-location"]
        planes = _to_tile_stack(block, layout)
        fused = engine().fuse(planes).fused
        if planes.shape[1] != channels:
            fused = fused.mean(axis=0, keepdims=True)
        out = _from_fused(fused, block.dtype, layout)
        # Drop the halo: every side has one except the image's own edges (boundary "none").
        y0 = margin if where[ys] > 0 else 0
        y1 = out.shape[-3 if layout == "zhwc" else -2] - (margin if where[ys] < n_y - 1 else 0)
        x0 = margin if where[xs] > 0 else 0
        x1 = out.shape[-2 if layout == "zhwc" else -1] - (margin if where[xs] < n_x - 1 else 0)
        if layout == "zhwc":
            return out[y0:y1, x0:x1]
        return out[:, y0:y1, x0:x1]

    if layout == "zhwc":
        chunks = (arr.chunks[ys], arr.chunks[xs], (channels,))
    else:
        chunks = ((channels,), arr.chunks[ys], arr.chunks[xs])
    dtype = np.uint8 if arr.dtype == np.uint8 else np.float32
    return padded.map_blocks(
        fuse_block, drop_axis=0, chunks=chunks, dtype=dtype, meta=np.empty((0, 0, 0), dtype)
    )


def _layout(arr: np.ndarray, layout: Layout) -> Literal["zhwc", "zchw"]:
    """The layout of ``arr``, checking its rank, dtype and shape."""
    if arr.ndim != 4:
        raise UnsupportedInput(
            f"expected a 4-D focal stack (Z, H, W, C) uint8 or (Z, C, H, W) float, got shape "
            f"{arr.shape}; add a channel axis to greyscale planes (stack[..., None])"
        )
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise UnsupportedInput(
            f"stack dtype {arr.dtype} is not supported; give uint8, or floats in [0, 1] "
            "(e.g. stack / 65535 for 16-bit planes)"
        )
    if layout == "auto":
        layout = "zhwc" if arr.dtype == np.uint8 else "zchw"
        if layout == "zchw" and arr.shape[1] > 4 and arr.shape[3] <= 4:
            raise UnsupportedInput(
                f"float stack of shape {arr.shape} looks like (Z, H, W, C); floats are read as "
                "(Z, C, H, W) unless you pass layout='zhwc'"
            )
    channels = arr.shape[3] if layout == "zhwc" else arr.shape[1]
    if channels not in (1, 3):
        raise UnsupportedInput(
            f"stack of shape {arr.shape} read as {layout.upper()} has {channels} channels; "
            "give RGB (3) or greyscale (1)"
        )
    return layout


def _to_tile_stack(arr: np.ndarray, layout: Literal["zhwc", "zchw"]) -> np.ndarray:
    """``(Z, C, H, W)`` float32 in [0, 1], RGB (greyscale replicated)."""
    planes = arr.transpose(0, 3, 1, 2) if layout == "zhwc" else arr
    if arr.dtype == np.uint8:
        out = planes.astype(np.float32) / np.float32(255.0)
    else:
        out = planes.astype(np.float32)
        low, high = float(np.nanmin(out)), float(np.nanmax(out))
        if not (0.0 <= low and high <= 1.0):
            raise UnsupportedInput(
                f"float stack values span [{low:g}, {high:g}]; scale them to [0, 1] "
                "(e.g. stack / 255) or pass uint8"
            )
    if out.shape[1] == 1:
        out = np.repeat(out, 3, axis=1)
    return np.ascontiguousarray(out)


def _from_fused(
    fused: np.ndarray, dtype: np.dtype[Any], layout: Literal["zhwc", "zchw"]
) -> np.ndarray:
    """The fused ``(C, H, W)`` float image in the caller's dtype and layout."""
    out = np.asarray(fused, dtype=np.float32)
    if out.ndim != 3:
        raise ValueError(f"fuser returned shape {out.shape}, expected (C, H, W)")
    if layout == "zhwc":
        out = out.transpose(1, 2, 0)
    if dtype == np.uint8:
        return np.clip(np.rint(out * np.float32(255.0)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def _fuse_tiled(engine: Fuser, planes: np.ndarray, tile: int, overlap: int) -> np.ndarray:
    """Fuse ``planes`` tile by tile and blend the tiles with the pipeline's distance ramps."""
    from wsi_fusion._types import Box
    from wsi_fusion.stitching.blend import blend_block
    from wsi_fusion.tiling.plan import make_plan

    z, c, h, w = planes.shape
    plan = make_plan((h, w), tile=tile, overlap=overlap, margin=engine.margin)
    fused_tiles: list[np.ndarray] = []
    for index in range(len(plan)):
        box = plan.box(index)
        # White outside the image, as the slide readers pad (only when the image < one tile).
        piece = np.ones((z, c, tile, tile), dtype=np.float32)
        inside = box.intersect(Box(0, 0, h, w))
        if inside is not None:
            piece[(slice(None), slice(None), *inside.slices(box))] = planes[
                (slice(None), slice(None), *inside.slices())
            ]
        fused_tiles.append(np.asarray(engine.fuse(piece).fused, dtype=np.float32))
    channels = fused_tiles[0].shape[0]
    return blend_block(plan, Box(0, 0, h, w), fused_tiles.__getitem__, channels)
