"""Refuse a run whose output, sidecars or tile cache would land on one of its inputs.

``fuse scan.ome.tif -o scan.ome.tif --overwrite`` would otherwise replace the only copy of a
scan with its own fusion, and ``--cache-dir`` on the folder of the planes would wipe them. The
check compares resolved real paths (symlinks followed, hard links caught by ``samefile``) and
refuses a written path that *is* an input, *holds* one (a folder above it) or lies *inside* one
(a file or folder within an OME-Zarr or DICOM input folder), whatever ``--overwrite`` says.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from wsi_fusion.errors import OverlapsInput


def refuse_overlap(
    inputs: Sequence[str | os.PathLike[str]], writes: Iterable[tuple[Path, str, str]]
) -> None:
    """Raise :class:`OverlapsInput` if a written path overlaps an input.

    ``writes`` holds ``(path, what, fix)``: the path a run writes or removes, what it is (for the
    message) and the fix to name.
    """
    sources = [(Path(p), _real(Path(p))) for p in inputs]
    for path, what, fix in writes:
        target = _real(path)
        for given, source in sources:
            relation = _relation(path, target, given, source)
            if relation:
                raise OverlapsInput(
                    f"{what} {path} {relation} the input {given}; it would be overwritten or "
                    f"deleted, so nothing was written; {fix}"
                )


def _relation(path: Path, target: Path, given: Path, source: Path) -> str:
    """How the written ``path`` relates to the input ``given`` (``""``: not at all)."""
    if target == source or _same_file(path, given):
        return "is"
    if source.is_relative_to(target):
        return "holds"
    if target.is_relative_to(source):
        return "lies inside"
    return ""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    """Hard links (two names, one file) count as the same path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
