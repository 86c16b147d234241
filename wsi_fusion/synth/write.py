"""Stream a synthetic focal stack of any size to disk, in the input forms the pipeline reads.

Generation runs tile by tile into an OME-Zarr with a z axis (the generation store); every other
form is then converted from it, streaming, so no step holds a full plane. The pixels depend only
on the source, the seed and the parameters, never on ``tile`` (see
:func:`wsi_fusion.synth.defocus.render_box`).

Output folder::

    stack.ome.zarr/          OME-Zarr v0.4 (Zarr v2), axes c,z,y,x, µm scales   [form ome-zarr]
    stack.ome.tif            OME-TIFF, axes ZYXS, levels in SubIFDs             [form ome-tiff]
    planes/plane_z{k}.tif    one generic pyramidal TIFF per plane (OpenSlide)   [form planes]
    ground_truth.tif         sharp image (H, W, 3) uint8, tiled, lossless
    focus_index.tif          argmin_k |depth - k|, (H, W) uint8, tiled
    depth.tif                depth in plane units, (H, W) float32, tiled
    synth.json               parameters, seed, drift, versions and the file list
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from wsi_fusion._types import Box, RGBRegion
from wsi_fusion.errors import (
    ConfigError,
    OutputExists,
    OutputNotWritable,
    SlideNotFound,
    UnreadableSlide,
    UnsupportedInput,
)
from wsi_fusion.pyramid.downsample import downsample2, level_shapes
from wsi_fusion.synth.defocus import (
    RenderedTile,
    SharpReader,
    SynthParams,
    blur_levels,
    check_rgb,
    mirror_index,
    plane_drift,
    render_box,
    resolve_params,
)

log = logging.getLogger(__name__)

Form = Literal["ome-zarr", "ome-tiff", "planes"]
Compression = Literal["jpeg", "deflate", "zstd", "none"]
#: Every input form ``synthesize`` can write.
FORMS: tuple[Form, ...] = ("ome-zarr", "ome-tiff", "planes")
#: TIFF tile side (pixels); 512 is what slide viewers expect.
TIFF_TILE = 512
#: Pyramid levels are added until the longer side is at most this (pixels).
PYRAMID_MIN_SIDE = 512
#: Sources up to this many pixels are read once and kept in memory.
_CACHE_PIXELS = 32 * 2**20
_TIFF_BUFFER = 32 * 2**20
_ZARR_NAME = "stack.ome.zarr"
_TRUTH_NAME = ".truth.zarr"


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """A sharp source image: in-bounds reads of level 0 plus what we know about it."""

    name: str
    shape: tuple[int, int]
    mpp: float | None
    read: Callable[[Box], RGBRegion]
    close: Callable[[], None]


def _open_source(source: str | os.PathLike[str] | npt.NDArray[np.uint8]) -> _Source:
    """Open an array, an OpenSlide-readable slide or a Pillow-readable image."""
    if isinstance(source, np.ndarray):
        image = check_rgb(source, "source array")
        return _Source(
            "<array>",
            (image.shape[0], image.shape[1]),
            None,
            lambda b: image[b.y : b.y1, b.x : b.x1],
            lambda: None,
        )
    path = Path(source)
    if not path.exists():
        raise SlideNotFound(f"source image {path} does not exist; give a slide or image file")
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as err:
        log.debug("OpenSlide cannot open %s (%s); trying Pillow", path, err)
    else:
        w, h = slide.dimensions
        mpp_s = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        mpp = float(mpp_s) if mpp_s else None

        def read_slide(b: Box) -> RGBRegion:
            rgba = np.asarray(slide.read_region((b.x, b.y), 0, (b.w, b.h)))
            # OpenSlide returns transparent black outside the tissue scan: show it as glass.
            alpha = rgba[..., 3:].astype(np.float32) / 255
            rgb = rgba[..., :3].astype(np.float32) * alpha + 255 * (1 - alpha)
            return np.rint(rgb).astype(np.uint8)

        src = _Source(str(path), (h, w), mpp, read_slide, slide.close)
        if h * w <= _CACHE_PIXELS:
            image = src.read(Box(0, 0, h, w))
            slide.close()
            src.read = lambda b: image[b.y : b.y1, b.x : b.x1]
            src.close = lambda: None
        return src

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                raise UnsupportedInput(
                    f"source {path} has mode {im.mode} (more than 8 bits); give an 8-bit RGB "
                    "or greyscale image"
                )
            image = check_rgb(np.asarray(im.convert("RGBA")), f"source {path}")
    except (UnidentifiedImageError, OSError) as err:
        raise UnreadableSlide(
            f"source {path} is neither a slide OpenSlide opens nor an image Pillow opens: {err}"
        ) from err
    return _Source(
        str(path),
        (image.shape[0], image.shape[1]),
        None,
        lambda b: image[b.y : b.y1, b.x : b.x1],
        lambda: None,
    )


def _mirror_reader(src: _Source) -> SharpReader:
    """Read any box of the source mirror-repeated over the whole plane."""
    h, w = src.shape

    def read(box: Box) -> RGBRegion:
        if box.y >= 0 and box.x >= 0 and box.y1 <= h and box.x1 <= w:
            return src.read(box)
        ry = mirror_index(np.arange(box.y, box.y1, dtype=np.int64), h)
        rx = mirror_index(np.arange(box.x, box.x1, dtype=np.int64), w)
        # Read the bounding box of the source rows/columns once, then index into it.
        y0, x0 = int(ry.min()), int(rx.min())
        part = src.read(Box(y0, x0, int(ry.max()) + 1 - y0, int(rx.max()) + 1 - x0))
        return part[(ry - y0)[:, None], (rx - x0)[None, :]]

    return read


# --------------------------------------------------------------------------- zarr helpers


def _level_shapes(h: int, w: int, pyramid: bool) -> list[tuple[int, int]]:
    """Level sizes of a 2x2 pyramid, down to a longer side of at most PYRAMID_MIN_SIDE."""
    return level_shapes((h, w), PYRAMID_MIN_SIDE) if pyramid else [(h, w)]


def _ngff_attrs(n_levels: int, mpp: float, z_step_um: float) -> dict[str, Any]:
    """NGFF 0.4 ``multiscales`` and ``omero`` attributes for a (c, z, y, x) RGB pyramid."""
    from wsi_fusion.io.writers.ome_zarr import _multiscale, _omero

    name = "synthetic focal stack"
    multiscale = _multiscale(
        name,
        n_levels,
        mpp,
        "0.4",
        channel_axis=True,
        method="wsi_fusion.pyramid.downsample.downsample2",
        description="2x2 mean, rounding half up, odd edge replicated",
        z_scale=z_step_um,
    )
    # The NGFF 0.4 spec's omero example carries the version; synth stacks always had it.
    omero = {**_omero(name, ("red", "green", "blue")), "version": "0.4"}
    return {"multiscales": [multiscale], "omero": omero}


def _compressor() -> Any:
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)


# --------------------------------------------------------------------------- TIFF helpers


def _tiles(
    read_strip: Callable[[int, int], npt.NDArray[Any]], h: int, w: int, strip: int
) -> Iterator[npt.NDArray[Any]]:
    """TIFF tiles in row-major order, reading ``strip`` rows at a time (edge tiles padded)."""
    from wsi_fusion.io.writers.ome_tiff import _split

    t = TIFF_TILE
    for sy in range(0, h, strip):
        rows = read_strip(sy, min(sy + strip, h))
        for ty in range(0, rows.shape[0], t):
            yield from _split(rows[ty : ty + t], t)


def _tiff_compression(compression: Compression, jpeg_quality: int) -> dict[str, Any]:
    """tifffile keyword arguments for a compression choice."""
    from wsi_fusion.io.writers.ome_tiff import _codec

    options: dict[str, Any] = {"compression": _codec(compression)}
    if compression == "jpeg":
        options["compressionargs"] = {"level": jpeg_quality}
    return options


def _bigtiff(nbytes: int) -> bool:
    # Offsets in classic TIFF are 32-bit; decide on the uncompressed size to be safe.
    return nbytes > 2**31 - 2**26


def _write_ome_tiff(
    path: Path,
    levels: Sequence[Any],
    shapes: Sequence[tuple[int, int]],
    n_planes: int,
    mpp: float,
    z_step_um: float,
    strip: int,
    comp: dict[str, Any],
) -> None:
    """OME-TIFF with axes ZYXS, reduced levels in SubIFDs, streamed from the zarr levels."""
    import tifffile

    from wsi_fusion.io.writers.ome_tiff import _resolution

    h, w = shapes[0]
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(n_planes * h * w * 4), ome=True) as tw:
        for lvl, (arr, (lh, lw)) in enumerate(zip(levels, shapes, strict=True)):

            def gen(arr: Any = arr, lh: int = lh, lw: int = lw) -> Iterator[npt.NDArray[Any]]:
                for z in range(n_planes):

                    def rows(y0: int, y1: int, z: int = z) -> npt.NDArray[Any]:
                        return np.moveaxis(np.asarray(arr[:, z, y0:y1, :]), 0, -1)

                    yield from _tiles(rows, lh, lw, strip)

            kw: dict[str, Any] = dict(
                shape=(n_planes, lh, lw, 3),
                dtype=np.uint8,
                tile=(TIFF_TILE, TIFF_TILE),
                photometric="rgb",
                buffersize=_TIFF_BUFFER,
                **_resolution(mpp, lvl),
                **comp,
            )
            if lvl == 0:
                metadata = {
                    "axes": "ZYXS",
                    "Name": "synthetic focal stack",
                    "PhysicalSizeX": mpp,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": mpp,
                    "PhysicalSizeYUnit": "µm",
                    "PhysicalSizeZ": z_step_um,
                    "PhysicalSizeZUnit": "µm",
                }
                tw.write(gen(), subifds=len(shapes) - 1, metadata=metadata, **kw)
            else:
                tw.write(gen(), subfiletype=1, metadata=None, **kw)


def _write_generic_tiff(
    path: Path,
    levels: Sequence[Callable[[int, int], npt.NDArray[Any]]],
    shapes: Sequence[tuple[int, int]],
    mpp: float,
    strip: int,
    comp: dict[str, Any],
    samples: int,
    dtype: Any,
    description: str,
) -> None:
    """A tiled TIFF OpenSlide opens: reduced levels in the main IFD chain, mpp in px/cm."""
    import tifffile

    from wsi_fusion.io.writers.ome_tiff import _resolution

    h, w = shapes[0]
    nbytes = h * w * samples * np.dtype(dtype).itemsize * 4 // 3
    with tifffile.TiffWriter(path, bigtiff=_bigtiff(nbytes)) as tw:
        for lvl, (read, (lh, lw)) in enumerate(zip(levels, shapes, strict=True)):
            tw.write(
                _tiles(read, lh, lw, strip),
                shape=(lh, lw, samples) if samples > 1 else (lh, lw),
                dtype=dtype,
                tile=(TIFF_TILE, TIFF_TILE),
                photometric="rgb" if samples == 3 else "minisblack",
                **_resolution(mpp, lvl),
                subfiletype=1 if lvl else 0,
                description=description if lvl == 0 else None,
                metadata=None,
                buffersize=_TIFF_BUFFER,
                **comp,
            )


# --------------------------------------------------------------------------- main entry


def _prepare_output(out_dir: Path, overwrite: bool) -> Path:
    """Check the output folder and return a fresh ``<out_dir>.partial`` to write into."""
    if out_dir.exists():
        if not overwrite:
            raise OutputExists(f"output {out_dir} exists; choose another folder or overwrite")
        if not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / "synth.json").is_file()
        ):
            # Overwrite may only delete what this function made; never a user's folder.
            raise OutputExists(
                f"output {out_dir} exists and is not a synthetic-stack folder (no synth.json); "
                "refusing to delete it: choose another folder"
            )
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputNotWritable(f"cannot create the folder {parent}: {err}") from err
    if not os.access(parent, os.W_OK):
        raise OutputNotWritable(f"cannot write into {parent}: check its permissions")
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        log.warning("removing %s left by an interrupted run", partial)
        shutil.rmtree(partial)
    partial.mkdir()
    return partial


def synthesize(
    source: str | os.PathLike[str] | npt.NDArray[np.uint8],
    out_dir: str | os.PathLike[str],
    *,
    size: tuple[int, int] | None = None,
    n_planes: int = 5,
    forms: Sequence[str] = FORMS,
    tile: int = 1024,
    seed: int = 0,
    mpp: float | None = None,
    z_step_um: float = 1.0,
    pyramid: bool = True,
    compression: Compression = "jpeg",
    jpeg_quality: int = 95,
    overwrite: bool = False,
    workers: int | None = None,
    params: SynthParams | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """Synthesise a focal stack with ground truth from a sharp image and write it to disk.

    Memory stays bounded by the tile size (plus TIFF buffers), whatever ``size`` is. The
    pixels depend on ``source``, ``seed`` and the model parameters only: any ``tile`` gives the
    same stack.

    Parameters
    ----------
    source : path or ndarray
        The sharp image: a slide OpenSlide opens (level 0 is used), an image Pillow opens, or an
        (H, W, 3) uint8 array.
    out_dir : path
        Folder to create; written as ``<out_dir>.partial`` and renamed when complete.
    size : (int, int), optional
        Output (height, width) in pixels. Larger than the source: the source is mirror-repeated;
        smaller: its top-left corner is used. Default: the source's size.
    n_planes : int
        Number of focal planes Z.
    forms : sequence of str
        Input forms to write, any of ``"ome-zarr"``, ``"ome-tiff"``, ``"planes"``. The ground
        truth TIFFs and ``synth.json`` are always written.
    tile : int
        Generation tile side in pixels (a multiple of 16, at least 64); also the OME-Zarr chunk
        side. Bounds memory; does not change the result.
    seed : int
        Seed of the depth field, drift and noise.
    mpp : float, optional
        Microns per pixel to record. Default: the source's (OpenSlide), else 0.5.
    z_step_um : float
        Distance between focal planes in µm (recorded as PhysicalSizeZ and z scale).
    pyramid : bool
        Add 2x2-mean reduced levels (down to a longer side of 512) to every pyramid form.
    compression : {"jpeg", "deflate", "zstd", "none"}
        Tile compression of ``stack.ome.tif`` and the per-plane TIFFs (all readable by OpenSlide
        and tifffile). The ground-truth TIFFs are always deflate (lossless); the zarr is Blosc.
    jpeg_quality : int
        JPEG quality when ``compression="jpeg"``.
    overwrite : bool
        Replace an existing ``out_dir`` that holds an earlier synthetic stack (``synth.json``).
    workers : int, optional
        Threads rendering tiles (default: the CPU count, at most 4). Each holds about
        ``(tile + 2 * halo)**2 * 12 * (levels + 2)`` bytes; the result does not depend on it.
    params : SynthParams or mapping, optional
        Defocus model parameters; see :class:`wsi_fusion.synth.defocus.SynthParams`.
    **overrides
        Individual :class:`SynthParams` fields, applied on top of ``params``.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ConfigError
        A parameter is invalid (the message names it).
    SlideNotFound, UnreadableSlide, UnsupportedInput
        The source is missing, undecodable or not 8-bit.
    OutputExists, OutputNotWritable
        The output folder exists (without ``overwrite``) or cannot be created.
    """
    t_start = time.perf_counter()
    p = resolve_params(params, **overrides)
    unknown = [f for f in forms if f not in FORMS]
    if unknown or not forms:
        raise ConfigError(f"forms {list(forms)!r} invalid; choose from {list(FORMS)}")
    if n_planes < 1:
        raise ConfigError(f"n_planes must be at least 1, got {n_planes}")
    if tile < 64 or tile % 16:
        # Tiles on a 16-pixel grid keep JPEG blocks and 2x2 pyramid cells whole.
        raise ConfigError(f"tile {tile} must be a multiple of 16 and at least 64, e.g. 1024")
    if compression not in ("jpeg", "deflate", "zstd", "none"):
        raise ConfigError(f"compression {compression!r} invalid; use jpeg, deflate, zstd or none")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality {jpeg_quality} must be in 1..100")
    if mpp is not None and not mpp > 0:
        raise ConfigError(f"mpp {mpp} must be positive")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers {workers} must be at least 1")
    if not z_step_um > 0:
        raise ConfigError(f"z_step_um {z_step_um} must be positive")
    drift = plane_drift(n_planes, seed=seed, params=p)

    src = _open_source(source)
    try:
        if size is None:
            size = src.shape
        h, w = int(size[0]), int(size[1])
        if h < 1 or w < 1:
            raise ConfigError(f"size {size} must be positive (height, width)")
        if mpp is None:
            mpp = src.mpp if src.mpp else 0.5
        out = Path(out_dir)
        partial = _prepare_output(out, overwrite)
        spec = _Spec(
            h=h,
            w=w,
            n_planes=n_planes,
            forms=tuple(forms),
            tile=tile,
            seed=seed,
            params=p,
            drift=drift,
            mpp=mpp,
            z_step_um=z_step_um,
            pyramid=pyramid,
            compression=compression,
            jpeg_quality=jpeg_quality,
            workers=workers or min(4, os.cpu_count() or 1),
        )
        try:
            files = _generate(_mirror_reader(src), partial, spec)
        except BaseException:
            # Leave nothing half-written behind; the error itself propagates unchanged.
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        src.close()

    record = {
        "generator": "wsi_fusion.synth",
        "version": _version(),
        "source": {"path": src.name, "shape": list(src.shape), "mpp": src.mpp},
        "size": [h, w],
        "n_planes": n_planes,
        "seed": seed,
        "tile": tile,
        "mpp": mpp,
        "z_step_um": z_step_um,
        "z_positions_um": [k * z_step_um for k in range(n_planes)],
        "pyramid": pyramid,
        "compression": compression,
        "jpeg_quality": jpeg_quality if compression == "jpeg" else None,
        "forms": list(forms),
        "params": p.model_dump(mode="json"),
        "drift": drift.tolist(),
        "blur_levels": blur_levels(n_planes, p).tolist(),
        "files": files + ["synth.json"],
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    (partial / "synth.json").write_text(json.dumps(record, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log.info(
        "synthetic stack %s (%dx%d, %d planes) in %.1f s", out, h, w, n_planes, record["seconds"]
    )
    return out


def _version() -> str:
    from wsi_fusion import __version__

    return __version__


@dataclass(frozen=True)
class _Spec:
    """Everything :func:`_generate` needs, validated by :func:`synthesize`."""

    h: int
    w: int
    n_planes: int
    forms: tuple[str, ...]
    tile: int
    seed: int
    params: SynthParams
    drift: npt.NDArray[np.float64]
    mpp: float
    z_step_um: float
    pyramid: bool
    compression: Compression
    jpeg_quality: int
    workers: int


def _store(r: RenderedTile, box: Box, level0: Any, gt: Any, fi: Any, dp: Any) -> None:
    """Write one rendered tile into the zarr stack and the ground-truth arrays."""
    level0[:, :, box.y : box.y1, box.x : box.x1] = np.moveaxis(r.planes, -1, 0)
    gt[box.y : box.y1, box.x : box.x1] = r.ground_truth
    fi[box.y : box.y1, box.x : box.x1] = r.focus_index
    dp[box.y : box.y1, box.x : box.x1] = r.depth


def _generate(read_sharp: SharpReader, root: Path, spec: _Spec) -> list[str]:
    """Render into the zarr, build its pyramid, convert to the TIFF forms; return the files."""
    import zarr

    from wsi_fusion.io.writers.ome_zarr import _create_level

    h, w, n_planes, tile, mpp = spec.h, spec.w, spec.n_planes, spec.tile, spec.mpp
    shapes = _level_shapes(h, w, spec.pyramid)
    chunk = min(tile, max(h, w))
    group = zarr.open_group(root / _ZARR_NAME, mode="w", zarr_format=2)
    levels = [
        _create_level(
            group,
            str(lvl),
            (3, n_planes, lh, lw),
            (1, 1, chunk, chunk),
            ("c", "z", "y", "x"),
            "0.4",
            _compressor(),
            fill_value=255,
        )
        for lvl, (lh, lw) in enumerate(shapes)
    ]
    group.attrs.update(_ngff_attrs(len(shapes), mpp, spec.z_step_um))
    truth = zarr.open_group(root / _TRUTH_NAME, mode="w", zarr_format=2)
    gt = truth.create_array(
        "ground_truth",
        shape=(h, w, 3),
        chunks=(chunk, chunk, 3),
        dtype="uint8",
        compressors=_compressor(),
    )
    fi = truth.create_array(
        "focus_index", shape=(h, w), chunks=(chunk, chunk), dtype="uint8", compressors=_compressor()
    )
    dp = truth.create_array(
        "depth", shape=(h, w), chunks=(chunk, chunk), dtype="float32", compressors=_compressor()
    )

    boxes = [
        Box(y, x, min(tile, h - y), min(tile, w - x))
        for y in range(0, h, tile)
        for x in range(0, w, tile)
    ]

    def render(box: Box) -> RenderedTile:
        return render_box(
            read_sharp, box, n_planes, seed=spec.seed, params=spec.params, drift=spec.drift
        )

    t0 = time.perf_counter()
    stored = 0

    def store_oldest(pending: deque[tuple[Box, Future[RenderedTile]]]) -> None:
        nonlocal stored
        box, fut = pending.popleft()
        _store(fut.result(), box, levels[0], gt, fi, dp)
        stored += 1
        if stored % max(1, len(boxes) // 10) == 0:
            log.info("rendered %d/%d tiles (%.1f s)", stored, len(boxes), time.perf_counter() - t0)

    # Threads render tiles concurrently (scipy's filters and numpy release the GIL); the main
    # thread writes them in order. At most 2 * workers tiles are in flight: bounded memory.
    with ThreadPoolExecutor(spec.workers) as pool:
        pending: deque[tuple[Box, Future[RenderedTile]]] = deque()
        for box in boxes:
            pending.append((box, pool.submit(render, box)))
            if len(pending) >= 2 * spec.workers:
                store_oldest(pending)
        while pending:
            store_oldest(pending)
    log.info("rendered %d tiles in %.1f s", len(boxes), time.perf_counter() - t0)

    for lvl in range(1, len(shapes)):
        prev, cur = levels[lvl - 1], levels[lvl]
        lh, lw = shapes[lvl]
        for z in range(n_planes):
            for y in range(0, lh, chunk):
                for x in range(0, lw, chunk):
                    y1, x1 = min(y + chunk, lh), min(x + chunk, lw)
                    block = np.asarray(prev[:, z, 2 * y : 2 * y1, 2 * x : 2 * x1])
                    cur[:, z, y:y1, x:x1] = downsample2(block)[:, : y1 - y, : x1 - x]
    log.info("zarr pyramid: %d levels", len(shapes))

    # Strips of whole zarr chunks and whole TIFF tiles, so neither is decoded twice.
    strip = math.lcm(chunk, TIFF_TILE) if math.lcm(chunk, TIFF_TILE) <= 2048 else TIFF_TILE
    comp = _tiff_compression(spec.compression, spec.jpeg_quality)
    lossless = _tiff_compression("deflate", spec.jpeg_quality)
    files: list[str] = []

    _write_generic_tiff(
        root / "ground_truth.tif",
        [lambda a, b: np.asarray(gt[a:b])],
        shapes[:1],
        mpp,
        strip,
        lossless,
        3,
        np.uint8,
        "ground truth: sharp source",
    )
    _write_generic_tiff(
        root / "focus_index.tif",
        [lambda a, b: np.asarray(fi[a:b])],
        shapes[:1],
        mpp,
        strip,
        lossless,
        1,
        np.uint8,
        "ground truth: argmin_k |depth - k|",
    )
    _write_generic_tiff(
        root / "depth.tif",
        [lambda a, b: np.asarray(dp[a:b])],
        shapes[:1],
        mpp,
        strip,
        {**lossless, "predictor": True},
        1,
        np.float32,
        "ground truth: depth in plane units",
    )
    files += ["ground_truth.tif", "focus_index.tif", "depth.tif"]

    if "ome-tiff" in spec.forms:
        _write_ome_tiff(
            root / "stack.ome.tif", levels, shapes, n_planes, mpp, spec.z_step_um, strip, comp
        )
        files.append("stack.ome.tif")
        log.info("wrote stack.ome.tif")
    if "planes" in spec.forms:
        (root / "planes").mkdir()
        for k in range(n_planes):
            readers = [
                (lambda a, b, arr=arr, k=k: np.moveaxis(np.asarray(arr[:, k, a:b, :]), 0, -1))
                for arr in levels
            ]
            name = f"planes/plane_z{k}.tif"
            _write_generic_tiff(
                root / name,
                readers,
                shapes,
                mpp,
                strip,
                comp,
                3,
                np.uint8,
                f"synthetic focal plane z={k} of {n_planes}",
            )
            files.append(name)
        log.info("wrote %d plane TIFFs", n_planes)

    shutil.rmtree(root / _TRUTH_NAME)
    if "ome-zarr" in spec.forms:
        files.insert(0, _ZARR_NAME)
    else:
        shutil.rmtree(root / _ZARR_NAME)
    return files
