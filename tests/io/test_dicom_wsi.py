"""DICOM WSI: the ``--format dicom`` output read back by wsidicom, pydicom and OpenSlide, and
multi-focal DICOM inputs as scanners write them (JPEG / JPEG 2000, TILED_FULL / TILED_SPARSE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import tifffile
import zarr

from wsi_fusion._types import Box
from wsi_fusion.config import RunConfig
from wsi_fusion.errors import OutputExists
from wsi_fusion.io.destination import format_from_suffix
from wsi_fusion.io.publication import trusted_record
from wsi_fusion.io.readers import describe_stack, open_stack
from wsi_fusion.io.writers.dicom import write_dicom, write_dicom_instance
from wsi_fusion.io.writers.ome_zarr import build_pyramid, create_image
from wsi_fusion.pipeline import fuse_slide

MPP = 0.25


def smooth_planes(n: int, h: int, w: int) -> npt.NDArray[np.uint8]:
    """(n, h, w, 3) smooth colour images, each plane clearly different (JPEG keeps them within a
    few levels; a wrong plane or offset is off by tens)."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    planes = []
    for z in range(n):
        r = 128 + 100 * np.sin(x / (23 + 9 * z) + z)
        g = 128 + 100 * np.cos(y / (31 + 7 * z) - 2 * z)
        b = 128 + 90 * np.sin((x + y) / (41 + 5 * z) + 3 * z)
        planes.append(np.stack([r, g, b], -1))
    return np.clip(np.round(planes), 0, 255).astype(np.uint8)


def _pyramid(tmp_path: Path) -> tuple[zarr.Group, npt.NDArray[np.uint8]]:
    image = smooth_planes(1, 600, 700)[0]
    group = create_image(tmp_path / "img.ome.zarr", (3, 600, 700), chunk=256, mpp=MPP, min_side=160)
    group["0"][:] = np.moveaxis(image, -1, 0)
    build_pyramid(group, compute=True)
    return group, image


def _diff(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> tuple[float, int]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), int(d.max())


# ---- output ------------------------------------------------------------------------------------


def test_dicom_output_in_wsidicom_pydicom_and_openslide(tmp_path: Path) -> None:
    from wsidicom import WsiDicom

    group, image = _pyramid(tmp_path)
    folder = tmp_path / "out.dicom"
    files = write_dicom(
        group, folder, mpp=MPP, focal_planes=5, focal_plane_distance_um=1.5, name="out.dicom"
    )
    shapes = [tuple(group[str(k)].shape[-2:]) for k in range(len(files))]
    assert len(files) == 4 and shapes[0] == (600, 700)

    with WsiDicom.open(folder) as slide:
        assert [(lv.size.height, lv.size.width) for lv in slide.levels] == shapes
        assert float(slide.mpp.width) == pytest.approx(MPP)
        for k, level in enumerate(slide.levels):
            assert float(level.pixel_spacing.width) == pytest.approx(MPP * 2**k / 1000)
        got = np.asarray(slide.read_region((0, 0), 0, (700, 600)))[..., :3]
    mean, worst = _diff(got, image)
    assert mean < 2 and worst < 40  # JPEG q90, 4:2:2

    for k, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6" and ds.Modality == "SM"
        assert list(ds.ImageType) == [
            "DERIVED",
            "PRIMARY",
            "VOLUME",
            "NONE" if k == 0 else "RESAMPLED",
        ]
        assert ds.ExtendedDepthOfField == "YES" and ds.NumberOfFocalPlanes == 5
        assert float(ds.DistanceBetweenFocalPlanes) == pytest.approx(0.0015)  # mm
        assert ds.TotalPixelMatrixFocalPlanes == 1 and ds.DimensionOrganizationType == "TILED_FULL"
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert [float(s) for s in spacing] == pytest.approx([MPP * 2**k / 1000] * 2)

    openslide = pytest.importorskip("openslide")
    try:
        slide = openslide.OpenSlide(str(files[0]))
    except openslide.OpenSlideUnsupportedFormatError:
        pytest.skip(f"OpenSlide {openslide.__library_version__} does not read DICOM WSI")
    with slide:
        assert slide.properties["openslide.vendor"] == "dicom"
        assert slide.level_dimensions == tuple((w, h) for h, w in shapes)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        got = np.asarray(slide.read_region((0, 0), 0, (700, 600)))[..., :3]
    mean, worst = _diff(got, image)
    assert mean < 2 and worst < 40


def test_lossless_dicom_output_is_exact(tmp_path: Path) -> None:
    from wsidicom import WsiDicom

    group, image = _pyramid(tmp_path)
    files = write_dicom(group, tmp_path / "out.dicom", mpp=MPP, compression="deflate")
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    with WsiDicom.open(tmp_path / "out.dicom") as slide:
        np.testing.assert_array_equal(
            np.asarray(slide.read_region((0, 0), 0, (700, 600)))[..., :3], image
        )
        level1 = np.moveaxis(np.asarray(group["1"]), 0, -1)
        np.testing.assert_array_equal(
            np.asarray(slide.read_region((0, 0), 1, (350, 300)))[..., :3], level1
        )
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.ExtendedDepthOfField == "NO" and "NumberOfFocalPlanes" not in ds  # one plane


def _label_and_macro() -> dict[str, npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)  # noise: any loss would show
    macro = smooth_planes(1, 80, 220)[0]
    return {"label": label, "macro": macro, "thumbnail": macro[:40, :40]}


def test_label_and_macro_become_label_and_overview_instances(tmp_path: Path) -> None:
    from wsidicom import WsiDicom

    group, _ = _pyramid(tmp_path)
    folder = tmp_path / "out.dicom"
    images = _label_and_macro()
    files = write_dicom(group, folder, mpp=MPP, focal_planes=3, associated=images)
    # No thumbnail instance: the smallest level is one.
    levels = [f"level_{k}.dcm" for k in range(4)]
    assert [f.name for f in files] == [*levels, "label.dcm", "overview.dcm"]
    series = {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}
    assert len(series) == 1
    for name, kind in (("label.dcm", "LABEL"), ("overview.dcm", "OVERVIEW")):
        ds = pydicom.dcmread(folder / name, stop_before_pixels=True)
        # The scanner's own image, copied losslessly (the fused levels are DERIVED).
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", kind, "NONE"]
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # J2K lossless
        assert ds.NumberOfFrames == 1
    with WsiDicom.open(folder) as slide:
        assert len(slide.levels) == 4
        np.testing.assert_array_equal(np.asarray(slide.read_label())[..., :3], images["label"])
        np.testing.assert_array_equal(np.asarray(slide.read_overview())[..., :3], images["macro"])
    with open_stack([folder]) as stack:  # still read back as the one fused plane
        assert stack.n_planes == 1 and tuple(stack.shape[:2]) == (600, 700)

    openslide = pytest.importorskip("openslide")
    try:
        slide = openslide.OpenSlide(str(files[0]))
    except openslide.OpenSlideUnsupportedFormatError:
        pytest.skip(f"OpenSlide {openslide.__library_version__} does not read DICOM WSI")
    with slide:
        assert slide.level_count == 4
        assoc = slide.associated_images
        assert set(assoc) >= {"label", "macro"}
        np.testing.assert_array_equal(np.asarray(assoc["label"])[..., :3], images["label"])
        np.testing.assert_array_equal(np.asarray(assoc["macro"])[..., :3], images["macro"])


def test_no_label_image_writes_only_the_overview(tmp_path: Path) -> None:
    """What the pipeline passes with --no-label (associated images without ``label``)."""
    group, _ = _pyramid(tmp_path)
    images = _label_and_macro()
    del images["label"]
    files = write_dicom(group, tmp_path / "out.dicom", mpp=MPP, associated=images)
    assert [f.name for f in files][-2:] == ["level_3.dcm", "overview.dcm"]
    kinds = [pydicom.dcmread(f, stop_before_pixels=True).ImageType[2] for f in files]
    assert "LABEL" not in kinds


def test_fuse_slide_to_dicom_publishes_a_folder_with_its_record(tmp_path: Path) -> None:
    from wsidicom import WsiDicom

    planes = smooth_planes(3, 300, 400)
    stack = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        stack,
        planes,
        photometric="rgb",
        tile=(128, 128),
        metadata={"axes": "ZYXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
    )
    assert format_from_suffix(Path("x.dicom")) == "dicom"
    out = tmp_path / "fused.dicom"
    config = RunConfig(
        fuser="plane",
        fuser_params={"index": 1},
        tissue={"enabled": False},
        registration={"mode": "off"},
        tile=256,
        overlap=64,
        chunk=256,
        compression="deflate",  # --lossless
        focus_map=True,
    )
    report = fuse_slide([stack], out, config)
    assert report.format == "dicom" and out.is_dir()
    assert not (tmp_path / "fused.dicom.partial").exists()
    assert not (tmp_path / "fused.dicom.cache").exists()
    run = json.loads((tmp_path / "fused.dicom.run.json").read_text())
    assert run["report"]["format"] == "dicom"
    record = trusted_record(out)  # the record inside the folder (its marker)
    assert record is not None and record["report"]["format"] == "dicom"
    focus = tmp_path / "fused.dicom.focus.tif"
    assert report.extra_outputs == [focus]
    assert [f["name"] for f in record["publication"]["files"]] == [focus.name]
    assert (tifffile.imread(focus) == 1).all()
    with WsiDicom.open(out) as slide:
        assert float(slide.mpp.width) == pytest.approx(0.5)
        np.testing.assert_array_equal(
            np.asarray(slide.read_region((0, 0), 0, (400, 300)))[..., :3], planes[1]
        )
    ds = pydicom.dcmread(out / "level_0.dcm", stop_before_pixels=True)
    assert ds.ExtendedDepthOfField == "YES" and ds.NumberOfFocalPlanes == 3
    assert float(ds.DistanceBetweenFocalPlanes) == pytest.approx(0.002)
    assert ds.SeriesDescription == "fused.dicom"
    openslide = pytest.importorskip("openslide")
    # OpenSlide opens one instance and finds the others (and ignores the .wsi_fusion marker).
    with openslide.OpenSlide(str(out / "level_0.dcm")) as slide:
        assert slide.level_dimensions[0] == (400, 300) and slide.level_count >= 1
        got = np.asarray(slide.read_region((0, 0), 0, (400, 300)))[..., :3]
        np.testing.assert_array_equal(got, planes[1])  # JPEG 2000 lossless

    with pytest.raises(OutputExists):
        fuse_slide([stack], out, config)
    fuse_slide([stack], out, config, overwrite=True)
    assert trusted_record(out) is not None and not (tmp_path / "fused.dicom.old").exists()
    focus.unlink()  # a publication missing a file it lists is not trusted
    assert trusted_record(out) is None
    # A fused DICOM output is itself a valid single-plane input.
    with open_stack([out]) as fused:
        assert fused.n_planes == 1 and fused.shape == (300, 400)


# ---- multi-focal inputs ------------------------------------------------------------------------


def _write_multifocal(
    folder: Path,
    planes: npt.NDArray[np.uint8],
    z_um: list[float],
    *,
    codec: str,
    organization: str,
    tile: int = 128,
    mpp: float = 0.5,
    missing: frozenset[tuple[int, int, int]] = frozenset(),
) -> None:
    """One instance per level (2 levels), every focal plane in each; frames in the order of
    ``z_um`` (TILED_SPARSE may list planes in any order: each frame says its own depth)."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    uids = {k: str(generate_uid()) for k in ("study", "series", "frame", "dimension")}
    for level in range(2):
        level_planes = planes[:, :: 2**level, :: 2**level]
        h, w = level_planes.shape[1:3]
        rows, cols = -(-h // tile), -(-w // tile)
        padded = np.pad(
            level_planes, [(0, 0), (0, rows * tile - h), (0, cols * tile - w), (0, 0)], mode="edge"
        )
        frames = (
            padded[z, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            for z in range(len(planes))
            for r in range(rows)
            for c in range(cols)
            if level or (z, r, c) not in missing
        )
        write_dicom_instance(
            folder / f"level_{level}.dcm",
            frames,
            size_hw=(h, w),
            tile=tile,
            n_frames=rows * cols * len(planes) - (0 if level else len(missing)),
            codec=codec,  # type: ignore[arg-type]
            mpp=mpp * 2**level,
            uids=uids,
            z_positions_um=z_um,
            organization=organization,  # type: ignore[arg-type]
            image_type=["ORIGINAL", "PRIMARY", "VOLUME", "NONE" if level == 0 else "RESAMPLED"],
            instance_number=level + 1,
            missing=frozenset() if level else missing,
        )


@pytest.mark.parametrize("organization", ["TILED_FULL", "TILED_SPARSE"])
@pytest.mark.parametrize("codec", ["jpeg", "jpeg2000"])
def test_multifocal_dicom_inputs(tmp_path: Path, codec: str, organization: str) -> None:
    if codec == "jpeg2000":
        imagecodecs = pytest.importorskip("imagecodecs")
        if not imagecodecs.JPEG2K.available:
            pytest.skip("imagecodecs was built without JPEG 2000 (openjpeg)")
    planes = smooth_planes(3, 300, 420)
    # TILED_FULL: planes at origin + i * spacing, so ascending; TILED_SPARSE: written out of
    # order (middle, top, bottom), which the reader must put back in depth order.
    order = [0, 1, 2] if organization == "TILED_FULL" else [1, 2, 0]
    z_um = [1.5 * i for i in order]
    _write_multifocal(
        tmp_path / "slide", planes[order], z_um, codec=codec, organization=organization
    )
    ds = pydicom.dcmread(tmp_path / "slide" / "level_0.dcm", stop_before_pixels=True)
    assert ds.DimensionOrganizationType == organization and ds.TotalPixelMatrixFocalPlanes == 3
    with open_stack([tmp_path / "slide"]) as stack:
        info = describe_stack(stack)
        assert info["form"] == "dicom" and stack.n_planes == 3
        assert stack.z_positions_um == pytest.approx((0.0, 1.5, 3.0))
        assert stack.shape == (300, 420) and stack.mpp == pytest.approx(0.5)
        assert info["details"]["levels"] == [[300, 420], [150, 210]]
        for z in range(3):
            got = stack.read(z, Box(0, 0, 300, 420))
            errors = [_diff(got, planes[k])[0] for k in range(3)]
            assert errors[z] < 3, (z, errors)  # its own plane, within codec tolerance
            assert min(e for k, e in enumerate(errors) if k != z) > 10 * max(errors[z], 1)
            thumb = stack.thumbnail(z, 64)
            assert abs(float(thumb.mean()) - float(planes[z].mean())) < 4


def test_cli_batch_writes_dicom_and_skips_it_when_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import run_cli

    source = tmp_path / "src"
    source.mkdir()
    tifffile.imwrite(
        source / "a.ome.tif",
        smooth_planes(3, 200, 260),
        photometric="rgb",
        tile=(128, 128),
        metadata={"axes": "ZYXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
    )
    args = ("batch", str(source), "-o", str(tmp_path / "out"), "--format", "dicom", "--no-tissue")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert (tmp_path / "out" / "a.dicom" / "level_0.dcm").is_file()
    assert (tmp_path / "out" / "a.dicom.run.json").is_file()
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and "1 up to date" in out + err


def test_dicom_output_of_an_input_without_mpp_is_refused_before_fusing(tmp_path: Path) -> None:
    from wsi_fusion.errors import UnsupportedInput

    stack = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        stack, smooth_planes(2, 100, 120), photometric="rgb", metadata={"axes": "ZYXS"}
    )
    with pytest.raises(UnsupportedInput, match="no pixel size"):
        fuse_slide([stack], tmp_path / "x.dicom", RunConfig(fuser="plane"))
    assert not list(tmp_path.glob("x.dicom*"))


def test_sparse_dicom_input_with_tiles_left_out_reads_them_as_blank(tmp_path: Path) -> None:
    """Scanners leave empty glass out of a TILED_SPARSE instance: those tiles read as blank
    (what wsidicom fills in), and every other tile of every plane is still in place."""
    planes = smooth_planes(3, 300, 420)
    _write_multifocal(
        tmp_path / "slide",
        planes,
        [0.0, 1.5, 3.0],
        codec="jpeg",
        organization="TILED_SPARSE",
        missing=frozenset({(1, 0, 1)}),  # plane 1, tile row 0, tile column 1
    )
    with open_stack([tmp_path / "slide"]) as stack:
        assert stack.n_planes == 3
        hole = stack.read(1, Box(0, 128, 128, 128))
        assert hole.std() == 0, "a left-out tile reads as one blank colour"
        for z in range(3):
            got = stack.read(z, Box(128, 0, 172, 420))  # the tile rows below the hole
            assert _diff(got, planes[z][128:])[0] < 3
        assert _diff(stack.read(0, Box(0, 128, 128, 128)), planes[0][:128, 128:256])[0] < 3
