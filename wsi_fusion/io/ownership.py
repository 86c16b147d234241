"""What this tool made: a marker file in every folder it creates, checked before it removes one.

A lab may point ``--cache-dir`` or ``-o`` at a folder that holds its only copy of a scan. The
tool therefore removes or replaces a folder only when the folder carries the marker
``.wsi_fusion`` (JSON: tool, version, kind, pid, host, time) that the tool wrote when it made the
folder; anything else is refused with an error that names the folder.

OME-Zarr outputs carry no marker file: zarr readers probe every entry of a group's folder as a
possible child node, and a stray file there makes them warn. Their mark is the ``wsi_fusion``
attribute this tool writes into the group metadata when it creates the store (outputs of older
versions have it too).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from wsi_fusion import __version__
from wsi_fusion.errors import ForeignPath

MARKER_NAME = ".wsi_fusion"
TOOL = "wsi_fusion"


def mark(folder: Path, kind: str, *, created_folder: bool = True) -> None:
    """Claim ``folder`` (which must exist) as made by this tool for ``kind`` (cache, output)."""
    record = {
        "tool": TOOL,
        "version": __version__,
        "kind": kind,
        "created_folder": created_folder,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / MARKER_NAME).write_text(json.dumps(record, indent=2))


def marker(folder: Path) -> dict[str, Any] | None:
    """The marker record of ``folder``, or ``None`` when it has none (or not this tool's)."""
    try:
        record = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("tool") != TOOL:
        return None
    return record


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a folder this tool made (marker file, or an OME-Zarr it wrote)."""
    if not path.is_dir() or path.is_symlink():
        return False
    return marker(path) is not None or ome_zarr_attributes(path) is not None


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def remove_ours(path: Path, what: str, fix: str) -> None:
    """Remove the folder ``path`` if this tool made it; refuse (``ForeignPath``) otherwise.

    A missing path is fine; an empty folder is removed too (it holds nothing to lose).
    """
    if not os.path.lexists(path):
        return
    if is_ours(path) or is_empty_folder(path):
        shutil.rmtree(path)
        return
    raise ForeignPath(
        f"{what} {path} exists and was not made by wsi_fusion (no {MARKER_NAME} marker), so it "
        f"is left alone; {fix}"
    )


def check_replaceable(path: Path, what: str, fix: str) -> None:
    """Refuse when the folder ``path`` exists and is not this tool's (files are not checked)."""
    if path.is_dir() and not (is_ours(path) or is_empty_folder(path)):
        raise ForeignPath(
            f"{what} {path} is a folder that wsi_fusion did not make (no {MARKER_NAME} marker); "
            f"it is never replaced or removed; {fix}"
        )


def ome_zarr_attributes(path: Path) -> dict[str, Any] | None:
    """The ``wsi_fusion`` attribute of the OME-Zarr group at ``path`` (``None``: none, or not
    an OME-Zarr this tool wrote). Read from the metadata file: no zarr import needed."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            record = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        attrs = record.get(key, {}) if key and isinstance(record, dict) else record
        ours = attrs.get(TOOL) if isinstance(attrs, dict) else None
        if isinstance(ours, dict):
            return ours
    return None
