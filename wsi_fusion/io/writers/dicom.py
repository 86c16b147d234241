"""DICOM whole-slide output: the fused pyramid as VL Whole Slide Microscopy Image instances.

One instance (one ``.dcm`` file) per pyramid level, all of one series, streamed tile by tile from
the finished OME-Zarr levels like the TIFF writers (memory: one band of tiles). Datasets are built
with pydicom, tiles are encoded with imagecodecs (JPEG baseline 8-bit, or JPEG 2000 lossless),
and the result is what wsidicom, OpenSlide (libdicom) and DICOM image management systems read:

* SOP class VL Whole Slide Microscopy Image Storage, Modality SM, ``TILED_FULL`` frames of
  512 px (columns fastest, then rows, then focal planes), one optical path (brightfield);
* Image Type ``DERIVED\\PRIMARY\\VOLUME\\NONE`` for level 0 and ``…\\RESAMPLED`` for the reduced
  levels; Pixel Spacing in mm from the mpp (``mpp * 2**level / 1000``);
* the focal-plane attributes of an extended-depth-of-field image (PS3.3 C.8.12.4, Whole Slide
  Microscopy Image module): Extended Depth of Field ``YES``, Number of Focal Planes (the planes
  fused), Distance Between Focal Planes (mm) when the input's plane positions are known, and one
  focal plane in the pixel matrix (Total Pixel Matrix Focal Planes 1).

:func:`write_dicom_instance` also writes several focal planes per instance and ``TILED_SPARSE``
(per-frame positions), which the tests use to write multi-focal inputs as scanners do.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr

from wsi_fusion import __version__
from wsi_fusion.errors import OutputNotWritable
from wsi_fusion.io.storage_errors import write_error

__all__ = ["DicomCodec", "write_dicom", "write_dicom_instance"]

logger = logging.getLogger(__name__)

DicomCodec = Literal["jpeg", "jpeg2000", "jpeg2000-lossless", "none"]

#: Transfer syntax and photometric interpretation of each tile codec.
_SYNTAX: dict[str, tuple[str, str]] = {
    "jpeg": ("1.2.840.10008.1.2.4.50", "YBR_FULL_422"),  # JPEG Baseline (Process 1)
    "jpeg2000": ("1.2.840.10008.1.2.4.91", "YBR_ICT"),  # JPEG 2000 (lossy)
    "jpeg2000-lossless": ("1.2.840.10008.1.2.4.90", "YBR_RCT"),  # JPEG 2000 Lossless Only
    "none": ("1.2.840.10008.1.2.1", "RGB"),  # Explicit VR Little Endian
}
_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: Tiles encoded per batch (in parallel threads: imagecodecs releases the GIL).
_BATCH = 64


def write_dicom(
    group: zarr.Group | str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    mpp: float | None,
    compression: str = "jpeg",
    jpeg_quality: int = 90,
    tile: int = 512,
    focal_planes: int = 1,
    focal_plane_distance_um: float | None = None,
    name: str | None = None,
    source: Mapping[str, Any] | None = None,
    description: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write an OME-Zarr image pyramid as a DICOM WSI: ``folder/level_<k>.dcm`` per level.

    Parameters
    ----------
    group
        A finished image group (RGB ``(3, H, W)`` uint8 levels), or its path.
    folder
        Folder to write into (created if missing; the caller's ``.partial`` name is fine).
    mpp
        Microns per pixel at level 0; ``None`` writes no Pixel Spacing (viewers then show no
        scale).
    compression
        ``"jpeg"`` (JPEG baseline at ``jpeg_quality``); any lossless TIFF choice (``deflate``,
        ``zstd``, ``lzw``, ``none`` — what ``--lossless`` sets) writes JPEG 2000 lossless tiles.
    focal_planes
        How many focal planes were fused into this image (Number of Focal Planes).
    focal_plane_distance_um
        Distance between those planes in µm, if known (Distance Between Focal Planes, in mm).
    name
        Container / series description (the output's file name).
    source
        What the inputs said about the slide (``stack.source``): its ``vendor`` is named in Image
        Comments (Manufacturer is this tool: it made the fused image).
    description
        Provenance; only its ``stack.source`` is used (as ``source``).

    Returns
    -------
    list of pathlib.Path
        The instance files, level 0 first.
    """
    from pydicom.uid import generate_uid

    if not isinstance(group, zarr.Group):
        group = zarr.open_group(str(group), mode="r")
    from wsi_fusion.io.writers.ome_tiff import _iter_tiles, _levels_of

    levels = _levels_of(group)
    if levels[0].shape[0] != 3:
        raise ValueError("DICOM WSI output needs an RGB (3-channel) image")
    codec: DicomCodec = "jpeg" if compression == "jpeg" else "jpeg2000-lossless"
    folder = Path(folder)
    parent = folder.absolute().parent
    if not parent.is_dir():
        raise OutputNotWritable(
            f"cannot write {folder}: folder {parent} does not exist; create it or choose another "
            "output path"
        )
    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise write_error(err, str(folder)) from err
    if source is None and description is not None:
        source = (description.get("stack") or {}).get("source")
    uids = {k: str(generate_uid()) for k in ("study", "series", "frame", "dimension")}
    # Number of / Distance Between Focal Planes are required only (type 1C) with EDF YES.
    edf: dict[str, Any] = {"ExtendedDepthOfField": "YES" if focal_planes > 1 else "NO"}
    if focal_planes > 1:
        edf["NumberOfFocalPlanes"] = int(focal_planes)
    if focal_planes > 1 and focal_plane_distance_um is not None and focal_plane_distance_um > 0:
        edf["DistanceBetweenFocalPlanes"] = float(focal_plane_distance_um) / 1000
    extra: dict[str, Any] = {
        "SeriesDescription": (name or folder.name.removesuffix(".partial"))[:64],
        **edf,
    }
    if (source or {}).get("vendor"):
        # The fused image's equipment is this tool; the scanner's vendor goes in the free text.
        extra["ImageComments"] = f"fused from a {source['vendor']} scan"[:10240]  # type: ignore[index]
    paths = []
    for level, arr in enumerate(levels):
        h, w = (int(s) for s in arr.shape[-2:])
        rows, cols = -(-h // tile), -(-w // tile)
        path = folder / f"level_{level}.dcm"
        write_dicom_instance(
            path,
            _iter_tiles(arr, tile),
            size_hw=(h, w),
            tile=tile,
            n_frames=rows * cols,
            codec=codec,
            jpeg_quality=jpeg_quality,
            mpp=None if mpp is None else mpp * 2**level,
            uids=uids,
            image_type=["DERIVED", "PRIMARY", "VOLUME", "NONE" if level == 0 else "RESAMPLED"],
            instance_number=level + 1,
            extra=extra,
        )
        paths.append(path)
    logger.info("wrote DICOM WSI %s (%d levels, %s)", folder, len(levels), codec)
    return paths


def write_dicom_instance(
    path: str | os.PathLike[str],
    frames: Iterable[npt.NDArray[np.uint8]],
    *,
    size_hw: tuple[int, int],
    tile: int,
    n_frames: int,
    codec: DicomCodec = "jpeg",
    jpeg_quality: int = 90,
    mpp: float | None,
    uids: Mapping[str, str],
    z_positions_um: Sequence[float] = (0.0,),
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE"),
    organization: Literal["TILED_FULL", "TILED_SPARSE"] = "TILED_FULL",
    instance_number: int = 1,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one VL Whole Slide Microscopy Image instance from ``(tile, tile, 3)`` frames.

    ``frames`` come in TILED_FULL order: columns fastest, then tile rows, then the focal planes
    of ``z_positions_um`` (µm); edge tiles are padded to ``tile``. ``uids`` holds ``study``,
    ``series``, ``frame`` (frame of reference) and ``dimension`` (organization) UIDs shared by
    the instances of one slide. ``TILED_SPARSE`` writes the same frames with a per-frame
    position (Plane Position (Slide) and Dimension Index Values) for each.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, generate_uid

    path = Path(path)
    h, w = size_hw
    rows, cols = -(-h // tile), -(-w // tile)
    nz = len(z_positions_um)
    if n_frames != rows * cols * nz:
        raise ValueError(f"{n_frames} frames given for {nz} plane(s) of {rows} x {cols} tiles")
    syntax, photometric = _SYNTAX[codec]
    z_step_mm = (
        float(np.mean(np.diff(z_positions_um))) / 1000 if nz > 1 else None
    )  # SpacingBetweenSlices

    def item(**values: Any) -> Dataset:
        ds = Dataset()
        for key, value in values.items():
            setattr(ds, key, value)
        return ds

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(_WSI_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationVersionName = f"WSI_FUSION_{__version__}"[:16]
    ds = item(
        SOPClassUID=_WSI_SOP_CLASS,
        SOPInstanceUID=meta.MediaStorageSOPInstanceUID,
        StudyInstanceUID=uids["study"],
        SeriesInstanceUID=uids["series"],
        FrameOfReferenceUID=uids["frame"],
        Modality="SM",
        ImageType=list(image_type),
        Manufacturer="wsi_fusion",
        SoftwareVersions=f"wsi_fusion {__version__}",
        PatientName="",
        PatientID="",
        PatientBirthDate="",
        PatientSex="",
        StudyID="",
        AccessionNumber="",
        ReferringPhysicianName="",
        StudyDate="",
        StudyTime="",
        ContentDate=time.strftime("%Y%m%d"),
        ContentTime=time.strftime("%H%M%S"),
        AcquisitionDateTime=time.strftime("%Y%m%d%H%M%S"),
        InstanceNumber=instance_number,
        SeriesNumber=1,
        ContainerIdentifier="UNKNOWN",
        IssuerOfTheContainerIdentifierSequence=DicomSequence(),
        ContainerTypeCodeSequence=DicomSequence(
            [
                item(
                    CodeValue="433466003",
                    CodingSchemeDesignator="SCT",
                    CodeMeaning="Microscope slide",
                )
            ]
        ),
        SpecimenDescriptionSequence=DicomSequence(),
        PositionReferenceIndicator="SLIDE_CORNER",
        VolumetricProperties="VOLUME",
        BurnedInAnnotation="NO",
        SpecimenLabelInImage="NO",
        FocusMethod="AUTO",
        ExtendedDepthOfField="NO",
        SamplesPerPixel=3,
        PhotometricInterpretation=photometric,
        PlanarConfiguration=0,
        NumberOfFrames=n_frames,
        Rows=tile,
        Columns=tile,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
        LossyImageCompression="01" if codec in ("jpeg", "jpeg2000") else "00",
        TotalPixelMatrixColumns=w,
        TotalPixelMatrixRows=h,
        TotalPixelMatrixFocalPlanes=nz,
        NumberOfOpticalPaths=1,
        DimensionOrganizationType=organization,
        DimensionOrganizationSequence=DicomSequence(
            [item(DimensionOrganizationUID=uids["dimension"])]
        ),
        TotalPixelMatrixOriginSequence=DicomSequence(
            [item(XOffsetInSlideCoordinateSystem=0.0, YOffsetInSlideCoordinateSystem=0.0)]
        ),
        ImageOrientationSlide=[0, -1, 0, -1, 0, 0],
        OpticalPathSequence=DicomSequence(
            [
                item(
                    OpticalPathIdentifier="0",
                    IlluminationTypeCodeSequence=DicomSequence(
                        [
                            item(
                                CodeValue="111744",
                                CodingSchemeDesignator="DCM",
                                CodeMeaning="Brightfield illumination",
                            )
                        ]
                    ),
                    IlluminationColorCodeSequence=DicomSequence(
                        [
                            item(
                                CodeValue="414298005",
                                CodingSchemeDesignator="SCT",
                                CodeMeaning="Full Spectrum",
                            )
                        ]
                    ),
                )
            ]
        ),
    )
    if codec in ("jpeg", "jpeg2000"):
        ds.LossyImageCompressionMethod = "ISO_10918_1" if codec == "jpeg" else "ISO_15444_1"
    measures = item(SliceThickness=(z_step_mm or 0.001))
    if mpp is not None:
        measures.PixelSpacing = [mpp / 1000, mpp / 1000]
        ds.ImagedVolumeWidth = w * mpp / 1000
        ds.ImagedVolumeHeight = h * mpp / 1000
    if z_step_mm is not None:
        measures.SpacingBetweenSlices = z_step_mm
    ds.ImagedVolumeDepth = max(nz - 1, 1) * (z_step_mm or 0.001)
    ds.SharedFunctionalGroupsSequence = DicomSequence(
        [
            item(
                PixelMeasuresSequence=DicomSequence([measures]),
                WholeSlideMicroscopyImageFrameTypeSequence=DicomSequence(
                    [item(FrameType=list(image_type))]
                ),
            )
        ]
    )
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if organization == "TILED_SPARSE":
        per_frame = []
        for z in range(nz):
            for r in range(rows):
                for c in range(cols):
                    position = item(
                        ColumnPositionInTotalImagePixelMatrix=c * tile + 1,
                        RowPositionInTotalImagePixelMatrix=r * tile + 1,
                        # Slide coordinates in mm; image rows run along slide x here
                        # (ImageOrientationSlide 0\-1\0\-1\0\0).
                        XOffsetInSlideCoordinateSystem=r * tile * (mpp or 1) / 1000,
                        YOffsetInSlideCoordinateSystem=c * tile * (mpp or 1) / 1000,
                        ZOffsetInSlideCoordinateSystem=float(z_positions_um[z]),
                    )
                    per_frame.append(
                        item(
                            FrameContentSequence=DicomSequence(
                                [item(DimensionIndexValues=[c + 1, r + 1, z + 1])]
                            ),
                            PlanePositionSlideSequence=DicomSequence([position]),
                        )
                    )
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
        ds.DimensionIndexSequence = DicomSequence(
            [
                item(
                    DimensionOrganizationUID=uids["dimension"],
                    DimensionIndexPointer=pointer,
                    FunctionalGroupPointer=0x0048021A,  # PlanePositionSlideSequence
                )
                for pointer in (0x0048021E, 0x0048021F, 0x0040074A)
            ]
        )
    elif nz > 1:
        # TILED_FULL with several planes: plane i at origin z + i * SpacingBetweenSlices.
        ds.TotalPixelMatrixOriginSequence[0].ZOffsetInSlideCoordinateSystem = float(
            z_positions_um[0]
        )
    ds.file_meta = meta
    try:
        ds.save_as(path, enforce_file_format=True)
        with path.open("r+b") as fh:
            fh.seek(0, os.SEEK_END)
            _append_pixel_data(fh, _encoded(frames, codec, jpeg_quality), n_frames, codec, tile)
    except OSError as err:
        raise write_error(err, str(path)) from err
    logger.debug("DICOM instance %s: %d x %d, %d frame(s), %s", path, w, h, n_frames, codec)
    return path


def _encoded(frames: Iterable[npt.NDArray[np.uint8]], codec: str, quality: int) -> Iterator[bytes]:
    """Encoded frames in order, a batch at a time in parallel."""
    import imagecodecs

    def encode(frame: npt.NDArray[np.uint8]) -> bytes:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if codec == "jpeg":
            return bytes(imagecodecs.jpeg8_encode(frame, level=quality, subsampling="422"))
        if codec == "jpeg2000":
            return bytes(
                imagecodecs.jpeg2k_encode(frame, level=40, codecformat="J2K", reversible=False)
            )
        if codec == "jpeg2000-lossless":
            return bytes(imagecodecs.jpeg2k_encode(frame, codecformat="J2K", reversible=True))
        return frame.tobytes()

    it = iter(frames)
    with ThreadPoolExecutor(2, thread_name_prefix="wsi-fusion-dicom-encode") as pool:
        while batch := list(islice(it, _BATCH)):
            yield from pool.map(encode, batch)


def _append_pixel_data(
    fh: Any, frames: Iterator[bytes], n_frames: int, codec: str, tile: int
) -> None:
    """Append (7FE0,0010) Pixel Data, explicit VR little endian, to an open file's end.

    Encapsulated codecs: a Basic Offset Table (filled in once the frame sizes are known, left
    empty past 4 GiB where its 32-bit offsets overflow), one fragment per frame, a sequence
    delimiter. Uncompressed: one OB value of every frame.
    """
    tag = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00"
    if codec == "none":
        fh.write(tag + struct.pack("<I", n_frames * tile * tile * 3))
        for frame in frames:
            fh.write(frame)
        return
    fh.write(tag + b"\xff\xff\xff\xff")
    # Its offsets are 32-bit: an instance that could pass 4 GiB gets an empty table (allowed;
    # readers then find the frames by walking the fragments).
    table = n_frames * tile * tile * 3 * 1.25 + 8 * n_frames < 2**32
    bot_at = fh.tell()
    bot_len = 4 * n_frames if table else 0
    fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, bot_len) + b"\x00" * bot_len)
    offsets, position = [], 0
    for frame in frames:
        if len(frame) % 2:
            frame += b"\x00"
        offsets.append(position)
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(frame)) + frame)
        position += 8 + len(frame)
    fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    if len(offsets) != n_frames:
        raise ValueError(f"{len(offsets)} frames written, {n_frames} declared")
    if table:
        end = fh.tell()
        fh.seek(bot_at + 8)
        fh.write(struct.pack(f"<{n_frames}I", *offsets))
        fh.seek(end)
