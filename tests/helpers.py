"""Plain helpers shared by test modules (import as ``from helpers import ...``).

``tests/conftest.py`` puts this folder on ``sys.path`` (pytest's default ``prepend`` import mode
inserts the folder of every ``conftest.py`` without an ``__init__.py``), so any test module can
import this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_fusion.cli import main

#: ``../shared/data`` beside the repository: real slides for ``realdata`` tests.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


#: Run settings for tests about files (outputs, locks, publication), not fusion: the cheapest
#: fuser, no tissue detection or registration, the synchronous scheduler.
FILES_ONLY_RUN = {
    "fuser": "plane",
    "tile": 128,
    "overlap": 64,
    "chunk": 128,
    "tissue": {"enabled": False},
    "registration": {"mode": "off"},
    "scheduler": "sync",
}


def write_random_planes(folder: Path, stem: str, n: int, size_hw: tuple[int, int]) -> list[str]:
    """``n`` tiled RGB TIFF planes ``{stem}_z{k}.tif`` of seeded noise in ``folder``: paths."""
    rng = np.random.default_rng(0)
    paths = []
    for z in range(n):
        path = folder / f"{stem}_z{z}.tif"
        pixels = rng.integers(0, 256, size=(*size_hw, 3), dtype=np.uint8)
        tifffile.imwrite(path, pixels, photometric="rgb", tile=(128, 128))
        paths.append(str(path))
    return paths


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run ``wsi-fusion *args`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["wsi-fusion", *args])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err
