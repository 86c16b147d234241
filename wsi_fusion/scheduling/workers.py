"""Per-worker caches: open plane stacks and fusers, never pickled open.

Tasks receive only plain descriptions (paths, names, parameters). Plane stacks are opened once
per worker thread (OpenSlide handles are not safe to share between threads). Fusers are loaded
once per worker *process* and shared by its threads: a learned fuser's model is then in (GPU)
memory once, and its forward passes are serialised by a lock so that the automatically chosen
batch size, planned for one batch at a time, holds. On a ``distributed`` cluster the fuser cache
lives in :class:`FuserCachePlugin`, registered on every worker with ``client.register_plugin``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

from wsi_fusion._types import PlaneStack, TileStack
from wsi_fusion.fusers import Fuser, create_fuser
from wsi_fusion.fusers.base import FusionResult
from wsi_fusion.registration import DriftField, RegisteredStack

logger = logging.getLogger(__name__)

_local = threading.local()


def _cache(name: str) -> dict[Any, Any]:
    cache = getattr(_local, name, None)
    if cache is None:
        cache = {}
        setattr(_local, name, cache)
    return cache


def thread_stack(inputs: Sequence[str]) -> PlaneStack:
    """The calling thread's open stack for ``inputs``."""
    from wsi_fusion.io.readers import open_stack

    cache = _cache("stacks")
    key = tuple(inputs)
    if key not in cache:
        cache[key] = open_stack(list(inputs))
    return cache[key]  # type: ignore[no-any-return]


def thread_registered_stack(inputs: Sequence[str], drift: DriftField) -> PlaneStack:
    """The calling thread's stack for ``inputs`` with its planes aligned by ``drift``."""
    cache = _cache("registered")
    key = (tuple(inputs), drift.digest())
    if key not in cache:
        cache[key] = RegisteredStack(thread_stack(inputs), drift)
    return cache[key]  # type: ignore[no-any-return]


@dataclass
class LoadedFuser:
    """A fuser loaded on a worker, with the batch size its tasks use."""

    fuser: Fuser
    batch_size: int
    #: Serialises forward passes of a learned fuser (one batch on the device at a time).
    lock: threading.Lock | None = None

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """``fuser.fuse_batch(stacks)``, holding the device lock of a learned fuser."""
        with self.lock if self.lock is not None else contextlib.nullcontext():
            return self.fuser.fuse_batch(stacks)


@dataclass
class FuserCache:
    """Fusers of one worker process, loaded on first use and kept.

    ``worker_index`` picks the GPU of a worker on a multi-GPU node (worker ``k`` uses GPU
    ``k mod n``); ``loads`` counts model loads (what the plugin exists to keep at one per fuser).
    """

    worker_index: int | None = None
    loads: int = 0
    _entries: dict[tuple[Any, ...], LoadedFuser] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(
        self,
        name: str,
        params: dict[str, Any],
        *,
        planes: int,
        channels: int,
        tile: int,
        default_batch: int,
        extras: tuple[str, ...] = (),
    ) -> LoadedFuser:
        """The loaded fuser ``name`` with ``params`` for stacks of ``planes`` x ``tile``²,
        producing the extra outputs ``extras``."""
        key = (
            name,
            json.dumps(params, sort_keys=True, default=str),
            planes,
            channels,
            tile,
            extras,
        )
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._load(name, params, planes, channels, tile, default_batch)
                if extras:
                    entry.fuser.request_extras(extras)
                self._entries[key] = entry
                self.loads += 1
            return entry

    def _load(
        self,
        name: str,
        params: dict[str, Any],
        planes: int,
        channels: int,
        tile: int,
        default_batch: int,
    ) -> LoadedFuser:
        from wsi_fusion.fusers import fuser_class

        if not fuser_class(name).needs_weights and "device" not in params:
            return LoadedFuser(create_fuser(name, **params), default_batch)
        from wsi_fusion.scheduling.gpu import configure_learned_fuser, place_fuser, runs_on_device

        fuser = create_fuser(name, **place_fuser(name, params, self.worker_index))
        if not runs_on_device(fuser):  # e.g. focus_measure with device auto and no CUDA here
            return LoadedFuser(fuser, default_batch)
        batch = configure_learned_fuser(
            fuser,
            planes=planes,
            channels=channels,
            tile=tile,
            batch_given="batch_size" in params,
        )
        return LoadedFuser(fuser, batch, threading.Lock())

    def clear(self) -> None:
        """Drop every fuser (and release GPU memory they held)."""
        with self._lock:
            had_models = any(e.lock is not None for e in self._entries.values())
            self._entries.clear()
        if had_models and "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


_process_cache = FuserCache()


class FuserCachePlugin(WorkerPlugin):  # type: ignore[misc]
    """Keeps a :class:`FuserCache` on each ``distributed`` worker for the worker's lifetime."""

    name = "wsi-fusion-fusers"

    # The plugin is pickled to the workers; the cache (with its lock) is made there, in setup.
    cache: FuserCache

    def setup(self, worker: Any) -> None:
        self.cache = FuserCache(worker_index=_worker_index(worker.name))

    def teardown(self, worker: Any) -> None:
        if hasattr(self, "cache"):
            self.cache.clear()


def _worker_index(name: Any) -> int | None:
    """A LocalCluster names its workers 0..n-1; other names carry no GPU index."""
    try:
        return int(name)
    except (TypeError, ValueError):
        return None


def worker_fuser_cache() -> FuserCache:
    """The fuser cache of the calling worker: the plugin's on a cluster, else the process's."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not inside a distributed worker
        return _process_cache
    plugin = worker.plugins.get(FuserCachePlugin.name)
    if isinstance(plugin, FuserCachePlugin) and hasattr(plugin, "cache"):
        return plugin.cache
    return _process_cache
