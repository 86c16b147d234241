"""CLI: exit codes and error messages for each class of bad input; no partial output left."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import SHARED_DATA, run_cli


def write_plane(path: Path, shape: tuple[int, int] = (300, 400), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tifffile.imwrite(
        path,
        rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8),
        photometric="rgb",
        tile=(128, 128),
    )
    return path


@pytest.fixture
def planes(tmp_path: Path) -> list[Path]:
    return [write_plane(tmp_path / f"p_z{k}.tif", seed=k) for k in range(3)]


def leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if ".partial" in p.name or p.name.startswith("out")
    )


def test_fuse_per_plane_files(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(tmp_path / "out.ome.zarr"),
        "--tile",
        "128",
        "--overlap",
        "64",
        "-q",
    )
    assert code == 0, err
    assert (tmp_path / "out.ome.zarr").is_dir() and (tmp_path / "out.ome.zarr.run.json").exists()


def test_missing_file(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        str(planes[0]),
        str(tmp_path / "nope.svs"),
        "-o",
        str(tmp_path / "out.ome.zarr"),
    )
    assert code == 1 and "nope.svs" in err
    assert leftovers(tmp_path) == []


def test_truncated_file(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    broken = tmp_path / "broken.tif"
    broken.write_bytes(planes[1].read_bytes()[:600])
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        str(planes[0]),
        str(broken),
        "-o",
        str(tmp_path / "out.ome.zarr"),
    )
    assert code == 1 and "broken.tif" in err
    assert leftovers(tmp_path) == []


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")
def test_corrupt_slide_fixture(monkeypatch, capsys, tmp_path: Path) -> None:
    bad = SHARED_DATA / "format_fixtures" / "unreadable.svs"
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", str(bad), str(bad), "-o", str(tmp_path / "out.ome.zarr")
    )
    assert code == 1 and "unreadable.svs" in err


def test_mismatched_plane_sizes(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    odd = write_plane(tmp_path / "odd.tif", shape=(300, 401))
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", str(planes[0]), str(odd), "-o", str(tmp_path / "out.ome.zarr")
    )
    assert code == 1 and "odd.tif" in err and "401" in err
    assert leftovers(tmp_path) == []


def test_single_plane_to_multi_plane_fuser(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", str(planes[0]), "-o", str(tmp_path / "out.ome.zarr")
    )
    assert code == 1 and "at least 2 focal planes" in err and "--fuser plane" in err
    assert leftovers(tmp_path) == []


def test_unknown_fuser(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(tmp_path / "out.ome.zarr"),
        "--fuser",
        "magic",
    )
    assert code == 1 and "unknown fuser 'magic'" in err and "focus_measure" in err


def test_output_exists_is_refused_unless_overwrite(
    monkeypatch, capsys, planes, tmp_path: Path
) -> None:
    out = tmp_path / "out.ome.tif"
    out.write_bytes(b"precious")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(out),
        "--tile",
        "128",
        "--overlap",
        "64",
    )
    assert code == 1 and "--overwrite" in err and out.read_bytes() == b"precious"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(out),
        "--tile",
        "128",
        "--overlap",
        "64",
        "--overwrite",
        "-q",
    )
    assert code == 0, err
    assert tifffile.TiffFile(out).series[0].shape == (300, 400, 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", *map(str, planes), "-o", str(locked / "out.ome.zarr")
    )
    assert code == 1 and "not writable" in err


def test_missing_output_folder(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", *map(str, planes), "-o", str(tmp_path / "no" / "out.ome.zarr")
    )
    assert code == 1 and "does not exist" in err


def test_unknown_config_key(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tile_sise: 256\n")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(tmp_path / "out.ome.zarr"),
        "--config",
        str(cfg),
    )
    assert code == 1 and "tile_sise" in err


def test_fusers_lists_one_per_line(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "fusers")
    assert code == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert {"focus_measure", "laplacian_pyramid", "wavelet", "plane"} <= set(rows)
    assert rows["focus_measure"][1:3] == ["no weights", "not needed"]
    # Learned fusers name their weights file and its pinned hash.
    assert rows["gacn"][1] == "needs weights" and "gacn.small.safetensors" in rows["gacn"][2]


def test_info(monkeypatch, capsys, planes) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "info", *map(str, planes), "--json")
    assert code == 0 and '"planes": 3' in out.replace("n_planes", "planes")


def test_help_does_not_import_torch() -> None:
    import subprocess

    code = (
        "import sys; from wsi_fusion.cli import cli; import wsi_fusion.fusers as f; "
        "f.list_fusers(); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_synth_then_fuse(monkeypatch, capsys, tmp_path: Path) -> None:
    from wsi_fusion.synth.demo import demo_source_path

    out = tmp_path / "synthetic"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "synth",
        str(demo_source_path()),
        "-o",
        str(out),
        "--size",
        "300",
        "400",
        "--planes",
        "3",
        "--forms",
        "planes",
        "--lossless",
    )
    assert code == 0, err
    planes = sorted((out / "planes").glob("*.tif"))
    assert len(planes) == 3 and (out / "ground_truth.tif").exists()
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(tmp_path / "f.tif"),
        "-q",
        "--tile",
        "128",
        "--overlap",
        "64",
    )
    assert code == 0, err
