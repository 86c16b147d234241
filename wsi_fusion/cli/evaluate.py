"""``wsi-fusion evaluate``: quality metrics of a fused slide on a sample of tissue tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from wsi_fusion.cli._progress import BarProgress


@click.command()
@click.argument("fused", type=click.Path(path_type=Path))
# click options take one value each; the plane files after the first one arrive as arguments.
@click.argument("more_planes", nargs=-1, type=click.Path(path_type=Path), metavar="")
@click.option(
    "--planes",
    "planes",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Source focal planes, in focal order, after FUSED: one multi-plane file or one "
    "file per plane (`--planes a.tif b.tif c.tif`), as given to `fuse`.",
)
@click.option(
    "--ground-truth",
    type=click.Path(path_type=Path),
    default=None,
    help="All-in-focus reference (synthetic stacks); adds psnr, ssim, cc, q_mi.",
)
@click.option(
    "--metrics",
    "metric_names",
    default=None,
    help="Comma-separated metrics (default: the fast ones; fmi_dct and mi_norm only "
    "when named). Block fidelity, focus attainment, halo and seam are always reported.",
)
@click.option(
    "--tiles",
    "n_tiles",
    type=int,
    default=16,
    show_default=True,
    help="Number of random tissue tiles to measure.",
)
@click.option("--tile", type=int, default=512, show_default=True, help="Sampled tile side in px.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tile draw.")
@click.option(
    "--min-tissue",
    type=float,
    default=0.25,
    show_default=True,
    help="Smallest tissue fraction of a sampled tile (mask on a thumbnail of FUSED).",
)
@click.option(
    "--plan-tile",
    type=int,
    default=None,
    help="Tile size of the fusion whose seams are checked "
    "(default: from FUSED.run.json, else 512).",
)
@click.option(
    "--plan-overlap",
    type=int,
    default=None,
    help="Overlap of that fusion (default: from FUSED.run.json, else 128).",
)
@click.option(
    "--register",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Align the planes as the fusion did before measuring: auto = the drift field in "
    "FUSED.run.json if the fusion applied one (without run.json: measured, applied above 0.5 px).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the summary and per-tile values as JSON.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the summary (one row per metric) as CSV.",
)
@click.option(
    "--contact-sheet",
    "contact_sheet",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG of the worst 64 px blocks by fidelity and by focus attainment, each "
    "row fused | sharpest plane (shifted) | middle plane at 100 %, and PNG.json listing them.",
)
@click.option(
    "--worst",
    "n_worst",
    type=int,
    default=8,
    show_default=True,
    help="Rows of each kind on the contact sheet.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def evaluate(
    fused: Path,
    more_planes: tuple[Path, ...],
    planes: tuple[Path, ...],
    ground_truth: Path | None,
    metric_names: str | None,
    n_tiles: int,
    tile: int,
    seed: int,
    min_tissue: float,
    plan_tile: int | None,
    plan_overlap: int | None,
    register: Literal["auto", "on", "off"],
    json_path: Path | None,
    csv_path: Path | None,
    contact_sheet: Path | None,
    n_worst: int,
    quiet: bool,
) -> None:
    """Measure the fused slide FUSED against its source planes (and a ground truth if known).

    Samples random tissue tiles, runs the fusion metrics on each, and prints mean ± std, median
    and the number of tiles per metric, plus the seam score on a region across tile edges, and
    block fidelity (p10 / median: does each textured 64 px block look like its sharpest plane,
    within ±24 px of drift?) and focus attainment (median / p10; healthy in 0.95-1.15, above
    means invented texture) pooled over the blocks of all sampled tiles.

    \b
    wsi-fusion evaluate fused.ome.zarr --planes stack.ome.tif --ground-truth ground_truth.tif
    wsi-fusion evaluate fused.tif --planes z0.svs z1.svs z2.svs --tiles 32 --json q.json
    wsi-fusion evaluate fused.ome.zarr --planes stack.ome.tif --contact-sheet worst.png
    """
    from wsi_fusion.evaluation import evaluate_slide

    metrics = None
    if metric_names is not None:
        metrics = [m.strip() for m in metric_names.split(",") if m.strip()]
    report = evaluate_slide(
        fused,
        [*planes, *more_planes],
        ground_truth,
        metrics=metrics,
        n_tiles=n_tiles,
        tile=tile,
        seed=seed,
        min_tissue=min_tissue,
        plan_tile=plan_tile,
        plan_overlap=plan_overlap,
        register=register,
        progress=BarProgress(quiet),
        contact_sheet=contact_sheet,
        n_worst=n_worst,
    )
    h, w = report.shape
    click.echo(
        f"{report.fused}: {w} x {h} px, {len(report.boxes)} tiles of {report.tile} px "
        f"(seed {report.seed}); seams for tile {report.plan_tile} / overlap {report.plan_overlap}"
    )
    reg = report.registration
    if reg.get("applied"):
        click.echo(
            f"planes registered onto plane {reg['reference_plane']} (drift up to "
            f"{reg['max_abs_px']:.2f} px, field from {reg['source']})"
        )
    click.echo(report.table())
    if json_path is not None:
        click.echo(f"wrote {report.write_json(json_path)}")
    if csv_path is not None:
        click.echo(f"wrote {report.write_csv(csv_path)}")
    if report.contact_sheet is not None:
        click.echo(f"wrote {report.contact_sheet} (and {report.contact_sheet}.json)")
