"""``wsi-fusion fusers``: the registered fusion methods, one per line."""

from __future__ import annotations

import click


@click.command()
def fusers() -> None:
    """List fusers, tab-separated: name, needs weights?, weights state [file], paper [, default]."""
    from wsi_fusion.fusers import DEFAULT_FUSER, fuser_class, list_fusers
    from wsi_fusion.fusers._weights import models_dir

    for name in list_fusers():
        cls = fuser_class(name)
        needs = "needs weights" if cls.needs_weights else "no weights"
        weights = f"{needs}\t{cls.weights_status()}"
        record = getattr(cls, "weights_record", None)
        if record is not None:  # learned fusers: which file, so users can check what they run
            weights += f" ({models_dir() / record.file}, sha256 {record.sha256[:12]})"
        default = "\tdefault" if name == DEFAULT_FUSER else ""
        click.echo(f"{name}\t{weights}\t{cls.paper}{default}")
