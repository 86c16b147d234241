"""Where the shipped model weights and run configs are: inside the package, or in the repository.

A wheel carries ``models/`` and ``configs/`` as ``wsi_fusion/_models`` and ``wsi_fusion/_configs``
(copied by ``setup.py`` at build time); a source checkout or an editable install has them at the
top of the repository. The packaged copy wins when it exists.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent


def _first_existing(*candidates: Path) -> Path:
    """The first folder of ``candidates`` that exists, else the last one (for error messages)."""
    for folder in candidates:
        if folder.is_dir():
            return folder
    return candidates[-1]


def shipped_models_dir() -> Path:
    """The folder holding the shipped weights and model cards (``models/`` layout)."""
    return _first_existing(_PACKAGE / "_models", _REPO / "models")


def shipped_configs_dir() -> Path:
    """The folder holding the shipped YAML run configs (``configs/`` layout)."""
    return _first_existing(_PACKAGE / "_configs", _REPO / "configs")
