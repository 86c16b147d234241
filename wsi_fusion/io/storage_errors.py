"""Operating-system errors (disk full, file too large, permission denied ...) as one clear message.

The pipeline writes through zarr, tifffile and the tile cache, any of which may hit a full disk
or a file-size limit deep inside a Dask task. Whatever raised it, the user needs the same three
facts: which path, what the system said, and what to do about it.
"""

from __future__ import annotations

import errno

from wsi_fusion.errors import OutOfMemory, OutputNotWritable, StorageError, WsiFusionError

_NO_ROOM = (
    "free space there, or put the output (-o) and the tile cache (--cache-dir) on a disk with "
    "more room, then rerun"
)
_NOT_ALLOWED = (
    "choose an output folder (-o) and tile cache (--cache-dir) you can write to, or fix their "
    "permissions"
)

#: What to do about each errno a run's writes can hit.
_FIXES: dict[int, str] = {
    errno.ENOSPC: f"the disk is full: {_NO_ROOM}",
    errno.EDQUOT: f"your disk quota is used up: {_NO_ROOM}",
    errno.EFBIG: (
        "the file system or a process limit (`ulimit -f`) refuses files this large, e.g. FAT32 "
        "stops at 4 GB: write to another file system (ext4, XFS, NTFS, APFS) or raise the limit"
    ),
    # The system's own words already say "Permission denied" / "Operation not permitted".
    errno.EACCES: _NOT_ALLOWED,
    errno.EPERM: _NOT_ALLOWED,
    errno.EROFS: "the file system is read-only: choose a writable folder for -o and --cache-dir",
    errno.ENOENT: (
        "the folder does not exist or cannot hold files (e.g. /proc): choose an ordinary folder "
        "that exists for -o and --cache-dir"
    ),
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another -o / --cache-dir",
    errno.EEXIST: "a file of that name is in the way of a folder: choose another -o / --cache-dir",
    errno.EIO: (
        "input/output error: the disk or network file system failed; check it (dmesg, mount) "
        "and rerun to resume"
    ),
    errno.ENAMETOOLONG: "the path is too long: choose a shorter output name or folder",
}
_DEFAULT_FIX = "check the path, the disk and its permissions, then rerun"


def storage_error(err: OSError, fallback_path: str = "") -> StorageError:
    """One-line :class:`StorageError` for ``err``: the path, the system's words, and the fix.

    ``fallback_path`` names what was being written when the library did not say which file.
    """
    path = err.filename if err.filename is not None else fallback_path
    reason = err.strerror or str(err) or type(err).__name__
    fix = _FIXES.get(err.errno or -1, _DEFAULT_FIX)
    where = f"{path}: " if path else ""
    return StorageError(" ".join(f"{where}{reason}; {fix}".split()))


#: Errnos that mean "you may not write here" rather than "the disk failed".
_NOT_ALLOWED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(err: OSError, path: str) -> WsiFusionError:
    """:class:`OutputNotWritable` when writing ``path`` was not allowed, else
    :class:`StorageError` (disk full, file too large, ...), each with the fix."""
    message = str(storage_error(err, path))
    if err.errno in _NOT_ALLOWED_ERRNOS:
        return OutputNotWritable(message)
    return StorageError(message)


def out_of_memory(what: str) -> OutOfMemory:
    """:class:`OutOfMemory` for a step that ran out of memory, with what to do."""
    return OutOfMemory(
        f"{what}: not enough memory; close other programs, use a machine with more memory, or "
        "lower --workers / --batch-size / --tile"
    )
