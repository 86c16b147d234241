"""A small resumable, seeded training loop shared by every learned fuser's workflow.

Each model supplies a ``step_fn(step) -> {loss name: value}`` that draws its own batch (seeded
from ``step``, so a resumed run draws the same batches an uninterrupted one would), runs its
forward/backward passes and optimiser steps. The loop handles seeding, progress, periodic
checkpoints (modules + optimisers + schedulers + history, loaded back with ``weights_only=True``)
and a JSON log beside the checkpoint.

It also applies the process's training session (:mod:`wsi_fusion.training.session`): the
modules on the session's device, each step under its autocast, and the batches drawn ahead in
worker processes when the preset names the recipe's batch function.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

StepFn = Callable[[int], Mapping[str, float]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The NumPy generator for one training step: a pure function of (seed, step)."""
    return np.random.default_rng(np.random.SeedSequence([seed, step]))


def _state(objects: Mapping[str, Any]) -> dict[str, Any]:
    return {name: obj.state_dict() for name, obj in objects.items()}


def train_loop(
    step_fn: StepFn,
    n_steps: int,
    checkpoint_path: str | Path,
    modules: Mapping[str, Any],
    optimizers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    log_every: int = 25,
    checkpoint_every: int = 200,
    max_seconds: float | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Run ``step_fn`` for steps ``start..n_steps-1``, resuming from ``checkpoint_path``.

    Parameters
    ----------
    step_fn : callable
        ``step_fn(step)`` trains one step and returns its losses (floats).
    n_steps : int
        Total number of steps of the run (including those already done in a checkpoint).
    checkpoint_path : path
        Checkpoint file (``torch.save`` of state dicts only); resumed from when it exists.
    modules, optimizers, schedulers : mappings of name -> object with ``state_dict()``
        What the checkpoint holds. Modules are put in train mode.
    seed : int
        Seeds torch/NumPy/Python at the start (use :func:`step_rng` inside ``step_fn``).
    log_every, checkpoint_every : int
        Steps between averaged log records / checkpoints.
    max_seconds : float, optional
        Wall-clock budget: stop (after checkpointing) when exceeded; rerun to continue.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    list of dict
        The log records (step, seconds, mean losses) of the whole run, resumed part included.
    """
    import torch
    from tqdm import tqdm

    from wsi_fusion.training import session

    checkpoint_path = Path(checkpoint_path)
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = checkpoint_path.with_suffix(".log.json")
    optimizers = optimizers or {}
    schedulers = schedulers or {}
    seed_everything(seed)

    start, history, elapsed = 0, [], 0.0
    if checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        for group, objects in (("modules", modules), ("opt", optimizers), ("sched", schedulers)):
            for name, obj in objects.items():
                obj.load_state_dict(ckpt[group][name])
        start, history, elapsed = int(ckpt["step"]), list(ckpt["history"]), float(ckpt["elapsed"])
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed %s at step %d", checkpoint_path, start)

    def save(step: int) -> None:
        tmp = checkpoint_path.with_suffix(".tmp")
        torch.save(
            {
                "modules": _state(modules),
                "opt": _state(optimizers),
                "sched": _state(schedulers),
                "step": step,
                "history": history,
                "elapsed": elapsed,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(checkpoint_path)  # atomic: a kill never leaves a half-written checkpoint
        log_path.write_text(json.dumps(history, indent=1))

    run = session.current()
    for module in modules.values():
        module.to(run.device)  # in place: the optimisers keep their parameters
        module.train()
    prefetcher: session.BatchPrefetcher | None = None
    stack = contextlib.ExitStack()
    terminated = stack.enter_context(_stop_on_sigterm())
    if run.run.batch_fn and run.run.prefetch_workers > 0 and start < n_steps:
        prefetcher = stack.enter_context(
            session.BatchPrefetcher(
                run.run.batch_fn,
                seed,
                start,
                n_steps,
                run.run.prefetch_workers,
                run.run.prefetch_ahead,
            )
        )
    sums: dict[str, float] = {}
    count = 0
    began = time.perf_counter() - elapsed
    bar = tqdm(range(start, n_steps), initial=start, total=n_steps, disable=not progress)
    step = start
    with stack:
        for step in bar:
            if prefetcher is not None:
                prefetcher.step = step
            with session.autocast():
                losses = step_fn(step)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            count += 1
            elapsed = time.perf_counter() - began
            if count == log_every or step == n_steps - 1:
                record = {"step": step + 1, "seconds": round(elapsed, 1)}
                record.update({k: round(v / count, 5) for k, v in sums.items()})
                history.append(record)
                bar.set_postfix({k: f"{v / count:.4f}" for k, v in sums.items()})
                sums, count = {}, 0
            out_of_time = max_seconds is not None and elapsed > max_seconds
            stop = out_of_time or terminated.is_set()
            if (step + 1) % checkpoint_every == 0 or step == n_steps - 1 or stop:
                save(step + 1)
            if out_of_time:
                log.warning(
                    "stopping at step %d: time budget of %.0f s used", step + 1, max_seconds
                )
                break
            if terminated.is_set():
                log.warning("stopping at step %d: SIGTERM (checkpointed)", step + 1)
                break
    bar.close()
    if prefetcher is not None:
        run.stats["data_wait_seconds"] = round(prefetcher.wait_seconds, 2)
        run.stats["batches_drawn_in_step"] = prefetcher.direct_calls
    session.record_peak_memory()
    for module in modules.values():
        module.eval()
    return history


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the loop runs (main thread only), so a ``timeout`` or a
    scheduler's stop ends the run after the current step with a checkpoint instead of losing
    the steps since the last one."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        event.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)
