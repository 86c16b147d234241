"""Decide which reader opens an input, and open it.

The rule that matters most: a file holding several focal planes is detected (tifffile for TIFF,
the DICOM header, the NGFF axes) *before* any slide library opens it, because OpenSlide reads
plane 0 of an NDPI or OME-TIFF z-stack without complaint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

from wsi_fusion._types import PlaneStack
from wsi_fusion.errors import SlideNotFound, UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers._base import BaseStack, check_pixel_type
from wsi_fusion.io.readers._duplicates import refuse_duplicate_planes
from wsi_fusion.io.readers.dicom import dicom_files_in, dicom_header, open_dicom
from wsi_fusion.io.readers.layers import open_layers
from wsi_fusion.io.readers.mrxs import refuse_mrxs_zstack
from wsi_fusion.io.readers.ndpi import open_ndpi_stack
from wsi_fusion.io.readers.ome_files import referenced_files
from wsi_fusion.io.readers.ome_tiff import TiffLayout, inspect_tiff, open_tiff_stack
from wsi_fusion.io.readers.ome_zarr import is_zarr_dir, open_ome_zarr
from wsi_fusion.io.source_metadata import source_metadata

logger = logging.getLogger(__name__)

Kind = Literal["zarr", "dicom-dir", "dir", "dicom", "tiff", "other"]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _kind(path: str) -> Kind:
    """Classify a path by its content (magic bytes, metadata files), not by its name."""
    if os.path.isdir(path):
        if is_zarr_dir(path):
            return "zarr"
        return "dicom-dir" if dicom_files_in(path) else "dir"
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as err:
        raise UnreadableSlide(f"{path}: cannot read this file ({err}); check permissions.") from err
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    if head[128:132] == b"DICM":
        return "dicom"
    return "other"


def _inspect_checked(path: str) -> TiffLayout | None:
    """:func:`inspect_tiff`, refusing a single-plane TIFF whose pixels cannot be fused.

    Multi-plane TIFFs are checked by their stack reader when opened.
    """
    layout = inspect_tiff(path)
    if layout is not None and layout.n_planes == 1:
        check_pixel_type(layout.dtype, layout.channels, path)
    return layout


def _open_single(path: str, kind: Kind) -> BaseStack:
    """Open one input that may hold one or several focal planes."""
    if kind == "zarr":
        return open_ome_zarr(path)
    if kind in ("dicom-dir", "dicom"):
        return open_dicom([path])
    if kind == "dir":
        raise UnsupportedInput(
            f"{path}: folder holds neither OME-Zarr metadata nor DICOM files. Pass an OME-Zarr "
            "image, a DICOM WSI folder, or the plane files themselves (one per focal plane)."
        )
    if kind == "tiff":
        layout = _inspect_checked(path)
        if layout is not None and layout.n_planes > 1:
            return open_ndpi_stack(path) if layout.is_ndpi else open_tiff_stack(path)
    else:
        # OpenSlide would read one plane of an MRXS z-stack without a word.
        refuse_mrxs_zstack(path)
    return open_layers([path])


def _check_single_plane(path: str, kind: Kind) -> None:
    """Refuse a multi-plane container given as one of several per-plane files."""
    planes = 1
    if kind in ("zarr", "dicom-dir", "dir"):
        raise UnsupportedInput(
            f"{path}: a folder cannot be one plane of a per-plane file list. Pass an OME-Zarr or "
            "DICOM folder alone, or one single-plane file per focal plane."
        )
    if kind == "tiff":
        layout = _inspect_checked(path)
        if layout is not None:
            planes = layout.n_planes
    elif kind == "dicom":
        planes = int(dicom_header(path)["focal_planes"])
    else:
        refuse_mrxs_zstack(path)
    if planes > 1:
        raise UnsupportedInput(
            f"{path} holds {planes} focal planes itself, so it cannot be one plane of a "
            "per-plane file list. Pass this file alone to fuse its planes."
        )


def _same_dicom_series(paths: Sequence[str], kinds: Sequence[Kind]) -> bool:
    """Whether several inputs are instances (levels, planes) of one DICOM series."""
    if not all(k == "dicom" for k in kinds):
        return False
    series = {dicom_header(p)["series"] for p in paths}
    return len(series) == 1 and "" not in series


def open_stack(inputs: Sequence[str | os.PathLike[str]]) -> BaseStack:
    """Open a focal-plane stack, whatever form it is stored in.

    Parameters
    ----------
    inputs
        Either one path (a single-plane slide, or a multi-plane container: OME-TIFF with Z,
        NDPI z-stack, OME-Zarr with a z axis, DICOM WSI folder or file with focal planes), or
        several paths, one single-plane file per focal plane in focal order (slides through
        OpenSlide/tiffslide, JPEG/PNG/BMP/plain TIFF through Pillow). Several ``.dcm`` files of
        one DICOM series are read together as one slide.

    Returns
    -------
    BaseStack
        An open :class:`~wsi_fusion._types.PlaneStack` (a pixel at two corners of every plane
        has already been decoded), also a context manager. Use it from the thread that opened
        it, and ``close()`` it (or use ``with``).

    Raises
    ------
    SlideNotFound
        A path does not exist.
    UnreadableSlide
        A file is corrupt, truncated or in no format any reader knows.
    PlaneMismatch
        Per-plane files differ in size or pixel size, only some record a pixel size, or two of
        them are the same file (same path, link or content).
    UnsupportedInput
        No inputs, non-8-bit pixels, a time axis, a multi-plane file among per-plane files, an
        OME-TIFF naming files outside its folder, ...
    """
    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise UnsupportedInput(
            "no input given: pass one multi-plane file/folder, or one file per focal plane."
        )
    for path in paths:
        if not os.path.exists(path):
            raise SlideNotFound(f"{path}: no such file or folder; check the path and spelling.")
    if len(paths) > 1:
        refuse_duplicate_planes(paths)
    kinds = [_kind(p) for p in paths]
    for path, kind in zip(paths, kinds, strict=True):
        if kind == "tiff":
            # Before any reader opens it: tifffile follows the files its OME-XML names.
            referenced_files(path)
    if len(paths) == 1:
        stack = _open_single(paths[0], kinds[0])
    elif _same_dicom_series(paths, kinds):
        stack = open_dicom(paths)
    else:
        for path, kind in zip(paths, kinds, strict=True):
            _check_single_plane(path, kind)
        stack = open_layers(paths)
    logger.info(
        "opened %s (%s via %s): %d planes, %dx%d px (h x w), mpp %s",
        paths[0] if len(paths) == 1 else f"{len(paths)} files",
        stack.form,
        stack.reader,
        stack.n_planes,
        stack.shape[0],
        stack.shape[1],
        stack.mpp,
    )
    return stack


def describe_stack(stack: PlaneStack) -> dict[str, Any]:
    """What ``wsi-fusion info`` prints about an open stack.

    Parameters
    ----------
    stack
        An open stack from :func:`open_stack` (or any ``PlaneStack``).

    Returns
    -------
    dict
        JSON-serialisable: ``form`` (``layers``, ``ome-tiff``, ``imagej-tiff``,
        ``multipage-tiff``, ``ndpi``, ``ome-zarr``, ``dicom``),
        ``reader`` (decoding library), ``planes``, ``z_positions_um`` (``None`` where unknown),
        ``shape`` ``[h, w]``, ``mpp`` (``None`` where unknown), ``sources`` and ``details``
        (form-specific: axes, pyramid levels, per-plane readers, ...), ``source`` (objective
        power, vendor and scanner properties carried to the output:
        :func:`wsi_fusion.io.source_metadata.source_metadata`).
    """
    form = getattr(stack, "form", type(stack).__name__)
    return {
        "form": form,
        "reader": getattr(stack, "reader", None),
        "planes": stack.n_planes,
        "z_positions_um": list(stack.z_positions_um),
        "shape": [int(stack.shape[0]), int(stack.shape[1])],
        "mpp": stack.mpp,
        "sources": list(stack.sources),
        "details": dict(getattr(stack, "details", {})),
        "source": source_metadata(form, tuple(stack.sources), stack.mpp),
    }
