"""One writer per output: an advisory lock file beside it, safe after a crash or SIGKILL.

``OUTPUT.lock`` holds the owner's pid, host and start time (JSON). The owner also keeps an
exclusive ``flock`` on it for as long as it runs; the kernel drops that lock when the process
dies, even by SIGKILL, so a later run on the same host can tell a live owner from a dead one
without trusting pids (which get reused). Where ``flock`` is not available (some network file
systems) the record decides: a pid that no longer exists on this host is stale.

An owner on *another* host cannot be probed. It refreshes the lock file's modification time
every :data:`HEARTBEAT_S` seconds; a lock from another host whose heartbeat stopped more than
:data:`STALE_AFTER_S` ago is taken over, a fresher one is refused. The error names the owner and
the fix, so a user whose run is gone can remove the lock by hand.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsi_fusion.errors import OutputBusy
from wsi_fusion.io.storage_errors import storage_error

logger = logging.getLogger(__name__)

#: How often the owner refreshes its lock file's modification time (seconds).
HEARTBEAT_S = 60.0
#: A lock of another host without a heartbeat for this long is stale (seconds).
STALE_AFTER_S = 15 * 60.0


@contextlib.contextmanager
def output_lock(lock: Path, what: Path) -> Iterator[None]:
    """Hold the lock file ``lock`` for the output (or batch folder) ``what`` while the block runs.

    Raises :class:`OutputBusy` naming the owner when a live run holds it. Released (the file
    removed) when the block ends, by an exception too.
    """
    fd = _acquire(lock, what)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(fd, stop), daemon=True, name="lock-heartbeat")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        _release(lock, fd)


def _acquire(lock: Path, what: Path) -> int:
    """Open ``lock``, lock it and write this process's record; return the open descriptor."""
    for _ in range(20):  # retries only when another run removes or replaces the file meanwhile
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # read-only or full file system, no permission: one clear line
            raise storage_error(err, str(lock)) from err
        try:
            locked = _try_flock(fd)
            if locked is False:
                raise _busy(lock, what, _read(fd))
            if not _is_current(fd, lock):
                os.close(fd)  # a releasing owner unlinked it between our open and our lock
                continue
            record = _read(fd)
            if record and not _stale(record, fd, flock_held=locked is True):
                raise _busy(lock, what, record)
            if record:
                logger.warning(
                    "taking over the lock %s of a run that is gone (pid %s on %s)",
                    lock,
                    record.get("pid"),
                    record.get("host"),
                )
            _write(fd, _own_record())
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise OutputBusy(f"could not lock {lock}: other runs keep replacing it; retry in a moment")


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: ``flock`` is not supported here."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _is_current(fd: int, lock: Path) -> bool:
    """Whether the descriptor still names the file at ``lock`` (not an unlinked old one)."""
    try:
        return os.fstat(fd).st_ino == os.stat(lock).st_ino
    except FileNotFoundError:
        return False


def _stale(record: dict[str, Any], fd: int, *, flock_held: bool) -> bool:
    """Whether the recorded owner is gone (we may take the lock over)."""
    if record.get("host") == socket.gethostname():
        # On this host the kernel's flock is the truth: its holder died if we got it.
        return flock_held or not _pid_alive(record.get("pid"))
    age = time.time() - os.fstat(fd).st_mtime
    return age > STALE_AFTER_S


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _own_record() -> dict[str, Any]:
    return {
        "tool": "wsi_fusion",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _read(fd: int) -> dict[str, Any]:
    """The lock's record; ``{}`` when empty or unreadable (a fresh or half-written file)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write(fd: int, record: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    os.fsync(fd)


def _busy(lock: Path, what: Path, record: dict[str, Any]) -> OutputBusy:
    owner = f"pid {record.get('pid', '?')} on {record.get('host', '?')}"
    since = record.get("started", "an unknown time")
    return OutputBusy(
        f"{what} is being written by {owner} since {since}; wait for it or remove {lock} if "
        "that run is gone"
    )


def _heartbeat(fd: int, stop: threading.Event) -> None:
    """Keep the lock file's mtime fresh so runs on other hosts see that its owner lives."""
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(fd)


def _release(lock: Path, fd: int) -> None:
    """Remove the lock file (while still holding it), then drop the lock."""
    try:
        if _is_current(fd, lock):
            lock.unlink()
    except OSError as err:
        logger.warning("could not remove the lock %s (%s); delete it", lock, err)
    finally:
        os.close(fd)
