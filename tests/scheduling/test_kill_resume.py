"""Tile-level resume after a real SIGKILL of ``wsi-fusion fuse``, in phase 1 and in phase 2.

The CLI runs in a subprocess whose tile-cache writes are slowed (a wrapper patches
``TileCache`` in that process only, so the library carries no test hooks). The test waits until
some tiles (or blocks) are marked done, kills the process with SIGKILL, reruns the same command
and checks that exactly the missing tiles/blocks were computed and that the output is
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from wsi_fusion.config import load_config
from wsi_fusion.pipeline import fuse_slide

WRAPPER = """
import os, sys, time
from wsi_fusion.scheduling.tile_cache import TileCache

tile_delay = float(os.environ.get("TEST_TILE_DELAY", "0"))
block_delay = float(os.environ.get("TEST_BLOCK_DELAY", "0"))
write_tile, mark_block = TileCache.write_tile, TileCache.mark_block

def slow_write_tile(self, *args, **kwargs):
    time.sleep(tile_delay)
    write_tile(self, *args, **kwargs)

def slow_mark_block(self, index):
    time.sleep(block_delay)  # the block's pixels are written; its marker not yet
    mark_block(self, index)

TileCache.write_tile, TileCache.mark_block = slow_write_tile, slow_mark_block
from wsi_fusion.cli import main
sys.argv = ["wsi-fusion", *sys.argv[1:]]
main()
"""

CONFIG = """
fuser: focus_measure
# A narrower depth surface (margin 28 px) keeps 128/64 tiles, so the small stack has enough
# tiles and blocks to kill the run between them.
fuser_params: {depth_radius: 9}
tile: 128
overlap: 64
chunk: 128
tiles_per_task: 4
focus_map: true
tissue: {enabled: false}
registration: {mode: "off"}
"""


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 256, size=(3, 330, 450, 3), dtype=np.uint8)
    stack = tmp_path / "stack.ome.tif"
    tifffile.imwrite(stack, planes, photometric="rgb", metadata={"axes": "ZYXS"})
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG)
    return stack, config


def start(stack: Path, config: Path, output: Path, **delays: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, **{k: str(v) for k, v in delays.items()}}
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, "fuse", str(stack), "-o", str(output)]
        + ["--config", str(config), "--workers", "2", "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def kill_when(process: subprocess.Popen[bytes], markers: Path, at_least: int) -> int:
    """SIGKILL ``process`` once ``markers`` holds ``at_least`` files; return how many it holds."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"finished before the kill: {process.stderr.read().decode()}")
        if markers.is_dir() and len(os.listdir(markers)) >= at_least:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return len(os.listdir(markers))
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no progress within 120 s")


def rerun(stack: Path, config: Path, output: Path) -> dict:
    process = start(stack, config, output)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()
    return json.loads(output.with_name(output.name + ".run.json").read_text())["report"]  # type: ignore[no-any-return]


def arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return np.asarray(group["0"]), np.asarray(group["labels/focus_map/0"])


def reference(stack: Path, config: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    report = fuse_slide([stack], tmp_path / "reference.ome.zarr", load_config(config))
    return *arrays(report.output), report.tiles


@pytest.mark.slow  # ~12 s here: three CLI process starts on a shared 2-core machine
def test_sigkill_in_phase_1_resumes_only_the_missing_tiles(job, tmp_path: Path) -> None:
    stack, config = job
    ref_image, ref_map, n_tiles = reference(stack, config, tmp_path)
    out = tmp_path / "out.ome.zarr"
    cache = tmp_path / "out.ome.zarr.cache"

    done = kill_when(start(stack, config, out, TEST_TILE_DELAY=0.15), cache / "tiles_done", 6)
    assert 0 < done < n_tiles and not out.exists()

    report = rerun(stack, config, out)
    assert report["tiles_resumed"] == done
    assert report["tiles_computed"] == n_tiles - done
    assert report["blocks_resumed"] == 0
    image, focus = arrays(out)
    assert np.array_equal(image, ref_image) and np.array_equal(focus, ref_map)
    assert not cache.exists(), "the tile cache is removed after success"


@pytest.mark.slow
def test_sigkill_in_phase_2_resumes_only_the_missing_blocks(job, tmp_path: Path) -> None:
    stack, config = job
    ref_image, ref_map, n_tiles = reference(stack, config, tmp_path)
    out = tmp_path / "out.ome.zarr"
    cache = tmp_path / "out.ome.zarr.cache"

    done = kill_when(start(stack, config, out, TEST_BLOCK_DELAY=0.3), cache / "blocks_done", 3)
    n_blocks = 3 * 4  # 330 x 450 px in 128 px blocks
    assert 0 < done < n_blocks
    assert len(os.listdir(cache / "tiles_done")) == n_tiles

    report = rerun(stack, config, out)
    assert (report["tiles_resumed"], report["tiles_computed"]) == (n_tiles, 0)
    assert report["blocks_resumed"] == done
    assert report["blocks_computed"] == n_blocks - done
    image, focus = arrays(out)
    assert np.array_equal(image, ref_image) and np.array_equal(focus, ref_map)


@pytest.mark.slow
def test_sigkill_in_a_block_plan_resumes_only_the_missing_blocks(job, tmp_path: Path) -> None:
    stack, config = job
    # No tile or overlap: the default fuser gets a block plan, one tile per 128-px block written
    # straight into the output while fusing (no tile cache, no phase 2).
    config.write_text(CONFIG.replace("tile: 128\noverlap: 64\n", ""))
    ref_image, ref_map, n_tiles = reference(stack, config, tmp_path)
    n_blocks = 3 * 4
    assert n_tiles == n_blocks
    out = tmp_path / "out.ome.zarr"
    cache = tmp_path / "out.ome.zarr.cache"

    done = kill_when(start(stack, config, out, TEST_BLOCK_DELAY=0.3), cache / "blocks_done", 3)
    assert 0 < done < n_blocks and not out.exists()

    report = rerun(stack, config, out)
    assert report["tiles_resumed"] == report["blocks_resumed"] == done
    assert report["tiles_computed"] == report["blocks_computed"] == n_blocks - done
    image, focus = arrays(out)
    assert np.array_equal(image, ref_image) and np.array_equal(focus, ref_map)
