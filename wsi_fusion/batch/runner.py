"""Convert many slides in one run: skip finished ones, keep going past failures, summarise.

Each slide is one :func:`wsi_fusion.pipeline.fuse_slide` call on a scheduler opened once for the
whole batch. A slide whose output exists with a ``run.json`` recording the same digest (inputs'
identity + output-affecting settings) is skipped; ``force`` redoes it. A slide that fails is
logged with its traceback in its own log file and listed in ``batch_summary.json``; the batch
goes on. Its tile cache stays, so rerunning the batch resumes it tile by tile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from wsi_fusion import __version__
from wsi_fusion.batch.discover import SlideSpec
from wsi_fusion.config import OutputFormat, RunConfig
from wsi_fusion.errors import ConfigError
from wsi_fusion.io.destination import format_from_suffix
from wsi_fusion.io.output_lock import output_lock
from wsi_fusion.io.privacy import shown_path
from wsi_fusion.io.publication import trusted_record
from wsi_fusion.pipeline import ProgressReporter, fuse_slide, run_digest
from wsi_fusion.scheduling.graph import TaskRunner, open_runner

logger = logging.getLogger(__name__)

SUMMARY_NAME = "batch_summary.json"
#: Held by the batch writing into OUTDIR (one batch per output folder).
LOCK_NAME = "batch.lock"
LOG_FOLDER = "logs"
_SUFFIX: dict[OutputFormat, str] = {
    "ome-zarr": ".ome.zarr",
    "ome-tiff": ".ome.tif",
    "tiff": ".tif",
    "dicom": ".dicom",
}

Status = Literal["done", "skipped", "failed", "pending"]


@dataclass
class SlideResult:
    """What happened to one slide of a batch."""

    slide: str
    status: Status
    inputs: list[str]
    output: str
    log: str
    fuser: str
    seconds: float = 0.0
    #: ``None`` unless ``status == "failed"``: the exception's class name and message.
    error_type: str | None = None
    error: str | None = None
    tiles: int | None = None
    tiles_computed: int | None = None
    tiles_resumed: int | None = None
    run_json: str | None = None


@dataclass
class BatchSummary:
    """Results of every slide, in input order; written to ``OUTDIR/batch_summary.json``."""

    outdir: Path
    results: list[SlideResult] = field(default_factory=list)
    #: Write absolute paths (``--record-paths``); by default inputs are file names and outputs,
    #: logs and run.json paths are relative to OUTDIR, like the outputs' own provenance.
    record_paths: bool = False
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    seconds: float = 0.0
    scheduler: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.outdir / SUMMARY_NAME

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        """Slides per status."""
        out = {s: 0 for s in ("done", "skipped", "failed", "pending")}
        for result in self.results:
            out[result.status] += 1
        return out

    def write(self) -> None:
        """Write the summary atomically (a reader never sees half a file)."""
        record = {
            "tool": "wsi_fusion",
            "version": __version__,
            "outdir": str(self.outdir) if self.record_paths else ".",
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "scheduler": self.scheduler,
            "counts": self.counts(),
            "slides": [self._recorded(r) for r in self.results],
        }
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(record, indent=2))
        os.replace(partial, self.path)

    def _recorded(self, result: SlideResult) -> dict[str, Any]:
        """``result`` as the summary file records it (paths shortened unless record_paths)."""
        record = asdict(result)
        if self.record_paths:
            return record
        record["inputs"] = [shown_path(p, False) for p in result.inputs]
        for key in ("output", "log", "run_json"):
            if record[key]:
                record[key] = os.path.relpath(record[key], self.outdir)
        return record


class BatchProgress(Protocol):
    """How a batch reports progress; the CLI implements it with an overall bar and phase bars."""

    def slide(
        self, result: SlideResult, index: int, total: int
    ) -> contextlib.AbstractContextManager[ProgressReporter]:
        """Context of one slide's conversion; yields the progress sink for its phases."""
        ...

    def finished(self, result: SlideResult) -> None:
        """``result`` is final (done, skipped or failed)."""
        ...


class _SilentBatch:
    @contextlib.contextmanager
    def slide(self, result: SlideResult, index: int, total: int) -> Iterator[ProgressReporter]:
        from wsi_fusion.pipeline import _Silent

        yield _Silent()

    def finished(self, result: SlideResult) -> None:
        pass


def run_batch(
    slides: Sequence[SlideSpec],
    outdir: str | os.PathLike[str],
    config: RunConfig | None = None,
    *,
    force: bool = False,
    keep_cache: bool = False,
    progress: BatchProgress | None = None,
    runner: TaskRunner | None = None,
) -> BatchSummary:
    """Fuse every slide of ``slides`` into ``outdir``; never stop at a failing slide.

    Parameters
    ----------
    slides
        The slides (:func:`wsi_fusion.batch.collect_slides`).
    outdir
        Output folder (created if missing): one output per slide, ``logs/<slide>.log`` and
        ``batch_summary.json``.
    config
        Run settings for every slide (a slide's manifest ``fuser`` overrides the fuser).
    force
        Redo slides whose finished output matches the inputs and settings.
    keep_cache
        Keep each slide's tile cache after it succeeds.
    progress
        Progress sink (the CLI's bars); silent when ``None``.
    runner
        An open scheduler; default: open ``config.scheduler`` once for the whole batch.

    Returns
    -------
    BatchSummary
        Per-slide results; ``summary.failed`` lists the failures (also in the JSON file).
    """
    config = config or RunConfig()
    progress = progress or _SilentBatch()
    out = Path(outdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out / LOCK_NAME, out):
        return _run_locked(slides, out, config, force, keep_cache, progress, runner)


def _run_locked(
    slides: Sequence[SlideSpec],
    out: Path,
    config: RunConfig,
    force: bool,
    keep_cache: bool,
    progress: BatchProgress,
    runner: TaskRunner | None,
) -> BatchSummary:
    """:func:`run_batch` once it holds OUTDIR's lock."""
    (out / LOG_FOLDER).mkdir(exist_ok=True)
    plans = [(spec, _slide_config(spec, config)) for spec in slides]
    summary = BatchSummary(out, record_paths=config.record_paths)
    summary.results = [_pending(spec, cfg, out) for spec, cfg in plans]
    _check_outputs_unique(summary.results)
    started = time.perf_counter()
    with contextlib.ExitStack() as scope:
        if runner is None:
            runner = scope.enter_context(
                open_runner(
                    config.scheduler, config.workers, use_gpus=uses_learned_fuser(slides, config)
                )
            )
        summary.scheduler = dict(runner.description)
        summary.write()
        for index, ((spec, cfg), result) in enumerate(zip(plans, summary.results, strict=True)):
            try:
                with progress.slide(result, index, len(plans)) as sink:
                    _convert(spec, cfg, result, force, keep_cache, sink, runner)
            finally:
                summary.seconds = time.perf_counter() - started
                summary.write()
            progress.finished(result)
    failed = summary.failed
    logger.info(
        "batch done: %s; summary in %s",
        ", ".join(f"{n} {k}" for k, n in summary.counts().items() if n),
        summary.path,
    )
    if failed:
        logger.info("%d slide(s) failed: %s", len(failed), ", ".join(r.slide for r in failed))
    return summary


def _convert(
    spec: SlideSpec,
    config: RunConfig,
    result: SlideResult,
    force: bool,
    keep_cache: bool,
    progress: ProgressReporter,
    runner: TaskRunner,
) -> None:
    """Convert one slide into ``result`` (mutated); an exception becomes a ``failed`` result."""
    output = Path(result.output)
    t0 = time.perf_counter()
    with slide_log(Path(result.log)):
        logger.info("slide %s: %s -> %s", spec.slide_id, ", ".join(spec.inputs), output)
        try:
            digest = run_digest(spec.inputs, config)
            recorded = recorded_digest(output)
            if recorded == digest and not force:
                result.status = "skipped"
                result.run_json = str(_run_json(output))
                logger.info(
                    "slide %s: output is up to date (digest %s); skipped",
                    spec.slide_id,
                    digest[:12],
                )
                return
            if output.exists():
                why = "--force" if recorded == digest else "inputs or settings changed"
                logger.info("slide %s: redoing the existing output (%s)", spec.slide_id, why)
            report = fuse_slide(
                spec.inputs,
                output,
                config,
                # A slide that is not up to date is redone, whatever a cut-short run left:
                # an image without its record, or sidecars without their image.
                overwrite=True,
                keep_cache=keep_cache,
                progress=progress,
                runner=runner,
            )
        except Exception as err:  # one slide's failure must not stop the batch
            result.status = "failed"
            result.error_type = type(err).__name__
            result.error = str(err)
            # One line for the console; the traceback goes to the slide's log file only.
            logger.error("slide %s failed: %s: %s", spec.slide_id, result.error_type, err)
            logger.info("traceback of slide %s:\n%s", spec.slide_id, traceback.format_exc())
        else:
            result.status = "done"
            result.tiles = report.tiles
            result.tiles_computed = report.tiles_computed
            result.tiles_resumed = report.tiles_resumed
            result.run_json = str(report.run_json)
            logger.info(
                "slide %s done: %d tiles (%d computed, %d resumed) in %.1f s",
                spec.slide_id,
                report.tiles,
                report.tiles_computed,
                report.tiles_resumed,
                report.timings_s.get("total", 0.0),
            )
        finally:
            result.seconds = round(time.perf_counter() - t0, 3)


def recorded_digest(output: Path) -> str:
    """The digest recorded for a finished ``output`` (``""`` when there is none to trust).

    Only a complete publication counts (:func:`wsi_fusion.io.publication.trusted_record`): an
    image whose run.json is missing, or describes other files, is redone, never skipped.
    """
    record = trusted_record(output)
    report = record.get("report", {}) if record is not None else {}
    digest = report.get("digest", "") if isinstance(report, dict) else ""
    return digest if isinstance(digest, str) else ""


@contextlib.contextmanager
def slide_log(path: Path) -> Iterator[None]:
    """Copy the package's log records (INFO and above) into ``path`` while the block runs.

    Records from ``distributed`` worker processes stay in the workers' own logs.
    """
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("wsi_fusion")
    previous = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)
        handler.close()


def _run_json(output: Path) -> Path:
    return output.with_name(output.name + ".run.json")


def _slide_config(spec: SlideSpec, config: RunConfig) -> RunConfig:
    """The run config of one slide: the batch's, with the manifest's fuser if it names one."""
    if spec.fuser is None or spec.fuser == config.fuser:
        return config
    # The batch's fuser parameters belong to the batch's fuser; another fuser gets its defaults.
    return config.model_copy(update={"fuser": spec.fuser, "fuser_params": {}})


def _pending(spec: SlideSpec, config: RunConfig, outdir: Path) -> SlideResult:
    return SlideResult(
        slide=spec.slide_id,
        status="pending",
        inputs=[str(Path(p).absolute()) for p in spec.inputs],
        output=str(outdir / output_name(spec, config.format)),
        log=str(outdir / LOG_FOLDER / f"{_safe(spec.slide_id)}.log"),
        fuser=config.fuser,
    )


def output_name(spec: SlideSpec, fmt: OutputFormat | None) -> str:
    """File name of a slide's output: the manifest's, else ``<slide>`` + the format's suffix."""
    suffix = _SUFFIX[fmt or "ome-zarr"]
    if spec.output_name is None:
        return _safe(spec.slide_id) + suffix
    name = spec.output_name
    if Path(name).name != name:
        raise ConfigError(
            f"slide {spec.slide_id}: output {name!r} must be a file name inside OUTDIR, not a path"
        )
    return name if format_from_suffix(Path(name)) is not None else name + suffix


def _safe(slide_id: str) -> str:
    """A slide id usable as a file name."""
    return re.sub(r"[^\w.+-]+", "_", slide_id).strip("._") or "slide"


def _check_outputs_unique(results: list[SlideResult]) -> None:
    seen: dict[str, str] = {}
    for result in results:
        other = seen.setdefault(result.output, result.slide)
        if other != result.slide:
            raise ConfigError(
                f"slides {other} and {result.slide} would both write {result.output}; give them "
                "different output names in the manifest"
            )


def uses_learned_fuser(slides: Sequence[SlideSpec], config: RunConfig) -> bool:
    """Whether any slide runs a learned fuser (then a local cluster gets one worker per GPU)."""
    from wsi_fusion.errors import UnknownFuser
    from wsi_fusion.fusers import fuser_class
    from wsi_fusion.fusers._registry import has_device_variant

    names = {config.fuser} | {s.fuser for s in slides if s.fuser is not None}
    # The default fuser asked to run on a device (its torch implementation) counts too.
    device = str(config.fuser_params.get("device", "numpy"))
    learned = device.startswith(("cuda", "auto")) and has_device_variant(config.fuser)
    for name in names:
        try:
            learned = learned or fuser_class(name).needs_weights
        except UnknownFuser:
            pass  # reported as that slide's failure when it runs
    return learned
