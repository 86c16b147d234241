"""``wsi-fusion fuse``: fuse one slide's focal planes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from wsi_fusion.cli._logs import tame_console
from wsi_fusion.cli._progress import BarProgress
from wsi_fusion.cli._run_options import run_config, run_options


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output path: .ome.zarr, .ome.tif, .tif or .dicom (a folder of DICOM WSI instances); "
    "the format follows the suffix.",
)
@click.option(
    "--fuser", default=None, help="Fusion method (see `wsi-fusion fusers`); default focus_measure."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ome-zarr", "ome-tiff", "tiff", "dicom"]),
    default=None,
    help="Output format when the suffix does not say.",
)
@click.option(
    "--ngff-version",
    type=click.Choice(["0.4", "0.5"]),
    default=None,
    help="OME-Zarr version: 0.4 (QuPath, OMERO; default) or 0.5 (napari, vizarr).",
)
@click.option(
    "--focus-map",
    is_flag=True,
    default=None,
    help="Also write the focus/depth map (labels in OME-Zarr, .focus.tif for TIFF).",
)
@click.option(
    "--blur-mask",
    is_flag=True,
    default=None,
    help="cgan_blurmask: also write its blur mask, where the image was synthesised "
    "(labels/blur_mask in OME-Zarr, .blur_mask.tif for TIFF).",
)
@run_options
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Tile cache location (default OUTPUT.cache); reruns resume from it.",
)
@click.option(
    "--keep-cache",
    is_flag=True,
    help="Keep the tile cache after success (it is kept after an interruption, for resuming).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing output once the new one is complete."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary.")
def fuse(
    inputs: tuple[Path, ...],
    output: Path,
    fuser: str | None,
    fmt: str | None,
    ngff_version: str | None,
    focus_map: bool | None,
    blur_mask: bool | None,
    cache_dir: Path | None,
    keep_cache: bool,
    overwrite: bool,
    quiet: bool,
    **run_settings: Any,
) -> None:
    """Fuse the focal planes INPUTS (one multi-plane file, or one file per plane) into OUTPUT."""
    from wsi_fusion.fusers import fuser_class
    from wsi_fusion.pipeline import fuse_slide
    from wsi_fusion.scheduling.graph import open_runner

    config = run_config(
        **run_settings,
        fuser=fuser,
        format=fmt,
        ngff_version=ngff_version,
        focus_map=focus_map,
        blur_mask=blur_mask,
    )
    tame_console()
    with open_runner(
        config.scheduler, config.workers, use_gpus=fuser_class(config.fuser).needs_weights
    ) as runner:
        dashboard = runner.description.get("dashboard")
        if dashboard and not quiet:
            click.echo(f"Dask dashboard: {dashboard}", err=True)
        report = fuse_slide(
            [str(p) for p in inputs],
            output,
            config,
            overwrite=overwrite,
            keep_cache=keep_cache,
            cache_dir=cache_dir,
            progress=BarProgress(quiet),
            runner=runner,
        )
    if not quiet:
        h, w = report.shape
        took = report.timings_s.get("total", 0.0)
        click.echo(
            f"wrote {report.output} ({report.format}, {w}x{h} px, {report.planes} planes, "
            f"{report.tiles_fused}/{report.tiles} tiles fused) in {took:.1f} s; "
            f"provenance in {report.run_json}"
        )
        for path in report.extra_outputs:
            click.echo(f"wrote {path}")
