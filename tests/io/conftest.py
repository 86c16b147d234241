"""Fixture factory for reader tests: small z-stacks written in every input form.

Every writer stores the same known planes losslessly, so a test can compare ``read`` with the
array it wrote, pixel for pixel. Planes are random noise (each pixel differs between planes, so a
wrong plane, offset or axis order cannot pass by accident).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tifffile
import zarr

Planes = npt.NDArray[np.uint8]


def make_planes(
    n: int = 3,
    h: int = 300,
    w: int = 200,
    channels: int = 3,
    seed: int = 0,
    dtype: npt.DTypeLike = np.uint8,
) -> npt.NDArray[Any]:
    """(Z, H, W, C) random planes (C dropped when 1 channel is asked for as 0)."""
    rng = np.random.default_rng(seed)
    shape = (n, h, w, channels) if channels else (n, h, w)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def write_ome_tiff(
    path: Path,
    planes: npt.NDArray[Any],
    *,
    mpp: float = 0.25,
    z_step: float | None = 1.5,
    axes: str = "ZYXS",
    pyramid: bool = True,
    tile: int = 128,
    extra: dict[str, Any] | None = None,
) -> Path:
    """OME-TIFF with a Z axis, tiled, zlib, level 1 in a SubIFD."""
    metadata: dict[str, Any] = {"axes": axes, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    if z_step is not None:
        metadata["PhysicalSizeZ"] = z_step
    metadata.update(extra or {})
    rgb = axes.endswith("S")
    kwargs: dict[str, Any] = {
        "tile": (tile, tile),
        "compression": "zlib",
        "photometric": "rgb" if rgb else "minisblack",
    }
    y = axes.index("Y")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(planes, metadata=metadata, subifds=1 if pyramid else 0, **kwargs)
        if pyramid:
            reduced = planes[(slice(None),) * y + (slice(None, None, 2), slice(None, None, 2))]
            tw.write(reduced, subfiletype=1, **kwargs)
    return path


def write_slide_tiff(
    path: Path,
    plane: npt.NDArray[Any],
    *,
    mpp: float | None = 0.5,
    tile: int = 256,
    levels: int = 2,
    subifds: bool = False,
) -> Path:
    """Generic pyramidal tiled TIFF (OpenSlide flavour unless ``subifds``), resolution in cm."""
    kwargs: dict[str, Any] = {
        "tile": (tile, tile),
        "compression": "zlib",
        "photometric": "rgb" if plane.ndim == 3 else "minisblack",
        "metadata": None,
    }
    with tifffile.TiffWriter(path) as tw:
        for level in range(levels):
            step = 2**level
            if mpp is not None:
                ppcm = 1e4 / (mpp * step)
                kwargs.update(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
            data = plane[::step, ::step]
            if level == 0:
                tw.write(data, subifds=levels - 1 if subifds else 0, **kwargs)
            else:
                tw.write(data, subfiletype=1, **kwargs)
    return path


def write_ome_zarr(
    path: Path,
    planes: Planes,
    *,
    mpp: float = 0.5,
    z_step: float = 2.0,
    z_origin: float = 10.0,
    version: str = "0.4",
    with_t: bool = False,
) -> Path:
    """OME-Zarr (c, z, y, x) — or (t, c, z, y, x) — with two levels, written with zarr directly."""
    data = np.moveaxis(planes, 3, 0)  # (C, Z, H, W)
    names = ["c", "z", "y", "x"]
    if with_t:
        data, names = data[None], ["t", *names]
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    axes: list[dict[str, Any]] = [
        {"name": n, "type": types[n], **({"unit": "micrometer"} if types[n] == "space" else {})}
        for n in names
    ]
    datasets: list[dict[str, Any]] = []
    for level in range(2):
        step = 2**level
        arr = data[..., ::step, ::step]
        chunks = (*([1] * (arr.ndim - 2)), 64, 64)
        a = root.create_array(str(level), shape=arr.shape, chunks=chunks, dtype=arr.dtype)
        a[...] = arr
        scale = [*([1.0] * (arr.ndim - 3)), z_step, mpp * step, mpp * step]
        shift = [*([0.0] * (arr.ndim - 3)), z_origin, 0.0, 0.0]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    multiscales: list[dict[str, Any]] = [{"name": "test", "axes": axes, "datasets": datasets}]
    if version == "0.4":
        multiscales[0]["version"] = "0.4"
        root.attrs["multiscales"] = multiscales
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return path


def write_dicom_wsi(
    path: Path,
    planes: Planes,
    *,
    tile: int = 64,
    mpp: float = 0.5,
    z_step_um: float = 1.5,
    levels: int = 1,
) -> Path:
    """A DICOM WSI with several focal planes: one instance per pyramid level.

    Level 0 goes to ``path``, level ``k`` (2**k downsampled by striding) to ``<stem>_l<k>.dcm``
    beside it; all instances share the study, series, frame-of-reference and dimension UIDs so
    wsidicom assembles them into one slide.
    """
    from pydicom.uid import generate_uid

    uids = {key: str(generate_uid()) for key in ("study", "series", "frame", "dimension")}
    for level in range(levels):
        step = 2**level
        target = path if level == 0 else path.with_name(f"{path.stem}_l{level}.dcm")
        _dicom_instance(
            target,
            planes[:, ::step, ::step],
            tile=tile,
            mpp=mpp * step,
            z_step_um=z_step_um,
            uids=uids,
        )
    return path


def _dicom_instance(
    path: Path,
    planes: Planes,
    *,
    tile: int,
    mpp: float,
    z_step_um: float,
    uids: dict[str, str],
) -> None:
    """One VL Whole Slide Microscopy Image instance, TILED_FULL, uncompressed, all planes.

    Frames run columns fastest, then rows, then focal planes; focal plane ``i`` lies at
    ``i * z_step_um`` (written by the package's own :func:`write_dicom_instance`).
    """
    from wsi_fusion.io.writers.dicom import write_dicom_instance

    nz, h, w, _ = planes.shape
    rows, cols = -(-h // tile), -(-w // tile)
    padded = np.zeros((nz, rows * tile, cols * tile, 3), np.uint8)
    padded[:, :h, :w] = planes
    frames = padded.reshape(nz, rows, tile, cols, tile, 3).transpose(0, 1, 3, 2, 4, 5)
    write_dicom_instance(
        path,
        frames.reshape(-1, tile, tile, 3),
        size_hw=(h, w),
        tile=tile,
        n_frames=nz * rows * cols,
        codec="none",
        mpp=mpp,
        uids=uids,
        z_positions_um=[i * z_step_um for i in range(nz)],
    )


@pytest.fixture
def writers() -> SimpleNamespace:
    """The stack writers of this module: ``make_planes``, ``ome_tiff``, ``slide_tiff``,
    ``ome_zarr``, ``dicom``."""
    return SimpleNamespace(
        make_planes=make_planes,
        ome_tiff=write_ome_tiff,
        slide_tiff=write_slide_tiff,
        ome_zarr=write_ome_zarr,
        dicom=write_dicom_wsi,
    )
