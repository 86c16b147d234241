"""The same job gives the same bytes under each scheduler; clusters keep models per worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from wsi_fusion.config import RunConfig
from wsi_fusion.errors import ConfigError
from wsi_fusion.pipeline import fuse_slide
from wsi_fusion.scheduling.graph import DistributedRunner, open_runner
from wsi_fusion.scheduling.workers import FuserCachePlugin

SMALL = {
    "tile": 256,
    "overlap": 128,
    "chunk": 128,
    "tiles_per_task": 3,
    "registration": {"mode": "off"},
}


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    planes = rng.integers(0, 256, size=(3, 300, 420, 3), dtype=np.uint8)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, planes, photometric="rgb", metadata={"axes": "ZYXS"})
    return path


def level0(path: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(path, mode="r")["0"])


@pytest.mark.parametrize("scheduler", ["sync", pytest.param("processes", marks=pytest.mark.slow)])
def test_local_schedulers_give_identical_output(
    stack: Path, tmp_path: Path, scheduler: str
) -> None:
    config = RunConfig(fuser="focus_measure", **SMALL)
    reference = fuse_slide([stack], tmp_path / "threads.ome.zarr", config)
    other = config.model_copy(update={"scheduler": scheduler, "workers": 2})
    report = fuse_slide([stack], tmp_path / f"{scheduler}.ome.zarr", other)
    assert report.scheduler["scheduler"] == scheduler
    assert report.tiles_computed == reference.tiles_computed == report.tiles
    assert np.array_equal(level0(reference.output), level0(report.output))


def test_unknown_scheduler_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown scheduler 'thread'"):
        with open_runner("thread"):
            pass


@pytest.mark.slow
def test_local_cluster_matches_threads_and_loads_each_fuser_once_per_worker(
    stack: Path, tmp_path: Path
) -> None:
    config = RunConfig(fuser="focus_measure", focus_map=True, **SMALL)
    reference = fuse_slide([stack], tmp_path / "threads.ome.zarr", config)
    cluster_config = config.model_copy(update={"scheduler": "local-cluster", "workers": 2})
    with open_runner("local-cluster", 2) as runner:
        assert isinstance(runner, DistributedRunner)
        report = fuse_slide([stack], tmp_path / "cluster.ome.zarr", cluster_config, runner=runner)

        def loads(dask_worker: Any) -> int:
            return int(dask_worker.plugins[FuserCachePlugin.name].cache.loads)

        per_worker = runner.client.run(loads)
    assert report.scheduler["workers"] == 2 and report.scheduler["dashboard"]
    assert sorted(per_worker.values()) in ([0, 1], [1, 1])  # 13 tasks; a worker may get none
    assert np.array_equal(level0(reference.output), level0(report.output))
    labels = "labels/focus_map/0"
    ref_map = zarr.open_group(reference.output, mode="r")[labels]
    assert np.array_equal(np.asarray(ref_map), zarr.open_group(report.output, mode="r")[labels])


@pytest.mark.slow
def test_gpu_resource_annotation_reaches_the_workers() -> None:
    from distributed import Client, LocalCluster

    # Workers that advertise one GPU each (labels only: no device is needed to schedule).
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
        dashboard_address=":0",
    )  # fmt: skip
    runner = DistributedRunner(Client(cluster), cluster, "test")
    try:
        assert runner.gpu_workers == 2

        def gpus_left_while_running(i: int) -> int:
            from distributed import get_worker

            return int(get_worker().state.available_resources["GPU"])

        # Holding the resource, a running task sees none of its worker's GPU left.
        held = runner.run(gpus_left_while_running, [(i,) for i in range(4)], resources={"GPU": 1})
        free = runner.run(gpus_left_while_running, [(i,) for i in range(4)])
    finally:
        runner.close()
    assert held == [0, 0, 0, 0] and free == [1, 1, 1, 1]
