"""``wsi-fusion info``: what a set of inputs holds, as the pipeline will see it."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(inputs: tuple[Path, ...], as_json: bool) -> None:
    """Describe INPUTS: planes, z positions, size, mpp and the reader used."""
    from wsi_fusion.io.readers import describe_stack, open_stack

    stack = open_stack([str(p) for p in inputs])
    try:
        description = describe_stack(stack)
    finally:
        stack.close()
    if as_json:
        click.echo(json.dumps(description, indent=2, default=str))
        return
    for key, value in description.items():
        click.echo(f"{key}: {value}")
