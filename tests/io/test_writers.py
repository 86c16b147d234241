"""Tests for the output writers: OME-Zarr (validated with ome_zarr_models) and the TIFF files
streamed from it (read back with tifffile, tiffslide and openslide-python)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from wsi_fusion.errors import OutputExists, OutputNotWritable
from wsi_fusion.io.writers import (
    add_label,
    build_label_pyramid,
    build_pyramid,
    create_image,
    image_levels,
    label_levels,
    write_generic_tiff,
    write_label_tiff,
    write_ome_tiff,
)
from wsi_fusion.pyramid.downsample import downsample2, level_shapes

SHAPE: tuple[int, int, int] = (3, 1500, 2100)
CHUNK = 256
TILE = 256
MPP = 0.5


def _smooth_image() -> np.ndarray:
    """An RGB image with smooth structure (so JPEG error is small) and a white margin."""
    y, x = np.mgrid[0 : SHAPE[1], 0 : SHAPE[2]].astype(np.float32)
    r = 140 + 90 * np.sin(x / 37.0) * np.cos(y / 53.0)
    g = 110 + 70 * np.sin((x + y) / 71.0)
    b = 170 + 60 * np.cos(x / 29.0 - y / 97.0)
    img = np.stack([r, g, b]).round().clip(0, 255).astype(np.uint8)
    img[:, :, 1900:] = 255  # glass
    return img


def _labels() -> np.ndarray:
    y, x = np.mgrid[0 : SHAPE[1], 0 : SHAPE[2]]
    return ((x // 300 + y // 200) % 5 + 1).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return _smooth_image()


def _make(path: Path, image: np.ndarray, version: str, mpp: float | None = MPP) -> zarr.Group:
    group = create_image(
        path,
        SHAPE,
        chunk=CHUNK,
        mpp=mpp,
        ngff_version=version,  # type: ignore[arg-type]
        name="test",
        metadata={"tool": "wsi_fusion", "inputs": [Path("/a/b.tif")]},
    )
    image_levels(group)[0][:] = image
    label0 = add_label(group, "focus_map", SHAPE[1:], chunk=CHUNK)
    label0[:] = _labels()
    build_pyramid(group, compute=True)
    build_label_pyramid(group, "focus_map", compute=True)
    return group


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def pyramid(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, image: np.ndarray
) -> zarr.Group:
    path = tmp_path_factory.mktemp("zarr") / f"fused-{request.param}.ome.zarr"
    _make(path, image, request.param)
    return zarr.open_group(path, mode="r")


@pytest.fixture(scope="module")
def pyramid04(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> zarr.Group:
    path = tmp_path_factory.mktemp("zarr04") / "fused.ome.zarr"
    _make(path, image, "0.4")
    return zarr.open_group(path, mode="r")


def _ome(group: zarr.Group) -> dict[str, Any]:
    attrs = group.attrs.asdict()
    return attrs["ome"] if group.metadata.zarr_format == 3 else attrs


# ----------------------------------------------------------------------------- OME-Zarr


def test_ome_zarr_validates_against_spec_models(pyramid: zarr.Group) -> None:
    if pyramid.metadata.zarr_format == 2:
        from ome_zarr_models.v04 import Image, ImageLabel, Labels
    else:
        from ome_zarr_models.v05 import Image, ImageLabel, Labels
    Image.from_zarr(pyramid)
    Labels.from_zarr(pyramid["labels"])
    ImageLabel.from_zarr(pyramid["labels/focus_map"])


def test_ome_zarr_metadata_is_what_the_spec_models_build(pyramid: zarr.Group) -> None:
    """The hand-built NGFF metadata is exactly what ome_zarr_models' own models give back
    (parsed and dumped again), for the image and the label, 0.4 and 0.5: building it with the
    library at run time would change nothing in the file (docs/ARCHITECTURE.md, "Format
    metadata")."""
    if pyramid.metadata.zarr_format == 2:
        from ome_zarr_models.v04.image import ImageAttrs
        from ome_zarr_models.v04.image_label import ImageLabelAttrs
    else:
        from ome_zarr_models.v05.image import ImageAttrs
        from ome_zarr_models.v05.image_label import ImageLabelAttrs
    for group, model in ((pyramid, ImageAttrs), (pyramid["labels/focus_map"], ImageLabelAttrs)):
        ours = {k: v for k, v in _ome(group).items() if k != "wsi_fusion"}
        rebuilt = model.model_validate(ours).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        assert rebuilt == ours


def test_ome_zarr_levels_and_layout(pyramid: zarr.Group) -> None:
    levels = image_levels(pyramid)
    assert [a.shape[1:] for a in levels] == level_shapes(SHAPE[1:])
    for arr in levels:
        assert arr.dtype == np.uint8
        assert arr.shape[0] == 3
        assert arr.chunks == (3, CHUNK, CHUNK)
    root = Path(str(pyramid.store.root))  # type: ignore[attr-defined]
    if pyramid.metadata.zarr_format == 2:
        # QuPath/OMERO read v0.4 as Zarr v2 with nested ("/") chunk keys.
        zarray = json.loads((root / "0" / ".zarray").read_text())
        assert zarray["dimension_separator"] == "/"
        assert zarray["compressor"]["id"] == "blosc"
        assert (root / "0" / "0" / "0" / "0").is_file()
        assert (root / ".zattrs").is_file()
    else:
        meta = json.loads((root / "0" / "zarr.json").read_text())
        assert meta["dimension_names"] == ["c", "y", "x"]
        assert _ome(pyramid)["version"] == "0.5"


def test_ome_zarr_metadata(pyramid: zarr.Group) -> None:
    ome = _ome(pyramid)
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert multiscale["axes"][0]["type"] == "channel"
    assert multiscale["axes"][2] == {"name": "x", "type": "space", "unit": "micrometer"}
    for level, dataset in enumerate(multiscale["datasets"]):
        scale, translation = dataset["coordinateTransformations"]
        assert dataset["path"] == str(level)
        assert scale["scale"] == [1.0, MPP * 2**level, MPP * 2**level]
        assert translation["translation"] == pytest.approx(
            [0.0, (2**level - 1) / 2 * MPP, (2**level - 1) / 2 * MPP]
        )
    channels = ome["omero"]["channels"]
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]
    assert [c["label"] for c in channels] == ["R", "G", "B"]
    assert all(c["window"]["start"] == 0 and c["window"]["end"] == 255 for c in channels)
    assert ome["omero"]["rdefs"]["model"] == "color"
    # Provenance is kept outside the OME namespace; non-JSON values were stringified.
    assert pyramid.attrs["wsi_fusion"] == {"tool": "wsi_fusion", "inputs": ["/a/b.tif"]}


def test_ome_zarr_pixels(pyramid: zarr.Group, image: np.ndarray) -> None:
    levels = image_levels(pyramid)
    np.testing.assert_array_equal(levels[0][:], image)
    expected = image
    for arr in levels[1:]:
        expected = downsample2(expected)
        np.testing.assert_array_equal(arr[:], expected)


def test_label_pyramid_picks_pixels(pyramid: zarr.Group) -> None:
    labels = _labels()
    levels = label_levels(pyramid, "focus_map")
    assert len(levels) == len(image_levels(pyramid))
    for level, arr in enumerate(levels):
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(arr[:], labels[:: 2**level, :: 2**level])
    meta = _ome(pyramid["labels/focus_map"])
    assert meta["image-label"]["source"]["image"] == "../../"
    assert _ome(pyramid["labels"])["labels"] == ["focus_map"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_continuous_label_is_averaged_and_valid(tmp_path: Path, version: str) -> None:
    """A 0..255 map (the blur mask) as a label: levels are 2x2 means, metadata says so."""
    if version == "0.4":
        from ome_zarr_models.v04 import ImageLabel, Labels
    else:
        from ome_zarr_models.v05 import ImageLabel, Labels
    group = create_image(
        tmp_path / "m.ome.zarr", (3, 300, 420), chunk=128, mpp=MPP, ngff_version=version
    )
    ramp = {v: (255, 120, 0, v) for v in range(256)}
    level0 = add_label(
        group,
        "blur_mask",
        chunk=128,
        colors=ramp,
        downsample="mean",
        description="blur probability x 255",
    )
    add_label(group, "focus_map", chunk=128)
    values = np.random.default_rng(0).integers(0, 256, (300, 420), dtype=np.uint8)
    level0[:] = values
    build_label_pyramid(group, "blur_mask", compute=True)
    levels = label_levels(group, "blur_mask")
    np.testing.assert_array_equal(levels[1][:], downsample2(values))
    meta = _ome(group["labels/blur_mask"])
    assert meta["multiscales"][0]["type"] == "mean"
    assert "blur probability" in meta["multiscales"][0]["metadata"]["description"]
    assert len(meta["image-label"]["colors"]) == 256
    assert _ome(group["labels"])["labels"] == ["blur_mask", "focus_map"]
    Labels.from_zarr(group["labels"])
    ImageLabel.from_zarr(group["labels/blur_mask"])
    with pytest.raises(ValueError, match="'pick' or 'mean'"):
        add_label(group, "bad", downsample="max")  # type: ignore[arg-type]

    path = tmp_path / "m.blur_mask.tif"
    write_label_tiff(levels[0], path, mpp=MPP, tile=TILE, description="wsi_fusion blur_mask")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome  # the description is the OME Image Description
        assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Description"] == (
            "wsi_fusion blur_mask"
        )
        stored = [lv.asarray() for lv in tif.series[0].levels]
    assert len(stored) == len(levels)
    for arr, lv in zip(stored, levels, strict=True):
        np.testing.assert_array_equal(arr, lv[:])


def test_build_pyramid_is_lazy_and_ordered(
    tmp_path: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask
    from dask.delayed import Delayed

    from wsi_fusion.io.writers import ome_zarr

    monkeypatch.setattr(ome_zarr, "_BLOCK_PX", CHUNK)  # several blocks per level

    group = create_image(tmp_path / "lazy.ome.zarr", SHAPE, chunk=CHUNK, mpp=MPP)
    levels = image_levels(group)
    levels[0][:] = image
    work = build_pyramid(group)
    assert isinstance(work, Delayed)
    # Nothing is written before compute: unwritten chunks read as the (white) fill value.
    assert (levels[1][:] == 255).all()
    # Every level-2 task depends on every level-1 task (level 2 is read from level 1 in zarr).
    graph = dict(work.__dask_graph__())
    deps = {k: dask.core.get_dependencies(graph, k) for k in graph}

    def closure(key: Any) -> set[Any]:
        seen: set[Any] = set()
        todo = [key]
        while todo:
            for d in deps[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    def named(prefix: str) -> list[Any]:
        return [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith(prefix)]

    level1, level2 = named("wsi-fusion-pyramid-1-"), named("wsi-fusion-pyramid-2-")
    assert len(level1) == 3 * 5 and len(level2) == 2 * 3  # one task per chunk-aligned block
    assert set(level1) <= closure(level2[0])
    work.compute(scheduler="threads")
    np.testing.assert_array_equal(levels[2][:], downsample2(downsample2(image)))


def test_unknown_mpp_has_no_unit(tmp_path: Path) -> None:
    group = create_image(tmp_path / "nompp.ome.zarr", (3, 600, 600), chunk=128, mpp=None)
    from ome_zarr_models.v04 import Image

    Image.from_zarr(group)
    (multiscale,) = group.attrs["multiscales"]  # type: ignore[misc]
    assert all("unit" not in axis for axis in multiscale["axes"])
    assert multiscale["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]


def test_label_must_match_image(tmp_path: Path) -> None:
    group = create_image(tmp_path / "x.ome.zarr", (3, 600, 600), chunk=128, mpp=MPP)
    with pytest.raises(ValueError, match="differs from the image"):
        add_label(group, "focus_map", (600, 500))


def test_create_image_refuses_existing(tmp_path: Path) -> None:
    path = tmp_path / "x.ome.zarr"
    create_image(path, (3, 300, 300), chunk=128, mpp=MPP)
    with pytest.raises(OutputExists, match="overwrite"):
        create_image(path, (3, 300, 300), chunk=128, mpp=MPP)
    create_image(path, (3, 300, 300), chunk=128, mpp=MPP, overwrite=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mpp": -1.0}, "mpp"),
        ({"mpp": MPP, "chunk": 0}, "chunk"),
        ({"mpp": MPP, "channel_names": ("R", "G")}, "channel names"),
    ],
)
def test_create_image_rejects_bad_settings(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        create_image(tmp_path / "x.ome.zarr", (3, 300, 300), **kwargs)


# ----------------------------------------------------------------------------- OME-TIFF


def test_ome_tiff_jpeg(pyramid04: zarr.Group, image: np.ndarray, tmp_path: Path) -> None:
    # The caller writes to a ".partial" name: OME mode must not depend on the suffix.
    path = tmp_path / "out.ome.tif.partial"
    write_ome_tiff(pyramid04, path, mpp=MPP, tile=TILE, description={"fuser": "µ-test"})
    shapes = level_shapes(SHAPE[1:])
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "YXS"
        assert [lv.shape for lv in series.levels] == [(*s, 3) for s in shapes]
        page = tif.pages[0]
        assert len(page.subifds) == len(shapes) - 1  # reduced levels live in SubIFDs
        # ... and are mirrored into the main chain for OpenSlide (same tiles, see
        # tests/io/test_viewer_levels.py)
        assert len(tif.pages) == len(shapes)
        assert page.compression == tifffile.COMPRESSION.JPEG
        # RGB is stored as YCbCr 4:2:0 JPEG, like scanners' SVS files (half the size of RGB JPEG).
        assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
        assert page.tags["YCbCrSubSampling"].value == (2, 2)
        assert (page.tilewidth, page.tilelength) == (TILE, TILE)
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == (
            pytest.approx(1e4 / MPP)
        )
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        pixels = ome["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == pytest.approx(MPP)
        assert pixels["PhysicalSizeY"] == pytest.approx(MPP)
        assert pixels["PhysicalSizeXUnit"] == "µm"
        assert "µ-test" in tif.ome_metadata  # provenance annotation
        level0 = series.levels[0].asarray()
        level1 = series.levels[1].asarray()
    err0 = np.abs(level0.astype(np.int16) - np.moveaxis(image, 0, -1)).mean()
    err1 = np.abs(level1.astype(np.int16) - np.moveaxis(downsample2(image), 0, -1)).mean()
    assert err0 < 2.0
    assert err1 < 2.0


@pytest.mark.parametrize("compression", ["deflate", "zstd", "lzw", "none"])
def test_ome_tiff_lossless_is_exact(
    pyramid04: zarr.Group, image: np.ndarray, tmp_path: Path, compression: str
) -> None:
    path = tmp_path / "out.ome.tif"
    write_ome_tiff(pyramid04, path, mpp=MPP, tile=TILE, compression=compression)  # type: ignore[arg-type]
    levels = image_levels(pyramid04)
    with tifffile.TiffFile(path) as tif:
        for stored, arr in zip(tif.series[0].levels, levels, strict=True):
            np.testing.assert_array_equal(stored.asarray(), np.moveaxis(arr[:], 0, -1))


def test_ome_tiff_reads_with_tiffslide(pyramid04: zarr.Group, tmp_path: Path) -> None:
    import tiffslide

    path = tmp_path / "out.ome.tif"
    write_ome_tiff(pyramid04, path, mpp=MPP, tile=TILE, compression="zstd")
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == len(level_shapes(SHAPE[1:]))
        assert slide.dimensions == (SHAPE[2], SHAPE[1])
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(MPP)
        region = np.asarray(slide.read_region((100, 50), 1, (200, 100)))[..., :3]
    expected = image_levels(pyramid04)[1][:, 25:125, 50:250]
    np.testing.assert_array_equal(region, np.moveaxis(expected, 0, -1))


def test_ome_tiff_full_chroma_jpeg(pyramid04: zarr.Group, tmp_path: Path) -> None:
    path = tmp_path / "out.ome.tif"
    write_ome_tiff(pyramid04, path, mpp=MPP, tile=TILE, jpeg_subsampling=(1, 1))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].tags["YCbCrSubSampling"].value == (1, 1)


def test_ome_tiff_without_mpp(pyramid04: zarr.Group, tmp_path: Path) -> None:
    path = tmp_path / "nompp.ome.tif"
    write_ome_tiff(pyramid04, path, mpp=None, tile=TILE)
    with tifffile.TiffFile(path) as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata
        assert len(tif.series[0].levels) == len(level_shapes(SHAPE[1:]))


# ----------------------------------------------------------------------------- generic TIFF


def test_generic_tiff_opens_in_openslide(
    pyramid04: zarr.Group, image: np.ndarray, tmp_path: Path
) -> None:
    import openslide

    path = tmp_path / "out.tif.partial"
    write_generic_tiff(pyramid04, path, mpp=MPP, tile=TILE, description={"fuser": "x"})
    shapes = level_shapes(SHAPE[1:])
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_ome
        # Aperio SVS layout: level 0, a stripped thumbnail, then every reduced level, all in the
        # main IFD chain with NewSubfileType 0, and a (here blank) label page last
        # (tests/io/test_viewer_levels.py checks the readers).
        assert len(tif.pages) == len(shapes) + 2
        assert [p.subfiletype for p in tif.pages] == [0] * (len(shapes) + 1) + [1]
        tiled = [True, False] + [True] * (len(shapes) - 1) + [False]
        assert [p.is_tiled for p in tif.pages] == tiled
        assert tif.pages[0].description.startswith("Aperio Image Library")
        assert '"fuser": "x"' in tif.pages[0].description
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == len(shapes)
        assert slide.level_dimensions == tuple((w, h) for h, w in shapes)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(MPP)
        region0 = np.asarray(slide.read_region((300, 200), 0, (400, 300)).convert("RGB"))
        region1 = np.asarray(slide.read_region((0, 0), 1, (1050, 750)).convert("RGB"))
    err0 = np.abs(region0.astype(np.int16) - np.moveaxis(image[:, 200:500, 300:700], 0, -1))
    err1 = np.abs(region1.astype(np.int16) - np.moveaxis(downsample2(image), 0, -1))
    assert err0.mean() < 2.0
    assert err1.mean() < 2.0


def test_generic_tiff_lossless_matches_in_openslide(
    pyramid04: zarr.Group, image: np.ndarray, tmp_path: Path
) -> None:
    import openslide

    path = tmp_path / "out.tif"
    write_generic_tiff(pyramid04, path, mpp=MPP, tile=TILE, compression="deflate")
    with openslide.OpenSlide(path) as slide:
        region = np.asarray(slide.read_region((1800, 1300), 0, (300, 200)).convert("RGB"))
    np.testing.assert_array_equal(region, np.moveaxis(image[:, 1300:1500, 1800:2100], 0, -1))


# ----------------------------------------------------------------------------- label TIFF


def test_label_tiff_from_pyramid(pyramid04: zarr.Group, tmp_path: Path) -> None:
    path = tmp_path / "focus.tif"
    write_label_tiff(pyramid04["labels/focus_map/0"], path, mpp=MPP, tile=TILE)  # type: ignore[arg-type]
    levels = label_levels(pyramid04, "focus_map")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.samplesperpixel == 1
        assert len(page.subifds) == len(levels) - 1
        for stored, arr in zip(tif.series[0].levels, levels, strict=True):
            np.testing.assert_array_equal(stored.asarray(), arr[:])


def test_label_tiff_from_numpy(tmp_path: Path) -> None:
    labels = _labels()
    path = tmp_path / "focus.tif"
    write_label_tiff(labels, path, mpp=None, tile=TILE)
    with tifffile.TiffFile(path) as tif:
        stored = [lv.asarray() for lv in tif.series[0].levels]
    assert len(stored) == len(level_shapes(labels.shape))  # type: ignore[arg-type]
    for level, arr in enumerate(stored):
        np.testing.assert_array_equal(arr, labels[:: 2**level, :: 2**level])


def test_label_tiff_refuses_lossy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lossless"):
        write_label_tiff(_labels(), tmp_path / "f.tif", mpp=MPP, compression="jpeg")


# ----------------------------------------------------------------------------- errors


def test_unknown_compression(pyramid04: zarr.Group, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="webp"):
        write_ome_tiff(pyramid04, tmp_path / "x.tif", mpp=MPP, compression="webp")  # type: ignore[arg-type]


def test_missing_folder_is_not_writable(pyramid04: zarr.Group, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(OutputNotWritable, match="does not exist"):
        create_image(missing / "x.ome.zarr", (3, 300, 300), mpp=MPP)
    with pytest.raises(OutputNotWritable, match="does not exist"):
        write_ome_tiff(pyramid04, missing / "x.ome.tif", mpp=MPP)
    with pytest.raises(OutputNotWritable, match="does not exist"):
        write_generic_tiff(pyramid04, missing / "x.tif", mpp=MPP)
    with pytest.raises(OutputNotWritable, match="does not exist"):
        write_label_tiff(_labels(), missing / "f.tif", mpp=MPP)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder_is_not_writable(pyramid04: zarr.Group, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputNotWritable, match="not writable"):
            create_image(folder / "x.ome.zarr", (3, 300, 300), mpp=MPP)
        with pytest.raises(OutputNotWritable, match="permissions"):
            write_ome_tiff(pyramid04, folder / "x.ome.tif", mpp=MPP)
    finally:
        folder.chmod(0o755)
