"""``wsi-fusion`` command line: one module per subcommand.

Library errors (:class:`wsi_fusion.errors.WsiFusionError`) become one ``error:`` line on stderr and
exit code 1; usage errors exit 2 (click's convention); an interrupt exits 130 and says how to
resume. Torch is never imported here, so ``--help`` is fast.
"""

from __future__ import annotations

import logging
import sys

import click

from wsi_fusion import __version__
from wsi_fusion.cli.batch import batch
from wsi_fusion.cli.demo import demo
from wsi_fusion.cli.evaluate import evaluate
from wsi_fusion.cli.fuse import fuse
from wsi_fusion.cli.fusers import fusers
from wsi_fusion.cli.info import info
from wsi_fusion.cli.synth import synth
from wsi_fusion.errors import WsiFusionError
from wsi_fusion.io.storage_errors import out_of_memory, storage_error


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-fusion")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Fuse multi-focal-plane (z-stack) whole-slide images into one all-in-focus slide."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for command in (fuse, batch, info, synth, fusers, demo, evaluate):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted; rerun the same command to resume from the tile cache", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume from the tile cache", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except WsiFusionError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except OSError as err:  # raised outside the pipeline's own translation (info, batch, ...)
        click.echo(f"error: {storage_error(err)}", err=True)
        sys.exit(1)
    except MemoryError as err:
        click.echo(f"error: {out_of_memory(' '.join(sys.argv[1:2]) or 'wsi-fusion')}", err=True)
        raise SystemExit(1) from err
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
