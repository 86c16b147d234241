"""Readers: every input form gives the pixels that were written, white outside, and clear errors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tifffile
from PIL import Image

from wsi_fusion._types import Box, PlaneStack
from wsi_fusion.errors import PlaneMismatch, SlideNotFound, UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers import describe_stack, open_stack, thumbnail_size

#: Boxes (y, x, h, w) for a 300 x 200 plane: inside, across tile seams, across each edge and
#: corner, fully outside, and the whole plane.
PROBE_BOXES: Sequence[tuple[int, int, int, int]] = (
    (10, 20, 50, 40),
    (100, 100, 80, 90),
    (-30, -40, 100, 100),
    (250, 150, 100, 100),
    (-5, 180, 40, 60),
    (400, 400, 10, 10),
    (-20, -20, 5, 5),
    (0, 0, 300, 200),
)


def expected_region(plane: npt.NDArray[np.uint8], box: tuple[int, int, int, int]) -> Any:
    """The (h, w, 3) region of an RGB plane, white outside it."""
    y, x, h, w = box
    out = np.full((h, w, 3), 255, np.uint8)
    ph, pw = plane.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, ph), min(x + w, pw)
    if y1 > y0 and x1 > x0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = plane[y0:y1, x0:x1]
    return out


def assert_reads_exactly(stack: PlaneStack, planes: npt.NDArray[np.uint8]) -> None:
    """Every probe box of every plane equals the written pixels (white outside)."""
    assert stack.n_planes == len(planes)
    for z in range(stack.n_planes):
        for box in PROBE_BOXES:
            got = stack.read(z, Box(*box))
            assert got.dtype == np.uint8 and got.shape == (box[2], box[3], 3)
            np.testing.assert_array_equal(
                got, expected_region(planes[z], box), err_msg=f"{z=} {box=}"
            )


def assert_thumbnails(stack: PlaneStack, planes: npt.NDArray[np.uint8]) -> None:
    """Thumbnails have the promised size and look like the plane (noise averages to its mean)."""
    for z in range(stack.n_planes):
        thumb = stack.thumbnail(z, 64)
        assert thumb.shape == (*thumbnail_size(stack.shape, 64), 3)
        assert thumb.dtype == np.uint8
        assert abs(float(thumb.mean()) - float(planes[z].mean())) < 8


# ---- OME-TIFF with Z --------------------------------------------------------------------------


def test_ome_tiff_zstack(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(3)
    path = writers.ome_tiff(tmp_path / "z.ome.tif", planes, mpp=0.25, z_step=1.5)
    with open_stack([path]) as stack:
        assert isinstance(stack, PlaneStack)
        assert stack.shape == (300, 200)
        assert stack.mpp == pytest.approx(0.25)
        assert stack.z_positions_um == pytest.approx((0.0, 1.5, 3.0))
        assert_reads_exactly(stack, planes)
        assert_thumbnails(stack, planes)
        info = describe_stack(stack)
    assert info["form"] == "ome-tiff" and info["reader"] == "tifffile"
    assert info["planes"] == 3 and info["shape"] == [300, 200] and info["mpp"] == 0.25
    assert info["sources"] == [str(path)] and info["details"]["axes"] == "ZYXS"
    assert len(info["details"]["levels"]) == 2


def test_ome_tiff_plane_positions_and_channel_axis(
    tmp_path: Path, writers: SimpleNamespace
) -> None:
    """Z from Plane/@PositionZ (nm here) wins over PhysicalSizeZ; separate C planes become RGB."""
    planes = writers.make_planes(3, seed=1)
    czyx = np.moveaxis(planes, 3, 0)  # (C, Z, Y, X)
    extra = {
        "Plane": {"PositionZ": [500.0, 1500.0, 4000.0] * 3, "PositionZUnit": ["nm"] * 9},
        "PhysicalSizeXUnit": "nm",
    }
    path = writers.ome_tiff(tmp_path / "c.ome.tif", czyx, axes="CZYX", mpp=250.0, extra=extra)
    with open_stack([path]) as stack:
        assert stack.mpp == pytest.approx(0.25)
        assert stack.z_positions_um == pytest.approx((0.5, 1.5, 4.0))
        assert_reads_exactly(stack, planes)


def test_ome_tiff_greyscale_without_z_metadata(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(2, channels=0, seed=2)
    path = writers.ome_tiff(tmp_path / "g.ome.tif", planes, axes="ZYX", z_step=None, pyramid=False)
    with open_stack([path]) as stack:
        assert stack.z_positions_um == (None, None)
        assert_reads_exactly(stack, np.repeat(planes[..., None], 3, axis=3))


def test_ome_tiff_single_time_point_accepted(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(2, seed=3)
    path = writers.ome_tiff(tmp_path / "t1.ome.tif", planes[None], axes="TZYXS")
    with open_stack([path]) as stack:
        assert stack.n_planes == 2
        assert_reads_exactly(stack, planes)


def test_ome_tiff_time_series_refused(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(2, seed=3)
    path = writers.ome_tiff(tmp_path / "t2.ome.tif", np.stack([planes, planes]), axes="TZYXS")
    with pytest.raises(UnsupportedInput, match=r"2 focal plane.*2 time points") as err:
        open_stack([path])
    assert str(path) in str(err.value)


def test_ome_tiff_16bit_refused(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(2, channels=0, dtype=np.uint16)
    path = writers.ome_tiff(tmp_path / "16.ome.tif", planes, axes="ZYX", pyramid=False)
    with pytest.raises(UnsupportedInput, match=r"uint16.*Convert the planes to 8-bit") as err:
        open_stack([path])
    assert str(path) in str(err.value)


def test_multipage_tiff_without_axes_read_as_planes(
    tmp_path: Path, writers: SimpleNamespace
) -> None:
    """A plain multi-page TIFF must not reach OpenSlide, which would give page 0 only."""
    planes = writers.make_planes(3, seed=4)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for plane in planes:
            tw.write(plane, tile=(128, 128), photometric="rgb", metadata=None)
    with open_stack([path]) as stack:
        assert stack.n_planes == 3
        assert describe_stack(stack)["form"] == "multipage-tiff"
        assert_reads_exactly(stack, planes)


def test_imagej_hyperstack(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(3, channels=0, seed=4)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        planes,
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"},
    )
    with open_stack([path]) as stack:
        assert describe_stack(stack)["form"] == "imagej-tiff"
        assert stack.mpp == pytest.approx(0.25)
        assert stack.z_positions_um == pytest.approx((0.0, 0.5, 1.0))
        assert_reads_exactly(stack, np.repeat(planes[..., None], 3, axis=3))


def test_ndpi_like_zstack_sorted_by_offset(tmp_path: Path, writers: SimpleNamespace) -> None:
    """tifffile's view of an NDPI z-stack (NDPI tags on plain tiled pages; not a real NDPI)."""
    planes = writers.make_planes(3, seed=5)
    offsets_nm = [0, -2000, 2000]
    path = tmp_path / "fake_ndpi.tif"
    with tifffile.TiffWriter(path) as tw:
        for level in range(2):
            for plane, offset in zip(planes, offsets_nm, strict=True):
                ppcm = 1e4 / (0.46 * 2**level)
                tw.write(
                    plane[:: 2**level, :: 2**level],
                    tile=(128, 128),
                    photometric="rgb",
                    resolution=(ppcm, ppcm),
                    resolutionunit="CENTIMETER",
                    metadata=None,
                    extratags=[
                        (65420, 4, 1, 1, True),
                        (65421, 11, 1, 20.0, True),
                        (65424, 9, 1, offset, True),
                        (271, 2, 0, "Hamamatsu", True),
                    ],
                )
    with open_stack([path]) as stack:
        assert describe_stack(stack)["form"] == "ndpi"
        assert stack.z_positions_um == pytest.approx((-2.0, 0.0, 2.0))
        assert stack.mpp == pytest.approx(0.46)
        assert_reads_exactly(stack, planes[[1, 0, 2]])
        assert_thumbnails(stack, planes[[1, 0, 2]])


# ---- one file per plane -----------------------------------------------------------------------


def test_pyramidal_tiff_per_plane(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(3, seed=6)
    paths = [writers.slide_tiff(tmp_path / f"p{z}.tif", p, mpp=0.5) for z, p in enumerate(planes)]
    with open_stack(paths) as stack:
        assert stack.sources == tuple(str(p) for p in paths)
        assert stack.shape == (300, 200) and stack.mpp == pytest.approx(0.5)
        assert stack.z_positions_um == (None, None, None)
        assert describe_stack(stack)["reader"] == "openslide"
        assert_reads_exactly(stack, planes)
        assert_thumbnails(stack, planes)


def test_subifd_pyramid_and_greyscale_per_plane(tmp_path: Path, writers: SimpleNamespace) -> None:
    grey = writers.make_planes(2, channels=0, seed=7)
    paths = [
        writers.slide_tiff(tmp_path / f"g{z}.tif", p, subifds=True) for z, p in enumerate(grey)
    ]
    with open_stack(paths) as stack:
        assert_reads_exactly(stack, np.repeat(grey[..., None], 3, axis=3))


def test_single_plane_slide_is_one_plane_stack(tmp_path: Path, writers: SimpleNamespace) -> None:
    plane = writers.make_planes(1, seed=8)[0]
    with open_stack([writers.slide_tiff(tmp_path / "one.tif", plane)]) as stack:
        assert stack.n_planes == 1
        assert_reads_exactly(stack, plane[None])


def test_raster_planes_grey_and_rgba(tmp_path: Path, writers: SimpleNamespace) -> None:
    """PNG greyscale is replicated; RGBA is composited over white (transparent -> white)."""
    rng = np.random.default_rng(9)
    rgba = rng.integers(0, 256, (300, 200, 4), dtype=np.uint8)
    rgba[:50, :, 3] = 0
    rgba[50:100, :, 3] = 255
    grey = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(grey, "L").save(tmp_path / "b.png")
    a = rgba[..., 3:].astype(np.float64) / 255
    over_white = np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    with open_stack([tmp_path / "a.png", tmp_path / "b.png"]) as stack:
        assert describe_stack(stack)["reader"] == "pillow" and stack.mpp is None
        first = stack.read(0, Box(0, 0, 300, 200))
        assert (first[:50] == 255).all()
        np.testing.assert_array_equal(first[50:100], rgba[50:100, :, :3])
        assert np.abs(first.astype(int) - over_white).max() <= 1
        expected = np.stack([first, np.repeat(grey[..., None], 3, 2)])
        assert_reads_exactly(stack, expected)
        assert_thumbnails(stack, expected)


def test_regions_are_fresh_writable_arrays(tmp_path: Path, writers: SimpleNamespace) -> None:
    """Callers may write into a region; that must not reach the reader's cached pixels."""
    Image.fromarray(writers.make_planes(1)[0], "RGB").save(tmp_path / "a.png")
    with open_stack([tmp_path / "a.png"]) as stack:
        first = stack.read(0, Box(0, 0, 300, 200))
        first[:] = 7
        again = stack.read(0, Box(0, 0, 300, 200))
    assert first.flags.writeable and again.flags.writeable
    assert not (again == 7).all()


def test_jpeg_planes(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    base = np.kron(
        rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), np.ones((10, 10, 1), np.uint8)
    )
    for z in range(2):
        # Different content per plane: the same image twice is refused as a duplicate plane.
        Image.fromarray(np.roll(base, z, axis=0), "RGB").save(tmp_path / f"{z}.jpg", quality=95)
    with open_stack([tmp_path / "0.jpg", tmp_path / "1.jpg"]) as stack:
        assert stack.shape == (300, 200)
        got = stack.read(1, Box(-10, -10, 320, 220))
        assert (got[:10] == 255).all() and (got[:, :10] == 255).all()
        decoded = np.asarray(Image.open(tmp_path / "1.jpg").convert("RGB"))
        np.testing.assert_array_equal(got[10:-10, 10:-10], decoded)


def test_16bit_png_plane_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30), np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "ok.png")
    with pytest.raises(UnsupportedInput, match=r"deep\.png.*uint16.*8-bit"):
        open_stack([tmp_path / "ok.png", tmp_path / "deep.png"])


def test_16bit_slide_tiff_refused(tmp_path: Path, writers: SimpleNamespace) -> None:
    plane = writers.make_planes(1, channels=0, dtype=np.uint16)[0]
    path = writers.slide_tiff(tmp_path / "deep.tif", plane)
    with pytest.raises(UnsupportedInput, match=r"deep\.tif.*uint16"):
        open_stack([path])


def test_plane_size_mismatch(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(2, seed=11)
    a = writers.slide_tiff(tmp_path / "a.tif", planes[0])
    b = writers.slide_tiff(tmp_path / "b.tif", planes[1][:290])
    with pytest.raises(PlaneMismatch, match=r"a\.tif is 200x300 px.*b\.tif is 200x290 px"):
        open_stack([a, b])


def test_plane_mpp_mismatch(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(2, seed=12)
    a = writers.slide_tiff(tmp_path / "a.tif", planes[0], mpp=0.5)
    b = writers.slide_tiff(tmp_path / "b.tif", planes[1], mpp=0.25)
    with pytest.raises(PlaneMismatch, match=r"a\.tif has 0\.5 um/px but .*b\.tif has 0\.25"):
        open_stack([a, b])


def test_multi_plane_file_among_plane_files_refused(
    tmp_path: Path, writers: SimpleNamespace
) -> None:
    planes = writers.make_planes(2, seed=13)
    z = writers.ome_tiff(tmp_path / "z.ome.tif", planes)
    one = writers.slide_tiff(tmp_path / "one.tif", planes[0])
    with pytest.raises(UnsupportedInput, match=r"z\.ome\.tif holds 2 focal planes"):
        open_stack([one, z])


# ---- OME-Zarr ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "with_t"), [("0.4", False), ("0.5", True)])
def test_ome_zarr(tmp_path: Path, writers: SimpleNamespace, version: str, with_t: bool) -> None:
    planes = writers.make_planes(3, seed=14)
    path = writers.ome_zarr(
        tmp_path / "s.ome.zarr",
        planes,
        mpp=0.5,
        z_step=2.0,
        z_origin=10.0,
        version=version,
        with_t=with_t,
    )
    with open_stack([path]) as stack:
        assert stack.shape == (300, 200) and stack.mpp == pytest.approx(0.5)
        assert stack.z_positions_um == pytest.approx((10.0, 12.0, 14.0))
        assert_reads_exactly(stack, planes)
        assert_thumbnails(stack, planes)
        info = describe_stack(stack)
    assert info["form"] == "ome-zarr" and info["details"]["ngff_version"] == version


def test_ome_zarr_without_multiscales_refused(tmp_path: Path) -> None:
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(UnsupportedInput, match="multiscales"):
        open_stack([tmp_path / "plain.zarr"])


# ---- DICOM ------------------------------------------------------------------------------------


def test_dicom_focal_planes(tmp_path: Path, writers: SimpleNamespace) -> None:
    planes = writers.make_planes(3, seed=15)
    folder = tmp_path / "slide"
    folder.mkdir()
    path = writers.dicom(folder / "level0.dcm", planes, mpp=0.5, z_step_um=1.5, levels=2)
    for source in (folder, path):
        with open_stack([source]) as stack:
            info = describe_stack(stack)
            assert info["form"] == "dicom"
            assert info["details"]["levels"] == (
                [[300, 200], [150, 100]] if source == folder else [[300, 200]]
            )
            assert stack.shape == (300, 200) and stack.mpp == pytest.approx(0.5)
            assert stack.z_positions_um == pytest.approx((0.0, 1.5, 3.0))
            assert_reads_exactly(stack, planes)
            assert_thumbnails(stack, planes)


def test_multi_focal_dicom_among_plane_files_refused(
    tmp_path: Path, writers: SimpleNamespace
) -> None:
    planes = writers.make_planes(2, seed=16)
    dcm = writers.dicom(tmp_path / "z.dcm", planes)
    one = writers.slide_tiff(tmp_path / "one.tif", planes[0])
    with pytest.raises(UnsupportedInput, match="holds 2 focal planes"):
        open_stack([one, dcm])


# ---- bad inputs -------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFound, match=r"nope\.svs"):
        open_stack([tmp_path / "nope.svs"])
    with pytest.raises(FileNotFoundError):  # the builtin still catches it
        open_stack([tmp_path / "nope.tif", tmp_path / "nope2.tif"])


def test_no_inputs() -> None:
    with pytest.raises(UnsupportedInput, match="no input"):
        open_stack([])


def test_truncated_tiff(tmp_path: Path, writers: SimpleNamespace) -> None:
    plane = writers.make_planes(1, seed=17)[0]
    good = writers.slide_tiff(tmp_path / "good.tif", plane, levels=1)
    data = good.read_bytes()
    for name, size in (("half.tif", len(data) // 2), ("header.tif", 200)):
        (tmp_path / name).write_bytes(data[:size])
        with pytest.raises(UnreadableSlide, match=name.replace(".", r"\.")):
            open_stack([tmp_path / name])


def test_truncated_ome_tiff(tmp_path: Path, writers: SimpleNamespace) -> None:
    good = writers.ome_tiff(tmp_path / "z.ome.tif", writers.make_planes(2), pyramid=False)
    data = good.read_bytes()
    bad = tmp_path / "cut.ome.tif"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UnreadableSlide, match=r"cut\.ome\.tif"):
        open_stack([bad])


def test_garbage_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "junk.svs").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("junk.svs", "empty.jpg"):
        with pytest.raises(UnreadableSlide, match=name.replace(".", r"\.")) as err:
            open_stack([tmp_path / name])
        assert err.value.__cause__ is not None


def test_folder_without_slide_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedInput, match="neither OME-Zarr metadata nor DICOM"):
        open_stack([tmp_path])


def test_read_after_close_and_bad_plane(tmp_path: Path, writers: SimpleNamespace) -> None:
    path = writers.ome_tiff(tmp_path / "z.ome.tif", writers.make_planes(2), pyramid=False)
    stack = open_stack([path])
    with pytest.raises(IndexError):
        stack.read(2, Box(0, 0, 4, 4))
    stack.close()
    stack.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        stack.read(0, Box(0, 0, 4, 4))


# ---- real files (skipped without ../shared/data) ------------------------------------------------


@pytest.mark.realdata
def test_real_4d_ome_tiff_refused_naming_axes(shared_data: Path) -> None:
    """TZYX int8 OME sample: Z=5 is detected, T=7 refused before anything is read."""
    path = shared_data / "format_fixtures" / "4D-series.ome.tiff"
    with pytest.raises(
        UnsupportedInput, match=r"5 focal plane\(s\) \(Z\) and 7 time points"
    ) as err:
        open_stack([path])
    assert "TZYX" in str(err.value) and str(path) in str(err.value)


@pytest.mark.realdata
def test_real_int8_single_time_point_refused(tmp_path: Path, shared_data: Path) -> None:
    """The same file cut to T=1 is a valid 5-plane z-stack, refused for its int8 pixels."""
    src = shared_data / "format_fixtures" / "4D-series.ome.tiff"
    with tifffile.TiffFile(src) as tif:
        data = tif.series[0].asarray()[:1]
    path = tmp_path / "t0.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZYX"})
    with pytest.raises(UnsupportedInput, match=r"int8.*8-bit unsigned"):
        open_stack([path])


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["unreadable.svs", "unopenable.tiff"])
def test_real_broken_fixtures(shared_data: Path, name: str) -> None:
    with pytest.raises(UnreadableSlide, match=name.replace(".", r"\.")):
        open_stack([shared_data / "format_fixtures" / name])


@pytest.mark.realdata
def test_real_dicom_single_focal_plane(shared_data: Path) -> None:
    files = [shared_data / "format_fixtures" / f"boxes_{i}.dcm" for i in range(2)]
    with open_stack(files) as stack:
        assert describe_stack(stack)["form"] == "dicom"
        assert stack.n_planes == 1 and stack.shape == (16, 16)
        assert stack.mpp == pytest.approx(0.499)
        got = stack.read(0, Box(-4, -4, 24, 24))
        assert (got[:4] == 255).all() and (got[:, -4:] == 255).all()
        assert stack.thumbnail(0, 8).shape == (8, 8, 3)


@pytest.mark.realdata
def test_real_svs_and_generic_tiff(shared_data: Path) -> None:
    with open_stack([shared_data / "he_cmu1" / "CMU-1-Small-Region.svs"]) as stack:
        assert stack.n_planes == 1 and stack.shape == (2967, 2220)
        assert stack.mpp == pytest.approx(0.499)
        assert stack.read(0, Box(1000, 1000, 512, 512)).shape == (512, 512, 3)
        assert stack.thumbnail(0, 256).shape == (256, 192, 3)
    with open_stack([shared_data / "format_fixtures" / "boxes.tiff"]) as stack:
        assert stack.shape == (250, 300)


@pytest.mark.realdata
def test_real_jpeg_zstack(shared_data: Path) -> None:
    files = sorted((shared_data / "zstack_wbc_0054").glob("*.jpg"))
    with open_stack(files) as stack:
        assert stack.n_planes == 10 and stack.shape == (1200, 1920) and stack.mpp is None
        tile = stack.read(4, Box(1100, 1800, 512, 512))
        assert (tile[100:] == 255).all() and (tile[:100, :120] < 255).any()


@pytest.mark.realdata
def test_real_planes_of_different_sizes(tmp_path: Path, shared_data: Path) -> None:
    wbc = sorted((shared_data / "zstack_wbc_0054").glob("*.jpg"))[0]
    algae = shared_data / "zstack_algae" / "layer_1.jpg"
    shutil.copy(wbc, tmp_path / "wbc.jpg")
    with pytest.raises(PlaneMismatch, match=r"wbc\.jpg is 1920x1200 px.*layer_1\.jpg is 5440x3648"):
        open_stack([tmp_path / "wbc.jpg", algae])
