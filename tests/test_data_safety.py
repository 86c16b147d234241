"""Never lose a scan: the tool removes only what it made and never writes over its inputs.

Each test reproduces a defect of issue 10 first seen destroying data: ``--cache-dir`` on the
planes' folder wiped it, ``-o`` equal to the input replaced the scan with ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import FILES_ONLY_RUN, run_cli

from wsi_fusion.config import RunConfig
from wsi_fusion.errors import ConfigError, ForeignPath, OutputExists, OverlapsInput
from wsi_fusion.io import ownership
from wsi_fusion.io.destination import publish, sidecar_path
from wsi_fusion.io.input_guard import refuse_overlap
from wsi_fusion.pipeline import fuse_slide
from wsi_fusion.scheduling.tile_cache import TileCache

FAST = FILES_ONLY_RUN
CLI_FAST = [
    "--fuser",
    "plane",
    "--tile",
    "128",
    "--overlap",
    "64",
    "--no-tissue",
    "--register",
    "off",
    "-q",
]


def write_planes(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for z in range(n):
        path = folder / f"plane_z{z}.tif"
        tifffile.imwrite(path, rng.integers(0, 256, (150, 200, 3), np.uint8), photometric="rgb")
        paths.append(path)
    return paths


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def planes(tmp_path: Path) -> list[Path]:
    paths = write_planes(tmp_path / "scans")
    (tmp_path / "scans" / "notes.txt").write_text("the lab's only copy")
    return paths


# -- 1. the tile cache removes only what it made --------------------------------------------------


def test_cache_dir_on_the_planes_folder_deletes_nothing(
    planes: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = planes[0].parent
    before = snapshot(folder)
    monkeypatch.chdir(folder)
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", *map(str, planes), "-o", str(tmp_path / "o.ome.zarr"),
        "--cache-dir", ".", *CLI_FAST,
    )  # fmt: skip
    assert code == 1
    line = one_error_line(err)
    assert str(folder) in line and "--cache-dir" in line
    assert snapshot(folder) == before
    assert not (tmp_path / "o.ome.zarr").exists()


def test_cache_dir_on_a_foreign_non_empty_folder_is_refused(
    planes: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    other = tmp_path / "some" / "existing"
    other.mkdir(parents=True)
    (other / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(other)
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", *map(str, planes), "-o", str(tmp_path / "o.ome.zarr"),
        "--cache-dir", str(other), *CLI_FAST,
    )  # fmt: skip
    assert code == 1
    line = one_error_line(err)
    assert str(other) in line and "new or empty folder" in line
    assert snapshot(other) == before


def test_an_empty_cache_dir_is_used_then_emptied_but_kept(
    planes: list[Path], tmp_path: Path
) -> None:
    cache = tmp_path / "scratch"
    cache.mkdir()
    fuse_slide(planes, tmp_path / "o.ome.zarr", RunConfig(**FAST), cache_dir=cache)
    assert cache.is_dir() and not any(cache.iterdir())
    assert not (tmp_path / "scratch.lock").exists()


def test_a_cache_dir_under_a_read_only_parent_still_works(
    planes: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    scratch = tmp_path / "readonly" / "me"  # like /scratch/$USER: no lock beside it possible
    scratch.mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: Path(p) != scratch.parent and real_access(p, mode)
    )
    with caplog.at_level("INFO", logger="wsi_fusion.pipeline"):
        fuse_slide(planes, tmp_path / "o.ome.zarr", RunConfig(**FAST), cache_dir=scratch)
    assert "not locking the tile cache" in caplog.text
    assert scratch.is_dir() and not any(scratch.iterdir())


def test_tile_cache_rebuilds_only_its_own_folder(tmp_path: Path) -> None:
    args = {"n_tiles": 2, "channels": 3, "planes": 2, "tile": 8, "with_weights": False}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "fingerprint.json").write_text("{}")  # looks like a cache, is not marked as one
    with pytest.raises(ForeignPath, match="not made by wsi_fusion"):
        TileCache.prepare(foreign, {"a": 1}, **args)
    assert (foreign / "fingerprint.json").read_text() == "{}"

    ours = tmp_path / "ours"
    TileCache.prepare(ours, {"a": 1}, **args).write_tile(0, np.zeros((3, 8, 8), np.uint8), None)
    assert TileCache.prepare(ours, {"a": 1}, **args).done_tiles() == {0}  # resumed
    assert TileCache.prepare(ours, {"a": 2}, **args).done_tiles() == set()  # rebuilt
    assert ownership.is_ours(ours)


# -- 2. never write over an input ---------------------------------------------------------------


def test_output_equal_to_the_input_is_refused_even_with_overwrite(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    stack = tmp_path / "stack.ome.tif"
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 256, (3, 150, 200, 3), np.uint8)
    tifffile.imwrite(stack, planes, photometric="rgb", metadata={"axes": "ZYXS"})
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", str(stack), "-o", str(stack), "--overwrite", *CLI_FAST
    )
    assert code == 1
    assert "is the input" in one_error_line(err) and str(stack) in err
    assert snapshot(tmp_path) == before


def test_per_plane_output_over_a_plane_is_refused(planes: list[Path], monkeypatch, capsys) -> None:
    before = snapshot(planes[0].parent)
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", *map(str, planes), "-o", str(planes[1]), "--overwrite",
        *CLI_FAST,
    )  # fmt: skip
    assert code == 1 and "is the input" in one_error_line(err)
    assert snapshot(planes[0].parent) == before


@pytest.mark.parametrize(
    ("where", "relation"),
    [
        ("scans", "holds"),  # an OME-Zarr output named like the folder of the planes
        ("hardlink.tif", "is"),  # another name of the same file
        ("symlink.tif", "is"),
    ],
)
def test_output_overlapping_an_input_is_refused(
    planes: list[Path], tmp_path: Path, where: str, relation: str
) -> None:
    (tmp_path / "hardlink.tif").hardlink_to(planes[0])
    (tmp_path / "symlink.tif").symlink_to(planes[0])
    config = RunConfig(**{**FAST, "format": "ome-zarr"})
    before = snapshot(planes[0].parent)
    with pytest.raises(OverlapsInput, match=relation):
        fuse_slide(planes, tmp_path / where, config, overwrite=True)
    assert snapshot(planes[0].parent) == before


def test_a_path_inside_a_folder_input_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "scan.ome.zarr"  # folder inputs: OME-Zarr, DICOM
    store.mkdir()
    with pytest.raises(OverlapsInput, match="lies inside the input"):
        refuse_overlap([store], [(store / "labels" / "x.tif", "output", "fix")])


def test_a_sidecar_over_an_input_is_refused(tmp_path: Path) -> None:
    planes = write_planes(tmp_path)
    victim = tmp_path / "out.focus.tif"  # the focus map of out.tif
    planes[2].rename(victim)
    planes[2] = victim
    config = RunConfig(**FAST, focus_map=True)
    with pytest.raises(OverlapsInput, match="sidecar output .*out.focus.tif is the input"):
        fuse_slide(planes, tmp_path / "out.tif", config, overwrite=True)


def test_cache_dir_holding_an_input_is_refused(planes: list[Path], tmp_path: Path) -> None:
    with pytest.raises(OverlapsInput, match="tile cache folder .* holds the input"):
        fuse_slide(planes, tmp_path / "o.ome.zarr", RunConfig(**FAST), cache_dir=planes[0].parent)


@pytest.mark.parametrize("cache", ["o.ome.zarr", "o.ome.zarr/cache", "."])
def test_cache_dir_on_the_output_is_refused(planes: list[Path], tmp_path: Path, cache: str) -> None:
    with pytest.raises(ConfigError, match="overlaps the output"):
        fuse_slide(planes, tmp_path / "o.ome.zarr", RunConfig(**FAST), cache_dir=tmp_path / cache)


# -- partial outputs and swap folders ------------------------------------------------------------


def test_overwrite_never_replaces_a_foreign_folder(
    planes: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "results.ome.zarr"
    out.mkdir()
    (out / "analysis.csv").write_text("keep me")
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", *map(str, planes), "-o", str(out), "--overwrite", *CLI_FAST
    )
    assert code == 1 and "did not make" in one_error_line(err)
    assert (out / "analysis.csv").read_text() == "keep me"


def test_overwrite_replaces_its_own_output(planes: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o.ome.zarr"
    fuse_slide(planes, out, RunConfig(**FAST))
    assert ownership.is_ours(out)
    fuse_slide(planes, out, RunConfig(**FAST), overwrite=True)
    assert ownership.is_ours(out) and not (tmp_path / "o.ome.zarr.old").exists()


def test_a_foreign_partial_output_is_left_alone(planes: list[Path], tmp_path: Path) -> None:
    partial = tmp_path / "o.ome.zarr.partial"
    partial.mkdir()
    (partial / "x.txt").write_text("not ours")
    with pytest.raises(ForeignPath, match="partial output"):
        fuse_slide(planes, tmp_path / "o.ome.zarr", RunConfig(**FAST))
    assert (partial / "x.txt").read_text() == "not ours"


def test_publish_removes_only_its_own_swap_folder(tmp_path: Path) -> None:
    new, dst, old = tmp_path / "new", tmp_path / "dst", tmp_path / "dst.old"
    for folder in (new, dst, old):
        folder.mkdir()
        ownership.mark(folder, "output")
    (old / "x").write_text("left by a killed swap")
    publish(new, dst)  # ours: removed
    assert not old.exists() and not new.exists() and dst.is_dir()

    new.mkdir()
    ownership.mark(new, "output")
    old.mkdir()
    (old / "x").write_text("someone else's")
    with pytest.raises(ForeignPath, match="swap folder"):
        publish(new, dst)
    assert (old / "x").read_text() == "someone else's" and new.is_dir()


def test_a_legacy_output_is_recognised_by_its_metadata(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.ome.zarr"
    legacy.mkdir()
    (legacy / ".zattrs").write_text(json.dumps({"wsi_fusion": {"tool": "wsi_fusion"}}))
    assert ownership.is_ours(legacy)
    (legacy / ".zattrs").write_text(json.dumps({"multiscales": []}))
    assert not ownership.is_ours(legacy)


# -- sidecar names ------------------------------------------------------------------------------


def test_sidecars_are_named_from_the_full_output_name() -> None:
    names = {
        sidecar_path(Path(name), "focus").name
        for name in ("x.ome.tif", "x.tif", "x.ome.tiff", "x.tiff")
    }
    assert names == {"x.ome.focus.tif", "x.focus.tif", "x.ome.focus.tiff", "x.focus.tiff"}
    assert sidecar_path(Path("x.ome.tif"), "blur_mask").name == "x.ome.blur_mask.tif"


def test_an_existing_sidecar_is_not_replaced_without_overwrite(
    planes: list[Path], tmp_path: Path
) -> None:
    focus = tmp_path / "x.focus.tif"
    focus.write_bytes(b"someone's focus map")
    config = RunConfig(**FAST, focus_map=True, compression="deflate")
    with pytest.raises(OutputExists, match="x.focus.tif .* already exists; pass --overwrite"):
        fuse_slide(planes, tmp_path / "x.tif", config)
    assert focus.read_bytes() == b"someone's focus map" and not (tmp_path / "x.tif").exists()
    fuse_slide(planes, tmp_path / "x.tif", config, overwrite=True)
    assert focus.read_bytes()[:2] in (b"II", b"MM")


def test_ome_tiff_and_generic_tiff_of_one_slide_keep_separate_focus_maps(
    planes: list[Path], tmp_path: Path
) -> None:
    config = RunConfig(**FAST, focus_map=True, compression="deflate")
    ome = fuse_slide(planes, tmp_path / "x.ome.tif", config)
    generic = fuse_slide(planes, tmp_path / "x.tif", config)
    assert ome.extra_outputs == [tmp_path / "x.ome.focus.tif"]
    assert generic.extra_outputs == [tmp_path / "x.focus.tif"]
    assert all(p.is_file() for p in ome.extra_outputs + generic.extra_outputs)
