"""Pyramidal TIFF outputs streamed from a finished OME-Zarr pyramid.

No single TIFF layout serves every viewer (see ECOSYSTEM.md, "Writing pyramids"):

* :func:`write_ome_tiff`: OME-TIFF, level 0 in the main IFD and reduced levels in its SubIFDs,
  OME-XML with PhysicalSizeX/Y in µm. Read by QuPath, Bio-Formats, OMERO, tiffslide; the reduced
  levels are also mirrored into the main IFD chain (:func:`mirror_levels_in_main_chain`, no
  tile stored twice), so OpenSlide sees every level as well.
* :func:`write_generic_tiff` (``.tif``): an Aperio-SVS-compatible pyramid (level 0, stripped
  thumbnail, reduced levels in the main IFD chain, label and macro pages, Aperio descriptions
  with objective power and mpp), which OpenSlide, tiffslide and Bio-Formats read as a slide.
* :func:`write_label_tiff`: a label map (the focus/depth map, the blur mask) as a single-channel,
  losslessly compressed, pyramidal OME-TIFF, mirrored the same way.

Tiles are read from the zarr levels one tile row at a time and handed to
:meth:`tifffile.TiffWriter.write` as an iterator, with a small ``buffersize`` so tifffile
compresses a few MB of tiles at a time instead of gathering ~0.5 GB; memory is bounded by one
band of ``tile`` rows times the zarr chunk width, never a whole level. Resolution is written in
pixels per centimetre (``resolutionunit=CENTIMETER``), which is what OpenSlide and tiffslide turn
into ``mpp``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import tifffile
import zarr

from wsi_fusion import __version__
from wsi_fusion.errors import OutputNotWritable
from wsi_fusion.io.source_metadata import NAMESPACE, as_map_annotation
from wsi_fusion.io.storage_errors import write_error
from wsi_fusion.io.writers.ome_zarr import image_levels
from wsi_fusion.pyramid.downsample import downsample2, level_shapes

__all__ = ["Compression", "write_generic_tiff", "write_label_tiff", "write_ome_tiff"]

logger = logging.getLogger(__name__)

Compression = Literal["jpeg", "deflate", "zstd", "lzw", "none"]

#: tifffile compression names; every one of these OpenSlide and Bio-Formats can decode.
_CODECS: dict[str, str | None] = {
    "jpeg": "jpeg",
    "deflate": "zlib",
    "zstd": "zstd",
    "lzw": "lzw",
    "none": None,
}
#: Bytes tifffile gathers before compressing them in parallel (its default is ~0.5 GB).
_BUFFERSIZE = 32 * 2**20
_SOFTWARE = f"wsi_fusion {__version__}"
#: Columns read from zarr at a time (rounded to whole tiles and chunks).
_WINDOW_PX = 4096


def write_ome_tiff(
    group: zarr.Group | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    mpp: float | None,
    compression: Compression = "jpeg",
    jpeg_quality: int = 90,
    jpeg_subsampling: tuple[int, int] = (2, 2),
    tile: int = 512,
    description: Mapping[str, Any] | None = None,
    name: str | None = None,
    maxworkers: int | None = None,
    source: Mapping[str, Any] | None = None,
    associated: Mapping[str, npt.NDArray[np.uint8]] | None = None,
) -> Path:
    """Write an OME-Zarr image pyramid as a pyramidal OME-TIFF.

    Parameters
    ----------
    group
        A finished image group (see :func:`wsi_fusion.io.writers.ome_zarr.create_image` and
        ``build_pyramid``), or its path. Levels are (C, H, W) uint8 with C = 3 (RGB) or 1.
    path
        File to write (the caller's ``.partial`` name is fine: OME mode does not depend on the
        suffix). Replaced if it exists.
    mpp
        Microns per pixel at level 0; ``None`` writes no physical size or resolution.
    compression
        ``"jpeg"`` (lossy, at ``jpeg_quality``) or lossless ``"deflate"``, ``"zstd"``, ``"lzw"``
        or ``"none"``.
    jpeg_quality
        JPEG quality, 1..100.
    jpeg_subsampling
        Chroma subsampling of JPEG tiles, which are stored as YCbCr (PhotometricInterpretation
        YCbCr, as in scanners' SVS files): (2, 2) is 4:2:0, about half the size of full-chroma
        tiles at the same quality; (1, 1) keeps full colour resolution.
    tile
        Tile side in pixels (a multiple of 16).
    description
        Provenance (JSON-serialisable), stored as an OME ``CommentAnnotation`` in JSON.
    name
        OME ``Image`` name (default: the file name).
    source
        What the inputs said about the slide (:func:`wsi_fusion.io.source_metadata.
        source_metadata`; default: ``description["stack"]["source"]``): its objective power
        becomes the OME ``Objective``'s ``NominalMagnification``, and it is stored whole as a
        ``MapAnnotation`` (namespace ``wsi_fusion.source_properties``).
    associated
        The slide's associated images by name (``label``, ``macro``, ``thumbnail``; (h, w, 3)
        uint8), each written after the pyramid as one more OME ``Image`` of that name
        (deflate, so a label's barcode stays exact): Bio-Formats and QuPath list them as
        further images of the file.
    maxworkers
        Threads tifffile compresses with (default: its own choice).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputNotWritable
        If the folder of ``path`` does not exist or cannot be written.
    ValueError
        If a setting is invalid or the group is not a uint8 pyramid with 1 or 3 channels.
    """
    path = Path(path)
    levels, options = _image_setup(
        group, mpp, compression, jpeg_quality, jpeg_subsampling, tile, maxworkers
    )
    metadata: dict[str, Any] = {"axes": "YXS" if levels[0].shape[0] > 1 else "YX"}
    metadata["Name"] = name if name is not None else path.name
    # Interleaved RGB is one OME Channel of 3 samples; name it as what it is.
    metadata["Channel"] = {"Name": ["RGB" if levels[0].shape[0] == 3 else "grey"]}
    if source is None and description is not None:
        source = (description.get("stack") or {}).get("source")
    if source:
        metadata["MapAnnotation"] = {"Namespace": NAMESPACE, "Value": as_map_annotation(source)}
    if mpp is not None:
        metadata.update(
            PhysicalSizeX=float(mpp),
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=float(mpp),
            PhysicalSizeYUnit="µm",
        )
    if description is not None:
        metadata["CommentAnnotation"] = {
            "Namespace": "wsi_fusion/provenance",
            # OME-XML is UTF-8, so non-ASCII (µm, names) is kept as it is.
            "Value": json.dumps(dict(description), default=str, ensure_ascii=False),
        }
    with _open_writer(path, ome=True) as tif:
        _write_levels(tif, levels, tile, mpp, options, subifds=True, metadata=metadata)
        for image_name, pixels in (associated or {}).items():
            tif.write(
                np.ascontiguousarray(pixels, dtype=np.uint8),
                photometric="rgb",
                compression="zlib",
                software=_SOFTWARE,
                metadata={"axes": "YXS", "Name": image_name},
            )
    magnification = (source or {}).get("objective_power")
    if magnification:
        _add_objective(path, float(magnification))
    mirror_levels_in_main_chain(path)
    logger.info("wrote OME-TIFF %s (%d levels, %s)", path, len(levels), compression)
    return path


def write_generic_tiff(
    group: zarr.Group | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    mpp: float | None,
    compression: Compression = "jpeg",
    jpeg_quality: int = 90,
    jpeg_subsampling: tuple[int, int] = (2, 2),
    tile: int = 512,
    description: Mapping[str, Any] | None = None,
    maxworkers: int | None = None,
    source: Mapping[str, Any] | None = None,
    associated: Mapping[str, npt.NDArray[np.uint8]] | None = None,
) -> Path:
    """Write an OME-Zarr image pyramid as an Aperio-SVS-compatible pyramidal TIFF (``.tif``).

    The layout Aperio scanners write, which OpenSlide, tiffslide and Bio-Formats read as a slide
    (see ECOSYSTEM.md, "Writing pyramids"): level 0 tiled; page 1 a stripped thumbnail; the
    reduced levels tiled in the main IFD chain with NewSubfileType 0 (1 would hide them from
    tiffslide); then the label (NewSubfileType 1) and macro (9) images when given. Every page's
    ImageDescription is Aperio's ``Aperio Image Library …|key = value|…`` text with
    ``AppMag`` (objective power), ``MPP`` and, on level 0, the provenance as a ``wsi_fusion``
    JSON value, so OpenSlide reports ``openslide.objective-power``, ``openslide.mpp-x``/``-y``
    and the associated images. Resolution tags are in pixels per centimetre as well.

    Parameters
    ----------
    group, path, mpp, compression, jpeg_quality, jpeg_subsampling, tile, maxworkers
        As :func:`write_ome_tiff`.
    description
        Provenance (JSON-serialisable), stored in level 0's description as ASCII JSON.
    source, associated
        As :func:`write_ome_tiff` (``source`` defaults to ``description["stack"]["source"]``):
        the objective power becomes ``AppMag``; ``label`` and ``macro`` are written as Aperio
        associated pages, and the thumbnail page is made from the pyramid.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputNotWritable
        If the folder of ``path`` does not exist or cannot be written.
    ValueError
        If a setting is invalid or the group is not a uint8 pyramid with 1 or 3 channels.
    """
    path = Path(path)
    levels, options = _image_setup(
        group, mpp, compression, jpeg_quality, jpeg_subsampling, tile, maxworkers
    )
    if source is None and description is not None:
        source = (description.get("stack") or {}).get("source")
    keys = _aperio_keys(mpp, (source or {}).get("objective_power"))
    h, w = levels[0].shape[-2:]
    codec = f"{str(options['compression'] or 'raw').upper()}" + (
        f"/RGB Q={jpeg_quality}" if options["compression"] == "jpeg" else ""
    )
    head = f"{_APERIO} ({_SOFTWARE})\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile})"
    text = f"{head} {codec}{keys}"
    if description is not None:
        # A |-separated key = value list: keep the JSON free of '|' (\u007c is the same JSON).
        provenance = json.dumps(dict(description), default=str).replace("|", "\\u007c")
        text += f"|wsi_fusion = {provenance}"
    with _open_writer(path, ome=False) as tif:
        _write_tiled(tif, levels[0], tile, mpp, 0, options, text)
        pixels = _thumbnail(levels)  # (c, y, x)
        tif.write(
            pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1),
            photometric=options["photometric"],
            compression="jpeg" if options["compression"] == "jpeg" else "zlib",
            description=f"{_APERIO} ({_SOFTWARE})\n{w}x{h} -> "
            f"{pixels.shape[-1]}x{pixels.shape[-2]} - {keys}",
            software=_SOFTWARE,
            metadata=None,
        )
        for level in range(1, len(levels)):
            lh, lw = levels[level].shape[-2:]
            _write_tiled(
                tif, levels[level], tile, mpp, level, options, f"{head} -> {lw}x{lh} {codec}{keys}"
            )
        for name, subfiletype in (("label", 1), ("macro", 9)):
            if associated and name in associated:
                image = np.ascontiguousarray(associated[name], dtype=np.uint8)
            elif name == "label":
                # Bio-Formats' SVS reader takes the last page (the one before a macro) as the
                # label: without one it would split the smallest level off the pyramid. A blank
                # white label stands in (no label in the input, or --no-label).
                image = np.full((_BLANK_LABEL_SIDE, _BLANK_LABEL_SIDE, 3), 255, np.uint8)
            else:
                continue
            tif.write(
                image,
                photometric="rgb",
                compression="lzw" if name == "label" else "jpeg",
                subfiletype=subfiletype,
                description=f"{_APERIO} ({_SOFTWARE})\n{name} {image.shape[1]}x{image.shape[0]}",
                software=_SOFTWARE,
                metadata=None,
            )
    logger.info("wrote SVS-compatible TIFF %s (%d levels, %s)", path, len(levels), compression)
    return path


#: First words of every page description: what OpenSlide, tiffslide (tifffile) and Bio-Formats
#: look for to read a TIFF as an Aperio slide.
_APERIO = "Aperio Image Library"
#: Side of the blank label page written when there is no label to carry.
_BLANK_LABEL_SIDE = 64


def _aperio_keys(mpp: float | None, objective: Any) -> str:
    """``|AppMag = …|MPP = …`` for the known values."""
    keys = ""
    if objective:
        keys += f"|AppMag = {float(objective):g}"
    if mpp is not None:
        keys += f"|MPP = {float(mpp):.6g}"
    return keys


def _thumbnail(levels: Sequence[Any]) -> npt.NDArray[np.uint8]:
    """The thumbnail page's (c, y, x) pixels: the smallest level halved once more (2×2 mean).

    Smaller than every level, as in Aperio's own files (a ~1k px thumbnail, levels down to a
    few thousand px): Bio-Formats' SVS reader counts the stripped thumbnail among the
    resolutions and drops it only when it is the smallest. A thumbnail the size of a level
    took the place of the smallest level there (measured with Bio-Formats 7.3: 2967, 1484,
    742, 742, 371 px instead of 2967 ... 186).
    """
    return downsample2(np.asarray(levels[-1][:]))


def _write_tiled(
    tif: tifffile.TiffWriter,
    arr: Any,
    tile: int,
    mpp: float | None,
    level: int,
    options: Mapping[str, Any],
    description: str,
) -> None:
    """One tiled main-chain page (NewSubfileType 0) of level ``level``."""
    tif.write(
        _iter_tiles(arr, tile),
        shape=_hwc(tuple(arr.shape)),
        dtype=np.uint8,
        subfiletype=0,
        description=description,
        metadata=None,
        **_resolution(mpp, level),
        **options,
    )


def write_label_tiff(
    array_hw: zarr.Array[Any] | npt.NDArray[np.uint8] | Sequence[Any],
    path: str | os.PathLike[str],
    *,
    mpp: float | None,
    tile: int = 512,
    min_side: int = 256,
    compression: Compression = "deflate",
    description: str = "wsi_fusion focus map (value = focal plane)",
) -> Path:
    """Write a label map (the focus/depth map, the blur mask) as a pyramidal single-channel
    OME-TIFF.

    Level 0 is in the main IFD and reduced levels in SubIFDs, mirrored into the main chain for
    OpenSlide (:func:`mirror_levels_in_main_chain`); the OME-XML names the image (the file name
    without ``.partial``) and holds ``description`` as the Image ``Description``, so Bio-Formats
    (QuPath, OMERO), tifffile/tiffslide and OpenSlide all see every level.
    Reduced levels pick every ``2**l``-th pixel, like
    :func:`wsi_fusion.pyramid.downsample.downsample_labels2`: averaging plane indices would
    invent planes.

    Parameters
    ----------
    array_hw
        (H, W) uint8 level 0 (zarr array or numpy), or a sequence of levels, level 0 first,
        used as they are. Level 0 of a label pyramid (``group["labels/<name>/0"]`` after
        ``build_label_pyramid``) brings its stored levels along; otherwise reduced levels are
        read from level 0 with a stride (cheap for numpy, slow for a large zarr array).
    path
        File to write; replaced if it exists.
    mpp
        Microns per pixel at level 0, or ``None``.
    tile
        Tile side in pixels (a multiple of 16).
    min_side
        When only level 0 is given: reduced levels are added until both sides are at most this.
    compression
        Lossless only (``"deflate"`` default, ``"zstd"``, ``"lzw"``, ``"none"``): a label map must
        not be altered.
    description
        What the values mean: the OME Image ``Description``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputNotWritable
        If the folder of ``path`` does not exist or cannot be written.
    ValueError
        If the array is not 2-D uint8 or ``compression`` is lossy or unknown.
    """
    path = Path(path)
    if compression == "jpeg":
        raise ValueError("a label map needs lossless compression: use deflate, zstd, lzw or none")
    levels = _label_levels(array_hw, min_side)
    for arr in levels:
        if len(arr.shape) != 2 or np.dtype(arr.dtype) != np.uint8:
            raise ValueError(
                f"label level of shape {tuple(arr.shape)} and dtype {arr.dtype}: expected a 2-D "
                "uint8 (H, W) map"
            )
    if mpp is not None:
        _check_mpp(mpp)
    _check_tile(tile)
    codec = _codec(compression)
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "photometric": "minisblack",
        "compression": codec,
        "predictor": codec is not None,
        "software": _SOFTWARE,
    }
    name = path.name.removesuffix(".partial")
    metadata: dict[str, Any] = {"axes": "YX", "Name": name, "Description": description}
    if mpp is not None:
        metadata.update(
            PhysicalSizeX=float(mpp),
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=float(mpp),
            PhysicalSizeYUnit="µm",
        )
    with _open_writer(path, ome=True) as tif:
        _write_levels(tif, levels, tile, mpp, options, subifds=True, metadata=metadata)
    mirror_levels_in_main_chain(path)
    logger.info("wrote label TIFF %s (%d levels)", path, len(levels))
    return path


# --------------------------------------------------------------------------- helpers


class _Strided:
    """A lazily read ``arr[::step, ::step]`` of a 2-D array (numpy, or zarr without a pyramid)."""

    def __init__(self, arr: Any, step: int) -> None:
        self.arr, self.step = arr, step
        self.shape = tuple(math.ceil(s / step) for s in arr.shape)
        self.dtype = arr.dtype

    def __getitem__(self, key: tuple[Any, slice, slice]) -> npt.NDArray[Any]:
        _, ys, xs = key  # (..., rows, columns), as _windows indexes
        s = self.step
        y1 = min(ys.stop, self.shape[0]) * s
        x1 = min(xs.stop, self.shape[1]) * s
        return np.asarray(self.arr[ys.start * s : y1 : s, xs.start * s : x1 : s])


def _label_levels(array_hw: Any, min_side: int) -> list[Any]:
    """The levels to write for a label given as one array or as a list of levels."""
    if not isinstance(array_hw, (zarr.Array, np.ndarray)):
        return list(array_hw)
    if isinstance(array_hw, zarr.Array) and "/" in array_hw.path:
        # Level 0 of a label pyramid written by build_label_pyramid: use its stored levels
        # instead of re-reading level 0 at every stride.
        parent_path, leaf = array_hw.path.rsplit("/", 1)
        try:
            parent = zarr.open_group(array_hw.store, path=parent_path, mode="r")
            levels = image_levels(parent)
        except (ValueError, KeyError, FileNotFoundError, TypeError):
            levels = []
        if levels and levels[0].path == array_hw.path:
            return levels
    shapes = level_shapes(tuple(array_hw.shape), min_side)  # type: ignore[arg-type]
    return [array_hw] + [_Strided(array_hw, 2**lv) for lv in range(1, len(shapes))]


def _levels_of(group: zarr.Group | str | os.PathLike[str]) -> list[zarr.Array[Any]]:
    if not isinstance(group, zarr.Group):
        group = zarr.open_group(str(group), mode="r")
    levels = image_levels(group)
    first = levels[0]
    if first.ndim != 3 or first.shape[0] not in (1, 3) or first.dtype != np.uint8:
        raise ValueError(
            f"{group.store_path} level 0 has shape {first.shape} and dtype {first.dtype}; the TIFF "
            "writers take (C, H, W) uint8 with C = 3 (RGB) or 1"
        )
    return levels


def _image_setup(
    group: zarr.Group | str | os.PathLike[str],
    mpp: float | None,
    compression: str,
    jpeg_quality: int,
    jpeg_subsampling: tuple[int, int],
    tile: int,
    maxworkers: int | None,
) -> tuple[list[zarr.Array[Any]], dict[str, Any]]:
    """Checked levels and tifffile options of an image pyramid (both image TIFF writers)."""
    levels = _levels_of(group)
    options = _tiff_options(
        levels[0], compression, jpeg_quality, jpeg_subsampling, tile, maxworkers
    )
    if mpp is not None:
        _check_mpp(mpp)
    return levels, options


def _write_levels(
    tif: tifffile.TiffWriter,
    levels: Sequence[Any],
    tile: int,
    mpp: float | None,
    options: Mapping[str, Any],
    *,
    subifds: bool,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``levels`` as tiled pages, level 0 first.

    ``subifds`` puts the reduced levels in level 0's SubIFDs (else in the main IFD chain);
    ``description`` and ``metadata`` go on level 0 only.
    """
    for level, arr in enumerate(levels):
        first = level == 0
        tif.write(
            _iter_tiles(arr, tile),
            shape=_hwc(tuple(arr.shape)),
            dtype=np.uint8,
            subifds=len(levels) - 1 if first and subifds else None,
            subfiletype=0 if first else 1,
            description=description if first else None,
            # metadata=None stops tifffile adding its own JSON description to the page.
            metadata=metadata if first else None,
            **_resolution(mpp, level),
            **options,
        )
        logger.debug("TIFF %s: level %d %s written", tif.filehandle.path, level, arr.shape)


def _hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """tifffile page shape of a (C, H, W) level, or of an (H, W) one as it is."""
    if len(shape) == 2:
        return shape
    c, h, w = shape
    return (h, w, c) if c > 1 else (h, w)


def _check_mpp(mpp: float) -> None:
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp {mpp} must be a positive number of microns per pixel, or None")


def _check_tile(tile: int) -> None:
    # The TIFF spec requires tile sides that are multiples of 16.
    if tile < 16 or tile % 16:
        raise ValueError(f"tile {tile} must be a positive multiple of 16 (512 is usual)")


def _codec(compression: str) -> str | None:
    try:
        return _CODECS[compression]
    except KeyError:
        raise ValueError(
            f"compression {compression!r} is not one of {', '.join(_CODECS)}"
        ) from None


def _tiff_options(
    level0: zarr.Array[Any],
    compression: str,
    jpeg_quality: int,
    jpeg_subsampling: tuple[int, int],
    tile: int,
    maxworkers: int | None,
) -> dict[str, Any]:
    """tifffile ``write`` keywords shared by every level."""
    _check_tile(tile)
    codec = _codec(compression)
    rgb = level0.shape[0] == 3
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "photometric": "rgb" if rgb else "minisblack",
        "compression": codec,
        "software": _SOFTWARE,
        "maxworkers": maxworkers,
        "buffersize": _BUFFERSIZE,
    }
    if codec == "jpeg":
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {jpeg_quality} must be between 1 and 100")
        options["compressionargs"] = {"level": int(jpeg_quality)}
        if rgb:
            if tuple(jpeg_subsampling) not in {(1, 1), (2, 1), (2, 2), (4, 1)}:
                raise ValueError(
                    f"jpeg_subsampling {jpeg_subsampling} must be (1, 1), (2, 1), (2, 2) or (4, 1)"
                )
            options["subsampling"] = tuple(jpeg_subsampling)
    elif codec is not None:
        # Horizontal differencing makes deflate/LZW/zstd tiles of natural images ~30 % smaller;
        # libtiff (OpenSlide), Bio-Formats and tifffile all undo it.
        options["predictor"] = True
    return options


def _resolution(mpp: float | None, level: int) -> dict[str, Any]:
    if mpp is None:
        return {}
    px_per_cm = 1e4 / (mpp * 2**level)
    return {"resolution": (px_per_cm, px_per_cm), "resolutionunit": "CENTIMETER"}


def mirror_levels_in_main_chain(path: str | os.PathLike[str]) -> int:
    """Make the reduced levels in level 0's SubIFDs visible to OpenSlide too; return how many.

    OpenSlide reads only the main IFD chain, and the OME-TIFF specification puts reduced levels
    in SubIFDs (where Bio-Formats, tifffile and tiffslide look). So after writing, one more IFD
    per reduced level is appended to the main chain, holding a byte copy of that level's SubIFD
    entries: the same tags, pointing to the same tile data (nothing is stored twice; the file
    grows by a few hundred bytes per level). They are reduced-resolution pages
    (NewSubfileType 1) that the OME-XML does not reference, so OME readers keep seeing one image
    with its SubIFD pyramid, while OpenSlide sees every level. BigTIFF only (as written here).
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        if not tif.is_bigtiff or "SubIFDs" not in tif.pages.first.tags:
            return 0
        subifds = [int(o) for o in tif.pages.first.tags["SubIFDs"].value]
        last = tif.pages[len(tif.pages) - 1].offset  # loads the whole main chain
        order = tif.byteorder
    u64 = struct.Struct(order + "Q")
    with path.open("r+b") as fh:
        ifds = []
        for offset in subifds:
            fh.seek(offset)
            (count,) = u64.unpack(fh.read(8))
            ifds.append((count, fh.read(20 * count)))
        fh.seek(last)
        (count,) = u64.unpack(fh.read(8))
        link = last + 8 + 20 * count  # where the last IFD stores the offset of the next one
        fh.seek(0, os.SEEK_END)
        position = fh.tell()
        position += position % 2  # IFDs start on a word boundary
        for index, (count, entries) in enumerate(ifds):
            fh.seek(link)
            fh.write(u64.pack(position))
            fh.seek(position)
            fh.write(u64.pack(count) + entries + u64.pack(0))
            link = position + 8 + len(entries)
            position = link + 8
            logger.debug("%s: level %d mirrored into the main IFD chain", path, index + 1)
    return len(ifds)


def _add_objective(path: Path, magnification: float) -> None:
    """Add an OME ``Instrument`` with the objective's nominal magnification to ``path``'s OME-XML
    (tifffile writes no Instrument), rewriting the first page's ImageDescription in place."""
    with tifffile.TiffFile(path) as tif:
        xml = tif.pages.first.description
    instrument = (
        '<Instrument ID="Instrument:0"><Objective ID="Objective:0" '
        f'NominalMagnification="{magnification:g}"/></Instrument>'
    )
    # Schema order: Instrument before the first Image; in Image, InstrumentRef and
    # ObjectiveSettings after Description and before Pixels.
    refs = '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings ID="Objective:0"/>'
    head, image, rest = xml.partition("<Image ")
    pixels_at = rest.index("<Pixels ")
    xml = head + instrument + image + rest[:pixels_at] + refs + rest[pixels_at:]
    tifffile.tiffcomment(path, xml.encode("utf-8"), pageindex=0)


class _open_writer:
    """``tifffile.TiffWriter`` on ``path``, turning a missing or read-only folder into
    :class:`OutputNotWritable`."""

    def __init__(self, path: Path, *, ome: bool) -> None:
        self.path, self.ome = path, ome

    def __enter__(self) -> tifffile.TiffWriter:
        parent = self.path.absolute().parent
        if not parent.is_dir():
            raise OutputNotWritable(
                f"cannot write {self.path}: folder {parent} does not exist; create it or choose "
                "another output path"
            )
        try:
            self.writer = tifffile.TiffWriter(self.path, bigtiff=True, ome=self.ome)
        except OSError as err:  # not allowed, or the disk is full / the file system refuses
            raise write_error(err, str(self.path)) from err
        return self.writer

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


def _windows(arr: Any, tile: int) -> Iterator[npt.NDArray[Any]]:
    """Blocks of ``tile`` rows by a few thousand columns, in tile row-major order.

    Each block is read in a background thread while the previous one is being compressed, so
    zarr decompression overlaps with tifffile's encoding. At most two blocks (a few MB) are in
    memory, whatever the slide width.
    """
    height, width = arr.shape[-2:]
    chunk_w = int(arr.chunks[-1]) if hasattr(arr, "chunks") else tile
    # Whole tiles and, where possible, whole zarr chunks per block.
    step = math.lcm(tile, chunk_w)
    window = max(step, _WINDOW_PX // step * step)
    starts = [(y, x) for y in range(0, height, tile) for x in range(0, width, window)]

    def read(i: int) -> npt.NDArray[Any]:
        y, x = starts[i]
        return np.asarray(arr[..., y : y + tile, x : x + window])

    with ThreadPoolExecutor(1, thread_name_prefix="wsi-fusion-tiff-read") as pool:
        pending: Future[npt.NDArray[Any]] = pool.submit(read, 0)
        for i in range(len(starts)):
            block = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(read, i + 1)
            yield block


def _iter_tiles(arr: Any, tile: int) -> Iterator[npt.NDArray[np.uint8]]:
    """Tiles of a (C, H, W) or (H, W) level as (tile, tile, C) or (tile, tile), row-major."""
    for block in _windows(arr, tile):
        if block.ndim == 3:
            block = block[0] if block.shape[0] == 1 else np.moveaxis(block, 0, -1)
        yield from _split(block, tile)


def _split(block: npt.NDArray[Any], tile: int) -> Iterator[npt.NDArray[Any]]:
    """Cut a block one tile high into tiles; edge tiles are padded by replicating the edge.

    tifffile would zero-pad them, and the step from image to black rings in JPEG tiles.
    """
    h, w = block.shape[:2]
    for x in range(0, w, tile):
        t = block[:, x : x + tile]
        if t.shape[0] != tile or t.shape[1] != tile:
            pad = [(0, tile - t.shape[0]), (0, tile - t.shape[1])] + [(0, 0)] * (t.ndim - 2)
            t = np.pad(t, pad, mode="edge")
        yield np.ascontiguousarray(t)
