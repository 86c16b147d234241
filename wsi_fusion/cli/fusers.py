"""``wsi-fusion fusers``: the registered fusion methods, one per line."""

from __future__ import annotations

import click


@click.command()
def fusers() -> None:
    """List fusers: name, whether it needs weights and whether they are present, paper."""
    from wsi_fusion.fusers import DEFAULT_FUSER, fuser_class, list_fusers

    for name in list_fusers():
        cls = fuser_class(name)
        needs = "needs weights" if cls.needs_weights else "no weights"
        weights = f"{needs}\t{cls.weights_status()}"
        default = " (default)" if name == DEFAULT_FUSER else ""
        click.echo(f"{name}{default}\t{weights}\t{cls.paper}")
