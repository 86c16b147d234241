"""The parts every ``workflows/train_*.py`` shares: options, the train-and-save run, the summary.

A workflow is then its config model, its network and its model-card comparison; the plumbing
(command-line options, resuming, writing the weights and a JSON summary next to the checkpoint,
the held-out / validation comparison) lives here once.

The options ``--device``, ``--preset`` and ``--dry-run`` start the process's training session
(:mod:`wsi_fusion.training.session`) when the command line is parsed, so every workflow gets
them from :func:`train_parser` alone::

    .venv/bin/python workflows/train_msegnet.py --device cuda --preset h100-8min
    OMP_NUM_THREADS=1 .venv/bin/python workflows/train_msegnet.py --preset h100-8min --dry-run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wsi_fusion.training.config import DRY_RUN_STEPS

if TYPE_CHECKING:  # torch stays lazy for importers of this module
    import torch

    from wsi_fusion.training.loop import StepFn

log = logging.getLogger(__name__)


class RunRecord(Protocol):
    """The fields of a training config that the summary and the saving use."""

    @property
    def steps(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def checkpoint(self) -> str: ...
    @property
    def output(self) -> str: ...

    def model_dump(self) -> dict[str, Any]: ...


class TrainRun(RunRecord, Protocol):
    """The fields of a training config that :func:`train_and_save` uses."""

    @property
    def seed(self) -> int: ...
    @property
    def max_seconds(self) -> float | None: ...
    @property
    def log_every(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...


#: What a workflow's ``build`` returns: the network to save, the step function, the optimiser
#: and the learning-rate schedule.
Built = tuple["torch.nn.Module", "StepFn", "torch.optim.Optimizer", Any]


class TrainParser(argparse.ArgumentParser):
    """An argument parser that starts the training session from the options it parsed."""

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        from wsi_fusion.training import session

        parsed, rest = super().parse_known_args(args, namespace)
        session.start(parsed.device, parsed.preset, parsed.dry_run)
        return parsed, rest


def train_parser(doc: str | None, default_config: Path) -> argparse.ArgumentParser:
    """The options every training workflow has: ``--config``, ``--steps``, ``--max-seconds``,
    ``--no-progress``, ``--device``, ``--preset``, ``--dry-run``; the description is the first
    line of the workflow's docstring. Parsing starts the training session."""
    parser = TrainParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--config", default=str(default_config))
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--max-seconds", type=float, default=None, help="override the budget")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default cpu)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="overlay configs/presets/PRESET/<config name> (e.g. h100-8min: the paper's width "
        "in 8 minutes on one H100-class GPU, bf16 autocast, prefetched batches)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=f"rehearsal: {DRY_RUN_STEPS} steps at the preset's tiny sizes, checkpoint and "
        "weights under scratch/dry_run/",
    )
    return parser


def add_comparison_options(parser: argparse.ArgumentParser, name: str) -> None:
    """``--evaluate`` (held-out table of the model card) and ``--validate`` (stacks from the
    training rows, for choosing defaults) of the fuser ``name``."""
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help=f"instead of training: held-out PSNR/SSIM and tiles/s of the {name} variants and "
        f"the classical fusers in one run, written to models/{name}/metrics.json",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="instead of training: the same comparison on validation stacks cut from the "
        f"training rows (used to choose defaults), written to models/{name}/validation.json",
    )


def start_logging() -> None:
    """INFO logging with timestamps; one OpenMP thread unless the caller chose otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def train_and_save(
    cfg: TrainRun,
    root: Path,
    build: Callable[[], Built],
    *,
    progress: bool = True,
    names: tuple[str, str, str] = ("net", "adam", "cosine"),
) -> tuple[list[dict[str, float]], str, float]:
    """Seed, build, run (or resume) the training loop and write the fp16 safetensors weights.

    Parameters
    ----------
    cfg : TrainRun
        The run config; its paths are relative to ``root`` (the repository).
    build : callable
        Makes the network, step function, optimiser and schedule; called after seeding so the
        initial weights depend on ``cfg.seed`` only.
    names : tuple of str
        Checkpoint keys of the network, optimiser and schedule (kept per workflow so existing
        checkpoints still resume).

    Returns
    -------
    history, sha256, seconds
        The loss history, the weights' sha256 (empty when the time budget stopped the run
        before ``cfg.steps``) and the seconds of this invocation.
    """
    import torch

    from wsi_fusion.fusers._weights import save_weights
    from wsi_fusion.training.loop import seed_everything, train_loop

    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    net, step, optimizer, scheduler = build()
    module_key, optimizer_key, scheduler_key = names
    started = time.perf_counter()
    history = train_loop(
        step,
        cfg.steps,
        root / cfg.checkpoint,
        {module_key: net},
        {optimizer_key: optimizer},
        {scheduler_key: scheduler},
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        max_seconds=cfg.max_seconds,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    sha = ""
    if history and (history[-1]["step"] >= cfg.steps or _save_at_budget()):
        sha = save_weights(net, root / cfg.output)
        log.info("wrote %s (sha256 %s)", cfg.output, sha)
    return history, sha, seconds


def _save_at_budget() -> bool:
    """The session's preset writes the weights of a run its time budget stopped."""
    from wsi_fusion.training import session

    return session.current().run.save_at_budget


def hardware(threads: int) -> str:
    """The processor and thread count (and the GPU on a CUDA session), for summaries and cards."""
    from wsi_fusion.training import session

    cpu = f"{platform.processor() or platform.machine()}, {threads} thread(s)"
    gpu = session.device_name()
    return f"{gpu}, {cpu}" if gpu else f"{cpu}, CPU"


def training_summary(
    cfg: RunRecord,
    history: list[dict[str, float]],
    seconds: float,
    sha: str | None,
    *,
    steps_done: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON summary of one invocation: config, progress, final losses, sha256, hardware.

    ``steps_done`` defaults to the last logged step; ``extra`` entries go before the sha256.
    A run with a device, preset or dry run also records its session (device, preset, AMP,
    prefetching, data wait, peak GPU memory), the steps per second and whether the time budget
    stopped it before ``cfg.steps``.
    """
    from wsi_fusion.training import session

    done = steps_done if steps_done is not None else _last_step(history)
    summary = {
        "config": cfg.model_dump(),
        "steps_done": done,
        "train_seconds_total": history[-1]["seconds"] if history else 0.0,
        "this_invocation_seconds": round(seconds, 1),
        "final": history[-1] if history else None,
        **extra,
        "sha256": sha,
        "hardware": hardware(cfg.threads),
    }
    run = session.current()
    if not run.is_default:
        total = summary["train_seconds_total"]
        summary["session"] = run.describe()
        summary["steps_per_second"] = round(float(done) / total, 3) if total else None
        summary["stopped_at_budget"] = bool(done < cfg.steps)
    return summary


def _last_step(history: list[dict[str, float]]) -> Any:
    return history[-1]["step"] if history else 0


def finish_run(checkpoint: Path, summary: Mapping[str, Any]) -> int:
    """Write ``summary`` next to the checkpoint; the exit status: 0 done, 1 rerun to resume."""
    out = checkpoint.with_suffix(".summary.json")
    out.write_text(json.dumps(summary, indent=1))
    log.info("summary: %s", out)
    if not summary["sha256"]:
        log.warning("not finished; rerun to resume")
        return 1
    return 0


def run_comparison(
    compared: Mapping[str, tuple[str, dict[str, Any]]], out: Path, *, validation: bool = False
) -> int:
    """The model card's comparison: ``compared`` and the classical fusers on the same stacks.

    Held-out stacks, plus the interleaved best-of-3 timing of ``compared`` (the variants timed
    against each other); with ``validation``, stacks from the training rows instead (used to
    choose defaults, never reported as results). Written to ``out`` as JSON and logged as a
    Markdown table. One torch thread.
    """
    import torch

    from wsi_fusion.training.heldout import (
        CLASSICAL,
        compare_on_heldout,
        compare_on_stacks,
        markdown_table,
        time_interleaved,
        validation_stacks,
    )

    torch.set_num_threads(1)
    fusers = {**compared, **CLASSICAL}
    if validation:
        result = compare_on_stacks(fusers, validation_stacks())
        result["validation"] = {"n": 6, "side": 384, "planes": 5, "seed": 777, "noise": 0.005}
    else:
        result = compare_on_heldout(fusers)
        result["torch_threads"] = 1
        # Interleaved, best of 3, one 512² 5-plane tile: fair against changing machine load.
        result["seconds_per_tile_interleaved"] = time_interleaved(compared)
        log.info(
            "seconds per tile (interleaved, best of 3): %s", result["seconds_per_tile_interleaved"]
        )
    out.write_text(json.dumps(result, indent=1))
    title = "validation" if validation else "held-out"
    log.info("%s comparison:\n%s", title, markdown_table(result))
    return 0


def train_workflow(
    argv: list[str] | None,
    *,
    doc: str | None,
    root: Path,
    name: str,
    model_cls: type[Any],
    train: Callable[..., tuple[list[dict[str, float]], str, float]],
    compared: Mapping[str, tuple[str, dict[str, Any]]],
) -> int:
    """The whole ``main`` of a training workflow whose model card is :func:`run_comparison`.

    Trains with ``configs/train_<name>.yaml`` (``--steps``/``--max-seconds`` override it),
    or with ``--evaluate``/``--validate`` writes ``models/<name>/{metrics,validation}.json``.
    ``train(cfg, root, progress=...)`` is the fuser's training entry point.
    """
    from wsi_fusion.training.config import load_train_config

    parser = train_parser(doc, root / "configs" / f"train_{name}.yaml")
    add_comparison_options(parser, name)
    args = parser.parse_args(argv)
    start_logging()
    if args.validate:
        return run_comparison(compared, root / "models" / name / "validation.json", validation=True)
    if args.evaluate:
        return run_comparison(compared, root / "models" / name / "metrics.json")
    cfg = load_train_config(args.config, model_cls, steps=args.steps, max_seconds=args.max_seconds)
    history, sha, seconds = train(cfg, root, progress=not args.no_progress)
    return finish_run(root / cfg.checkpoint, training_summary(cfg, history, seconds, sha))


def save_and_finish(
    cfg: RunRecord,
    net: torch.nn.Module,
    history: list[dict[str, float]],
    seconds: float,
    steps_done: int,
) -> tuple[int, str | None]:
    """For workflows that run their own loop: save the weights once ``cfg.steps`` are done and
    write the summary (with ``output``) next to the checkpoint.

    Paths in ``cfg`` are relative to the working directory. Returns the exit status (0 done,
    1 rerun to resume) and the weights' sha256 (``None`` while unfinished).
    """
    from wsi_fusion.fusers._weights import save_weights

    done = steps_done >= cfg.steps or (steps_done > 0 and _save_at_budget())
    sha = save_weights(net, Path(cfg.output)) if done else None
    output = cfg.output if done else None
    summary = training_summary(cfg, history, seconds, sha, steps_done=steps_done, output=output)
    return finish_run(Path(cfg.checkpoint), summary), sha
