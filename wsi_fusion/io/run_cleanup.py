"""A run that fails for good leaves nothing behind that it created; a crash keeps its resume state.

A reported error (any :class:`~wsi_fusion.errors.WsiFusionError`: a corrupt tile deep in a plane,
bad weights found once workers load them), an OS error (full disk, file-size limit, permission)
or running out of memory cannot succeed on a plain rerun: the user must fix something first. So
the run's partial output and the tile cache *it created* are removed, and the disk it filled is
freed. What existed before the run started (the cache and partial output of an earlier, killed
run) is never touched, because the tool cannot know it is safe to delete. Anything else (Ctrl-C,
a lost worker, a crash inside a library) keeps the partial output and the cache, so that
rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from wsi_fusion.errors import WsiFusionError
from wsi_fusion.io.storage_errors import out_of_memory, storage_error

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def remove_on_failure(paths: Iterable[Path], what: str) -> Iterator[None]:
    """On a final error inside the block, delete those of ``paths`` that did not exist on entry,
    and empty again those that were empty folders (an empty ``--cache-dir`` given by the user:
    the folder is theirs, what the run put in it is not).

    Enter it only once the run owns its output (after any lock is taken), so that nothing a
    concurrent run created in the meantime can be mistaken for this run's. ``OSError`` and
    ``MemoryError`` from libraries are re-raised as :class:`~wsi_fusion.errors.StorageError` /
    :class:`~wsi_fusion.errors.OutOfMemory` naming the path (``what`` when the library did not
    say) and the fix.
    """
    paths = list(paths)
    new = [p for p in paths if not _exists(p)]
    empty = [p for p in paths if _is_empty_folder(p)]
    try:
        yield
    except (WsiFusionError, OSError, MemoryError) as err:
        for path in new:
            _remove(path)
        for folder in empty:
            for child in _children(folder):
                _remove(child)
        if isinstance(err, WsiFusionError):
            raise
        if isinstance(err, OSError):
            raise storage_error(err, what) from err
        raise out_of_memory(f"fusing into {what}") from err


def _exists(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _remove(path: Path) -> None:
    """Delete a file or folder this run created; a failure here is logged, not raised, so the
    error that ended the run is the one reported."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif _exists(path):
            path.unlink()
    except OSError as err:
        logger.warning("could not remove %s after the failed run (%s); delete it", path, err)
