"""The training session of a process: device, preset, dry run, AMP and batch prefetching.

A training workflow is one process that trains one network. Its command line
(``--device``, ``--preset``, ``--dry-run``; :func:`wsi_fusion.training.run.train_parser`) starts
the session once; the shared pieces read it from there, so no recipe needs its own device code:

- :func:`wsi_fusion.training.config.load_train_config` merges the preset's overlay
  (``configs/presets/<preset>/<config name>``) and the dry-run shrink over the run config, and
  hands the preset's ``run:`` options (AMP, prefetching, save at the budget) to the session;
- :func:`wsi_fusion.training.loop.train_loop` runs each step under the session's autocast and,
  when a batch function is named, draws the steps' batches ahead in worker processes
  (:class:`BatchPrefetcher`).

Device placement without per-recipe code
----------------------------------------
The recipes build their networks with plain constructors and their batches with
``torch.from_numpy``. On a CUDA session, :func:`start` makes CUDA the default device of torch's
constructors (``torch.set_default_device``, the public switch) and routes ``torch.from_numpy``
through a copy to the device. Both are process-wide, which is why only the command line of a
training process starts a session; :func:`stop` undoes them (tests). A recipe that prefers to
be explicit can call :func:`to_device` on its arrays: the result is the same.

bf16 autocast, no GradScaler: bf16 has fp32's exponent range, so gradients cannot underflow;
fp16 would need a scaler around each recipe's own ``backward``/``step`` calls.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]


class RunOptions(BaseModel):
    """The ``run:`` section of a preset: how to run, not what to train (no model fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Autocast dtype of the training steps ("none": fp32; TF32 matmuls/convs on CUDA anyway).
    amp: Literal["bf16", "none"] = "none"
    #: ``"module:function"`` that draws one step's batch, called by the step with
    #: ``step_rng(seed, step)`` among its arguments; drawn ahead in ``prefetch_workers``
    #: processes (:class:`BatchPrefetcher`).
    batch_fn: str | None = None
    prefetch_workers: int = Field(default=0, ge=0)
    #: Batches each worker keeps ready (DataLoader ``prefetch_factor``).
    prefetch_ahead: int = Field(default=4, ge=1)
    #: Write the weights when ``max_seconds`` stops the run before ``steps`` (a time-boxed
    #: run); the summary then says ``stopped_at_budget``.
    save_at_budget: bool = False


@dataclass
class Session:
    """What the command line chose, the preset's run options, and what the run measured."""

    device: Device = "cpu"
    preset: str | None = None
    dry_run: bool = False
    run: RunOptions = field(default_factory=RunOptions)
    #: Measurements for the summary (data wait, peak GPU memory, prefetch workers used).
    stats: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The session as it goes into a training summary."""
        return {
            "device": self.device,
            "preset": self.preset,
            "dry_run": self.dry_run,
            **self.run.model_dump(),
            **self.stats,
        }

    @property
    def is_default(self) -> bool:
        """A plain CPU run with no preset and no dry run (summaries stay as they were)."""
        return self.device == "cpu" and self.preset is None and not self.dry_run


_session = Session()
_from_numpy: Callable[..., Any] | None = None  # the original, while patched


def current() -> Session:
    """The session of this process (a plain CPU one until :func:`start`)."""
    return _session


def start(device: Device = "cpu", preset: str | None = None, dry_run: bool = False) -> Session:
    """Start this process's training session and place torch on ``device``.

    Raises
    ------
    ConfigError
        ``device`` is ``"cuda"`` and torch sees no CUDA device.
    """
    global _session
    stop()
    if device == "cuda":
        _place_on_cuda()
    _session = Session(device=device, preset=preset, dry_run=dry_run)
    log.info("training session: device %s, preset %s, dry run %s", device, preset, dry_run)
    return _session


def stop() -> None:
    """Back to a plain CPU session; undo the device placement of :func:`start`."""
    global _session, _from_numpy
    if _from_numpy is not None:
        import torch

        torch.from_numpy = _from_numpy  # type: ignore[assignment]
        _from_numpy = None
        torch.set_default_device(None)
    _session = Session()


def use_run_options(run: RunOptions) -> None:
    """Take the loaded preset's ``run:`` options (called by the config loader)."""
    _session.run = run


def _place_on_cuda() -> None:
    import torch

    from wsi_fusion.errors import ConfigError

    global _from_numpy
    if not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run on a GPU machine with a CUDA build of torch, or use --device cpu"
        )
    # TF32 for fp32 matmuls and convolutions; cuDNN picks the fastest algorithms per shape.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.set_default_device("cuda")
    original = torch.from_numpy
    _from_numpy = original

    def from_numpy_to_cuda(array: np.ndarray) -> torch.Tensor:
        return original(array).to("cuda", non_blocking=True)

    torch.from_numpy = from_numpy_to_cuda  # type: ignore[assignment]


def to_device(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor on the session's device (explicit form of the placement)."""
    import torch

    return torch.from_numpy(array).to(_session.device)


def autocast() -> contextlib.AbstractContextManager[Any]:
    """The session's autocast for one training step (a no-op without ``amp``)."""
    if _session.run.amp == "none":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(_session.device, dtype=torch.bfloat16)


def record_peak_memory() -> None:
    """Peak GPU memory of the run so far, into the session's stats (CUDA only)."""
    if _session.device == "cuda":
        import torch

        _session.stats["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def device_name() -> str | None:
    """The GPU's name on a CUDA session, else ``None``."""
    if _session.device != "cuda":
        return None
    import torch

    return str(torch.cuda.get_device_name(0))


# -- batch prefetching ---------------------------------------------------------------------------


def _worker_init(_: int) -> None:
    """A prefetch worker draws batches on its CPU core only: no CUDA, one thread (torch,
    OpenMP and BLAS; 14 workers with a thread per core each would oversubscribe the CPU)."""
    import torch
    from threadpoolctl import threadpool_limits

    if _from_numpy is not None:  # forked from a CUDA session: undo the placement here
        torch.from_numpy = _from_numpy  # type: ignore[assignment]
        torch.set_default_device(None)
    torch.set_num_threads(1)
    threadpool_limits(1)


class _StepBatches:
    """Map-style dataset: item ``i`` is the batch of step ``i``, exactly as the step draws it.

    ``args``/``kwargs`` are those of the step's own call, with ``step_rng(seed, i)`` in place
    of its generator at ``rng_at``. Arrays travel as tensors (shared memory, no pickled copy)
    and are turned back into arrays by :func:`_unpack`.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        seed: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        rng_at: int | str,
    ) -> None:
        self.fn, self.seed, self.args, self.kwargs, self.rng_at = fn, seed, args, kwargs, rng_at

    def __getitem__(self, step: int) -> tuple[int, Any, tuple[str, ...]]:
        import numpy as np
        import torch

        from wsi_fusion.training.loop import step_rng

        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.rng_at, int):
            args[self.rng_at] = step_rng(self.seed, step)
        else:
            kwargs[self.rng_at] = step_rng(self.seed, step)
        batch = self.fn(*args, **kwargs)
        items = batch if isinstance(batch, tuple) else (batch,)
        kinds = tuple("array" if isinstance(x, np.ndarray) else "other" for x in items)
        packed = tuple(
            torch.from_numpy(x) if k == "array" else x for x, k in zip(items, kinds, strict=True)
        )
        return step, packed if isinstance(batch, tuple) else packed[0], kinds


def _unpack(batch: Any, kinds: tuple[str, ...]) -> Any:
    """A worker's batch as the recipe returns it: arrays back, tensors on the device."""
    import torch

    def one(x: Any, kind: str) -> Any:
        if kind == "array":
            return x.numpy()
        if isinstance(x, torch.Tensor) and _session.device != "cpu":
            return x.to(_session.device, non_blocking=True)
        return x

    if isinstance(batch, tuple):
        return tuple(one(x, k) for x, k in zip(batch, kinds, strict=True))
    return one(batch, kinds[0])


def _identity(item: Any) -> Any:
    return item


class BatchPrefetcher:
    """Stands in for a recipe's batch function during :func:`train_loop`; draws ahead.

    The recipe's step calls ``fn(..., step_rng(seed, i), ...)``; the batch of step ``i`` is a
    pure function of ``(seed, i)`` and the call's other arguments, so worker processes (a torch
    ``DataLoader`` over the step indices, forked so the sources are shared, not copied) can draw
    steps ``i+1, i+2, …`` while the GPU trains on step ``i``, and the run trains on the same
    batches as without prefetching. A call for another step than the loop's current one, a
    second call in one step, or a call without a generator argument is computed directly.
    Tensors in a prefetched batch are moved to the device; arrays stay arrays (the step
    converts them).
    """

    def __init__(
        self, spec: str, seed: int, start: int, stop: int, workers: int, ahead: int
    ) -> None:
        module_name, _, name = spec.partition(":")
        self.module = importlib.import_module(module_name)
        self.name = name
        self.fn: Callable[..., Any] = getattr(self.module, name)
        self.seed, self.start_step, self.stop_step = seed, start, stop
        # Never more workers than cores beside the training process.
        self.workers = max(1, min(workers, (os.cpu_count() or 2) - 1))
        self.ahead = ahead
        self.step = start  # set by the loop before each step
        self._served_step = -1
        self._iter: Iterator[tuple[int, Any, tuple[str, ...]]] | None = None
        #: The next drawn batch: (step, batch, kinds of its items).
        self._ready: tuple[int, Any, tuple[str, ...]] | None = None
        self.wait_seconds = 0.0
        self.direct_calls = 0

    def __enter__(self) -> BatchPrefetcher:
        setattr(self.module, self.name, self)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.fn)
        self._iter = None  # shuts the workers down

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._served_step == self.step:  # a second batch in one step: not prefetched
            return self._direct(*args, **kwargs)
        if self._iter is None:
            rng_at = _generator_position(args, kwargs)
            if rng_at is None:  # not a step_rng-seeded call: nothing to draw ahead
                return self._direct(*args, **kwargs)
            self._iter = self._loader(args, kwargs, rng_at)
        began = time.perf_counter()
        while self._ready is None or self._ready[0] < self.step:
            try:
                self._ready = next(self._iter)
            except StopIteration:
                self._ready = (self.stop_step, None, ())
                break
            except Exception as err:  # a broken worker must not end a scarce GPU run
                log.error("prefetching failed (%s); drawing batches in the step from now on", err)
                _session.stats["prefetch_error"] = repr(err)
                self._ready = (self.stop_step, None, ())
                break
        self.wait_seconds += time.perf_counter() - began
        if self._ready is None or self._ready[0] != self.step:
            return self._direct(*args, **kwargs)
        _, batch, kinds = self._ready
        self._ready, self._served_step = None, self.step
        return _unpack(batch, kinds)

    def _direct(self, *args: Any, **kwargs: Any) -> Any:
        self.direct_calls += 1
        return self.fn(*args, **kwargs)

    def _loader(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], rng_at: int | str
    ) -> Iterator[tuple[int, Any, tuple[str, ...]]]:
        from torch.utils.data import DataLoader

        steps = list(range(self.step, self.stop_step))
        loader: DataLoader[tuple[int, Any, tuple[str, ...]]] = DataLoader(
            _StepBatches(self.fn, self.seed, args, kwargs, rng_at),  # type: ignore[arg-type]
            batch_size=None,
            sampler=steps,
            num_workers=self.workers,
            prefetch_factor=self.ahead,
            collate_fn=_identity,
            worker_init_fn=_worker_init,
            multiprocessing_context="fork",
        )
        log.info(
            "prefetching batches of steps %d..%d in %d workers", steps[0], steps[-1], self.workers
        )
        return iter(loader)


def _generator_position(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | str | None:
    """Where the call passes its NumPy generator (the step's ``step_rng``), if anywhere."""
    import numpy as np

    for i, value in enumerate(args):
        if isinstance(value, np.random.Generator):
            return i
    for key, value in kwargs.items():
        if isinstance(value, np.random.Generator):
            return key
    return None
