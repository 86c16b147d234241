"""Build hook: ship the repository's ``models/`` and ``configs/`` inside the package.

``models/`` (weights, model cards, metrics) and ``configs/`` stay at the top of the repository,
their one source of truth. A built wheel carries copies as ``wsi_fusion/_models`` and
``wsi_fusion/_configs``, where :mod:`wsi_fusion._resources` finds them once installed; an
editable install reads the top-level folders in place. Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Repository folder -> (folder inside the package, file patterns shipped from it). Only these
#: patterns, so a stray training checkpoint (a pickle) in models/ never ends up in a wheel.
BUNDLED = {
    "models": ("_models", ("*.safetensors", "*.json", "*.md", "*.png")),
    "configs": ("_configs", ("*.yaml",)),
}


def _bundled_files(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` matching ``patterns``, relative to it, sorted."""
    found = {p for pattern in patterns for p in folder.rglob(pattern) if p.is_file()}
    return sorted(p.relative_to(folder) for p in found)


class BuildPyWithData(build_py):
    """``build_py`` that also copies ``models/`` and ``configs/`` into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, (target_name, patterns) in BUNDLED.items():
            folder = ROOT / source
            target = Path(self.build_lib) / "wsi_fusion" / target_name
            if target.exists():
                shutil.rmtree(target)
            for rel in _bundled_files(folder, patterns):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / rel, target / rel)


setup(cmdclass={"build_py": BuildPyWithData})
