"""Batch conversion: skip finished slides, redo changed ones, keep going past failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers import run_cli

from wsi_fusion.batch import SlideSpec, collect_slides, run_batch
from wsi_fusion.config import RunConfig

FAST = {
    "tile": 256,
    "overlap": 128,
    "chunk": 128,
    "tissue": {"enabled": False},
    "registration": {"mode": "off"},
}


def write_planes(folder: Path, slide: str, n: int = 3, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for z in range(n):
        path = folder / f"{slide}_z{z}.tif"
        tifffile.imwrite(path, rng.integers(0, 256, (150, 200, 3), np.uint8), photometric="rgb")
        paths.append(path)
    return paths


@pytest.fixture
def slide_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    write_planes(folder, "A", seed=1)
    write_planes(folder, "B", seed=2)
    (folder / "C_z0.tif").write_bytes(b"not a tiff (plane 0)")
    (folder / "C_z1.tif").write_bytes(b"not a tiff (plane 1)")
    return folder


def by_slide(summary_path: Path) -> dict[str, dict]:
    record = json.loads(summary_path.read_text())
    return {s["slide"]: s for s in record["slides"]}


def test_failure_is_reported_and_the_rest_converted_then_skipped(
    slide_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = RunConfig(**FAST)
    summary = run_batch(collect_slides(slide_folder), out, config)
    assert summary.counts() == {"done": 2, "skipped": 0, "failed": 1, "pending": 0}
    slides = by_slide(out / "batch_summary.json")
    assert slides["C"]["error_type"] == "UnreadableSlide" and "C_z0.tif" in slides["C"]["error"]
    assert "Traceback" in (out / "logs" / "C.log").read_text()
    assert "slide A done" in (out / "logs" / "A.log").read_text()
    assert (out / "A.ome.zarr").is_dir() and not (out / "A.ome.zarr.cache").exists()
    first = np.asarray(zarr.open_group(out / "A.ome.zarr", mode="r")["0"])

    again = run_batch(collect_slides(slide_folder), out, config)
    assert [r.status for r in again.results] == ["skipped", "skipped", "failed"]
    assert np.array_equal(np.asarray(zarr.open_group(out / "A.ome.zarr", mode="r")["0"]), first)


def test_changed_settings_or_inputs_or_force_redo_a_slide(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    planes = write_planes(folder, "A")
    out = tmp_path / "out"
    config = RunConfig(**FAST)
    run_batch(collect_slides(folder), out, config)

    other = config.model_copy(update={"fuser": "wavelet"})
    assert run_batch(collect_slides(folder), out, other).results[0].status == "done"
    assert json.loads((out / "A.ome.zarr.run.json").read_text())["fuser"]["name"] == "wavelet"
    assert run_batch(collect_slides(folder), out, other).results[0].status == "skipped"
    assert run_batch(collect_slides(folder), out, other, force=True).results[0].status == "done"

    write_planes(folder, "A", seed=5)  # same names, new content (size/mtime change)
    assert planes[0].exists()
    assert run_batch(collect_slides(folder), out, other).results[0].status == "done"


def test_manifest_output_name_and_per_slide_fuser(tmp_path: Path) -> None:
    planes = write_planes(tmp_path, "A")
    slides = [
        SlideSpec("A", tuple(map(str, planes)), output_name="a_plane1", fuser="plane"),
        SlideSpec("A2", tuple(map(str, planes)), output_name="a2.ome.tif"),
    ]
    summary = run_batch(slides, tmp_path / "out", RunConfig(**FAST))
    assert [r.status for r in summary.results] == ["done", "done"]
    fused = np.asarray(zarr.open_group(tmp_path / "out" / "a_plane1.ome.zarr", mode="r")["0"])
    assert np.array_equal(fused.transpose(1, 2, 0), tifffile.imread(planes[1]))
    assert (tmp_path / "out" / "a2.ome.tif").is_file()


def test_cli_batch_exit_code_and_summary(
    monkeypatch, capsys, slide_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["batch", str(slide_folder), "-o", str(out), "--tile", "256", "--overlap", "128"]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args, "--no-tissue")
    assert code == 1, stderr
    assert "2 converted" in stdout and "1 failed" in stdout
    assert "FAILED C: UnreadableSlide" in stderr
    record = json.loads((out / "batch_summary.json").read_text())
    assert record["counts"]["failed"] == 1

    (slide_folder / "C_z0.tif").unlink()
    (slide_folder / "C_z1.tif").unlink()
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args, "--no-tissue", "-q")
    assert code == 0, stderr
    assert by_slide(out / "batch_summary.json")["A"]["status"] == "skipped"
