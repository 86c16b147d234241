"""One file per focal plane ("layer files"): slides through OpenSlide or tiffslide, rasters through
Pillow (8-bit PNG pixels through imagecodecs, after Pillow has read the header).

OpenSlide is tried first (it knows the most vendor formats), tiffslide next (TIFF flavours that
OpenSlide refuses, e.g. stripped or exotic-compression TIFF), Pillow last. Plain rasters
(JPEG/PNG/BMP, and plain TIFF that neither slide library opens) are decoded once into memory: they
are camera images of at most a few tens of megapixels, and random access into a JPEG costs a full
decode each time.

Whether a file holds several focal planes is decided *before* this module sees it
(:mod:`wsi_fusion.io.readers._detect`): OpenSlide silently returns plane 0 of a z-stack.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import imagecodecs
import numpy as np
import numpy.typing as npt
from PIL import Image

from wsi_fusion._types import Box, RGBRegion
from wsi_fusion.errors import PlaneMismatch, UnreadableSlide, UnsupportedInput, WsiFusionError
from wsi_fusion.io.readers._base import (
    BaseStack,
    check_pixel_type,
    mean_mpp,
    pick_level,
    pil_to_rgb,
    positive_or_none,
    resize_rgb,
    to_rgb,
)
from wsi_fusion.io.readers._thumbnail import direct_read_is_bounded, tiled_thumbnail

logger = logging.getLogger(__name__)

#: Extensions decoded with Pillow directly (no slide library knows them).
RASTER_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
#: Relative tolerance when comparing the pixel sizes of two planes.
MPP_RTOL = 1e-3

# Pillow modes converted losslessly to 8-bit RGB/RGBA/L before use; anything else (I;16, I, F)
# is more than 8 bits per channel and refused.
_PIL_CONVERT = {
    "1": "L",
    "P": "RGBA",
    "PA": "RGBA",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
}
_PIL_OK = {"L", "LA", "RGB", "RGBA"}
_PIL_DTYPES = {
    "I;16": "uint16",
    "I;16B": "uint16",
    "I;16L": "uint16",
    "I;16N": "uint16",
    "I": "int32",
    "F": "float32",
}


class _Plane(Protocol):
    """One single-plane file."""

    path: str
    reader: str
    shape: tuple[int, int]
    mpp: float | None

    def read(self, box: Box) -> RGBRegion: ...

    def thumbnail(self, target_hw: tuple[int, int]) -> RGBRegion: ...

    def close(self) -> None: ...


def _mpp_from(props: Any, key_x: str, key_y: str, path: str) -> float | None:
    """Pixel size from slide properties; the mean of x and y, with a warning when they differ."""
    try:
        mx = positive_or_none(float(props[key_x]))
    except (KeyError, TypeError, ValueError):
        return None
    try:
        my = positive_or_none(float(props[key_y]))
    except (KeyError, TypeError, ValueError):
        my = mx
    return mean_mpp(mx, my, path)


class _SlidePlane:
    """A slide opened through the OpenSlide API (openslide-python or tiffslide): size, mpp,
    thumbnail and close are the same for both."""

    def __init__(self, path: str, slide: Any, mpp_x_key: str, mpp_y_key: str) -> None:
        self.path = path
        self._slide = slide
        w, h = self._slide.dimensions
        self.shape = (int(h), int(w))
        self.mpp = _mpp_from(self._slide.properties, mpp_x_key, mpp_y_key, path)

    def thumbnail(self, target_hw: tuple[int, int]) -> RGBRegion:
        """From the smallest level at least ``target_hw`` in size: decoded at once when it is
        small, else read tile by tile (a slide without a pyramid would otherwise decode its
        full resolution in one piece)."""
        shapes = [(int(h), int(w)) for w, h in self._slide.level_dimensions]
        level = pick_level(shapes, target_hw)
        if direct_read_is_bounded(shapes[level], target_hw):
            return pil_to_rgb(self._slide.get_thumbnail((target_hw[1], target_hw[0])))
        scale = float(self._slide.level_downsamples[level])

        def read(box: Box) -> RGBRegion:
            # OpenSlide's API: location in level-0 pixels, size in the level's pixels.
            origin = (round(box.x * scale), round(box.y * scale))
            return pil_to_rgb(self._slide.read_region(origin, level, (box.w, box.h)))

        return tiled_thumbnail(read, shapes[level], target_hw)

    def close(self) -> None:
        self._slide.close()


class _OpenSlidePlane(_SlidePlane):
    """A slide file read with openslide-python."""

    reader = "openslide"

    def __init__(self, path: str) -> None:
        import openslide

        super().__init__(
            path,
            openslide.OpenSlide(path),
            openslide.PROPERTY_NAME_MPP_X,
            openslide.PROPERTY_NAME_MPP_Y,
        )

    def read(self, box: Box) -> RGBRegion:
        # RGBA: alpha is 0 where the slide has no data; compositing makes that white glass.
        region = self._slide.read_region((box.x, box.y), 0, (box.w, box.h))
        return pil_to_rgb(region)


class _TiffSlidePlane(_SlidePlane):
    """A TIFF-based slide read with tiffslide (OpenSlide's fallback)."""

    reader = "tiffslide"

    def __init__(self, path: str) -> None:
        import tiffslide

        super().__init__(
            path,
            tiffslide.TiffSlide(path),
            tiffslide.PROPERTY_NAME_MPP_X,
            tiffslide.PROPERTY_NAME_MPP_Y,
        )
        series = self._slide.ts_tifffile.series[0]
        sizes = zip(series.shape, series.axes, strict=True)
        samples = int(np.prod([n for n, a in sizes if a in "SC"]))
        check_pixel_type(series.dtype, samples, path)

    def read(self, box: Box) -> RGBRegion:
        region = self._slide.read_region((box.x, box.y), 0, (box.w, box.h), as_array=True)
        return to_rgb(np.asarray(region))


class _RasterPlane:
    """A plain raster image (JPEG, PNG, BMP, plain TIFF) decoded once into memory.

    Decoded pixels are shared (read-only) by every open plane of the same file in the process:
    the pipeline opens the stack once for planning and once per worker thread, and each open
    used to decode every plane again (~0.5 s and 60 MB per 20-Mpx JPEG, per thread).
    """

    reader = "pillow"

    def __init__(self, path: str) -> None:
        self.path = path
        self._pixels = _decoded(path)
        self.shape = (int(self._pixels.shape[0]), int(self._pixels.shape[1]))
        # Camera rasters carry a nominal screen DPI (72/96), not the microscope's pixel size.
        self.mpp = None

    def read(self, box: Box) -> RGBRegion:
        return to_rgb(self._pixels[box.y : box.y1, box.x : box.x1])

    def thumbnail(self, target_hw: tuple[int, int]) -> RGBRegion:
        pixels = self._pixels
        # RGB needs no conversion before the resize (to_rgb would copy the whole plane).
        rgb = pixels if pixels.shape[2] == 3 else to_rgb(pixels)
        thumb = resize_rgb(rgb, target_hw)
        return thumb if thumb is not pixels else to_rgb(pixels)

    def close(self) -> None:
        self._pixels = np.zeros((0, 0, 3), dtype=np.uint8)


#: Decoded rasters in use by open planes (freed with the last of them) ...
_LIVE: weakref.WeakValueDictionary[tuple[str, int, int], npt.NDArray[np.uint8]] = (
    weakref.WeakValueDictionary()
)
#: ... and the most recently decoded ones, kept up to this many bytes so that a stack closed and
#: reopened (planning, then each worker thread) is not decoded again.
_RECENT_BYTES = 1 << 30
_RECENT: OrderedDict[tuple[str, int, int], npt.NDArray[np.uint8]] = OrderedDict()
#: Guards the two caches above and ``_DECODING``; held only for lookups, never while decoding.
_CACHE_LOCK = threading.Lock()
#: One lock per file being decoded: threads opening the same file wait for one decode, while
#: different files decode in parallel (the codecs release the GIL).
_DECODING: dict[tuple[str, int, int], threading.Lock] = {}


def _decoded(path: str) -> npt.NDArray[np.uint8]:
    """The (h, w, c) uint8 pixels of raster ``path``, read-only, decoded once per process."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        file_lock = _DECODING.setdefault(key, threading.Lock())
    with file_lock:
        with _CACHE_LOCK:
            pixels = _cached(key)
        if pixels is None:
            pixels = _decode(path)
            pixels.flags.writeable = False
        with _CACHE_LOCK:
            _LIVE[key] = pixels
            _RECENT[key] = pixels
            _RECENT.move_to_end(key)
            while len(_RECENT) > 1 and sum(a.nbytes for a in _RECENT.values()) > _RECENT_BYTES:
                _RECENT.popitem(last=False)
            if _DECODING.get(key) is file_lock:
                del _DECODING[key]
        return pixels


def _cached(key: tuple[str, int, int]) -> npt.NDArray[np.uint8] | None:
    pixels = _LIVE.get(key)
    return pixels if pixels is not None else _RECENT.get(key)


def _decode(path: str) -> npt.NDArray[np.uint8]:
    """Decode raster ``path`` to (h, w, c) uint8, refusing what this tool cannot fuse."""
    with Image.open(path) as image:
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            # A multi-page file reaching Pillow was not understood by tifffile; reading only
            # its first page could silently drop focal planes.
            raise UnsupportedInput(
                f"{path}: holds {frames} images, but its layout is not understood; save it "
                "as an OME-TIFF z-stack (e.g. with Fiji or bfconvert) or as one file per plane."
            )
        # Opening has read the header only (and refused decompression bombs); 8-bit PNGs are
        # then decoded by imagecodecs, straight into one array: 1.6x less CPU than Pillow's
        # decode + copy on an 8192² RGB plane, and without the second full-size buffer.
        pixels = _png_pixels(path, image) if image.format == "PNG" else None
        if pixels is None:
            pixels = _pil_pixels(path, image)
    pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
    check_pixel_type(pixels.dtype, pixels.shape[2], path)
    return pixels


def _png_pixels(path: str, image: Image.Image) -> npt.NDArray[np.uint8] | None:
    """``path`` decoded by imagecodecs when it is a plain 8-bit L/LA/RGB/RGBA PNG, else None
    (Pillow then decodes it, with its conversions and its error messages)."""
    if image.mode not in _PIL_OK:
        return None
    try:
        pixels = imagecodecs.png_decode(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - a damaged file gets Pillow's (tested) diagnosis instead
        return None
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.dtype != np.uint8 or pixels.shape[:2] != image.size[::-1]:
        return None
    return pixels if channels == len(image.mode) else None


def _pil_pixels(path: str, image: Image.Image) -> npt.NDArray[Any]:
    image.load()
    mode = image.mode
    converted: Image.Image = image
    if mode in _PIL_CONVERT:
        converted = image.convert(_PIL_CONVERT[mode])
    elif mode not in _PIL_OK:
        dtype = _PIL_DTYPES.get(mode)
        if dtype is not None:
            check_pixel_type(dtype, 1, f"{path} (Pillow mode {mode})")
        raise UnsupportedInput(
            f"{path}: image mode {mode!r} is not supported; convert the image to 8-bit "
            "RGB (e.g. save it as an RGB JPEG or PNG)."
        )
    return np.asarray(converted)


def open_plane_file(path: str) -> _Plane:
    """Open one single-plane file with the first library that can.

    Raises
    ------
    UnreadableSlide
        When no library can open it; the message lists each library's complaint.
    UnsupportedInput
        When it opens but holds pixels this tool refuses (16-bit, many channels).
    """
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        openers: Sequence[type[Any]] = (_RasterPlane,)
    else:
        openers = (_OpenSlidePlane, _TiffSlidePlane, _RasterPlane)
    complaints: list[str] = []
    last: Exception | None = None
    for opener in openers:
        try:
            plane: _Plane = opener(path)
        except WsiFusionError:
            raise
        except Image.DecompressionBombError as err:
            raise UnsupportedInput(
                f"{path}: plain raster image is too large to load into memory ({err}); convert "
                "it to a tiled pyramidal TIFF (e.g. `vips tiffsave --tile --pyramid`)."
            ) from err
        except Exception as err:  # each library signals "not mine" differently
            complaints.append(f"{opener.reader}: {err}")
            last = err
            continue
        logger.debug("%s opened with %s", path, plane.reader)
        return plane
    raise UnreadableSlide(
        f"{path}: cannot open this file ({'; '.join(complaints)}). It is corrupt, truncated or "
        "not an image; check the file (e.g. re-copy or re-export it) or convert it to a tiled TIFF."
    ) from last


class LayerStack(BaseStack):
    """A stack made of one single-plane file per focal plane, in the order given."""

    form = "layers"

    def __init__(self, planes: Sequence[_Plane]) -> None:
        readers = sorted({p.reader for p in planes})
        super().__init__(
            sources=[p.path for p in planes],
            z_positions_um=[None] * len(planes),
            shape=planes[0].shape,
            mpp=planes[0].mpp,
            reader="+".join(readers),
            details={"plane_readers": [p.reader for p in planes]},
        )
        self._planes = list(planes)

    def _read_inside(self, plane: int, box: Box) -> RGBRegion:
        return self._planes[plane].read(box)

    def _thumbnail(self, plane: int, target_hw: tuple[int, int]) -> RGBRegion:
        return self._planes[plane].thumbnail(target_hw)

    def _close(self) -> None:
        for p in self._planes:
            p.close()


def _check_same_geometry(planes: Sequence[_Plane]) -> None:
    """Raise ``PlaneMismatch`` naming the first plane whose size or pixel size differs."""
    first = planes[0]
    for other in planes[1:]:
        if other.shape != first.shape:
            raise PlaneMismatch(
                f"focal planes differ in size: {first.path} is {first.shape[1]}x{first.shape[0]} "
                f"px (w x h) but {other.path} is {other.shape[1]}x{other.shape[0]} px. Every "
                "plane must be the same field of view at the same size; crop or re-export them."
            )
        if (first.mpp is None) != (other.mpp is None):
            # Refused rather than warned about: the output's pixel size comes from plane 0, and
            # planes that disagree on whether they know it are rarely exports of one scan.
            known, unknown = (first, other) if first.mpp is not None else (other, first)
            raise PlaneMismatch(
                f"focal planes disagree on their pixel size: {known.path} records "
                f"{known.mpp:g} um/px but {unknown.path} records none. Give planes exported "
                "the same way from one scan (re-export the plane with its pixel size)."
            )
        if (
            first.mpp is not None
            and other.mpp is not None
            and not math.isclose(first.mpp, other.mpp, rel_tol=MPP_RTOL)
        ):
            raise PlaneMismatch(
                f"focal planes differ in pixel size: {first.path} has {first.mpp:g} um/px but "
                f"{other.path} has {other.mpp:g} um/px. Give planes scanned at the same "
                "magnification."
            )


def open_layers(paths: Sequence[str | os.PathLike[str]]) -> LayerStack:
    """Open one single-plane file per focal plane.

    Parameters
    ----------
    paths
        Files in focal-plane order; each must exist and hold a single plane (checked by the
        caller, :func:`wsi_fusion.io.readers.open_stack`).

    Returns
    -------
    LayerStack
        Probed stack (a pixel at two corners of every plane has been decoded).

    Raises
    ------
    UnreadableSlide, UnsupportedInput, PlaneMismatch
    """
    # Planes open in parallel: raster planes are decoded whole on opening, and their codecs
    # release the GIL (5 PNG planes of 67 Mpx: ~8 s one after the other).
    names = [os.fspath(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
        futures = [pool.submit(open_plane_file, name) for name in names]
    planes = [f.result() for f in futures if f.exception() is None]
    try:
        for f in futures:  # the first failure in plane order is the one reported
            error = f.exception()
            if error is not None:
                raise error
        _check_same_geometry(planes)
        stack = LayerStack(planes)
        stack.probe()
    except BaseException:
        for p in planes:
            p.close()
        raise
    return stack
