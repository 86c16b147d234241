"""Refuse the same file given twice as two focal planes.

A plane list typed by hand or built by a glob can name one file twice (``z1.svs z1.svs``), reach
it through a symlink or hard link, or hold two copies of it. Fusing would then silently treat one
plane as two and drop the plane that was meant. Two inputs are the same when they are one file
on disk (:func:`os.path.samefile`) or have the same bytes.

Hashing every plane in full would cost as much reading as the fusion itself, so content is
compared only between files of equal size, first on a few sampled blocks (different planes almost
always differ there) and in full only when the samples agree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from wsi_fusion.errors import PlaneMismatch

#: Bytes per sampled block, and how many blocks are sampled (start, end and evenly between).
_BLOCK = 1 << 16
_SAMPLES = 8


def refuse_duplicate_planes(paths: Sequence[str]) -> None:
    """Raise :class:`PlaneMismatch` naming both arguments when two plane inputs are the same.

    Raises
    ------
    PlaneMismatch
        Two arguments are one file (same path, symlink, hard link) or have identical content.
    """
    for j in range(1, len(paths)):
        for i in range(j):
            why = _same(paths[i], paths[j])
            if why:
                raise PlaneMismatch(
                    f"focal planes {i + 1} ({paths[i]}) and {j + 1} ({paths[j]}) {why}; each "
                    "plane must be a different file: check the list of plane files"
                )


def _same(a: str, b: str) -> str:
    """Why ``a`` and ``b`` are the same input, or ``""`` when they are not."""
    try:
        if os.path.samefile(a, b):
            return "are the same file"
        if not (os.path.isfile(a) and os.path.isfile(b)):
            return ""
        if os.path.getsize(a) != os.path.getsize(b):
            return ""
        if _digest(a, sampled=True) != _digest(b, sampled=True):
            return ""
        return "have identical content" if _digest(a) == _digest(b) else ""
    except OSError:
        return ""  # unreadable files are reported by the readers, with the reason


def _digest(path: str, sampled: bool = False) -> str:
    """sha256 of the file, or of ``_SAMPLES`` blocks spread over it when ``sampled``."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if sampled and size > _BLOCK * _SAMPLES:
            step = (size - _BLOCK) // (_SAMPLES - 1)
            for k in range(_SAMPLES):
                fh.seek(k * step)
                digest.update(fh.read(_BLOCK))
        else:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
