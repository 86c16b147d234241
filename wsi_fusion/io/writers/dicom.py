"""DICOM whole-slide output: the fused pyramid as VL Whole Slide Microscopy Image instances.

:func:`write_dicom` is built on wsidicom: each finished OME-Zarr level is a wsidicom image data
read tile by tile (memory: one frame per worker), the datasets come from wsidicom's metadata model
and ``WsiDicom.save`` encodes (JPEG baseline 8-bit 4:2:2, or JPEG 2000 lossless) and writes one
instance per level, ``TILED_FULL``, 512 px frames, one brightfield optical path, with:

* Image Type ``DERIVED\\PRIMARY\\VOLUME\\NONE`` for level 0 and ``…\\RESAMPLED`` for the
  reduced levels; Pixel Spacing in mm from the mpp (``mpp * 2**level / 1000``);
* the focal-plane attributes of an extended-depth-of-field image (PS3.3 C.8.12.4, Whole Slide
  Microscopy Image module): Extended Depth of Field ``YES``, Number of Focal Planes (the planes
  fused), Distance Between Focal Planes (mm) when the input's plane positions are known, and one
  focal plane in the pixel matrix (Total Pixel Matrix Focal Planes 1).

:func:`write_dicom_instance` writes one instance with pydicom directly, with several focal planes
and ``TILED_FULL`` or ``TILED_SPARSE`` (per-frame positions; wsidicom's writer makes every
instance TILED_FULL): the tests write multi-focal inputs as scanners do with it.
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
from wsi_fusion.errors import OutputNotWritable, UnsupportedInput
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
    associated: Mapping[str, npt.NDArray[np.uint8]] | None = None,
    workers: int | None = None,
) -> list[Path]:
    """Write an OME-Zarr image pyramid as a DICOM WSI: one instance per level in ``folder``.

    Built on wsidicom: each zarr level is a wsidicom ``ImageData`` read tile by tile, the
    datasets come from wsidicom's metadata model (``WsiMetadata``: study, series, equipment,
    slide and specimen, pyramid, image), and ``WsiDicom.save`` encodes and writes the instances
    (Basic Offset Table), renamed ``level_<k>.dcm``. Two attributes wsidicom sets otherwise are
    corrected on each instance: Image Type starts with ``DERIVED`` on every level (wsidicom
    marks its level 0 ``ORIGINAL``), and Extended Depth of Field is ``YES`` when planes were
    fused (wsidicom 0.36 writes ``NO`` beside the number of planes).

    Parameters
    ----------
    group
        A finished image group (RGB ``(3, H, W)`` uint8 levels), or its path.
    folder
        Folder to write into (created if missing; the caller's ``.partial`` name is fine).
    mpp
        Microns per pixel at level 0 (DICOM WSI requires the pixel spacing).
    compression
        ``"jpeg"`` (JPEG baseline at ``jpeg_quality``, 4:2:2); any lossless TIFF choice
        (``deflate``, ``zstd``, ``lzw``, ``none`` — what ``--lossless`` sets) writes JPEG 2000
        lossless tiles.
    tile
        Frame side in pixels.
    focal_planes
        How many focal planes were fused into this image (Number of Focal Planes).
    focal_plane_distance_um
        Distance between those planes in µm, if known (Distance Between Focal Planes, in mm).
    name
        Series and pyramid description (the output's file name).
    source
        What the inputs said about the slide (``stack.source``): its ``vendor`` is named in the
        pyramid's comments (Manufacturer is this tool: it made the fused image).
    description
        Provenance; only its ``stack.source`` is used (as ``source``).
    associated
        The slide's associated images by name ((h, w, 3) uint8, as
        :func:`wsi_fusion.io.source_metadata.associated_images` gives them, without the label
        when it is to be left out): ``label`` becomes a LABEL instance (``label.dcm``),
        ``macro`` an OVERVIEW instance (``overview.dcm``), both one JPEG 2000 lossless frame
        (a barcode stays exact); other names are ignored (the smallest level is the thumbnail).
    workers
        Threads wsidicom encodes with (default: its own choice).

    Returns
    -------
    list of pathlib.Path
        The instance files, level 0 first, then ``label.dcm`` and ``overview.dcm`` if written.

    Raises
    ------
    UnsupportedInput
        When ``mpp`` is unknown or the image is not RGB.
    """
    from wsidicom import WsiDicom

    if not isinstance(group, zarr.Group):
        group = zarr.open_group(str(group), mode="r")
    from wsi_fusion.io.writers.ome_tiff import _levels_of

    levels = _levels_of(group)
    if levels[0].shape[0] != 3:
        raise UnsupportedInput("DICOM WSI output needs an RGB (3-channel) image")
    if mpp is None or not mpp > 0:
        raise UnsupportedInput(
            "DICOM WSI output needs the pixel size, and the input records no mpp; write "
            "OME-Zarr or TIFF instead"
        )
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
    title = (name or folder.name.removesuffix(".partial"))[:64]
    edf = focal_planes > 1
    distance_mm = (
        float(focal_plane_distance_um) / 1000
        if edf and focal_plane_distance_um is not None and focal_plane_distance_um > 0
        else None
    )
    encoder = _wsidicom_encoder(compression, jpeg_quality)
    data = [_ZarrLevel(arr, mpp * 2**k, tile, encoder) for k, arr in enumerate(levels)]
    metadata = _metadata(title, (source or {}).get("vendor"), focal_planes, distance_mm, data[0])
    extra = {
        _ASSOCIATED_TYPES[key]: _AssociatedImage(image)
        for key, image in (associated or {}).items()
        if key in _ASSOCIATED_TYPES
    }
    slide_source = _ZarrSource(metadata, data, focal_planes, distance_mm, extra)
    # wsidicom writes only into an empty folder, and ``folder`` may hold its owner's marker:
    # write into a fresh subfolder and move the instances up (renames on one file system).
    staging = folder / ".instances.partial"
    try:
        staging.mkdir()
        with WsiDicom(slide_source) as slide:
            written = slide.save(staging, workers=workers, include_thumbnails=False)
        paths = []
        # Named by level (wsidicom names them by SOP Instance UID), level 0 first, then the
        # label and the overview.
        kinds = {Path(str(p)): _image_kind(Path(str(p))) for p in written}
        volumes = sorted((p for p, kind in kinds.items() if kind == "VOLUME"), key=_level_order)
        names = {p: f"level_{level}.dcm" for level, p in enumerate(volumes)}
        names.update({p: f"{kind.lower()}.dcm" for p, kind in kinds.items() if kind != "VOLUME"})
        for instance in [*volumes, *sorted(set(kinds) - set(volumes), key=lambda p: names[p])]:
            paths.append(folder / names[instance])
            os.replace(instance, paths[-1])
        staging.rmdir()
    except OSError as err:
        raise write_error(err, str(folder)) from err
    logger.info("wrote DICOM WSI %s (%d levels, %s)", folder, len(paths), encoder.transfer_syntax)
    return paths


#: DICOM image type of each associated image carried (the macro is DICOM's OVERVIEW).
_ASSOCIATED_TYPES = {"label": "LABEL", "macro": "OVERVIEW"}


def _image_kind(path: Path) -> str:
    """Third value of an instance's Image Type: ``VOLUME``, ``LABEL`` or ``OVERVIEW``."""
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).ImageType[2])


def _level_order(path: Path) -> int:
    """Sort key of an instance file: larger pixel matrices (lower levels) first."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return -int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows)


def _wsidicom_encoder(compression: str, quality: int) -> Any:
    from wsidicom.codec import Encoder, Jpeg2kSettings, JpegSettings
    from wsidicom.codec.settings import Subsampling

    if compression == "jpeg":
        if not 1 <= quality <= 100:
            raise ValueError(f"jpeg_quality {quality} must be between 1 and 100")
        return Encoder.create_for_settings(
            JpegSettings(quality=quality, subsampling=Subsampling.R422)
        )
    return Encoder.create_for_settings(Jpeg2kSettings(levels=0))  # reversible: lossless


def _metadata(title: str, vendor: Any, planes: int, distance_mm: float | None, level0: Any) -> Any:
    """wsidicom ``WsiMetadata`` of the fused slide: new UIDs, empty patient and study fields
    (the IMS fills them in), this tool as the equipment, one unidentified specimen."""
    import datetime

    from pydicom.uid import generate_uid
    from wsidicom.metadata import (
        Equipment,
        ExtendedDepthOfField,
        FocusMethod,
        Image,
        Label,
        OpticalPath,
        Patient,
        Pyramid,
        Series,
        Slide,
        SlideSample,
        Study,
        WsiMetadata,
    )

    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    image = Image(
        acquisition_datetime=now,
        content_datetime=now,
        focus_method=FocusMethod.AUTO,
        extended_depth_of_field=ExtendedDepthOfField(planes, distance_mm or 0.0)
        if planes > 1
        else None,
        lossy_compressions=level0.lossy_compression,
    )
    return WsiMetadata(
        study=Study(uid=generate_uid()),
        series=Series(uid=generate_uid(), number=1, description=title),
        patient=Patient(),
        equipment=Equipment(
            manufacturer="wsi_fusion",
            model_name="wsi_fusion",
            device_serial_number="0",
            software_versions=[f"wsi_fusion {__version__}"],
        ),
        slide=Slide(
            identifier="UNKNOWN", samples=[SlideSample(identifier="UNKNOWN", uid=generate_uid())]
        ),
        pyramid=Pyramid(
            image=image,
            optical_paths=[OpticalPath()],
            uid=generate_uid(),
            description=title,
            comments=f"extended depth of field: {planes} focal planes fused by wsi_fusion"
            + (f" from a {vendor} scan" if vendor else ""),
        ),
        label=Label(),
        frame_of_reference_uid=generate_uid(),
        dimension_organization_uids=[generate_uid()],
    )


def _wsidicom_image_data() -> Any:
    from wsidicom.instance import ImageData

    return ImageData


class _ZarrLevel(_wsidicom_image_data()):  # type: ignore[misc]
    """One zarr pyramid level as wsidicom image data: ``tile`` × ``tile`` RGB frames, edge
    frames padded by repeating the edge (as the TIFF writers do)."""

    def __init__(self, arr: Any, mpp_um: float, tile: int, encoder: Any) -> None:
        super().__init__(encoder)
        self._arr, self._mpp, self._tile = arr, mpp_um, tile
        self._ratio: float | None = None

    @property
    def transfer_syntax(self) -> Any:
        return self.encoder.transfer_syntax

    @property
    def image_size(self) -> Any:
        from wsidicom.geometry import Size

        return Size(int(self._arr.shape[-1]), int(self._arr.shape[-2]))

    @property
    def tile_size(self) -> Any:
        from wsidicom.geometry import Size

        return Size(self._tile, self._tile)

    @property
    def pixel_spacing(self) -> Any:
        from wsidicom.geometry import SizeMm

        return SizeMm(self._mpp / 1000, self._mpp / 1000)

    @property
    def imaged_size(self) -> None:
        return None

    @property
    def samples_per_pixel(self) -> int:
        return 3

    @property
    def photometric_interpretation(self) -> str:
        return str(self.encoder.photometric_interpretation)

    @property
    def bits(self) -> int:
        return 8

    @property
    def image_coordinate_system(self) -> None:
        return None

    @property
    def thread_safe(self) -> bool:
        return True

    @property
    def lossy_compression(self) -> Any:
        from wsidicom.metadata import LossyCompression

        method = self.encoder.lossy_method
        if method is None:
            return None
        if self._ratio is None:
            # Lossy Image Compression Ratio, estimated from up to 16 frames across the level.
            h, w = (int(s) for s in self._arr.shape[-2:])
            rows, cols = -(-h // self._tile), -(-w // self._tile)
            picks = {(r * rows // 4, c * cols // 4) for r in range(4) for c in range(4)}
            raw = encoded = 0
            for r, c in sorted(picks):
                frame = self._frame(r, c)
                raw += frame.nbytes
                encoded += len(self.encoder.encode(frame))
            self._ratio = round(raw / max(encoded, 1), 1)
        return [LossyCompression(method, self._ratio)]

    @property
    def transcoder(self) -> None:
        return None

    def _frame(self, row: int, col: int) -> npt.NDArray[np.uint8]:
        t = self._tile
        block = np.moveaxis(
            np.asarray(self._arr[:, row * t : (row + 1) * t, col * t : (col + 1) * t]), 0, -1
        )
        if block.shape[:2] != (t, t):
            pad = [(0, t - block.shape[0]), (0, t - block.shape[1]), (0, 0)]
            block = np.pad(block, pad, mode="edge")
        return np.ascontiguousarray(block, dtype=np.uint8)

    def get_decoded_tile(
        self, tile_point: Any, z: float, path: str, cache: bool = True
    ) -> npt.NDArray[np.uint8]:
        return self._frame(int(tile_point.y), int(tile_point.x))

    def get_encoded_tile(self, tile: Any, z: float, path: str) -> bytes:
        return bytes(self.encoder.encode(self._frame(int(tile.y), int(tile.x))))


class _AssociatedImage(_ZarrLevel):
    """A label or overview image as wsidicom image data: one JPEG 2000 lossless frame, no
    pixel spacing (it is a photograph of the slide, not of the imaged area)."""

    def __init__(self, image: npt.NDArray[np.uint8]) -> None:
        pixels = np.moveaxis(np.asarray(image, dtype=np.uint8)[..., :3], -1, 0)
        super().__init__(pixels, 0.0, max(pixels.shape[1:]), _wsidicom_encoder("lossless", 0))

    @property
    def tile_size(self) -> Any:
        return self.image_size

    def _frame(self, row: int, col: int) -> npt.NDArray[np.uint8]:
        return np.ascontiguousarray(np.moveaxis(np.asarray(self._arr), 0, -1))

    @property
    def pixel_spacing(self) -> None:
        return None


def _wsidicom_source() -> Any:
    from wsidicom.source import Source

    return Source


class _ZarrSource(_wsidicom_source()):  # type: ignore[misc]
    """A wsidicom source whose only series is the fused pyramid."""

    def __init__(
        self,
        metadata: Any,
        levels: Sequence[Any],
        planes: int,
        distance_mm: float | None,
        associated: Mapping[str, Any] | None = None,
    ) -> None:
        import copy

        from wsidicom.instance import WsiDataset, WsiInstance
        from wsidicom.instance.dataset import ImageType
        from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema

        super().__init__()
        base = WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME)
        self._levels = []
        if distance_mm is None and "DistanceBetweenFocalPlanes" in base:
            # Type 1C with EDF YES, but only "if known": left out rather than written as 0.
            del base.DistanceBetweenFocalPlanes
        self._base = WsiDataset(base)
        for index, data in enumerate(levels):
            dataset = WsiDataset.create_instance_dataset(
                copy.deepcopy(base), ImageType.VOLUME, data, index
            )
            # A fused image is derived on every level (wsidicom marks level 0 ORIGINAL), and
            # wsidicom 0.36 writes Extended Depth of Field NO whatever the metadata says.
            kind = ["DERIVED", "PRIMARY", "VOLUME", "NONE" if index == 0 else "RESAMPLED"]
            edf = "YES" if planes > 1 else "NO"
            dataset = dataset.replace({"ImageType": kind, "ExtendedDepthOfField": edf})
            self._levels.append(WsiInstance(dataset, data))
        self._associated: dict[str, list[Any]] = {"LABEL": [], "OVERVIEW": []}
        # The scanner's label and overview, copied losslessly: wsidicom marks them ORIGINAL.
        for image_kind, data in (associated or {}).items():
            image_type = ImageType[image_kind]
            dataset = WsiDataset.create_instance_dataset(
                WsiMetadataDicomSchema().dump(metadata, image_type), image_type, data, 0
            )
            self._associated[image_kind].append(WsiInstance(dataset, data))

    @property
    def base_dataset(self) -> Any:
        return self._base

    @property
    def level_instances(self) -> list[Any]:
        return self._levels

    @property
    def label_instances(self) -> list[Any]:
        return self._associated["LABEL"]

    @property
    def overview_instances(self) -> list[Any]:
        return self._associated["OVERVIEW"]

    @property
    def thumbnail_instances(self) -> list[Any]:
        return []

    @property
    def annotation_instances(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


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
    missing: frozenset[tuple[int, int, int]] = frozenset(),
) -> Path:
    """Write one VL Whole Slide Microscopy Image instance from ``(tile, tile, 3)`` frames.

    ``frames`` come in TILED_FULL order: columns fastest, then tile rows, then the focal planes
    of ``z_positions_um`` (µm); edge tiles are padded to ``tile``. ``uids`` holds ``study``,
    ``series``, ``frame`` (frame of reference) and ``dimension`` (organization) UIDs shared by
    the instances of one slide. ``TILED_SPARSE`` writes the same frames with a per-frame
    position (Plane Position (Slide) and Dimension Index Values) for each, leaving out the
    ``missing`` ``(plane, row, column)`` tiles (as scanners leave out empty glass); ``frames``
    and ``n_frames`` then exclude them.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, generate_uid

    path = Path(path)
    h, w = size_hw
    rows, cols = -(-h // tile), -(-w // tile)
    nz = len(z_positions_um)
    if missing and organization != "TILED_SPARSE":
        raise ValueError("only a TILED_SPARSE instance can leave tiles out")
    if n_frames != rows * cols * nz - len(missing):
        raise ValueError(f"{n_frames} frames given for {nz} plane(s) of {rows} x {cols} tiles")
    syntax, photometric = _SYNTAX[codec]
    # SpacingBetweenSlices (a sparse instance may list its planes in any order).
    z_step_mm = (max(z_positions_um) - min(z_positions_um)) / (nz - 1) / 1000 if nz > 1 else None

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
                    if (z, r, c) in missing:
                        continue
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
