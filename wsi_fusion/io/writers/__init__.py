"""Output writers: OME-Zarr (the working format), and TIFF files and DICOM WSI instances
streamed from it.

Writers write where they are told; the caller writes to ``OUTPUT.partial`` paths and renames
them into place once complete.
"""

from __future__ import annotations

from wsi_fusion.io.writers.ome_tiff import write_generic_tiff, write_label_tiff, write_ome_tiff
from wsi_fusion.io.writers.ome_zarr import (
    add_label,
    build_label_pyramid,
    build_pyramid,
    create_image,
    image_levels,
    label_levels,
)

__all__ = [
    "add_label",
    "build_label_pyramid",
    "build_pyramid",
    "create_image",
    "image_levels",
    "label_levels",
    "write_dicom",
    "write_generic_tiff",
    "write_label_tiff",
    "write_ome_tiff",
]


def __getattr__(name: str) -> object:
    # write_dicom imports wsidicom (~0.3 s): only when asked for.
    if name == "write_dicom":
        from wsi_fusion.io.writers.dicom import write_dicom

        return write_dicom
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
