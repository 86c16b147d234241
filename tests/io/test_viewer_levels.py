"""OME-TIFF outputs (the fused image and the focus/blur-mask sidecars) show every pyramid level
in OpenSlide as well as in tifffile/tiffslide: the reduced levels live in level 0's SubIFDs (the
OME-TIFF layout Bio-Formats reads) and are mirrored into the main IFD chain, which is all
OpenSlide reads, without storing any tile twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from wsi_fusion.io.writers.ome_tiff import (
    mirror_levels_in_main_chain,
    write_label_tiff,
    write_ome_tiff,
)
from wsi_fusion.io.writers.ome_zarr import build_pyramid, create_image

MPP = 0.5


@pytest.fixture
def pyramid(tmp_path: Path) -> zarr.Group:
    """A 3-level RGB OME-Zarr pyramid of 600 x 700 px."""
    group = create_image(tmp_path / "img.ome.zarr", (3, 600, 700), chunk=256, mpp=MPP, min_side=160)
    rng = np.random.default_rng(0)
    group["0"][:] = rng.integers(0, 256, (3, 600, 700), dtype=np.uint8)
    build_pyramid(group, compute=True)
    return group


def _levels(group: zarr.Group) -> int:
    return len([k for k in group.array_keys() if k.isdigit()])


def test_ome_tiff_levels_in_every_reader(pyramid: zarr.Group, tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    tiffslide = pytest.importorskip("tiffslide")
    n = _levels(pyramid)
    assert n >= 3
    path = write_ome_tiff(pyramid, tmp_path / "x.ome.tif", mpp=MPP, tile=128, compression="deflate")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.series) == 1  # the mirrors are not OME images
        series = tif.series[0]
        assert len(series.levels) == n
        subs = [series.levels[level].pages[0] for level in range(1, n)]
        with tifffile.TiffFile(path) as raw:
            raw.pages.useframes = False  # full pages (with tags), not tifffile's light frames
            mirrors = [raw.pages[i] for i in range(1, n)]
            assert len(raw.pages) == n  # level 0 + one main-chain mirror per reduced level
            for sub, mirror in zip(subs, mirrors, strict=True):
                assert mirror.subfiletype == 1 and mirror.shape == sub.shape
                assert mirror.dataoffsets == sub.dataoffsets  # the same tiles, stored once
                np.testing.assert_array_equal(mirror.asarray(), sub.asarray())
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == n
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        region = np.asarray(slide.read_region((0, 0), n - 1, (50, 40)).convert("RGB"))
        expected = np.asarray(pyramid[str(n - 1)][:, :40, :50]).transpose(1, 2, 0)
        np.testing.assert_array_equal(region, expected)  # lossless: the exact level pixels
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == n


def test_label_tiff_levels_in_every_reader(tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    tiffslide = pytest.importorskip("tiffslide")
    labels = (np.arange(600 * 700) % 5).astype(np.uint8).reshape(600, 700)
    path = write_label_tiff(labels, tmp_path / "x.focus.tif.partial", mpp=MPP, tile=128)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.series) == 1
        n = len(tif.series[0].levels)
        assert n >= 3 and len(tif.pages) == n
        assert '<Image ID="Image:0" Name="x.focus.tif">' in tif.ome_metadata  # no .partial
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == n
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == n


def test_a_mirror_costs_only_its_directories(pyramid: zarr.Group, tmp_path: Path) -> None:
    path = write_ome_tiff(pyramid, tmp_path / "x.ome.tif", mpp=MPP, tile=128)
    size = path.stat().st_size
    # Mirroring once more appends one more set of directories (and nothing else): a few
    # hundred bytes per level, whatever the size of the level.
    assert mirror_levels_in_main_chain(path) == _levels(pyramid) - 1
    assert path.stat().st_size - size < 1024 * (_levels(pyramid) - 1)


def test_single_level_image_needs_no_mirror(tmp_path: Path) -> None:
    path = write_label_tiff(np.zeros((100, 120), np.uint8), tmp_path / "s.tif", mpp=None, tile=64)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 1 and not tif.pages.first.subifds
    assert mirror_levels_in_main_chain(path) == 0


@pytest.mark.slow
def test_bioformats_sees_every_level(pyramid: zarr.Group, tmp_path: Path) -> None:
    """Bio-Formats' ImageInfo (QuPath, OMERO): every level of the OME-TIFF, of a label TIFF and of
    the SVS-style .tif (its SVSReader).
    Skipped unless ``$BIOFORMATS_JAR`` names bioformats_package.jar and java runs."""
    import os
    import re
    import shutil
    import subprocess

    jar = os.environ.get("BIOFORMATS_JAR")
    if not jar or not Path(jar).is_file() or shutil.which("java") is None:
        pytest.skip("set BIOFORMATS_JAR to bioformats_package.jar (and have java) to run")
    image = write_ome_tiff(pyramid, tmp_path / "x.ome.tif", mpp=MPP, tile=128)
    labels = (np.arange(600 * 700) % 5).astype(np.uint8).reshape(600, 700)
    label = write_label_tiff(labels, tmp_path / "x.focus.tif", mpp=MPP, tile=128)
    from wsi_fusion.io.writers.ome_tiff import write_generic_tiff

    svs = write_generic_tiff(pyramid, tmp_path / "x.tif", mpp=MPP, tile=128)

    def image_info(path: Path, *flags: str) -> str:
        return subprocess.run(
            ["java", "-cp", jar, "loci.formats.tools.ImageInfo", "-nopix", *flags, str(path)],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout  # fmt: skip

    for path in (image, label, svs):
        with tifffile.TiffFile(path) as tif:
            sizes = [(lv.shape[1], lv.shape[0]) for lv in tif.series[0].levels]  # (w, h)
        n = len(sizes)
        assert n >= 3
        info = image_info(path, "-noflat")
        # one image (the .tif adds its label page: a blank one here, as there is no label)
        assert f"Series count = {2 if path == svs else 1}" in info, info
        first = info.split("Series #0 :", 1)[1].split("Series #1", 1)[0]
        assert re.search(rf"Resolutions = {n}\b", first), info
        assert "untangling" not in info and "malformed" not in info
        # and they are the levels, in order (flattened, each resolution is a series): a
        # thumbnail the size of a level once took the smallest level's place in the .tif
        flat = image_info(path)
        seen = re.findall(r"Width = (\d+)\s+Height = (\d+)", flat)[:n]
        assert [(int(w), int(h)) for w, h in seen] == sizes, flat


def test_tif_is_an_aperio_slide_in_openslide_and_tiffslide(
    pyramid: zarr.Group, tmp_path: Path
) -> None:
    """The ``.tif`` flavour: an SVS layout, so OpenSlide and tiffslide see every level, the
    objective power, the mpp and the thumbnail, label and macro images."""
    openslide = pytest.importorskip("openslide")
    tiffslide = pytest.importorskip("tiffslide")
    from wsi_fusion.io.writers.ome_tiff import write_generic_tiff

    n = _levels(pyramid)
    label = np.full((40, 60, 3), 200, np.uint8)
    macro = np.full((50, 150, 3), 90, np.uint8)
    path = write_generic_tiff(
        pyramid, tmp_path / "x.tif", mpp=MPP, tile=128, description={"tool": "wsi_fusion|x"},
        source={"objective_power": 40.0}, associated={"label": label, "macro": macro},
    )  # fmt: skip
    with openslide.OpenSlide(path) as slide:
        props = slide.properties
        assert props["openslide.vendor"] == "aperio" and slide.level_count == n
        assert float(props["openslide.objective-power"]) == 40
        assert float(props["openslide.mpp-x"]) == pytest.approx(MPP)
        assert set(slide.associated_images) == {"thumbnail", "label", "macro"}
        got = np.asarray(slide.associated_images["label"].convert("RGB"))
        np.testing.assert_array_equal(got, label)  # LZW: the label stays exact
        # the provenance survives Aperio's |-separated key = value list ('|' JSON-escaped)
        assert json.loads(props["aperio.wsi_fusion"]) == {"tool": "wsi_fusion|x"}
    with tiffslide.TiffSlide(path) as slide:
        assert slide.level_count == n
        assert slide.properties["tiffslide.objective-power"] == 40
        assert {"thumbnail", "label", "macro"} <= set(slide.associated_images)
    assert_svs_layout_for_bioformats(path, n)


def assert_svs_layout_for_bioformats(path: Path, n: int) -> None:
    """What Bio-Formats' SVSReader needs to see exactly the ``n`` pyramid levels (tifffile
    structural check, so it runs without Java; the slow test runs Bio-Formats itself): every
    main-chain page has an Aperio description; the pages that are not label or macro are the
    resolutions, so the last two are ``label`` and ``macro``; it then drops the smallest
    resolution if stripped, so the stripped thumbnail (page 1) must be smaller than every
    tiled level, else it replaces the smallest level (measured with Bio-Formats 7.3)."""
    with tifffile.TiffFile(path) as tif:
        pages = [tif.pages[i] for i in range(len(tif.pages))]
        assert all(p.description.startswith("Aperio Image Library") for p in pages)
        assert "label" in pages[-2].description and "macro" in pages[-1].description
        levels = [pages[0], *pages[2:-2]]
        assert len(levels) == n and all(p.is_tiled and p.subfiletype == 0 for p in levels)
        thumb = pages[1]
        assert not thumb.is_tiled
        assert all(thumb.shape[0] * thumb.shape[1] < p.shape[0] * p.shape[1] for p in levels)
        sides = [p.shape[1] for p in levels]
        assert sides == sorted(sides, reverse=True)  # one pyramid, largest first


def test_fused_svs_keeps_objective_mpp_and_images_in_openslide(tmp_path: Path) -> None:
    """The issue's target: from a single-plane SVS, the fused .tif shows the same objective power
    and mpp in OpenSlide, and has a thumbnail (plus the label and macro)."""
    openslide = pytest.importorskip("openslide")
    from wsi_fusion.config import RunConfig
    from wsi_fusion.pipeline import fuse_slide
    from wsi_fusion.synth.demo import demo_source_path

    source = demo_source_path()  # OpenSlide's CMU-1-Small-Region.svs (one plane, 20x)
    out = tmp_path / "fused.tif"
    fuse_slide([source], out, RunConfig(fuser="plane", tissue={"enabled": False}))
    with openslide.OpenSlide(source) as src, openslide.OpenSlide(out) as fused:
        for key in ("openslide.objective-power", "openslide.mpp-x", "openslide.mpp-y"):
            assert float(fused.properties[key]) == pytest.approx(float(src.properties[key]))
        assert fused.dimensions == src.dimensions
        assert fused.level_count > 1
        assert set(fused.associated_images) == {"thumbnail", "label", "macro"}
