"""Outputs name inputs by file name: no absolute path of the machine in any output file's bytes
(OME-XML, TIFF tags, zarr metadata, run.json, sidecars) unless ``--record-paths`` is given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tifffile
from helpers import run_cli, write_random_planes

from wsi_fusion.io.privacy import redact_config, redact_fuser

SMALL = ("--fuser", "laplacian_pyramid", "--tile", "128", "--overlap", "64", "--register", "off")
SMALL += ("--focus-map", "-q")
#: A folder name like the accession numbers real slide folders carry.
ACCESSION = "S24-012345"


@pytest.fixture
def planes(tmp_path: Path) -> list[str]:
    folder = tmp_path / ACCESSION
    folder.mkdir()
    return write_random_planes(folder, "case", 3, (300, 400))


def machine_paths(tmp_path: Path) -> list[bytes]:
    """Absolute paths that must not leak: the test folder (as given and resolved), the input
    folder's name, the home folder and the working folder."""
    found = {str(tmp_path), os.path.realpath(tmp_path), ACCESSION, os.getcwd()}
    if len(str(Path.home())) > 1:
        found.add(str(Path.home()) + "/")
    return sorted(p.encode() for p in found)


def output_files(folder: Path, name: str) -> list[Path]:
    """Every file of an output: the image (all files of a zarr), run.json and sidecars."""
    stem = name.split(".")[0]
    files = []
    for path in folder.iterdir():
        if not path.name.startswith(stem):
            continue
        files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return files


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.ome.tif", "out.tif"])
def test_no_machine_path_in_any_output_file(
    monkeypatch, capsys, planes, tmp_path: Path, name: str
) -> None:
    outdir = tmp_path / "results"
    outdir.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(outdir / name), *SMALL)
    assert code == 0, err
    files = output_files(outdir, name)
    assert any(p.name.endswith(".run.json") for p in files) and len(files) >= 3
    for path in files:
        data = path.read_bytes()
        for private in machine_paths(tmp_path):
            assert private not in data, f"{private!r} in {path}"
        # Outputs name their final files, never the .partial names they were written under.
        assert b".partial" not in data, path
    if name == "out.ome.tif":
        with tifffile.TiffFile(outdir / name) as tif:
            assert 'Name="out.ome.tif"' in tif.ome_metadata
    run = json.loads((outdir / f"{name}.run.json").read_text())
    assert run["inputs"] == ["case_z0.tif", "case_z1.tif", "case_z2.tif"]
    assert run["report"]["output"] == name


def test_record_paths_opts_in(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    out = tmp_path / "out.ome.zarr"
    args = ("fuse", *planes, "-o", str(out), *SMALL, "--record-paths")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    run = json.loads((tmp_path / "out.ome.zarr.run.json").read_text())
    assert run["inputs"] == planes and run["report"]["output"] == str(out)
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["wsi_fusion"]["inputs"] == planes


def test_weights_paths_are_names() -> None:
    described = {
        "name": "acnn",
        "params": {"weights": "/home/lab/S24-1/acnn.safetensors"},
        "weights": {"file": "/home/lab/S24-1/acnn.safetensors", "sha256": "ab"},
    }
    redacted = redact_fuser(described, record_paths=False)
    assert redacted["weights"] == {"file": "acnn.safetensors", "sha256": "ab"}
    assert redacted["params"]["weights"] == "acnn.safetensors"
    config = {"fuser_params": {"weights": "/home/lab/x.safetensors"}, "tile": 512}
    assert redact_config(config, False)["fuser_params"]["weights"] == "x.safetensors"
    assert redact_config(config, True) == config


def test_batch_outputs_and_summary_hold_no_machine_path(
    monkeypatch, capsys, planes, tmp_path: Path
) -> None:
    """Per-slide outputs and batch_summary.json name files, not paths (logs/ are diagnostics
    for this machine and do name paths)."""
    outdir = tmp_path / "batch_out"
    source = str(Path(planes[0]).parent)
    args = ("batch", source, "-o", str(outdir), "--pattern", "{slide}_z{plane}.{ext}", *SMALL)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    files = [p for p in outdir.rglob("*") if p.is_file() and "logs" not in p.parts]
    assert any(p.name == "batch_summary.json" for p in files)
    for path in files:
        data = path.read_bytes()
        for private in machine_paths(tmp_path):
            assert private not in data, f"{private!r} in {path}"
    summary = json.loads((outdir / "batch_summary.json").read_text())
    assert summary["slides"][0]["inputs"] == ["case_z0.tif", "case_z1.tif", "case_z2.tif"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--record-paths", "--force")
    assert code == 0, err
    summary = json.loads((outdir / "batch_summary.json").read_text())
    assert summary["slides"][0]["inputs"] == planes
