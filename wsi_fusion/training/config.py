"""Loading of the training run configs (``configs/train_*.yaml``) into their pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def load_train_config(path: str | Path, model_cls: type[M], **overrides: Any) -> M:
    """Read a YAML training config into ``model_cls``.

    Parameters
    ----------
    path : str or Path
        The YAML file (an empty file gives the model's defaults).
    model_cls : type
        The pydantic model of the run (``extra="forbid"``, so an unknown key is an error).
    **overrides
        Values that replace the file's (command-line options); ``None`` means "not given"
        and is ignored.

    Raises
    ------
    ConfigError
        The file does not validate against ``model_cls``; the message names the file and
        the offending keys.
    """
    import yaml
    from pydantic import ValidationError

    from wsi_fusion.errors import ConfigError

    data = yaml.safe_load(Path(path).read_text()) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model_cls(**data)
    except ValidationError as err:
        raise ConfigError(f"invalid training config {path} ({model_cls.__name__}): {err}") from err
