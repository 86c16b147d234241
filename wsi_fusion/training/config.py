"""Loading of the training run configs (``configs/train_*.yaml``) into their pydantic models.

A run config can be overlaid by a **preset** (``--preset NAME``):
``configs/presets/NAME/<config file name>`` holds

.. code-block:: yaml

    run:        # how to run (wsi_fusion.training.session.RunOptions): amp, prefetching, ...
      amp: bf16
    config:     # merged over the run config (same keys; unknown keys are errors)
      width: paper
      max_seconds: 480
    dry_run:    # merged after ``config`` with --dry-run (tiny sizes for a CPU rehearsal)
      crop: 64

and ``--dry-run`` runs a few steps with the checkpoint and weights written under
``scratch/dry_run/`` (never over a real run's files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from wsi_fusion.training.session import RunOptions

M = TypeVar("M", bound=BaseModel)

#: Steps of a dry run (enough to log, checkpoint and save once).
DRY_RUN_STEPS = 3
#: Where a dry run writes its checkpoint and weights (relative to the repository).
DRY_RUN_DIR = "scratch/dry_run"

_UNSET: Any = object()


class Preset(BaseModel):
    """One preset overlay file (``configs/presets/<preset>/<config name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunOptions = Field(default_factory=RunOptions)
    config: dict[str, Any] = Field(default_factory=dict)
    dry_run: dict[str, Any] = Field(default_factory=dict)


def preset_path(config: str | Path, preset: str) -> Path:
    """The overlay of ``config`` in ``preset``: ``<config dir>/presets/<preset>/<name>``."""
    config = Path(config)
    return config.parent / "presets" / preset / config.name


def load_preset(config: str | Path, preset: str) -> Preset:
    """Read the overlay of ``config`` in ``preset``.

    Raises
    ------
    ConfigError
        The overlay file does not exist (the message lists the preset's files) or does not
        validate.
    """
    import yaml
    from pydantic import ValidationError

    from wsi_fusion.errors import ConfigError

    path = preset_path(config, preset)
    if not path.is_file():
        have = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(
            f"preset {preset!r} has no overlay for {Path(config).name}: {path} does not exist "
            f"(the preset has: {', '.join(have) or 'nothing'})"
        )
    try:
        return Preset(**(yaml.safe_load(path.read_text()) or {}))
    except ValidationError as err:
        raise ConfigError(f"invalid preset overlay {path}: {err}") from err


def merge_overlay(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay``'s keys replacing its own; nested mappings merge key by key."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overlay(out[key], value)
        else:
            out[key] = value
    return out


def dry_run_paths(config: str | Path, preset: str | None) -> dict[str, str]:
    """Checkpoint and weights of a dry run of ``config``: under ``scratch/dry_run/``."""
    folder = f"{DRY_RUN_DIR}/{preset or 'base'}/{Path(config).stem}"
    return {"checkpoint": f"{folder}/checkpoint.ckpt", "output": f"{folder}/weights.safetensors"}


def resolve_config_data(
    path: str | Path, preset: str | None = None, dry_run: bool = False
) -> tuple[dict[str, Any], RunOptions]:
    """The merged keys of a run config (file, preset ``config:``, dry run) and its run options.

    A dry run also sets ``steps`` to :data:`DRY_RUN_STEPS`, drops ``max_seconds``, writes
    under ``scratch/dry_run/`` and prefetches with at most two workers; the preset's
    ``dry_run:`` keys come last.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    run = RunOptions()
    overlay: Preset | None = None
    if preset is not None:
        overlay = load_preset(path, preset)
        run = overlay.run
        data = merge_overlay(data, overlay.config)
    if dry_run:
        data = merge_overlay(data, {"steps": DRY_RUN_STEPS, "max_seconds": None})
        data = merge_overlay(data, dry_run_paths(path, preset))
        if overlay is not None:
            data = merge_overlay(data, overlay.dry_run)
        # Prefetching is rehearsed too, with at most two workers (the CPU is small).
        run = run.model_copy(update={"prefetch_workers": min(run.prefetch_workers, 2)})
    return data, run


def load_train_config(
    path: str | Path,
    model_cls: type[M],
    *,
    preset: str | None = _UNSET,
    dry_run: bool = _UNSET,
    **overrides: Any,
) -> M:
    """Read a YAML training config into ``model_cls``, with a preset overlay and dry run.

    Parameters
    ----------
    path : str or Path
        The YAML file (an empty file gives the model's defaults).
    model_cls : type
        The pydantic model of the run (``extra="forbid"``, so an unknown key is an error).
    preset, dry_run : optional
        The preset whose overlay is merged over the file, and the dry-run shrink; by default
        those of the process's training session (:mod:`wsi_fusion.training.session`, from
        ``--preset``/``--dry-run``), whose run options then become the preset's.
    **overrides
        Values that replace the merged ones (command-line options); ``None`` means "not given"
        and is ignored.

    Raises
    ------
    ConfigError
        The file, or the preset's overlay, does not validate against ``model_cls``; the message
        names the file(s) and the offending keys.
    """
    from pydantic import ValidationError

    from wsi_fusion.errors import ConfigError
    from wsi_fusion.training import session

    from_session = preset is _UNSET and dry_run is _UNSET
    if preset is _UNSET:
        preset = session.current().preset
    if dry_run is _UNSET:
        dry_run = session.current().dry_run
    data, run = resolve_config_data(path, preset, dry_run)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if from_session:
        session.use_run_options(run)
    try:
        return model_cls(**data)
    except ValidationError as err:
        source = f"{path} + {preset_path(path, preset)}" if preset else str(path)
        raise ConfigError(
            f"invalid training config {source} ({model_cls.__name__}): {err}"
        ) from err
