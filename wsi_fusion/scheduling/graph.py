"""Run lists of task calls on the chosen Dask scheduler, reporting progress.

Tasks are coarse (many tiles each), so the graph stays at roughly a thousand tasks even for a
whole slide. ``scheduler`` is ``threads`` (default), ``processes``, ``sync``, ``local-cluster``
(a :class:`distributed.LocalCluster` started for the run) or the address of a running
``distributed`` scheduler (``tcp://host:8786``; a SLURM cluster from :mod:`.slurm` has one).

:func:`open_runner` opens the scheduler once; the pipeline runs both phases on it and batch
conversion runs every slide on it, so a local cluster is started once, not once per phase.
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import dask
from dask.callbacks import Callback
from threadpoolctl import threadpool_limits

from wsi_fusion.errors import ConfigError

logger = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
#: Name of the Dask worker resource that learned-fuser tasks request (one per GPU).
GPU_RESOURCE = "GPU"

Progress = Callable[[int], None]


class _CountFinished(Callback):  # type: ignore[misc]
    """Calls ``progress(result)`` each time one of ``keys`` finishes (tasks return work counts)."""

    def __init__(self, keys: set[Any], progress: Progress) -> None:
        super().__init__()
        self._keys = keys
        self._progress = progress

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._keys:
            self._progress(int(result))


class TaskRunner(ABC):
    """An open scheduler that runs lists of task calls."""

    #: What ran the job, for ``run.json`` (scheduler, workers, dashboard, GPU workers).
    description: dict[str, Any]

    @property
    def gpu_workers(self) -> int:
        """Workers that offer the ``GPU`` resource (0 for the local schedulers)."""
        return 0

    @property
    def slots(self) -> int:
        """Tasks that can run at once (threads/processes, or worker threads of the cluster)."""
        return 1

    @abstractmethod
    def run(
        self,
        func: Callable[..., Any],
        arg_lists: Sequence[tuple[Any, ...]],
        *,
        progress: Progress | None = None,
        resources: Mapping[str, float] | None = None,
    ) -> list[Any]:
        """Run ``func(*args)`` for each entry of ``arg_lists``; return the results in order.

        ``func`` returns the number of work items it finished; ``progress`` receives those
        counts as tasks finish. ``resources`` are Dask worker resources each task needs
        (ignored by the local schedulers, which have none).
        """

    def close(self) -> None:  # noqa: B027 (optional hook: local schedulers hold nothing)
        """Release the scheduler (stop a cluster this runner started)."""


class LocalRunner(TaskRunner):
    """Dask's embedded schedulers: threads, processes or sync."""

    def __init__(self, scheduler: str, workers: int | None) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.description = {"scheduler": scheduler, "workers": workers}

    @property
    def slots(self) -> int:
        if self.scheduler == "sync":
            return 1
        return self.workers or os.cpu_count() or 1

    def run(
        self,
        func: Callable[..., Any],
        arg_lists: Sequence[tuple[Any, ...]],
        *,
        progress: Progress | None = None,
        resources: Mapping[str, float] | None = None,
    ) -> list[Any]:
        if not arg_lists:
            return []
        tasks = [dask.delayed(func, pure=False)(*args) for args in arg_lists]
        # Parallelism comes from the task threads; BLAS threads on top of them only spin
        # (measured: 12 % of the CPU time of an algae-stack run).
        with (
            threadpool_limits(limits=1, user_api="blas"),
            _CountFinished({t.key for t in tasks}, progress or (lambda n: None)),
        ):
            return list(dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.workers))


class DistributedRunner(TaskRunner):
    """A ``distributed`` client, with the per-worker fuser cache registered on its workers."""

    def __init__(self, client: Any, cluster: Any | None, scheduler: str) -> None:
        from wsi_fusion.scheduling.workers import FuserCachePlugin

        self.client = client
        self.cluster = cluster
        client.register_plugin(FuserCachePlugin(), name=FuserCachePlugin.name)
        workers = client.scheduler_info().get("workers", {})
        self._gpu_workers = count_gpu_workers(w.get("resources", {}) for w in workers.values())
        self._slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
        self.description = {
            "scheduler": scheduler,
            "address": client.scheduler.address,
            "workers": len(workers),
            "gpu_workers": self._gpu_workers,
            "dashboard": client.dashboard_link,
        }
        if client.dashboard_link:
            logger.info("Dask dashboard: %s", client.dashboard_link)

    @property
    def gpu_workers(self) -> int:
        return self._gpu_workers

    @property
    def slots(self) -> int:
        # Workers may still be joining (SLURM jobs in the queue): count at least one.
        return max(1, self._slots)

    def run(
        self,
        func: Callable[..., Any],
        arg_lists: Sequence[tuple[Any, ...]],
        *,
        progress: Progress | None = None,
        resources: Mapping[str, float] | None = None,
    ) -> list[Any]:
        from distributed import as_completed

        if not arg_lists:
            return []
        report = progress or (lambda n: None)
        tasks = [dask.delayed(func, pure=False)(*args) for args in arg_lists]
        futures = self.client.compute(tasks, resources=dict(resources) if resources else None)
        try:
            for future in as_completed(futures):
                report(int(future.result()))
            return list(self.client.gather(futures))
        except BaseException:
            # A failed or interrupted run must not leave its tasks running on a shared cluster.
            self.client.cancel(futures)
            raise

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def count_gpu_workers(worker_resources: Iterable[Mapping[str, float]]) -> int:
    """How many workers offer at least one ``GPU`` resource."""
    return sum(1 for resources in worker_resources if resources.get(GPU_RESOURCE, 0) >= 1)


def phase1_resources(needs_gpu: bool, gpu_workers: int) -> dict[str, float] | None:
    """Resources a fusion task asks for: one GPU for learned fusers when the cluster has GPUs.

    Without GPU workers the annotation would leave the tasks unschedulable, so it is dropped and
    the fuser falls back to the CPU (it logs that on each worker).
    """
    return {GPU_RESOURCE: 1} if needs_gpu and gpu_workers > 0 else None


@contextlib.contextmanager
def open_runner(
    scheduler: str = "threads", workers: int | None = None, *, use_gpus: bool = False
) -> Iterator[TaskRunner]:
    """Open ``scheduler`` for the duration of the ``with`` block.

    Parameters
    ----------
    scheduler
        ``threads``, ``processes``, ``sync``, ``local-cluster`` or a scheduler address.
    workers
        Threads/processes of the local schedulers, or worker processes of ``local-cluster``
        (default 2, or one per GPU when ``use_gpus`` and GPUs are present).
    use_gpus
        The job runs a learned fuser: ``local-cluster`` then starts one worker per local GPU,
        each offering the ``GPU`` resource.
    """
    runner = _make_runner(scheduler, workers, use_gpus)
    try:
        yield runner
    finally:
        runner.close()


def _make_runner(scheduler: str, workers: int | None, use_gpus: bool) -> TaskRunner:
    if scheduler in LOCAL_SCHEDULERS:
        return LocalRunner(scheduler, workers)
    from distributed import Client

    if scheduler == "local-cluster":
        cluster = _local_cluster(workers, _local_gpu_count() if use_gpus else 0)
        try:
            return DistributedRunner(Client(cluster), cluster, scheduler)
        except BaseException:
            cluster.close()
            raise
    if "://" in scheduler or ":" in scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as err:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler!r}: {err}; start it or use "
                "--scheduler threads"
            ) from err
        return DistributedRunner(client, None, scheduler)
    raise ConfigError(
        f"unknown scheduler {scheduler!r}; use threads, processes, sync, local-cluster or a "
        "scheduler address like tcp://host:8786"
    )


def _local_cluster(workers: int | None, gpus: int) -> Any:
    """A LocalCluster of single-threaded worker processes; one per GPU when there are GPUs."""
    from distributed import LocalCluster

    if gpus:
        # One worker per GPU; the worker plugin gives each worker its own device.
        n = workers or gpus
        logger.info("local cluster: %d workers over %d GPU(s)", n, gpus)
        return LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, resources={GPU_RESOURCE: 1}
        )
    return LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True)


def _local_gpu_count() -> int:
    """CUDA devices on this machine (torch imported only for learned-fuser jobs)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def run_calls(
    func: Callable[..., Any],
    arg_lists: Sequence[tuple[Any, ...]],
    *,
    scheduler: str = "threads",
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[Any]:
    """Open ``scheduler``, run ``func(*args)`` for each of ``arg_lists`` on it, close it."""
    if not arg_lists:
        return []
    with open_runner(scheduler, workers) as runner:
        return runner.run(func, arg_lists, progress=progress)
