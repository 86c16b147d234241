"""DICOM whole-slide images (VL Whole Slide Microscopy) with focal planes, read through wsidicom.

wsidicom groups the instances of a slide (pyramid levels, focal planes split over files) and reads
a region of one focal plane with ``read_region(..., z=...)``; without ``z`` it gives the middle
plane, so every read here names its plane. Focal-plane positions are µm in the slide coordinate
system, as wsidicom reports them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_fusion._types import Box, RGBRegion
from wsi_fusion.errors import UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers._base import (
    BaseStack,
    check_pixel_type,
    mean_mpp,
    pick_level,
    positive_or_none,
    thumbnail_stride,
    to_rgb,
)
from wsi_fusion.io.readers._thumbnail import direct_read_is_bounded, tiled_thumbnail

logger = logging.getLogger(__name__)

#: Photometric interpretations whose decoded pixels are 8-bit greyscale or RGB.
_PHOTOMETRIC_OK = ("MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files_in(folder: str | os.PathLike[str]) -> list[str]:
    """The DICOM Part 10 files directly inside ``folder``, sorted by name."""
    return sorted(str(p) for p in Path(folder).iterdir() if p.is_file() and is_dicom_file(p))


def dicom_header(path: str) -> dict[str, Any]:
    """The few header fields used to group files and count planes (no pixel data read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise UnreadableSlide(
            f"{path}: cannot parse this DICOM file ({err}); it is corrupt or truncated."
        ) from err
    return {
        "series": str(ds.get("SeriesInstanceUID", "")),
        "focal_planes": int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1),
        "bits": int(ds.get("BitsAllocated", 8) or 8),
        "samples": int(ds.get("SamplesPerPixel", 1) or 1),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
    }


class DicomStack(BaseStack):
    """Focal planes of the base level of a DICOM WSI."""

    form = "dicom"

    def __init__(self, slide: Any, sources: Sequence[str]) -> None:
        base = slide.levels.base_level
        planes = [float(z) for z in base.focal_planes]
        mpp_x = positive_or_none(float(slide.mpp.width)) if slide.mpp is not None else None
        mpp_y = positive_or_none(float(slide.mpp.height)) if slide.mpp is not None else None
        mpp = mean_mpp(mpp_x, mpp_y, sources[0])
        paths = [str(p) for p in base.optical_paths]
        if len(paths) > 1:
            logger.warning(
                "%s: %d optical paths; reading the first (%s)", sources[0], len(paths), paths[0]
            )
        super().__init__(
            sources=sources,
            z_positions_um=planes,
            shape=(int(slide.size.height), int(slide.size.width)),
            mpp=mpp,
            reader="wsidicom",
            details={
                "levels": [[int(lv.size.height), int(lv.size.width)] for lv in slide.levels],
                "optical_paths": paths,
            },
        )
        self._slide = slide
        self._path = paths[0] if paths else None

    def _read_inside(self, plane: int, box: Box) -> RGBRegion:
        region = self._slide.read_region(
            (box.x, box.y),
            0,
            (box.w, box.h),
            z=self.z_positions_um[plane],
            path=self._path,
            as_array=True,
        )
        return to_rgb(np.asarray(region))

    def _thumbnail(self, plane: int, target_hw: tuple[int, int]) -> RGBRegion:
        z = self.z_positions_um[plane]
        # Reduced levels often keep only some focal planes; use those that have this one.
        levels = [lv for lv in self._slide.levels if z in lv.focal_planes]
        shapes = [(int(lv.size.height), int(lv.size.width)) for lv in levels]
        level = levels[pick_level(shapes, target_hw)]
        h, w = int(level.size.height), int(level.size.width)

        def read(box: Box) -> RGBRegion:
            # wsidicom: location and size in the level's own pixels.
            region = self._slide.read_region(
                (box.x, box.y), level.level, (box.w, box.h), z=z, path=self._path, as_array=True
            )
            return to_rgb(np.asarray(region))

        if not direct_read_is_bounded((h, w), target_hw):
            # No small level holds this plane: tile by tile, never the whole level at once.
            return tiled_thumbnail(read, (h, w), target_hw)
        step = thumbnail_stride((h, w), target_hw)
        return read(Box(0, 0, h, w))[::step, ::step]

    def _close(self) -> None:
        self._slide.close()


def open_dicom(paths: Sequence[str | os.PathLike[str]]) -> DicomStack:
    """Open a DICOM WSI from a folder or from its instance files.

    Parameters
    ----------
    paths
        One folder, or one or more ``.dcm`` files of the same series (pyramid levels and/or
        focal planes split over instances).

    Returns
    -------
    DicomStack
        One plane per focal plane of the base level, ordered by depth.

    Raises
    ------
    UnreadableSlide
        When wsidicom cannot assemble a slide from the files.
    UnsupportedInput
        For pixel data other than 8-bit greyscale / RGB.
    """
    names = [os.fspath(p) for p in paths]
    files = dicom_files_in(names[0]) if len(names) == 1 and os.path.isdir(names[0]) else names
    if not files:
        raise UnsupportedInput(
            f"{names[0]}: folder holds no DICOM files (nor OME-Zarr metadata); pass the folder "
            "of a DICOM WSI or an OME-Zarr image."
        )
    for name in files:
        header = dicom_header(name)
        if header["bits"] != 8:
            check_pixel_type(f"uint{header['bits']}", header["samples"], name)
        if header["photometric"] and header["photometric"] not in _PHOTOMETRIC_OK:
            raise UnsupportedInput(
                f"{name}: photometric interpretation {header['photometric']} is not supported; "
                "wsi_fusion reads brightfield greyscale or RGB DICOM WSI."
            )
    from wsidicom import WsiDicom

    try:
        slide = WsiDicom.open(files)
    except Exception as err:
        raise UnreadableSlide(
            f"{names[0]}: wsidicom cannot open a whole-slide image from {len(files)} file(s) "
            f"({err}). Pass the folder holding every instance of one slide (all levels and "
            "focal planes), or check that the files are intact."
        ) from err
    try:
        stack = DicomStack(slide, names)
        stack.probe()
    except BaseException:
        slide.close()
        raise
    return stack
