"""``wsi-fusion synth``: make a synthetic z-stack with known ground truth from a sharp image."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write the stack, ground truth and focus-index map into.")
@click.option("--planes", type=int, default=5, show_default=True, help="Number of focal planes.")
@click.option("--size", type=(int, int), default=None, help="Output HEIGHT WIDTH (mirror-tiles the source).")
@click.option("--forms", default="ome-zarr,ome-tiff,planes", show_default=True,
              help="Comma-separated input forms to write: ome-zarr, ome-tiff, planes.")
@click.option("--noise", type=float, default=None, help="Gaussian noise sigma (0-255 scale).")
@click.option("--drift", type=float, default=None, help="Largest lateral drift between planes in px.")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(
    source: Path,
    out_dir: Path,
    planes: int,
    size: tuple[int, int] | None,
    forms: str,
    noise: float | None,
    drift: float | None,
    seed: int,
) -> None:
    """Write a synthetic focal stack made from the sharp image SOURCE."""
    from wsi_fusion.synth.write import synthesize

    params = {k: v for k, v in {"noise_sigma": noise, "max_drift": drift}.items() if v is not None}
    written = synthesize(
        source,
        out_dir,
        size=size,
        n_planes=planes,
        forms=tuple(f.strip() for f in forms.split(",") if f.strip()),
        seed=seed,
        **params,
    )
    click.echo(f"wrote synthetic stack to {written}")
