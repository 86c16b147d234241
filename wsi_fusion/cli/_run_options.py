"""Options and config resolution shared by ``wsi-fusion fuse`` and ``wsi-fusion batch``.

Both commands take the same run settings (config file, tiling, compression, registration,
tissue detection, learned-fuser batching, scheduler) and turn them into one validated
:class:`wsi_fusion.config.RunConfig` the same way; only the inputs and outputs differ.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from wsi_fusion.config import RunConfig

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="YAML run config (see configs/); command-line options override it.",
    ),
    click.option(
        "--tile",
        type=int,
        default=None,
        help="Tile size in px (default: 512 for learned fusers; for the others the output chunk "
        "plus twice the fuser's margin, so each output block is fused once).",
    ),
    click.option(
        "--overlap",
        type=int,
        default=None,
        help="Tile overlap in px (default: 128 for learned fusers, else twice the margin).",
    ),
    click.option(
        "--lossless", is_flag=True, help="Lossless (deflate) TIFF tiles instead of JPEG q90."
    ),
    click.option(
        "--register",
        type=click.Choice(["auto", "on", "off"]),
        default=None,
        help="Align drifting planes: auto (default; when the measured drift > 0.5 px), on, off.",
    ),
    click.option(
        "--plane-order",
        type=click.Choice(["given", "similarity"]),
        default=None,
        help="Per-plane files: take them in the order given (default; a warning when they look "
        "out of focal order), or reorder them by similarity (a focus sweep saved through focus "
        "and back).",
    ),
    click.option("--no-tissue", is_flag=True, help="Fuse every tile, not only those with tissue."),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Learned fusers: tiles per forward pass (default: from free GPU memory).",
    ),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "fp16", "bf16"]),
        default=None,
        help="Learned fusers on a GPU: autocast precision (default fp32).",
    ),
    click.option(
        "--device",
        default=None,
        metavar="numpy|cpu|cuda|cuda:N|auto",
        help="Where the fuser runs (fuser_params.device): the default fuser's numpy reference "
        "(default), or its torch implementation on cpu / cuda (auto: CUDA when visible, else "
        "numpy); learned fusers: cpu, cuda, cuda:N or auto (default).",
    ),
    click.option(
        "--scheduler",
        default=None,
        help="threads (default), processes, sync, local-cluster, or a scheduler address "
        "(tcp://host:8786, e.g. a SLURM cluster's).",
    ),
    click.option(
        "--workers",
        type=int,
        default=None,
        help="Worker threads/processes (default: all cores); local-cluster: worker processes "
        "(default 2, or one per GPU for learned fusers).",
    ),
    click.option(
        "--record-paths",
        is_flag=True,
        default=None,
        help="Record absolute input/weights/output paths in the outputs' metadata and run.json "
        "(default: file names only, as folder names may identify patients).",
    ),
    click.option(
        "--no-label",
        is_flag=True,
        default=None,
        help="Leave the slide's label image out of the output (it can show patient data); "
        "macro and thumbnail are still carried.",
    ),
]


def run_options(command: F) -> F:
    """Add the shared run options (``--config`` ... ``--workers``) to a click command.

    The command receives them as ``config_path, tile, overlap, lossless, register, plane_order,
    no_tissue, batch_size, precision, device, scheduler, workers, record_paths, no_label`` (collect
    them with ``**run_settings``) and passes them on to :func:`run_config`.
    """
    for option in reversed(_OPTIONS):  # click applies decorators bottom-up
        command = option(command)
    return command


def run_config(
    config_path: Path | None,
    *,
    tile: int | None,
    overlap: int | None,
    lossless: bool,
    register: str | None,
    no_tissue: bool,
    batch_size: int | None,
    precision: str | None,
    scheduler: str | None,
    workers: int | None,
    device: str | None = None,
    **overrides: Any,
) -> RunConfig:
    """The run config: the YAML file (or defaults) with the command-line options applied.

    ``overrides`` are further top-level settings of the command (``fuser``, ``format``, ...);
    ``None`` means "not given" and keeps the file's value.
    """
    from wsi_fusion.config import load_config

    config = load_config(
        config_path,
        **overrides,
        tile=tile,
        overlap=overlap,
        scheduler=scheduler,
        workers=workers,
        compression="deflate" if lossless else None,
    )
    if batch_size is not None or precision is not None:
        chosen = {"batch_size": batch_size, "precision": precision}
        learned_settings = config.learned.model_copy(
            update={k: v for k, v in chosen.items() if v is not None}
        )
        config = config.model_copy(update={"learned": learned_settings})
    if device is not None:
        # Validated with the fuser's other parameters when the fuser is created.
        params = {**config.fuser_params, "device": device}
        config = config.model_copy(update={"fuser_params": params})
    if no_tissue:
        config = config.model_copy(
            update={"tissue": config.tissue.model_copy(update={"enabled": False})}
        )
    if register is not None:
        config = config.model_copy(
            update={"registration": config.registration.model_copy(update={"mode": register})}
        )
    return config
