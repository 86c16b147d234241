"""Fault injection: every OS error, memory error or late weights error ends a run with one
``error:`` line naming the path and the fix, exit code 1, and nothing partial left behind.

Faults are injected where the libraries would raise them (the tile cache, the zarr output, the
TIFF writer, folder creation), so the tests run without root and without a special file system;
one test hits a real file-size limit (``RLIMIT_FSIZE``) in a subprocess. A crash (interrupt) at
every phase boundary must instead keep the resume state, and the rerun must give the same pixels.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers import run_cli

from wsi_fusion import pipeline
from wsi_fusion.config import RunConfig
from wsi_fusion.errors import WeightsError
from wsi_fusion.scheduling.tile_cache import TileCache

# laplacian_pyramid: a real fuser whose 32 px margin fits 64 px overlaps of small tiles.
FUSER = ("--fuser", "laplacian_pyramid")
SMALL = (*FUSER, "--tile", "128", "--overlap", "64", "--no-tissue", "--register", "off", "-q")


def write_plane(path: Path, seed: int, shape: tuple[int, int] = (300, 400)) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(128, 128))
    return path


@pytest.fixture
def planes(tmp_path: Path) -> list[str]:
    folder = tmp_path / "in"
    folder.mkdir()
    return [str(write_plane(folder / f"p_z{k}.tif", seed=k)) for k in range(3)]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def left_behind(folder: Path) -> list[str]:
    """Names in ``folder`` a failed run must not leave: partials, caches, outputs, run.json."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if any(s in p.name for s in (".partial", ".cache", "out.", ".run.json"))
    )


def raise_os_error(code: int, path: str = ""):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), path or None)

    return fail


def assert_clean_failure(code: int, err: str, folder: Path, *words: str) -> None:
    lines = error_lines(err)
    assert code == 1, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    assert left_behind(folder) == []


@pytest.mark.parametrize(
    ("where", "fmt", "code", "words"),
    [
        ("tile cache", "ome.zarr", errno.ENOSPC, ("No space left", "disk is full", "--cache-dir")),
        ("tile cache", "ome.tif", errno.EDQUOT, ("quota",)),
        ("output block", "ome.zarr", errno.ENOSPC, ("No space left", "--cache-dir")),
        ("tiff writer", "ome.tif", errno.EFBIG, ("File too large", "ulimit -f")),
        ("tiff writer", "tif", errno.ENOSPC, ("No space left",)),
        ("tiff writer", "ome.tif", errno.EIO, ("Input/output error",)),
    ],
)
def test_os_error_while_writing(
    monkeypatch, capsys, planes, tmp_path: Path, where: str, fmt: str, code: int, words
) -> None:
    out = tmp_path / f"out.{fmt}"
    if where == "tile cache":
        monkeypatch.setattr(TileCache, "write_tile", raise_os_error(code, str(out) + ".cache/x"))
    elif where == "output block":
        monkeypatch.setattr(TileCache, "mark_block", raise_os_error(code))
    else:
        from wsi_fusion.io.writers import ome_tiff

        name = "write_ome_tiff" if fmt == "ome.tif" else "write_generic_tiff"
        monkeypatch.setattr(ome_tiff, name, raise_os_error(code, str(out) + ".partial"))
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(out), *SMALL)
    assert_clean_failure(status, err, tmp_path, str(out), *words)


def test_an_empty_cache_dir_given_by_the_user_is_kept_and_emptied_after_an_error(
    monkeypatch, capsys, planes, tmp_path: Path
) -> None:
    cache = tmp_path / "my_cache"
    cache.mkdir()
    monkeypatch.setattr(TileCache, "write_tile", raise_os_error(errno.ENOSPC, str(cache / "x")))
    out = tmp_path / "out.ome.zarr"
    args = ("fuse", *planes, "-o", str(out), "--cache-dir", str(cache), *SMALL)
    status, _, err = run_cli(monkeypatch, capsys, *args)
    assert_clean_failure(status, err, tmp_path, "No space left")
    assert cache.is_dir() and list(cache.iterdir()) == []


@pytest.mark.parametrize("fmt", ["ome.zarr", "ome.tif"])
def test_disk_full_inside_zarr_while_blending(
    monkeypatch, capsys, planes, tmp_path: Path, fmt: str
) -> None:
    """ENOSPC from zarr's own store when a blended level-0 chunk is written (phase 2; for a
    TIFF output the chunk goes to the pyramid inside the tile cache)."""
    import zarr.storage

    real_set = zarr.storage.LocalStore.set

    async def set_chunk(self, key: str, value) -> None:
        if key.startswith("0/") and not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{self.root}/{key}")
        await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_chunk)
    out = tmp_path / f"out.{fmt}"
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(out), *SMALL)
    assert_clean_failure(status, err, tmp_path, "No space left", "/0/")


def deny_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` read-only: chmod, and (root ignores modes) refuse mkdir below it."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, *args, **kwargs):
        if Path(os.fspath(path)).absolute().is_relative_to(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_read_only_cache_dir(monkeypatch, capsys, planes, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes_under(monkeypatch, locked)
    try:
        out = tmp_path / "out.ome.zarr"
        args = ("fuse", *planes, "-o", str(out), "--cache-dir", str(locked / "cache"), *SMALL)
        status, _, err = run_cli(monkeypatch, capsys, *args)
    finally:
        locked.chmod(0o755)
    assert_clean_failure(status, err, tmp_path, str(locked / "cache"), "Permission denied")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("name", ["out.ome.zarr", "out.ome.tif"])
def test_read_only_output_folder(monkeypatch, capsys, planes, tmp_path: Path, name: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    deny_writes_under(monkeypatch, locked)
    try:
        args = ("fuse", *planes, "-o", str(locked / name), *SMALL)
        status, _, err = run_cli(monkeypatch, capsys, *args)
    finally:
        locked.chmod(0o755)
    lines = error_lines(err)
    assert status == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert str(locked) in lines[0]
    assert sorted(p.name for p in locked.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", ["x.ome.zarr", "x.ome.tif"])
def test_output_on_a_special_file_system(monkeypatch, capsys, planes, name: str) -> None:
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", f"/proc/{name}", *SMALL)
    assert status == 1 and len(error_lines(err)) == 1, err
    assert f"/proc/{name}" in error_lines(err)[0] and "Traceback" not in err


def test_weights_error_after_the_output_was_started(
    monkeypatch, capsys, planes, tmp_path: Path
) -> None:
    """Learned fusers load their weights in the workers, after the output and cache exist."""

    def bad_weights(*args, **kwargs):
        raise WeightsError("model.safetensors is truncated; restore it from the repository")

    monkeypatch.setattr("wsi_fusion.scheduling.tasks.fuse_tiles", bad_weights, raising=False)
    monkeypatch.setattr(pipeline, "fuse_tiles", bad_weights)
    out = tmp_path / "out.ome.zarr"
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(out), *SMALL)
    assert_clean_failure(status, err, tmp_path, "truncated")


def test_memory_error_is_not_reported_as_a_corrupt_file(
    monkeypatch, capsys, planes, tmp_path: Path
) -> None:
    from wsi_fusion.io.readers import layers

    def no_memory(self, plane, target_hw):
        raise MemoryError

    monkeypatch.setattr(layers.LayerStack, "_thumbnail", no_memory)
    out = tmp_path / "out.ome.zarr"
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(out), *SMALL[:-4])
    assert_clean_failure(status, err, tmp_path, "not enough memory")
    assert "corrupt" not in err


def test_real_file_size_limit(planes, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse the TIFF's writes with EFBIG (Python ignores
    SIGXFSZ), a real fault without root or a special file system."""
    limit = 96 * 1024  # the cache's chunks are ~50 kB; the 300x400 TIFF is larger

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out.ome.tif"
    cli = "from wsi_fusion.cli import main; main()"
    cmd = [sys.executable, "-c", cli, "fuse", *planes, "-o", str(out), *SMALL]
    cmd += ["--lossless"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=120
    )
    assert_clean_failure(done.returncode, done.stderr, tmp_path, "File too large")


# ---- interruptions: the resume state stays, the rerun gives the same pixels ------------------


class _Interrupted(KeyboardInterrupt):
    """Stands in for Ctrl-C (or a kill) at a phase boundary."""


class _StopAt:
    """Progress sink that interrupts the run when the named phase starts."""

    def __init__(self, phase: str) -> None:
        self.stop = phase

    def phase(self, name: str, total: int):
        if name == self.stop:
            raise _Interrupted(name)
        return pipeline._Silent().phase(name, total)


def _interrupt(*args, **kwargs):
    raise _Interrupted


def _pixels(path: Path) -> np.ndarray:
    if path.name.endswith(".tif"):
        return tifffile.imread(path)
    return np.asarray(zarr.open_group(path, mode="r")["0"][:])


#: Files whose content records the run itself (time, timings, resumed counts), not the image.
_RUN_RECORDS = {".zattrs", "zarr.json"}


def _stored_bytes(path: Path) -> dict[str, bytes]:
    """What must be bit-identical between runs: every zarr chunk and array definition (every
    level and label), or every TIFF tile's compressed bytes (every level)."""
    if path.is_dir():
        return {
            str(f.relative_to(path)): f.read_bytes()
            for f in sorted(path.rglob("*"))
            if f.is_file() and (f.name not in _RUN_RECORDS or f.parent != path)
        }
    tiles: dict[str, bytes] = {}
    with tifffile.TiffFile(path) as tif, open(path, "rb") as fh:
        pages = [page for level in tif.series[0].levels for page in level.pages]
        for k, page in enumerate(pages):
            spans = zip(page.dataoffsets, page.databytecounts, strict=True)
            for j, (offset, count) in enumerate(spans):
                fh.seek(offset)
                tiles[f"{k}/{j}"] = fh.read(count)
    return tiles


@pytest.mark.parametrize(
    ("boundary", "suffix"),
    [
        ("fuse tiles", "ome.zarr"),  # after planning, before phase 1
        ("blend blocks", "ome.zarr"),  # between phase 1 and phase 2
        ("_finish_pyramid", "ome.zarr"),  # after phase 2, before the pyramid
        ("_write_final", "ome.tif"),  # pyramid built, TIFF not yet written
    ],
)
def test_interrupt_at_every_phase_boundary_resumes_identically(
    monkeypatch, planes, tmp_path: Path, boundary: str, suffix: str
) -> None:
    config = RunConfig(
        fuser="laplacian_pyramid",
        tile=128,
        overlap=64,
        focus_map=True,
        scheduler="sync",
        registration={"mode": "off"},
    )
    reference = pipeline.fuse_slide(planes, tmp_path / f"ref.{suffix}", config)
    out = tmp_path / f"out.{suffix}"
    progress = None
    with monkeypatch.context() as patch:
        if boundary.startswith("_"):
            patch.setattr(pipeline, boundary, _interrupt)
        else:
            progress = _StopAt(boundary)
        with pytest.raises(_Interrupted):
            pipeline.fuse_slide(planes, out, config, progress=progress)
    assert not out.exists()
    assert (tmp_path / f"out.{suffix}.cache").is_dir()  # kept for resuming
    report = pipeline.fuse_slide(planes, out, config)
    assert np.array_equal(_pixels(out), _pixels(reference.output))
    stored = _stored_bytes(out)
    assert len(stored) >= 2 and stored == _stored_bytes(reference.output)  # >= 2 levels
    assert report.tiles_resumed == (0 if boundary == "fuse tiles" else report.tiles)
    assert report.digest == reference.digest


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.ENOSPC, "StorageError", "disk is full"),
        (errno.EFBIG, "StorageError", "ulimit -f"),
        (errno.EACCES, "OutputNotWritable", "Permission denied; choose"),
        (errno.EROFS, "OutputNotWritable", "read-only"),
    ],
)
def test_writers_name_the_os_error_when_opening_a_file(
    monkeypatch, tmp_path: Path, code: int, kind: str, words: str
) -> None:
    """A writer that cannot create its file says why: a full disk is not a permission problem."""
    from wsi_fusion.io.writers import ome_tiff, ome_zarr

    monkeypatch.setattr(ome_tiff.tifffile, "TiffWriter", raise_os_error(code))
    with pytest.raises(Exception) as caught:
        with ome_tiff._open_writer(tmp_path / "x.ome.tif", ome=True):
            pass
    assert type(caught.value).__name__ == kind and words in str(caught.value)
    assert str(tmp_path / "x.ome.tif") in str(caught.value)
    monkeypatch.setattr(ome_zarr.zarr, "open_group", raise_os_error(code))
    with pytest.raises(Exception) as caught:
        ome_zarr._open_new_group(tmp_path / "x.ome.zarr", "0.4", overwrite=False)
    assert type(caught.value).__name__ == kind and words in str(caught.value)


@pytest.mark.parametrize("where", ["_read_inside", "_thumbnail"])
def test_a_failing_disk_while_reading_is_not_called_a_corrupt_file(
    monkeypatch, capsys, planes, tmp_path: Path, where: str
) -> None:
    """EIO (a network file system dropping out) names the disk; a decoder's own OSError
    without an errno still means corrupt data."""
    from wsi_fusion.io.readers import layers

    monkeypatch.setattr(layers.LayerStack, where, raise_os_error(errno.EIO, planes[1]))
    out = tmp_path / "out.ome.zarr"
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(out), *SMALL[:-4])
    assert_clean_failure(status, err, tmp_path, planes[1], "Input/output error")
    assert "corrupt" not in err

    def truncated(*args, **kwargs):
        raise OSError("image file is truncated (3 bytes not processed)")

    monkeypatch.setattr(layers.LayerStack, where, truncated)
    status, _, err = run_cli(monkeypatch, capsys, "fuse", *planes, "-o", str(out), *SMALL[:-4])
    assert_clean_failure(status, err, tmp_path, "corrupt or truncated")
