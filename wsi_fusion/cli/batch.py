"""``wsi-fusion batch``: convert a folder or a CSV manifest of slides into OUTDIR."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wsi_fusion.cli._logs import tame_console
from wsi_fusion.cli._progress import Bar, progress_bar
from wsi_fusion.cli._run_options import run_config, run_options

if TYPE_CHECKING:
    from wsi_fusion.batch.runner import SlideResult
    from wsi_fusion.pipeline import ProgressReporter


class _SlideBars:
    """Phase bars of the slide being converted, under the overall bar."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def phase(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        bar = progress_bar(
            total, f"  {name}", unit="", position=1, leave=False,
            disable=self.quiet or total == 0,
        )  # fmt: skip
        try:
            yield bar.update
        finally:
            bar.close()


class BatchBars:
    """An overall bar (slides done / total, rate, ETA) and the current slide's phase bars."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.total = total
        self._overall: Bar | None = None

    @property
    def overall(self) -> Bar:
        """The overall bar, drawn on first use: a batch refused before its first slide (OUTDIR
        locked by another batch) prints its one error line and no bar."""
        if self._overall is None:
            self._overall = progress_bar(
                self.total, "slides", unit="slide", position=0, disable=self.quiet
            )
        return self._overall

    @contextlib.contextmanager
    def slide(self, result: SlideResult, index: int, total: int) -> Iterator[ProgressReporter]:
        self.overall.set_postfix_str(result.slide, refresh=True)
        yield _SlideBars(self.quiet)

    def finished(self, result: SlideResult) -> None:
        self.overall.update(1)

    def close(self) -> None:
        if self._overall is not None:
            self._overall.close()


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o", "--outdir", required=True, type=click.Path(path_type=Path), help="Output folder."
)
@click.option(
    "--pattern",
    default=None,
    help="How per-plane file names are built (folder input); default {slide}_z{plane}.{ext}.",
)
@click.option(
    "--fuser", default=None, help="Fusion method for every slide (default focus_measure)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ome-zarr", "ome-tiff", "tiff", "dicom"]),
    default=None,
    help="Output format of every slide (default ome-zarr).",
)
@click.option("--focus-map", is_flag=True, default=None, help="Also write each focus/depth map.")
@click.option(
    "--blur-mask",
    is_flag=True,
    default=None,
    help="cgan_blurmask: also write each slide's blur mask (where the image was synthesised).",
)
@run_options
@click.option("--force", is_flag=True, help="Redo slides whose output is already up to date.")
@click.option("--keep-cache", is_flag=True, help="Keep each slide's tile cache after success.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
def batch(
    source: Path,
    outdir: Path,
    pattern: str | None,
    fuser: str | None,
    fmt: str | None,
    focus_map: bool | None,
    blur_mask: bool | None,
    force: bool,
    keep_cache: bool,
    quiet: bool,
    **run_settings: Any,
) -> None:
    """Fuse every slide of SOURCE (a folder or a CSV manifest) into OUTDIR.

    \b
    A folder holds per-plane files named by --pattern (A_z0.svs, A_z1.svs, ...) and/or
    multi-plane files, one per slide. A CSV manifest has the columns slide,planes[,output][,fuser]
    (plane files separated by ';', relative to the CSV). Finished, up-to-date slides are skipped;
    a failing slide does not stop the batch. Writes OUTDIR/batch_summary.json and
    OUTDIR/logs/<slide>.log; exits 1 if any slide failed. Rerun the same command to resume.
    """
    from wsi_fusion.batch import DEFAULT_PATTERN, collect_slides, run_batch
    from wsi_fusion.batch.runner import uses_learned_fuser
    from wsi_fusion.scheduling.graph import open_runner

    config = run_config(
        **run_settings, fuser=fuser, format=fmt, focus_map=focus_map, blur_mask=blur_mask
    )
    slides = collect_slides(source, pattern=pattern or DEFAULT_PATTERN, exclude=(outdir,))
    tame_console()
    learned = uses_learned_fuser(slides, config)
    bars = BatchBars(len(slides), quiet)
    try:
        with open_runner(config.scheduler, config.workers, use_gpus=learned) as runner:
            dashboard = runner.description.get("dashboard")
            if dashboard and not quiet:
                bars.overall.write(f"Dask dashboard: {dashboard}")
            summary = run_batch(
                slides, outdir, config, force=force, keep_cache=keep_cache, progress=bars,
                runner=runner,
            )  # fmt: skip
    finally:
        bars.close()
    counts = summary.counts()
    if not quiet:
        click.echo(
            f"{len(slides)} slides: {counts['done']} converted, {counts['skipped']} up to date "
            f"(skipped), {counts['failed']} failed; summary in {summary.path}"
        )
    for result in summary.failed:
        click.echo(
            f"FAILED {result.slide}: {result.error_type}: {result.error} (log: {result.log})",
            err=True,
        )
    if summary.failed:
        sys.exit(1)
