"""``wsi-fusion fusers``: the registered fusion methods, one per line."""

from __future__ import annotations

import click


@click.command()
def fusers() -> None:
    """List fusers, tab-separated: name, needs weights?, weights present?, paper [, default]."""
    from wsi_fusion.fusers import DEFAULT_FUSER, fuser_class, list_fusers

    for name in list_fusers():
        cls = fuser_class(name)
        needs = "needs weights" if cls.needs_weights else "no weights"
        weights = f"{needs}\t{cls.weights_status()}"
        default = "\tdefault" if name == DEFAULT_FUSER else ""
        click.echo(f"{name}\t{weights}\t{cls.paper}{default}")
