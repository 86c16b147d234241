"""Run a list of task calls on the chosen Dask scheduler, reporting progress.

Tasks are coarse (many tiles each), so the graph stays at roughly a thousand tasks even for a
whole slide. ``scheduler`` is ``threads`` (default), ``processes``, ``sync``, ``local-cluster``
or the address of a running ``distributed`` scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask
from dask.callbacks import Callback

from wsi_fusion.errors import ConfigError

logger = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes", "sync")

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


def run_calls(
    func: Callable[..., Any],
    arg_lists: Sequence[tuple[Any, ...]],
    *,
    scheduler: str = "threads",
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[Any]:
    """Run ``func(*args)`` for each entry of ``arg_lists`` as Dask tasks; return the results.

    ``func`` returns the number of work items it finished; ``progress`` receives those counts.
    """
    if not arg_lists:
        return []
    tasks = [dask.delayed(func, pure=False)(*args) for args in arg_lists]
    report = progress or (lambda n: None)
    if scheduler in LOCAL_SCHEDULERS:
        keys = {t.key for t in tasks}
        with _CountFinished(keys, report):
            return list(dask.compute(*tasks, scheduler=scheduler, num_workers=workers))
    return _run_distributed(tasks, scheduler, workers, report)


def _run_distributed(
    tasks: list[Any], scheduler: str, workers: int | None, report: Progress
) -> list[Any]:
    from distributed import Client, LocalCluster, as_completed

    if scheduler == "local-cluster":
        cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True)
        client = Client(cluster)
    elif "://" in scheduler or ":" in scheduler:
        cluster = None
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as err:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler!r}: {err}; start it or use "
                "--scheduler threads"
            ) from err
    else:
        raise ConfigError(
            f"unknown scheduler {scheduler!r}; use threads, processes, sync, local-cluster or a "
            "scheduler address like tcp://host:8786"
        )
    try:
        if client.dashboard_link:
            logger.info("Dask dashboard: %s", client.dashboard_link)
        futures = client.compute(tasks)
        for future in as_completed(futures):
            report(int(future.result()))
        return list(client.gather(futures))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
