"""``wsi-fusion`` command line: one module per subcommand.

Library errors (:class:`wsi_fusion.errors.WsiFusionError`) become one ``error:`` line on stderr and
exit code 1; usage errors exit 2 (click's convention); an interrupt exits 130 and says how to
resume. Torch is never imported here, so ``--help`` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wsi_fusion import __version__
from wsi_fusion.cli._logs import LogFormat, configure_logging, set_verbosity
from wsi_fusion.cli._progress import set_line_format
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
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also append log records (INFO and above, DEBUG with -vv) to this file.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log records (console and --log-file) and progress lines as text or one JSON object "
    "per line.",
)
@click.pass_context
def cli(
    ctx: click.Context, verbose: int, quiet: bool, log_file: Path | None, log_format: LogFormat
) -> None:
    """Fuse multi-focal-plane (z-stack) whole-slide images into one all-in-focus slide.

    -v and -q may also follow the subcommand.
    """
    ctx.meta["wsi_fusion.verbose"] = verbose
    configure_logging(verbose, log_format=log_format, log_file=log_file)
    set_line_format(log_format)
    if quiet:  # the subcommands' own -q defaults to on (click reads defaults from default_map)
        ctx.default_map = {name: {"quiet": True} for name in ctx.command.commands}  # type: ignore[attr-defined]


def _more_verbose(ctx: click.Context, param: click.Parameter, count: int) -> None:
    """``-v`` after the subcommand: add to the count given before it."""
    if count:
        before = ctx.find_root().meta.get("wsi_fusion.verbose", 0)
        ctx.find_root().meta["wsi_fusion.verbose"] = before + count
        set_verbosity(before + count)


def _accept_global_options(command: click.Command) -> click.Command:
    """Let ``-v`` (and ``-q``, where the command has none) follow the subcommand too."""
    names = {opt for p in command.params for opt in getattr(p, "opts", ())}
    if "-v" not in names:
        command.params.append(
            click.Option(
                ["-v", "--verbose"], count=True, expose_value=False, callback=_more_verbose,
                help="More log output (-vv for debug); same as before the subcommand.",
            )
        )  # fmt: skip
    if "-q" not in names:  # nothing to silence here, but `wsi-fusion info ... -q` is no error
        command.params.append(
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, hidden=True)
        )
    return command


for command in (fuse, batch, info, synth, fusers, demo, evaluate):
    cli.add_command(_accept_global_options(command))


#: Modules only the learned fusers need (``pip install 'wsi-fusion[learned]'``).
_LEARNED_EXTRA = ("torch", "safetensors")


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
    except ModuleNotFoundError as err:
        if err.name not in _LEARNED_EXTRA:
            raise
        click.echo(
            f"error: {err.name} is not installed; learned fusers need the 'learned' extra: "
            f"pip install torch==2.13.0 'wsi-fusion[learned]' (the pinned torch is the CPU "
            "build; install a CUDA build of torch instead for GPUs)",
            err=True,
        )
        sys.exit(1)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
