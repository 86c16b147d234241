"""Hamamatsu NDPI z-stacks, read through tifffile.

NDPI stores each focal plane as its own set of pages (one page per pyramid level); tifffile groups
the same-shaped pages of the baseline into one series whose first axis it names ``Z`` (axes
``ZYXS``), with the reduced levels as ``series.levels``. The depth of each plane is the private
tag 65424 ``ZOffsetFromSlideCenter`` (signed, nanometres) on each level-0 page. Pixel size comes
from XResolution in pixels per centimetre, which NDPI writes.

UNTESTED against a real file: no multi-plane NDPI small enough for a repository exists. The code
follows tifffile's NDPI series construction (``TiffFile._series_ndpi``) and shares the reader with
OME-TIFF, which is tested. Single-plane NDPI files are read through OpenSlide instead.
"""

from __future__ import annotations

import logging
import os

import tifffile

from wsi_fusion.errors import UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers._base import check_pixel_type
from wsi_fusion.io.readers.ome_tiff import TiffZStack, check_complete, page_mpp, series_layout

logger = logging.getLogger(__name__)

#: Private NDPI tag: focal-plane offset from the slide centre, in nm.
Z_OFFSET_TAG = 65424


def _z_offsets_um(series: tifffile.TiffPageSeries, n_planes: int, path: str) -> list[float | None]:
    """Depth of each level-0 page of ``series`` in µm, in page order (``None`` when absent)."""
    pages = list(series.levels[0].pages) if series.levels else list(series.pages)
    if len(pages) != n_planes:
        logger.warning(
            "%s: %d pages for %d focal planes; z offsets unknown", path, len(pages), n_planes
        )
        return [None] * n_planes
    offsets: list[float | None] = []
    for page in pages:
        # Non-key pages may be lightweight TiffFrames without tags; load them as full pages.
        value = None if page is None else page.aspage().tags.valueof(Z_OFFSET_TAG)
        offsets.append(float(value) / 1000.0 if isinstance(value, int | float) else None)
    return offsets


def open_ndpi_stack(path: str | os.PathLike[str]) -> TiffZStack:
    """Open an NDPI file holding several focal planes.

    Planes are ordered from the lowest to the highest z offset (NDPI page order need not be
    monotonic); planes without an offset keep page order after those that have one.

    Parameters
    ----------
    path
        The ``.ndpi`` file.

    Returns
    -------
    TiffZStack
        With ``form == "ndpi"``, z positions in µm relative to the slide centre.

    Raises
    ------
    UnreadableSlide, UnsupportedInput
    """
    name = os.fspath(path)
    try:
        tif = tifffile.TiffFile(name)
    except Exception as err:
        raise UnreadableSlide(
            f"{name}: cannot parse this NDPI file ({err}); it is corrupt or truncated."
        ) from err
    try:
        if not tif.is_ndpi:
            raise UnsupportedInput(f"{name}: not a Hamamatsu NDPI file.")
        series = tif.series[0]
        layout = series_layout(series, name, is_ndpi=True)
        check_pixel_type(layout.dtype, layout.channels, name)
        check_complete(tif, name)
        offsets = _z_offsets_um(series, layout.n_planes, name)
        order = sorted(
            range(layout.n_planes),
            key=lambda i: (offsets[i] is None, offsets[i] or 0.0, i),
        )
        stack = TiffZStack(
            tif,
            layout,
            z_positions_um=[offsets[i] for i in order],
            mpp=page_mpp(series.keyframe),
            plane_order=order,
            form="ndpi",
        )
        stack.probe()
    except BaseException:
        tif.close()
        raise
    return stack
