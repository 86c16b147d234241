"""Per-worker fuser cache: each fuser (model) is loaded once per worker process and kept."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import wsi_fusion.fusers as fusers
import wsi_fusion.scheduling.workers as workers
from wsi_fusion.scheduling.graph import count_gpu_workers, phase1_resources
from wsi_fusion.scheduling.workers import FuserCache, FuserCachePlugin, worker_fuser_cache


def test_classical_fuser_loaded_once_and_shared() -> None:
    cache = FuserCache()
    args = {"planes": 3, "channels": 3, "tile": 256, "default_batch": 4}
    first = cache.get("focus_measure", {}, **args)
    assert cache.get("focus_measure", {}, **args) is first
    assert first.batch_size == 4 and first.lock is None
    other = cache.get("plane", {"index": 0}, **args)
    assert other is not first and cache.loads == 2


def test_learned_fuser_gets_a_device_lock_and_its_batch_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[dict[str, Any]] = []

    class Learned:
        needs_weights = True

        def __init__(self, **params: Any) -> None:
            created.append(params)

    monkeypatch.setattr(fusers, "fuser_class", lambda name: Learned)
    monkeypatch.setattr(workers, "create_fuser", lambda name, **params: Learned(**params))
    monkeypatch.setattr("wsi_fusion.scheduling.gpu.place_fuser", lambda name, params, index: params)
    monkeypatch.setattr("wsi_fusion.scheduling.gpu.configure_learned_fuser", lambda fuser, **kw: 24)
    cache = FuserCache(worker_index=1)
    args = {"planes": 5, "channels": 3, "tile": 512, "default_batch": 4}
    entry = cache.get("net", {"precision": "bf16"}, **args)
    assert cache.get("net", {"precision": "bf16"}, **args) is entry
    assert created == [{"precision": "bf16"}] and cache.loads == 1
    assert entry.batch_size == 24 and entry.lock is not None


def test_plugin_pickles_without_its_cache_and_builds_it_on_the_worker() -> None:
    plugin = pickle.loads(pickle.dumps(FuserCachePlugin()))

    class Worker:
        name = 3

    plugin.setup(Worker())
    assert plugin.cache.worker_index == 3 and plugin.cache.loads == 0
    plugin.teardown(Worker())


def test_outside_a_cluster_the_process_cache_is_used() -> None:
    assert worker_fuser_cache() is workers._process_cache


def test_gpu_resource_only_when_the_cluster_has_gpu_workers() -> None:
    assert count_gpu_workers([{"GPU": 1}, {}, {"GPU": 2}, {"MEM": 4}]) == 2
    assert phase1_resources(needs_gpu=True, gpu_workers=2) == {"GPU": 1}
    assert phase1_resources(needs_gpu=True, gpu_workers=0) is None
    assert phase1_resources(needs_gpu=False, gpu_workers=2) is None
