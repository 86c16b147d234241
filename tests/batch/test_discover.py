"""Batch inputs: folders grouped by a filename pattern, multi-plane files, CSV manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_fusion.batch import collect_slides, read_manifest
from wsi_fusion.batch.discover import pattern_regex
from wsi_fusion.errors import ConfigError, SlideNotFound


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_folder_groups_planes_by_slide_in_numeric_plane_order(tmp_path: Path) -> None:
    touch(tmp_path, "A_z10.svs", "A_z2.svs", "A_z0.svs", "B-1_z0.tif", "B-1_z1.tif", "notes.txt")
    slides = collect_slides(tmp_path)
    assert [s.slide_id for s in slides] == ["A", "B-1"]
    assert [Path(p).name for p in slides[0].inputs] == ["A_z0.svs", "A_z2.svs", "A_z10.svs"]
    assert [Path(p).name for p in slides[1].inputs] == ["B-1_z0.tif", "B-1_z1.tif"]


def test_multi_plane_files_are_one_slide_each_and_outputs_are_ignored(tmp_path: Path) -> None:
    touch(tmp_path, "s1.ome.tif", "s2.ndpi", "old.ome.zarr.run.json", "x.ome.tif.partial")
    (tmp_path / "s3.ome.zarr").mkdir()
    (tmp_path / "s3.ome.zarr" / ".zattrs").write_text("{}")
    (tmp_path / "out").mkdir()
    slides = collect_slides(tmp_path, exclude=(tmp_path / "out",))
    assert [(s.slide_id, len(s.inputs)) for s in slides] == [("s1", 1), ("s2", 1), ("s3", 1)]


def test_custom_pattern(tmp_path: Path) -> None:
    touch(tmp_path, "scan-7-plane1.png", "scan-7-plane0.png", "scan-8-plane0.png")
    slides = collect_slides(tmp_path, pattern="scan-{slide}-plane{plane}.png")
    assert [s.slide_id for s in slides] == ["7", "8"]
    assert Path(slides[0].inputs[0]).name == "scan-7-plane0.png"


@pytest.mark.parametrize("pattern", ["{slide}.tif", "{slide}_{plane}_{oops}.tif", "{plane}{plane}"])
def test_bad_pattern_names_the_problem(pattern: str) -> None:
    with pytest.raises(ConfigError, match="pattern"):
        pattern_regex(pattern)


def test_empty_folder_and_missing_input(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFound, match="no slides found"):
        collect_slides(tmp_path)
    with pytest.raises(SlideNotFound, match="does not exist"):
        collect_slides(tmp_path / "nope")


def test_manifest_paths_relative_to_the_csv(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "slide,planes,output,fuser\n"
        "a,planes/a0.tif;planes/a1.tif,,\n"
        "b,/abs/b.ome.tif,b_fused.ome.tif,wavelet\n"
        "\n"
    )
    a, b = read_manifest(manifest)
    assert a.inputs == (str(tmp_path / "planes/a0.tif"), str(tmp_path / "planes/a1.tif"))
    assert a.output_name is None and a.fuser is None
    assert b.inputs == ("/abs/b.ome.tif",)
    assert (b.output_name, b.fuser) == ("b_fused.ome.tif", "wavelet")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slide,files\na,x.tif\n", "lacks the column"),
        ("slide,planes,colour\na,x.tif,red\n", "unknown column"),
        ("slide,planes\na,\n", "row 2"),
        ("slide,planes\na,x.tif\na,y.tif\n", "more than once"),
        ("slide,planes\n", "lists no slides"),
    ],
)
def test_bad_manifest(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_manifest(manifest)
