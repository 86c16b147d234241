"""Synthetic focal stacks: the defocus model, its determinism and the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from wsi_fusion._types import Box
from wsi_fusion.errors import ConfigError, OutputExists, SlideNotFound, UnsupportedInput
from wsi_fusion.synth import (
    SynthParams,
    demo_source_path,
    depth_field,
    make_demo_stack,
    make_stack,
    synthesize,
)
from wsi_fusion.synth.defocus import blur_levels, defocus_sigma, halo

H, W = 600, 700
# Short length scales so a 600x700 image holds several depth regions and steps.
SMALL = {"smooth_scale": 300.0, "step_scale": 160.0}


def texture(h: int = H, w: int = W, seed: int = 0) -> npt.NDArray[np.uint8]:
    """A sharp, textured RGB image: band-limited noise at a few scales."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for s in (0.7, 1.5, 4.0):
        img += ndimage.gaussian_filter(rng.standard_normal((h, w, 3)), (s, s, 0)) * s
    img = (img - img.mean()) / img.std()
    return np.clip(128 + 40 * img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sharp() -> npt.NDArray[np.uint8]:
    return texture()


# --------------------------------------------------------------------------- defocus model


def test_focus_index_is_the_plane_of_least_blur(sharp: npt.NDArray[np.uint8]) -> None:
    p = SynthParams(sigma_min=0.4, **SMALL)
    s = make_stack(sharp, 5, seed=1, params=p)
    assert s.planes.shape == (5, H, W, 3) and s.planes.dtype == np.uint8
    assert s.focus_index.shape == (H, W) and s.depth.dtype == np.float32
    assert s.depth.min() >= 0 and s.depth.max() <= 4
    sigmas = np.stack([defocus_sigma(s.depth, k, p) for k in range(5)])
    np.testing.assert_array_equal(np.argmin(sigmas, axis=0), s.focus_index)
    np.testing.assert_array_equal(np.rint(s.depth).astype(np.uint8), s.focus_index)
    # The field spans several planes and has both smooth and step parts.
    assert len(np.unique(s.focus_index)) >= 3
    np.testing.assert_array_equal(s.ground_truth, sharp)


def test_plane_at_true_focus_is_sharpest(sharp: npt.NDArray[np.uint8]) -> None:
    s = make_stack(sharp, 5, seed=2, **SMALL)
    grey = s.planes.astype(np.float32).mean(axis=-1)
    energy = np.stack([ndimage.uniform_filter(ndimage.laplace(g) ** 2, 15) for g in grey])
    sharpest = np.argmax(energy, axis=0)
    agree = (sharpest == s.focus_index)[20:-20, 20:-20].mean()
    assert agree > 0.9, f"sharpest plane matches the true focus index on only {agree:.1%}"


def test_in_focus_plane_equals_source_without_blur_or_noise(
    sharp: npt.NDArray[np.uint8],
) -> None:
    # Depth exactly on plane 2 everywhere: plane 2 is the source, the others are blurred.
    s = make_stack(sharp, 5, smooth_amplitude=0, step_amplitude=0)
    assert (s.focus_index == 2).all()
    np.testing.assert_array_equal(s.planes[2], sharp)
    assert np.abs(s.planes[0].astype(int) - sharp).mean() > 5


def test_blur_levels_cover_the_sigma_range() -> None:
    p = SynthParams(sigma_per_plane=2.0, sigma_min=0.5)
    levels = blur_levels(5, p)
    assert levels[0] == 0.5 and levels[-1] == pytest.approx(np.hypot(0.5, 8.0))
    assert np.all(np.diff(levels) > 0)
    assert halo(5, p) == int(np.ceil(3 * levels[-1]))


def test_depth_field_is_local() -> None:
    p = SynthParams(**SMALL)
    whole = depth_field(Box(-50, 1000, 400, 500), 5, seed=4, params=p)
    part = depth_field(Box(100, 1200, 100, 150), 5, seed=4, params=p)
    np.testing.assert_array_equal(whole[150:250, 200:350], part)


def test_same_seed_same_stack_other_seed_differs(sharp: npt.NDArray[np.uint8]) -> None:
    opts = {**SMALL, "noise_sigma": 0.01, "photons": 1000.0, "drift_px": 2.0}
    a = make_stack(sharp[:200, :300], 4, seed=7, **opts)
    b = make_stack(sharp[:200, :300], 4, seed=7, **opts)
    c = make_stack(sharp[:200, :300], 4, seed=8, **opts)
    for name in ("planes", "focus_index", "depth", "drift"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.planes, c.planes)
    assert not np.array_equal(a.depth, c.depth)


def test_integer_drift_shifts_content_exactly(sharp: npt.NDArray[np.uint8]) -> None:
    drift = ((0.0, 0.0), (3.0, -2.0), (-5.0, 4.0))
    s = make_stack(sharp, 3, sigma_per_plane=0, drift=drift)
    np.testing.assert_array_equal(s.drift, np.asarray(drift))
    for k, (dy, dx) in enumerate(drift):
        # plane_k(y, x) = sharp(y - dy, x - dx) away from the mirrored border.
        shifted = np.roll(sharp, (int(dy), int(dx)), axis=(0, 1))
        np.testing.assert_array_equal(s.planes[k][10:-10, 10:-10], shifted[10:-10, 10:-10])


def test_subpixel_drift_interpolates(sharp: npt.NDArray[np.uint8]) -> None:
    s = make_stack(sharp, 2, sigma_per_plane=0, drift=((0.0, 0.0), (0.0, 0.5)))
    expected = (sharp[:, :-1].astype(np.float32) + sharp[:, 1:]) / 2  # sharp(x - 0.5)
    got = s.planes[1][:, 1:].astype(np.float32)
    assert np.abs(got - expected).max() <= 0.5 + 1e-6


def test_random_drift_is_seeded_and_bounded() -> None:
    img = texture(64, 64)
    s = make_stack(img, 5, seed=3, drift_px=3.0, drift_integer=True)
    assert np.abs(s.drift).max() <= 3 and np.all(s.drift == np.rint(s.drift))
    assert (s.drift[2] == 0).all()  # the middle plane is the reference


def test_bad_parameters_are_refused(sharp: npt.NDArray[np.uint8]) -> None:
    with pytest.raises(ConfigError, match="sigma_per_plan"):
        make_stack(sharp, 5, sigma_per_plan=1.0)
    with pytest.raises(ConfigError, match="noise_sigma"):
        make_stack(sharp, 5, noise_sigma=-1)
    with pytest.raises(ConfigError, match="drift has 2 entries"):
        make_stack(sharp, 5, drift=((0, 0), (1, 1)))
    with pytest.raises(UnsupportedInput, match="uint8"):
        make_stack(sharp.astype(np.uint16), 5)


# --------------------------------------------------------------------------- streaming writer


def _read_zarr(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    import zarr

    g = zarr.open_group(path / "stack.ome.zarr", mode="r")
    return g["0"][...], g["1"][...]


def test_tiling_does_not_change_the_result(tmp_path: Path, sharp: npt.NDArray[np.uint8]) -> None:
    import tifffile

    # Everything that could depend on the tiling: noise, sub-pixel drift, JPEG.
    opts = {**SMALL, "noise_sigma": 0.01, "photons": 500.0, "drift_px": 1.5, "jpeg_artifacts": 80}
    a = synthesize(sharp, tmp_path / "a", tile=256, forms=("ome-zarr",), seed=5, **opts)
    b = synthesize(sharp, tmp_path / "b", tile=512, forms=("ome-zarr",), seed=5, **opts)
    za, zb = _read_zarr(a), _read_zarr(b)
    np.testing.assert_array_equal(za[0], zb[0])
    np.testing.assert_array_equal(za[1], zb[1])
    for name in ("ground_truth.tif", "focus_index.tif", "depth.tif"):
        np.testing.assert_array_equal(tifffile.imread(a / name), tifffile.imread(b / name))
    # ... and the in-memory path gives the same pixels.
    s = make_stack(sharp, 5, seed=5, **opts)
    np.testing.assert_array_equal(np.moveaxis(za[0], 0, -1), s.planes)
    np.testing.assert_array_equal(tifffile.imread(a / "depth.tif"), s.depth)
    record = json.loads((a / "synth.json").read_text())
    np.testing.assert_allclose(record["drift"], s.drift)


def test_written_forms_read_back(tmp_path: Path) -> None:
    import openslide
    import tifffile
    import zarr
    from ome_zarr_models.v04 import Image

    src = texture(300, 250, seed=1)
    out = synthesize(
        src,
        tmp_path / "out",
        size=(H, W),
        n_planes=4,
        tile=256,
        seed=1,
        mpp=0.25,
        z_step_um=1.5,
        compression="deflate",
        **SMALL,
    )
    record = json.loads((out / "synth.json").read_text())
    assert record["size"] == [H, W] and record["n_planes"] == 4 and record["seed"] == 1
    for name in record["files"]:
        assert (out / name).exists(), name
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())

    # Ground truth: the source mirror-repeated to the requested size.
    gt = tifffile.imread(out / "ground_truth.tif")
    assert gt.shape == (H, W, 3)
    np.testing.assert_array_equal(gt[:300, :250], src)
    np.testing.assert_array_equal(gt[300:600, :250], src[::-1])
    np.testing.assert_array_equal(gt[:300, 250:500], src[:, ::-1])
    focus = tifffile.imread(out / "focus_index.tif")
    depth = tifffile.imread(out / "depth.tif")
    assert focus.shape == (H, W) and focus.dtype == np.uint8 and focus.max() <= 3
    assert depth.dtype == np.float32

    # OME-Zarr: valid NGFF 0.4 with a z axis and µm scales.
    group = zarr.open_group(out / "stack.ome.zarr", mode="r")
    Image.from_zarr(group)
    ms = group.attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.5, 0.25, 0.25]
    stack = group["0"][...]
    assert stack.shape == (3, 4, H, W) and group["1"].shape == (3, 4, 300, 350)

    # OME-TIFF with Z: lossless here, so identical to the zarr.
    with tifffile.TiffFile(out / "stack.ome.tif") as tf:
        series = tf.series[0]
        assert tf.is_ome and series.axes == "ZYXS" and series.shape == (4, H, W, 3)
        assert len(series.levels) == 2 and series.levels[1].shape == (4, 300, 350, 3)
        np.testing.assert_array_equal(series.asarray(), np.moveaxis(stack, 0, -1))
        ome = tf.ome_metadata
        assert ome is not None
        assert 'PhysicalSizeX="0.25"' in ome and 'PhysicalSizeZ="1.5"' in ome

    # One generic pyramidal TIFF per plane, which OpenSlide opens with the right mpp.
    for k in range(4):
        with openslide.OpenSlide(out / "planes" / f"plane_z{k}.tif") as slide:
            assert slide.dimensions == (W, H) and slide.level_count == 2
            assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
            region = np.asarray(slide.read_region((0, 0), 0, (W, H)))[..., :3]
            np.testing.assert_array_equal(region, np.moveaxis(stack[:, k], 0, -1))


def test_jpeg_planes_open_in_openslide(tmp_path: Path) -> None:
    import openslide

    out = synthesize(
        texture(200, 300), tmp_path / "j", n_planes=2, tile=128, forms=("planes",), jpeg_quality=95
    )
    assert not (out / "stack.ome.zarr").exists() and not (out / "stack.ome.tif").exists()
    with openslide.OpenSlide(out / "ground_truth.tif") as slide:
        gt = np.asarray(slide.read_region((0, 0), 0, (300, 200)))
    with openslide.OpenSlide(out / "planes" / "plane_z0.tif") as slide:
        assert slide.dimensions == (300, 200)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        plane = np.asarray(slide.read_region((0, 0), 0, (300, 200)))[..., :3].astype(int)
    assert np.abs(plane - gt[..., :3]).mean() < 40  # a blurred, JPEG-coded view of the source


def test_writer_refuses_bad_input(tmp_path: Path) -> None:
    img = texture(64, 64)
    with pytest.raises(SlideNotFound):
        synthesize(tmp_path / "missing.svs", tmp_path / "o")
    with pytest.raises(ConfigError, match="forms"):
        synthesize(img, tmp_path / "o", forms=("dicom",))
    with pytest.raises(ConfigError, match="tile"):
        synthesize(img, tmp_path / "o", tile=100)
    with pytest.raises(ConfigError, match="bogus"):
        synthesize(img, tmp_path / "o", bogus=1)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExists):
        synthesize(img, tmp_path / "user")
    with pytest.raises(OutputExists, match="not a synthetic-stack folder"):
        synthesize(img, tmp_path / "user", overwrite=True)
    assert (tmp_path / "user" / "notes.txt").exists()


# --------------------------------------------------------------------------- demo


def test_demo_source_loads() -> None:
    import openslide

    path = demo_source_path()
    assert path.name == "CMU-1-Small-Region.svs" and path.is_file()
    assert (path.parent / "ATTRIBUTION.md").is_file()
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (2220, 2967)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.499)


def test_demo_stack_small_region(tmp_path: Path) -> None:
    import tifffile

    out = make_demo_stack(tmp_path / "demo", size=(256, 384))
    with tifffile.TiffFile(out / "stack.ome.tif") as tf:
        assert tf.series[0].shape == (5, 256, 384, 3)
    record = json.loads((out / "synth.json").read_text())
    assert record["mpp"] == pytest.approx(0.499) and record["source"]["shape"] == [2967, 2220]


@pytest.mark.slow
def test_demo_stack_whole_region(tmp_path: Path) -> None:
    import tifffile

    out = make_demo_stack(tmp_path / "demo")
    with tifffile.TiffFile(out / "stack.ome.tif") as tf:
        assert tf.series[0].shape == (5, 2967, 2220, 3)
