"""Shared pieces of every reader: the stack base class, pixel conversion, units.

Each reader turns its storage into level-0 RGB uint8 regions; everything that is the same across
forms (bounds checks, white padding outside the slide, thumbnail sizing, alpha compositing, unit
conversion) lives here so that the readers only implement "read this box, known to lie inside".
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from wsi_fusion._types import Box, RGBRegion
from wsi_fusion.errors import UnreadableSlide, UnsupportedInput, WsiFusionError
from wsi_fusion.io.storage_errors import out_of_memory, storage_error

logger = logging.getLogger(__name__)

#: Value of pixels outside the slide (and of fully transparent pixels): white glass.
WHITE = 255

# Length units as OME (XML and NGFF), DICOM and TIFF spell them, in micrometres.
_UNIT_UM: dict[str, float] = {
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # Greek mu
    "um": 1.0,
    "\\u00B5m": 1.0,  # ImageJ writes the escape literally
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "nm": 1e-3,
    "picometer": 1e-6,
    "pm": 1e-6,
    "angstrom": 1e-4,
    "å": 1e-4,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "metre": 1e6,
    "m": 1e6,
}


def to_um(value: float | None, unit: str | None, *, default_unit: str = "µm") -> float | None:
    """Convert a length to micrometres; ``None`` when the value or the unit is unknown."""
    if value is None:
        return None
    key = (unit or default_unit).strip().lower()
    factor = _UNIT_UM.get(key)
    if factor is None:
        logger.warning("unknown length unit %r; treating the value %r as unknown", unit, value)
        return None
    result = float(value) * factor
    return result if math.isfinite(result) else None


def positive_or_none(value: float | None) -> float | None:
    """A pixel size, or ``None`` when it is missing, zero, negative or not finite."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def mean_mpp(mpp_x: float | None, mpp_y: float | None, source: str) -> float | None:
    """One pixel size from x and y: their mean (with a warning when they differ by over 1 %),
    or whichever is known."""
    if mpp_x is None or mpp_y is None:
        return mpp_x or mpp_y
    if not math.isclose(mpp_x, mpp_y, rel_tol=0.01):
        logger.warning(
            "%s: anisotropic pixels (%g x %g um); using their mean", source, mpp_x, mpp_y
        )
    return (mpp_x + mpp_y) / 2


def check_pixel_type(dtype: npt.DTypeLike, channels: int, source: str) -> None:
    """Refuse pixel data that is not 8-bit greyscale, grey+alpha, RGB or RGBA.

    Raises
    ------
    UnsupportedInput
        For any dtype other than uint8, or a channel count other than 1-4.
    """
    dt = np.dtype(dtype)
    if dt != np.uint8:
        raise UnsupportedInput(
            f"{source}: pixel type {dt} ({dt.itemsize * 8}-bit "
            f"{'signed ' if dt.kind == 'i' else ''}{'float' if dt.kind == 'f' else 'integer'}) "
            "is not supported; wsi_fusion reads 8-bit unsigned (uint8) greyscale, RGB or RGBA. "
            "Convert the planes to 8-bit first (e.g. `bfconvert` or Fiji: Image > Type > 8-bit / "
            "RGB Color, with the display range you want)."
        )
    if channels not in (1, 2, 3, 4):
        raise UnsupportedInput(
            f"{source}: {channels} channels per pixel are not supported; wsi_fusion fuses "
            "brightfield greyscale (1), grey+alpha (2), RGB (3) or RGBA (4) images. "
            "Export the channels as an RGB image first."
        )


def _composite_over_white(colour: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8]) -> Any:
    """``colour * a + white * (1 - a)`` in exact integer arithmetic (fits in uint16)."""
    a = alpha.astype(np.uint16)
    out = colour.astype(np.uint16) * a + WHITE * (255 - a)
    return ((out + 127) // 255).astype(np.uint8)


def to_rgb(pixels: npt.NDArray[Any]) -> RGBRegion:
    """Convert (h, w) or (h, w, c) uint8 pixels (c in 1-4) to a new (h, w, 3) uint8 array.

    Greyscale is replicated to the three channels, alpha is composited over white. The result
    never shares memory with ``pixels`` (callers may write into it; readers may cache their
    source). The pixel type is validated when a reader opens its input, so it is trusted here.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels == 3:
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2).astype(np.uint8, copy=False)
    if channels in (2, 4):
        colour, alpha = pixels[:, :, : channels - 1], pixels[:, :, channels - 1 :]
        # Slides are opaque almost everywhere: skip the integer blend when nothing is see-through.
        if alpha.size and alpha.min() == 255:
            out = np.array(colour, dtype=np.uint8, order="C", copy=True)
        else:
            out = _composite_over_white(colour, alpha)
        return out if channels == 4 else np.repeat(out, 3, axis=2)
    raise ValueError(f"cannot convert {channels} channels to RGB")  # guarded at open time


def pil_to_rgb(image: Image.Image) -> RGBRegion:
    """Convert a Pillow image (L, LA, RGB, RGBA; OpenSlide gives RGBA) to new (h, w, 3) uint8.

    Pillow's C compositing is several times faster than the numpy blend on full tiles and gives
    the same rounding.
    """
    if image.mode in ("RGBA", "LA"):
        lowest, _ = image.getchannel("A").getextrema()  # one band: (min, max)
        if int(lowest) < 255:  # type: ignore[arg-type]  # transparent = no slide data there: white glass
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (WHITE, WHITE, WHITE, 255))
            image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def white(h: int, w: int) -> RGBRegion:
    """An (h, w, 3) white region."""
    return np.full((h, w, 3), WHITE, dtype=np.uint8)


def thumbnail_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(h, w) of a thumbnail of a ``shape`` plane whose longer side is at most ``max_side``.

    Never upsamples: a plane smaller than ``max_side`` keeps its size.
    """
    h, w = shape
    scale = min(1.0, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_rgb(rgb: RGBRegion, size_hw: tuple[int, int]) -> RGBRegion:
    """Resize an RGB region to ``size_hw`` with an area (box) filter; no-op when equal."""
    if rgb.shape[:2] == size_hw:
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    # BOX averages every source pixel: right for downsampling, no ringing on slide edges.
    resized = image.resize((size_hw[1], size_hw[0]), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.uint8).copy()


def pick_level(level_shapes: Sequence[tuple[int, int]], target_hw: tuple[int, int]) -> int:
    """Index of the smallest pyramid level that is still at least ``target_hw`` in size."""
    best = 0
    for index, (h, w) in enumerate(level_shapes):
        if h >= target_hw[0] and w >= target_hw[1]:
            if h * w <= level_shapes[best][0] * level_shapes[best][1]:
                best = index
    return best


def thumbnail_stride(shape: tuple[int, int], target_hw: tuple[int, int]) -> int:
    """Sub-sampling step that keeps at least twice ``target_hw`` before the area resize.

    Reading every pixel of a big single-level plane only to average it away would hold the whole
    plane in memory; a stride bounds memory while the 2x margin keeps aliasing low.
    """
    return max(1, min(shape[0] // (2 * target_hw[0]), shape[1] // (2 * target_hw[1])))


class BaseStack(ABC):
    """Common behaviour of every :class:`~wsi_fusion._types.PlaneStack` implementation.

    A stack is used from the one thread that opened it (the pipeline keeps one open stack per
    worker thread), so no locking happens here; never share one instance between threads.

    Subclasses implement :meth:`_read_inside` (a box known to lie fully inside the slide) and
    :meth:`_thumbnail`; :meth:`read` handles bounds, white padding and argument checks.
    """

    #: Short name of the input form, shown by ``wsi-fusion info``.
    form: str = "unknown"

    def __init__(
        self,
        *,
        sources: Sequence[str],
        z_positions_um: Sequence[float | None],
        shape: tuple[int, int],
        mpp: float | None,
        reader: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.sources: tuple[str, ...] = tuple(sources)
        self.z_positions_um: tuple[float | None, ...] = tuple(z_positions_um)
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.mpp: float | None = mpp
        #: Library that decodes the pixels (``openslide``, ``tifffile``, ...).
        self.reader = reader
        #: Form-specific facts for ``describe_stack`` (axes, levels, ...); JSON-serialisable.
        self.details: dict[str, Any] = dict(details or {})
        self._closed = False

    @property
    def n_planes(self) -> int:
        """Number of focal planes."""
        return len(self.z_positions_um)

    def _check_plane(self, plane: int) -> None:
        if not 0 <= plane < self.n_planes:
            raise IndexError(f"plane {plane} out of range: this stack has {self.n_planes} planes")
        if self._closed:
            raise ValueError(f"{self.sources[0]}: read from a closed stack")

    def read(self, plane: int, box: Box) -> RGBRegion:
        """Read ``box`` (level-0 pixels) of focal plane ``plane``.

        Parameters
        ----------
        plane
            Focal-plane index, ``0 <= plane < n_planes``.
        box
            Region in level-0 pixels; it may extend past the slide or lie wholly outside it.

        Returns
        -------
        numpy.ndarray
            (h, w, 3) uint8 RGB; pixels outside the slide are white (255).

        Raises
        ------
        UnreadableSlide
            When the file cannot be decoded in this region (corrupt or truncated data).
        """
        self._check_plane(plane)
        if box.h < 0 or box.w < 0:
            raise ValueError(f"box {box} has a negative size")
        inside = box.intersect(Box(0, 0, *self.shape))
        if inside is None:
            return white(box.h, box.w)
        region = self._decode(plane, inside)
        if inside == box:
            return region
        out = white(box.h, box.w)
        out[inside.slices(origin=box)] = region
        return out

    def thumbnail(self, plane: int, max_side: int) -> RGBRegion:
        """A downsampled view of ``plane``.

        Parameters
        ----------
        plane
            Focal-plane index.
        max_side
            Upper bound of the thumbnail's longer side; a smaller plane keeps its size.

        Returns
        -------
        numpy.ndarray
            (h', w', 3) uint8 with the plane's aspect ratio, of size
            ``thumbnail_size(shape, max_side)``.
        """
        self._check_plane(plane)
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        target = thumbnail_size(self.shape, max_side)
        try:
            rgb = self._thumbnail(plane, target)
        except WsiFusionError:
            raise
        except MemoryError as err:
            raise out_of_memory(f"{self._source_of(plane)}: thumbnail of plane {plane}") from err
        except OSError as err:
            if err.errno is None:  # a decoder's complaint about the data (Pillow, tifffile)
                raise _undecodable(
                    self._source_of(plane), f"a thumbnail of plane {plane}", err
                ) from err
            raise storage_error(err, self._source_of(plane)) from err  # the disk, not the file
        except Exception as err:
            raise _undecodable(
                self._source_of(plane), f"a thumbnail of plane {plane}", err
            ) from err
        return resize_rgb(rgb, target)

    def _decode(self, plane: int, box: Box) -> RGBRegion:
        """Call :meth:`_read_inside`, turning library decode errors into ``UnreadableSlide``."""
        try:
            return self._read_inside(plane, box)
        except WsiFusionError:
            raise
        except MemoryError as err:  # not a broken file: say so, never "corrupt"
            raise out_of_memory(f"{self._source_of(plane)}: plane {plane} at {box}") from err
        except OSError as err:
            if err.errno is None:  # a decoder's complaint about the data (Pillow, tifffile)
                raise _undecodable(self._source_of(plane), f"plane {plane} at {box}", err) from err
            raise storage_error(err, self._source_of(plane)) from err  # the disk, not the file
        except Exception as err:  # any decoder failure here means bad data in the file
            raise _undecodable(self._source_of(plane), f"plane {plane} at {box}", err) from err

    def _source_of(self, plane: int) -> str:
        """The file holding ``plane`` (for messages)."""
        return self.sources[plane] if len(self.sources) == self.n_planes else self.sources[0]

    @abstractmethod
    def _read_inside(self, plane: int, box: Box) -> RGBRegion:
        """Read a box lying fully inside the slide as (h, w, 3) uint8."""

    @abstractmethod
    def _thumbnail(self, plane: int, target_hw: tuple[int, int]) -> RGBRegion:
        """An RGB view of the plane at least about ``target_hw`` (resized afterwards)."""

    def probe(self) -> None:
        """Decode a pixel at two opposite corners of every plane to catch broken files early.

        Tiles are usually written in order, so the last corner catches truncated files; this
        costs two tiles per plane.
        """
        h, w = self.shape
        for plane in range(self.n_planes):
            self._decode(plane, Box(0, 0, 1, 1))
            self._decode(plane, Box(h - 1, w - 1, 1, 1))

    def close(self) -> None:
        """Release file handles; idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    @abstractmethod
    def _close(self) -> None:
        """Release the reader's resources (called once)."""

    def __enter__(self) -> BaseStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sources={list(self.sources)!r}, planes={self.n_planes}, "
            f"shape={self.shape}, mpp={self.mpp})"
        )


def _undecodable(source: str, what: str, err: BaseException) -> UnreadableSlide:
    """The error for data a decoder refused."""
    return UnreadableSlide(
        f"{source}: cannot decode {what} ({err}); the file is corrupt or truncated: copy or "
        "export it again."
    )


def axes_permutation(kept: Sequence[str], y: str, x: str, channels: str) -> tuple[int, ...]:
    """Transpose that turns a slice with axes ``kept`` (file order) into (y, x[, channel])."""
    return tuple(kept.index(a) for a in (y, x)) + tuple(
        i for i, a in enumerate(kept) if a in channels
    )


class ArrayLevelsStack(BaseStack):
    """A stack whose pyramid levels are arrays indexed by slicing (zarr, tifffile's aszarr).

    Subclasses set ``_level_shapes`` (level (h, w), level 0 first) and ``_perm`` (see
    :func:`axes_permutation`) and implement :meth:`_level` and :meth:`_index`.
    """

    _level_shapes: list[tuple[int, int]]
    _perm: tuple[int, ...]

    @abstractmethod
    def _level(self, index: int) -> Any:
        """The array of pyramid level ``index``."""

    @abstractmethod
    def _index(self, plane: int, ys: slice, xs: slice) -> tuple[Any, ...]:
        """Index into a level array selecting ``plane`` and the rows/columns ``ys``/``xs``."""

    def _region_level0(self) -> Any:
        """The level-0 array that region reads use (thumbnails use :meth:`_level`)."""
        return self._level(0)

    def _pixels(self, array: Any, plane: int, ys: slice, xs: slice) -> RGBRegion:
        raw = np.asarray(array[self._index(plane, ys, xs)])
        return to_rgb(np.transpose(raw, self._perm))

    def _read_inside(self, plane: int, box: Box) -> RGBRegion:
        ys, xs = box.slices()
        return self._pixels(self._region_level0(), plane, ys, xs)

    def _thumbnail(self, plane: int, target_hw: tuple[int, int]) -> RGBRegion:
        level = pick_level(self._level_shapes, target_hw)
        step = thumbnail_stride(self._level_shapes[level], target_hw)
        array = self._level(level)
        return self._pixels(array, plane, slice(None, None, step), slice(None, None, step))
