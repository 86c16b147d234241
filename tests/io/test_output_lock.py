"""One writer per output: a live owner's lock is refused, a dead owner's is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers import FILES_ONLY_RUN, run_cli

import wsi_fusion.io.output_lock as output_lock_module
from wsi_fusion.batch import collect_slides, run_batch
from wsi_fusion.config import RunConfig
from wsi_fusion.errors import OutputBusy, StorageError
from wsi_fusion.io.output_lock import STALE_AFTER_S, output_lock
from wsi_fusion.pipeline import fuse_slide

FAST = FILES_ONLY_RUN


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "S_z0.tif"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    planes = []
    for z in range(3):
        plane = path.with_name(f"S_z{z}.tif")
        tifffile.imwrite(plane, rng.integers(0, 256, (150, 200, 3), np.uint8), photometric="rgb")
        planes.append(plane)
    return path.parent


def planes_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("S_z*.tif"))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_record(lock: Path, pid: int, host: str) -> None:
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00"}))


def test_a_live_owner_is_refused_with_its_pid_host_and_start(tmp_path: Path) -> None:
    lock, output = tmp_path / "o.ome.zarr.lock", tmp_path / "o.ome.zarr"
    with output_lock(lock, output):
        record = json.loads(lock.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(OutputBusy) as busy:
            with output_lock(lock, output):
                pass
    message = str(busy.value)
    assert message.startswith(f"{output} is being written by pid {os.getpid()} on ")
    assert f"wait for it or remove {lock} if that run is gone" in message
    assert not lock.exists(), "released on exit"


def test_the_lock_is_released_by_an_exception(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with pytest.raises(RuntimeError), output_lock(lock, tmp_path / "x"):
        raise RuntimeError("boom")
    assert not lock.exists()
    with output_lock(lock, tmp_path / "x"):
        pass


def test_a_stale_lock_after_sigkill_is_taken_over(tmp_path: Path, caplog) -> None:
    lock = tmp_path / "x.lock"
    write_record(lock, dead_pid(), socket.gethostname())  # left by a killed run: no flock held
    with output_lock(lock, tmp_path / "x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text


def test_without_flock_a_dead_pid_is_stale_and_a_live_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_lock_module, "_try_flock", lambda fd: None)  # e.g. some NFS
    lock = tmp_path / "x.lock"
    write_record(lock, os.getppid(), socket.gethostname())
    with pytest.raises(OutputBusy, match=f"pid {os.getppid()}"):
        with output_lock(lock, tmp_path / "x"):
            pass
    write_record(lock, dead_pid(), socket.gethostname())
    with output_lock(lock, tmp_path / "x"):
        pass


def test_another_hosts_lock_is_refused_while_its_heartbeat_is_fresh(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    write_record(lock, 12345, "other-node")
    with pytest.raises(OutputBusy, match="pid 12345 on other-node"):
        with output_lock(lock, tmp_path / "x"):
            pass
    gone = time.time() - STALE_AFTER_S - 60
    os.utime(lock, (gone, gone))
    with output_lock(lock, tmp_path / "x"):
        pass


def test_fuse_refuses_an_output_another_run_is_writing(
    stack: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "o.ome.zarr"
    with output_lock(tmp_path / "o.ome.zarr.lock", out):
        with pytest.raises(OutputBusy):
            fuse_slide(planes_of(stack), out, RunConfig(**FAST))
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "fuse",
            *map(str, planes_of(stack)),
            "-o",
            str(out),
            "--fuser",
            "plane",
            "-q",
        )
    assert code == 1 and err.startswith(f"error: {out} is being written by pid {os.getpid()}")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "o.ome.zarr.partial").exists()


def test_a_second_batch_on_one_outdir_is_refused(
    stack: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    with output_lock(outdir / "batch.lock", outdir):
        with pytest.raises(OutputBusy):
            run_batch(collect_slides(stack), outdir, RunConfig(**FAST))
        code, out, err = run_cli(monkeypatch, capsys, "batch", str(stack), "-o", str(outdir))
    assert code == 1 and err.startswith(f"error: {outdir} is being written by pid")
    assert len(err.strip().splitlines()) == 1 and not out, "no progress bar before the error"
    assert sorted(p.name for p in outdir.iterdir()) == []


#: The CLI whose tile writes wait for the file $GO, so it is mid-run while the second one starts.
HELD_CLI = """
import os, pathlib, sys, time
from wsi_fusion.scheduling.tile_cache import TileCache
write_tile = TileCache.write_tile
def held(self, *args, **kwargs):
    deadline = time.monotonic() + 60
    while not pathlib.Path(os.environ["GO"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    write_tile(self, *args, **kwargs)
TileCache.write_tile = held
from wsi_fusion.cli import main
sys.argv = ["wsi-fusion", *sys.argv[1:]]
main()
"""


def test_two_concurrent_fuse_runs_never_both_write(
    stack: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "o.ome.zarr"
    args = [
        *map(str, planes_of(stack)),
        "-o",
        str(out),
        "--fuser",
        "plane",
        "--tile",
        "128",
        "--overlap",
        "64",
    ]
    args += ["--no-tissue", "--register", "off", "--scheduler", "sync"]
    go = tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", HELD_CLI, "fuse", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GO": str(go)},
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "o.ome.zarr.cache" / "tiles_done").is_dir():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    code, second_out, second_err = run_cli(monkeypatch, capsys, "fuse", *args)
    go.touch()
    out_first, err_first = first.communicate(timeout=120)
    assert first.returncode == 0, err_first
    assert "wrote" in out_first
    assert code == 1 and "wrote" not in second_out
    assert second_err.strip().startswith(f"error: {out} is being written by pid {first.pid}")
    level0 = zarr.open_group(out, mode="r")["0"]
    assert level0.shape == (3, 150, 200) and np.asarray(level0).any()
    assert not (tmp_path / "o.ome.zarr.lock").exists()


def test_a_lock_that_cannot_be_created_is_one_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="missing"):
        with output_lock(tmp_path / "missing" / "x.lock", tmp_path / "missing" / "x"):
            pass
