"""``wsi-fusion synth``: make a synthetic z-stack with known ground truth from a sharp image."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the stack, ground truth and focus-index map into.",
)
@click.option("--planes", type=int, default=5, show_default=True, help="Number of focal planes.")
@click.option(
    "--size", type=(int, int), default=None, help="Output HEIGHT WIDTH (mirror-tiles the source)."
)
@click.option(
    "--forms",
    default="ome-zarr,ome-tiff,planes",
    show_default=True,
    help="Comma-separated input forms to write: ome-zarr, ome-tiff, planes.",
)
@click.option(
    "--noise", type=float, default=None, help="Read-noise sigma in intensity units (0-1)."
)
@click.option(
    "--drift", type=float, default=None, help="Largest random lateral drift per plane in px."
)
@click.option(
    "--sigma-per-plane", type=float, default=None, help="Blur growth per plane of defocus (px)."
)
@click.option("--lossless", is_flag=True, help="Deflate instead of JPEG q95 for the TIFF forms.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def synth(
    source: Path,
    out_dir: Path,
    planes: int,
    size: tuple[int, int] | None,
    forms: str,
    noise: float | None,
    drift: float | None,
    sigma_per_plane: float | None,
    lossless: bool,
    seed: int,
    overwrite: bool,
) -> None:
    """Write a synthetic focal stack made from the sharp image SOURCE."""
    from wsi_fusion.synth.write import synthesize

    model = {"noise_sigma": noise, "drift_px": drift, "sigma_per_plane": sigma_per_plane}
    params = {k: v for k, v in model.items() if v is not None}
    written = synthesize(
        source,
        out_dir,
        size=size,
        n_planes=planes,
        forms=tuple(f.strip() for f in forms.split(",") if f.strip()),
        seed=seed,
        compression="deflate" if lossless else "jpeg",
        overwrite=overwrite,
        params=params,
    )
    click.echo(f"wrote synthetic stack to {written}")
