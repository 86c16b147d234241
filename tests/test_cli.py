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


def test_fuse_per_plane_files(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "fuse",
        *map(str, planes),
        "-o",
        str(tmp_path / "out.ome.zarr"),
        "--tile",
        "256",
        "--overlap",
        "128",
        "-q",
    )
    assert code == 0, err
    assert (tmp_path / "out.ome.zarr").is_dir() and (tmp_path / "out.ome.zarr.run.json").exists()


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")
def test_corrupt_slide_fixture(monkeypatch, capsys, tmp_path: Path) -> None:
    bad = SHARED_DATA / "format_fixtures" / "unreadable.svs"
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", str(bad), "-o", str(tmp_path / "o.ome.zarr")
    )
    assert code == 1 and "unreadable.svs" in err


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
        "256",
        "--overlap",
        "128",
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
        "256",
        "--overlap",
        "128",
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
        "256",
        "--overlap",
        "128",
    )
    assert code == 0, err


# ---- the bad-input matrix: exit 1, exactly one error: line, nothing partial, inputs untouched --


def _plane_with_mpp(path: Path, mpp: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tifffile.imwrite(
        path,
        rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8),
        photometric="rgb",
        tile=(128, 128),
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
    )
    return path


def _zarr_with_codec(path: Path, version: int) -> Path:
    """A valid NGFF z-stack whose level-0 metadata names a codec nobody registered."""
    import json

    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=version)
    array = group.create_array("0", shape=(2, 3, 64, 64), chunks=(1, 3, 64, 64), dtype="u1")
    array[:] = 128
    axes = [{"name": "z", "type": "space"}, {"name": "c", "type": "channel"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in ("y", "x")]
    scale = [{"type": "scale", "scale": [1, 1, 0.5, 0.5]}]
    multiscales = [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}]}]
    if version == 2:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscales[0]}]
        meta = path / "0" / ".zarray"
        record = json.loads(meta.read_text())
        record["compressor"] = {"id": "jpegxl_custom", "level": 3}
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
        meta = path / "0" / "zarr.json"
        record = json.loads(meta.read_text())
        record["codecs"][-1] = {"name": "jpegxl_custom", "configuration": {"level": 3}}
    meta.write_text(json.dumps(record))
    return path


def _ome_tiff_naming(path: Path, other: str) -> Path:
    """A two-plane multi-file OME-TIFF whose plane 1 is the file ``other``."""
    own, far = "urn:uuid:00000000-0000-0000-0000-000000000001", "urn:uuid:0-0-0-0-2"
    tiffdata = "".join(
        f'<TiffData FirstZ="{z}" IFD="0" PlaneCount="1"><UUID FileName="{name}">{urn}</UUID>'
        "</TiffData>"
        for z, (name, urn) in enumerate([(path.name, own), (other, far)])
    )
    xml = (
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{own}">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
        'SizeX="400" SizeY="300" SizeC="3" SizeZ="2" SizeT="1" Interleaved="true">'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="3"/>{tiffdata}</Pixels></Image></OME>'
    )
    pixels = np.zeros((300, 400, 3), np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", description=xml, metadata=None)
    return path


def _time_series(path: Path) -> Path:
    data = np.zeros((2, 2, 64, 64, 3), np.uint8)
    tifffile.imwrite(path, data, photometric="rgb", metadata={"axes": "TZYXS"}, ome=True)
    return path


def _config(folder: Path, text: str) -> str:
    path = folder / "run.yaml"
    path.write_text(text)
    return str(path)


def _pickle(path: Path) -> str:
    import pickle

    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    return str(path)


def _truncated(folder: Path, planes: list[Path]) -> Path:
    broken = folder / "broken.tif"
    broken.write_bytes(planes[1].read_bytes()[:600])
    return broken


def _junk(folder: Path) -> Path:
    path = folder / "junk.tif"
    path.write_bytes(b"this is not an image at all" * 10)
    return path


def _sixteen_bit(folder: Path) -> Path:
    path = folder / "deep.tif"
    tifffile.imwrite(path, np.zeros((300, 400), np.uint16), tile=(128, 128))
    return path


def _empty_file(folder: Path) -> Path:
    (folder / "empty.tif").write_bytes(b"")
    return folder / "empty.tif"


def _dangling(folder: Path) -> Path:
    (folder / "gone.tif").symlink_to(folder / "nowhere.tif")
    return folder / "gone.tif"


def _z_stack(folder: Path) -> Path:
    path = folder / "z.ome.tif"
    data = np.zeros((2, 300, 400, 3), np.uint8)
    tifffile.imwrite(path, data, photometric="rgb", metadata={"axes": "ZYXS"}, ome=True)
    return path


def _plain_zarr(folder: Path) -> Path:
    import zarr

    group = zarr.open_group(folder / "plain.zarr", mode="w", zarr_format=2)
    group.create_array("data", shape=(64, 64), dtype="u1")
    return folder / "plain.zarr"


def _empty_folder(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


def _gacn_tiling() -> list[str]:
    """A learned fuser with tiling that fits its margin (margins change as fusers evolve)."""
    from wsi_fusion.fusers import create_fuser

    overlap = 2 * create_fuser("gacn").margin
    return ["--fuser", "gacn", "--tile", str(max(128, 2 * overlap)), "--overlap", str(overlap)]


Case = tuple[list, list, tuple]  # inputs, options, words the error line must hold

#: name -> builder(input folder, plane files) -> (inputs, options, words)
BAD_INPUTS: dict[str, object] = {
    "missing plane": lambda d, p: ([p[0], d / "nope.svs"], [], ("nope.svs",)),
    "truncated plane": lambda d, p: ([p[0], _truncated(d, p)], [], ("broken.tif",)),
    "not an image": lambda d, p: ([p[0], _junk(d)], [], ("junk.tif",)),
    "plane sizes differ": lambda d, p: (
        [p[0], write_plane(d / "odd.tif", shape=(300, 401))],
        [],
        ("odd.tif", "401"),
    ),
    "pixel sizes differ": lambda d, p: (
        [_plane_with_mpp(d / "a.tif", 0.5), _plane_with_mpp(d / "b.tif", 0.25, 1)],
        [],
        ("b.tif", "pixel size"),
    ),
    "pixel size on one plane only": lambda d, p: (
        [_plane_with_mpp(d / "a.tif", 0.5), p[1]],
        [],
        ("p_z1.tif", "records none"),
    ),
    "same file twice": lambda d, p: ([p[0], p[1], p[0]], [], ("p_z0.tif", "same file")),
    "16-bit plane": lambda d, p: ([p[0], _sixteen_bit(d)], [], ("deep.tif", "uint16")),
    "time series": lambda d, p: ([_time_series(d / "t.ome.tif")], [], ("t.ome.tif", "time")),
    "empty folder": lambda d, p: ([_empty_folder(d)], [], ("empty",)),
    "OME-Zarr with an unknown codec (v2)": lambda d, p: (
        [_zarr_with_codec(d / "z.ome.zarr", 2)],
        [],
        ("z.ome.zarr", "'jpegxl_custom'"),
    ),
    "OME-Zarr with an unknown codec (v3)": lambda d, p: (
        [_zarr_with_codec(d / "z.ome.zarr", 3)],
        [],
        ("z.ome.zarr", "'jpegxl_custom'"),
    ),
    "OME-XML names a file outside": lambda d, p: (
        [_ome_tiff_naming(d / "m.ome.tif", "../elsewhere/x.tif")],
        [],
        ("m.ome.tif", "outside"),
    ),
    "OME-XML names a missing file": lambda d, p: (
        [_ome_tiff_naming(d / "m.ome.tif", "m_z1.ome.tif")],
        [],
        ("m_z1.ome.tif", "not exist"),
    ),
    "one plane, multi-plane fuser": lambda d, p: (
        [p[0]],
        ["--fuser", "focus_measure"],
        ("at least 2 focal planes", "--fuser plane"),
    ),
    "unknown fuser": lambda d, p: (
        p,
        ["--fuser", "magic"],
        ("unknown fuser 'magic'", "focus_measure"),
    ),
    "extra output the fuser lacks": lambda d, p: (
        p,
        ["--fuser", "plane", "--blur-mask"],
        ("blur", "cgan_blurmask"),
    ),
    "unknown config key": lambda d, p: (
        p,
        ["--config", _config(d, "tile_sise: 256\n")],
        ("tile_sise",),
    ),
    "config not YAML": lambda d, p: (p, ["--config", _config(d, "tile: [1,\n")], ("YAML",)),
    "missing config": lambda d, p: (p, ["--config", str(d / "none.yaml")], ("none.yaml",)),
    "reference plane out of range": lambda d, p: (
        p,
        ["--config", _config(d, "reference_plane: 7\n")],
        ("reference_plane 7",),
    ),
    "overlap below the fuser's margin": lambda d, p: (p, ["--overlap", "16"], ("--overlap",)),
    "overlap not below the tile": lambda d, p: (
        p,
        ["--tile", "128", "--overlap", "128"],
        ("overlap 128",),
    ),
    "weights file missing": lambda d, p: (
        p,
        [
            *_gacn_tiling(),
            "--config",
            _config(d, f"fuser_params: {{weights: {d / 'none.safetensors'}}}\n"),
        ],
        ("none.safetensors", "not found"),
    ),  # fmt: skip
    "weights file is a pickle": lambda d, p: (
        p,
        [
            *_gacn_tiling(),
            "--config",
            _config(d, f"fuser_params: {{weights: {_pickle(d / 'w.safetensors')}}}\n"),
        ],
        ("w.safetensors", "pickle"),
    ),  # fmt: skip
    "unknown fuser parameter": lambda d, p: (
        p,
        ["--config", _config(d, "fuser_params: {bogus: 1}\n")],
        ("fuser_params.bogus",),
    ),
    "config not a mapping": lambda d, p: (p, ["--config", _config(d, "- a\n")], ("mapping",)),
    "config value out of range": lambda d, p: (
        p,
        ["--config", _config(d, "tissue: {min_fraction: 2}\n")],
        ("tissue.min_fraction",),
    ),
    "unknown scheduler": lambda d, p: (p, ["--scheduler", "bogus"], ("'bogus'",)),
    "empty file": lambda d, p: ([p[0], _empty_file(d)], [], ("empty.tif",)),
    "dangling symlink": lambda d, p: ([p[0], _dangling(d)], [], ("gone.tif",)),
    "folder among plane files": lambda d, p: ([p[0], _empty_folder(d)], [], ("empty",)),
    "z-stack among plane files": lambda d, p: ([p[0], _z_stack(d)], [], ("z.ome.tif", "alone")),
    "Zarr without multiscales": lambda d, p: ([_plain_zarr(d)], [], ("plain.zarr", "multiscales")),
    "output folder missing": lambda d, p: (p, ["-o", "{out}/no/out.ome.zarr"], ("does not exist",)),
    "output format unknown": lambda d, p: (p, ["-o", "{out}/out.png"], ("out.png", "--format")),
    "output on /proc": lambda d, p: (p, ["-o", "/proc/x.ome.zarr"], ("/proc/x.ome.zarr",)),
    "output is an input": lambda d, p: (p, ["-o", str(p[0]), "--overwrite"], ("p_z0.tif",)),
    "output exists": lambda d, p: (p, ["-o", "{out}/kept.ome.tif"], ("--overwrite",)),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_matrix(monkeypatch, capsys, tmp_path: Path, case: str) -> None:
    """Every bad input or setting: exit 1, exactly one ``error:`` line naming the problem, no
    traceback, nothing left in the output folder, and the input folder untouched."""
    inputs_dir, outdir = tmp_path / "in", tmp_path / "out"
    inputs_dir.mkdir()
    outdir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    tifffile.imwrite(tmp_path / "elsewhere" / "x.tif", np.zeros((300, 400, 3), np.uint8))
    planes = [write_plane(inputs_dir / f"p_z{k}.tif", seed=k) for k in range(3)]
    (outdir / "kept.ome.tif").write_bytes(b"precious")
    inputs, options, words = BAD_INPUTS[case](inputs_dir, planes)
    options = [o.replace("{out}", str(outdir)) for o in options]
    if "-o" not in options:
        options += ["-o", str(outdir / "out.ome.zarr")]
    before = _snapshot(inputs_dir), _snapshot(outdir)
    fast = ["--fuser", "laplacian_pyramid", "--tile", "128", "--overlap", "64", "-q"]
    code, _, err = run_cli(monkeypatch, capsys, "fuse", *map(str, inputs), *fast, *options)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    assert (_snapshot(inputs_dir), _snapshot(outdir)) == before


@pytest.mark.parametrize(
    ("source", "outdir", "words"),
    [
        ("{in}/nope", "{out}/batch", ("nope", "does not exist")),
        ("{in}/p_z0.tif", "{out}/batch", ("p_z0.tif", "csv")),
        ("{in}", "/proc/batch_out", ("/proc/batch_out",)),
        ("{in}", "{out}/file.txt", ("file.txt", "in the way")),
    ],
)
def test_batch_bad_input_is_one_error_line(
    monkeypatch, capsys, tmp_path: Path, source: str, outdir: str, words: tuple[str, ...]
) -> None:
    inputs_dir, out = tmp_path / "in", tmp_path / "out"
    inputs_dir.mkdir()
    out.mkdir()
    for k in range(2):
        write_plane(inputs_dir / f"p_z{k}.tif", seed=k)
    (out / "file.txt").write_text("keep")
    before = _snapshot(tmp_path)
    src, dst = (
        a.replace("{in}", str(inputs_dir)).replace("{out}", str(out)) for a in (source, outdir)
    )
    code, _, err = run_cli(monkeypatch, capsys, "batch", src, "-o", dst, "-q")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    assert _snapshot(tmp_path) == before
