"""Readers: every input form becomes a :class:`~wsi_fusion._types.PlaneStack`.

One module per form: :mod:`.layers` (one file per focal plane: OpenSlide, tiffslide, Pillow),
:mod:`.ome_tiff` (OME-TIFF / TIFF with a Z axis), :mod:`.ndpi` (Hamamatsu z-stacks),
:mod:`.ome_zarr` (NGFF with a z axis) and :mod:`.dicom` (DICOM WSI focal planes). Open any of them
with :func:`open_stack`.
"""

from __future__ import annotations

from wsi_fusion.io.readers._base import BaseStack, thumbnail_size
from wsi_fusion.io.readers._dispatch import describe_stack, open_stack

__all__ = ["BaseStack", "describe_stack", "open_stack", "thumbnail_size"]
