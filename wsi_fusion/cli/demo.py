"""``wsi-fusion demo``: synthesise the built-in demo slide and fuse it."""

from __future__ import annotations

from pathlib import Path

import click

from wsi_fusion.cli._progress import BarProgress


@click.command()
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("demo_output"),
    show_default=True,
    help="Folder for the demo stack and the fused slide.",
)
@click.option("--fuser", default="focus_measure", show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def demo(out_dir: Path, fuser: str, quiet: bool) -> None:
    """Make a 5-plane z-stack from the bundled H&E region, fuse it, and report the gain."""
    from wsi_fusion.demo import run_demo

    summary = run_demo(out_dir, fuser=fuser, progress=BarProgress(quiet))
    for line in summary:
        click.echo(line)
