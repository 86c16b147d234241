"""TIFF files that hold several focal planes: OME-TIFF with a Z axis (and ImageJ hyperstacks or
plain multi-page stacks) read through tifffile.

Pixels are read lazily through ``series.aszarr(level=...)``: a region read decodes only the tiles
(or strips) it touches, never a whole plane. Pyramid levels (OME SubIFDs) serve thumbnails.

:func:`inspect_tiff` is also how the dispatcher learns how many planes a TIFF holds *before*
anything reads it through OpenSlide, which would silently return plane 0 of a z-stack.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile
import zarr

from wsi_fusion.errors import UnreadableSlide, UnsupportedInput, WsiFusionError
from wsi_fusion.io.readers._base import (
    ArrayLevelsStack,
    axes_permutation,
    check_pixel_type,
    positive_or_none,
    to_um,
)
from wsi_fusion.io.readers._decoded_cache import DecodedTileCache

logger = logging.getLogger(__name__)

# Axis letters tifffile uses for the plane itself: rows, columns, samples, channels.
_PLANE_AXES = "YXSC"
# Axes of unknown meaning that a multi-page TIFF without metadata gets; read as focal planes.
_ANONYMOUS_AXES = "IQ"


@dataclass(frozen=True)
class TiffLayout:
    """How a tifffile series maps onto (plane, y, x, channel)."""

    path: str
    axes: str
    shape: tuple[int, ...]
    #: Position in ``axes`` of the focal-plane axis, ``None`` for a single plane.
    z_axis: int | None
    n_planes: int
    channels: int
    dtype: np.dtype[Any]
    is_ndpi: bool
    is_ome: bool

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]


def series_layout(
    series: tifffile.TiffPageSeries, path: str, *, is_ndpi: bool = False, is_ome: bool = False
) -> TiffLayout:
    """Work out which axis holds focal planes; refuse layouts this tool cannot fuse.

    Raises
    ------
    UnsupportedInput
        For a time axis longer than 1, several unknown stacking axes, or no Y/X axes.
    """
    axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
    if "Y" not in axes or "X" not in axes:
        raise UnsupportedInput(f"{path}: TIFF series with axes {axes!r} has no image plane (Y, X).")
    stacked = [
        (i, a, n)
        for i, (a, n) in enumerate(zip(axes, shape, strict=True))
        if a not in _PLANE_AXES and n > 1
    ]
    n_z = next((n for _, a, n in stacked if a == "Z"), 1)
    times = [n for _, a, n in stacked if a == "T"]
    if times:
        raise UnsupportedInput(
            f"{path}: {n_z} focal plane(s) (Z) and {times[0]} time points (T) found (axes "
            f"{axes}, shape {shape}); only a single time point can be fused. Export one time "
            "point first (e.g. `bfconvert -timepoint 0 IN OUT.ome.tiff`, or Fiji: Image > "
            "Duplicate with one frame)."
        )
    z_axis: int | None = next((i for i, a, _ in stacked if a == "Z"), None)
    others = [(i, a, n) for i, a, n in stacked if a != "Z"]
    if z_axis is None and len(others) == 1 and others[0][1] in _ANONYMOUS_AXES:
        z_axis = others[0][0]
        n_z = others[0][2]
        others = []
        logger.warning(
            "%s: no axis metadata; reading its %d images (axis %r) as focal planes in file order",
            path,
            n_z,
            axes[z_axis],
        )
    if others:
        described = ", ".join(f"{a}={n}" for _, a, n in others)
        raise UnsupportedInput(
            f"{path}: axes {axes} (shape {shape}) stack images along {described} besides the "
            "focal planes; only Z can be fused. Export a single z-stack (one series, axes ZYX "
            "with optional channels) first."
        )
    sizes = {a: n for a, n in zip(axes, shape, strict=True)}
    c, s = sizes.get("C", 1), sizes.get("S", 1)
    if c > 1 and s > 1:
        raise UnsupportedInput(
            f"{path}: {c} channels (C) of {s} samples (S) each; wsi_fusion reads one greyscale "
            "or RGB(A) image per plane. Export an RGB z-stack first."
        )
    return TiffLayout(
        path=path,
        axes=axes,
        shape=shape,
        z_axis=z_axis,
        n_planes=n_z,
        channels=max(c, s),
        dtype=np.dtype(series.dtype),
        is_ndpi=is_ndpi,
        is_ome=is_ome,
    )


def check_complete(tif: tifffile.TiffFile, path: str) -> None:
    """Refuse a TIFF whose first series points at image data past the end of the file.

    tifffile (and tiffslide) fill missing or unreadable tiles with zeros and only log it, so a
    truncated copy would read as black; the tile offsets in the IFDs tell without decoding.

    Raises
    ------
    UnreadableSlide
        When a page has no data offsets or its tiles end past the end of the file.
    """
    size = int(tif.filehandle.size)
    for level in tif.series[0].levels:
        for page in level.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size == 0 or offsets.size != counts.size:
                raise UnreadableSlide(
                    f"{path}: TIFF page {page.index} lists no image data (its tile/strip offsets "
                    "are missing); the file is truncated or corrupt: copy or export it again."
                )
            used = counts > 0  # offset 0 / count 0 marks a legitimately empty (sparse) tile
            end = int((offsets[used] + counts[used]).max()) if used.any() else 0
            if end > size:
                raise UnreadableSlide(
                    f"{path}: TIFF image data runs to byte {end} but the file has only {size} "
                    "bytes; the file is truncated: copy or export it again."
                )


def inspect_tiff(path: str) -> TiffLayout | None:
    """Layout of a TIFF's first series, or ``None`` when tifffile cannot parse the file.

    ``None`` lets the slide libraries try (and name the problem) instead of tifffile alone.

    Raises
    ------
    UnsupportedInput
        When the layout itself is refused (see :func:`series_layout`).
    """
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None
            layout = series_layout(tif.series[0], path, is_ndpi=tif.is_ndpi, is_ome=tif.is_ome)
            check_complete(tif, path)
            return layout
    except WsiFusionError:
        raise
    except Exception as err:  # malformed TIFF: let OpenSlide/tiffslide have a go and report
        logger.debug("tifffile cannot parse %s: %s", path, err)
        return None


# ---- metadata -------------------------------------------------------------------------------


def _ome_pixels(ome_xml: str, path: str) -> ET.Element | None:
    """The ``Pixels`` element of the first OME ``Image`` (plain XML parsing, nothing evaluated)."""
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError as err:
        logger.warning("%s: unreadable OME-XML (%s); z positions and mpp unknown", path, err)
        return None
    return root.find("{*}Image/{*}Pixels")


def _float_attr(element: ET.Element, name: str) -> float | None:
    value = element.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def ome_metadata(ome_xml: str, n_planes: int, path: str) -> tuple[float | None, list[float | None]]:
    """(mpp, z positions in µm) from OME-XML.

    Z positions come from ``Plane/@PositionZ`` (first plane of each ``TheZ``) when every focal
    plane has one, else from ``PhysicalSizeZ`` spacing starting at 0, else unknown.
    """
    pixels = _ome_pixels(ome_xml, path)
    if pixels is None:
        return None, [None] * n_planes
    mpp = positive_or_none(
        to_um(_float_attr(pixels, "PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
    )
    positions: dict[int, float | None] = {}
    for plane in pixels.findall("{*}Plane"):
        try:
            the_z = int(plane.get("TheZ", "0"))
        except ValueError:
            continue
        if the_z in positions or plane.get("TheT", "0") != "0":
            continue
        # OME's default PositionZUnit is the "reference frame"; files that omit it use µm.
        positions[the_z] = to_um(_float_attr(plane, "PositionZ"), plane.get("PositionZUnit"))
    if n_planes > 1 and all(positions.get(z) is not None for z in range(n_planes)):
        return mpp, [positions[z] for z in range(n_planes)]
    step = to_um(_float_attr(pixels, "PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit"))
    if step is not None:
        return mpp, [z * step for z in range(n_planes)]
    if n_planes == 1 and positions.get(0) is not None:
        return mpp, [positions[0]]
    return mpp, [None] * n_planes


def page_mpp(page: tifffile.TiffPage, unit_hint: str | None = None) -> float | None:
    """Pixel size from a page's XResolution/ResolutionUnit.

    ResolutionUnit NONE is only trusted with a unit hint (ImageJ writes pixels per ``unit``).
    """
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    try:
        num, den = tag.value
        per_unit = num / den
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if per_unit <= 0:
        return None
    unit = int(page.tags.valueof("ResolutionUnit", 2))  # TIFF default: inch
    if unit == 2:
        return positive_or_none(25400.0 / per_unit)
    if unit == 3:
        return positive_or_none(10000.0 / per_unit)
    if unit_hint:
        return positive_or_none(to_um(1.0 / per_unit, unit_hint))
    return None


# ---- reader ---------------------------------------------------------------------------------


class TiffZStack(ArrayLevelsStack):
    """Focal planes stored along one axis of a tifffile series, read lazily through zarr."""

    form = "ome-tiff"

    def __init__(
        self,
        tif: tifffile.TiffFile,
        layout: TiffLayout,
        *,
        z_positions_um: Sequence[float | None],
        mpp: float | None,
        plane_order: Sequence[int] | None = None,
        form: str | None = None,
    ) -> None:
        series = tif.series[0]
        super().__init__(
            sources=[layout.path],
            z_positions_um=z_positions_um,
            shape=layout.plane_shape,
            mpp=mpp,
            reader="tifffile",
            details={
                "axes": layout.axes,
                "array_shape": list(layout.shape),
                "levels": [list(level.shape) for level in series.levels],
            },
        )
        if form is not None:
            self.form = form  # e.g. "ndpi": same reader, different metadata source
        self._tif = tif
        self._layout = layout
        self._series = series
        #: Index along the z axis of each plane (NDPI planes are sorted by depth).
        self._plane_order = (
            list(plane_order) if plane_order is not None else list(range(layout.n_planes))
        )
        self._levels: dict[int, Any] = {}
        self._cached_level0: Any = None
        y, x = layout.axes.index("Y"), layout.axes.index("X")
        self._level_shapes = [(int(lv.shape[y]), int(lv.shape[x])) for lv in series.levels]
        kept = [a for a in layout.axes if a in _PLANE_AXES]
        # Sliced axes keep file order; this permutation makes them (Y, X[, channel]).
        self._perm = axes_permutation(kept, "Y", "X", "SC")

    def _level(self, index: int) -> Any:
        """The zarr array of pyramid level ``index`` (opened once)."""
        if index not in self._levels:
            self._levels[index] = zarr.open(self._series.aszarr(level=index), mode="r")
        return self._levels[index]

    def _region_level0(self) -> Any:
        """Level 0 through a :class:`DecodedTileCache` sized for this stack's planes (opened
        once; thumbnails keep the uncached array, which a strided whole-plane read would fill)."""
        if self._cached_level0 is None:
            cache = DecodedTileCache(self._series.aszarr(level=0))
            level = zarr.open_array(cache, mode="r")
            y, x = self._layout.axes.index("Y"), self._layout.axes.index("X")
            tile_bytes = math.prod(level.chunks) * level.dtype.itemsize
            cache.size_for((level.chunks[y], level.chunks[x]), tile_bytes, self.n_planes)
            self._cached_level0 = level
        return self._cached_level0

    def _index(self, plane: int, ys: slice, xs: slice) -> tuple[Any, ...]:
        index: list[Any] = []
        for i, axis in enumerate(self._layout.axes):
            if i == self._layout.z_axis:
                index.append(self._plane_order[plane])
            elif axis == "Y":
                index.append(ys)
            elif axis == "X":
                index.append(xs)
            elif axis in "SC":
                index.append(slice(None))
            else:  # a length-1 axis (T=1 etc.)
                index.append(0)
        return tuple(index)

    def _close(self) -> None:
        self._levels.clear()
        self._tif.close()


def open_tiff_stack(path: str | os.PathLike[str]) -> TiffZStack:
    """Open an OME-TIFF (or ImageJ / multi-page TIFF) whose first series has focal planes.

    Parameters
    ----------
    path
        The TIFF file.

    Returns
    -------
    TiffZStack
        Lazily-read stack; z positions from OME ``Plane/@PositionZ`` or ``PhysicalSizeZ``
        (ImageJ ``spacing``), mpp from ``PhysicalSizeX`` or the resolution tags.

    Raises
    ------
    UnreadableSlide
        When tifffile cannot parse the file or decode its corners.
    UnsupportedInput
        For a time axis, extra stacking axes, or non-8-bit pixels.
    """
    name = os.fspath(path)
    try:
        tif = tifffile.TiffFile(name)
    except Exception as err:
        raise UnreadableSlide(
            f"{name}: cannot parse this TIFF ({err}); it is corrupt or truncated: copy or "
            "export it again."
        ) from err
    try:
        layout = series_layout(tif.series[0], name, is_ndpi=tif.is_ndpi, is_ome=tif.is_ome)
        check_pixel_type(layout.dtype, layout.channels, name)
        check_complete(tif, name)
        mpp: float | None
        z: list[float | None]
        if tif.is_ome and tif.ome_metadata:
            mpp, z = ome_metadata(tif.ome_metadata, layout.n_planes, name)
        else:
            ij = tif.imagej_metadata or {}
            unit = ij.get("unit") if isinstance(ij.get("unit"), str) else None
            mpp = page_mpp(tif.series[0].keyframe, unit)
            spacing = ij.get("spacing")
            step = to_um(float(spacing), unit) if isinstance(spacing, int | float) else None
            z = [i * step if step is not None else None for i in range(layout.n_planes)]
        form = "ome-tiff" if tif.is_ome else ("imagej-tiff" if tif.is_imagej else "multipage-tiff")
        stack = TiffZStack(tif, layout, z_positions_um=z, mpp=mpp, form=form)
        stack.probe()
    except BaseException:
        tif.close()
        raise
    logger.debug("opened %s: %d planes, axes %s", name, layout.n_planes, layout.axes)
    return stack
