"""Progress for the pipeline's phases: tqdm bars on a terminal, plain lines in a log.

A bar redraws itself with carriage returns, which a log file (a SLURM job's ``--output``, a
redirected ``2>``) keeps as one ever-growing line. So a bar is drawn only when stderr is a
terminal; otherwise :class:`LineProgress` writes a whole line every 10 % or every 30 s.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from tqdm import tqdm

#: A progress line at least every this fraction of the total ...
LINE_EVERY_FRACTION = 0.10
#: ... and at least every this many seconds while work is being done.
LINE_EVERY_SECONDS = 30.0

#: ``text`` or ``json`` (``--log-format``): how :class:`LineProgress` writes its lines.
_line_format = "text"


def set_line_format(log_format: str) -> None:
    """Write progress lines as ``text`` or as ``json`` objects (``wsi-fusion --log-format``)."""
    global _line_format
    _line_format = log_format


class Bar(Protocol):
    """What the CLI uses of a tqdm bar."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def write(self, s: str) -> None: ...

    def close(self) -> None: ...


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (bars) rather than a file or pipe (lines)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class LineProgress:
    """A tqdm stand-in for logs: one line per 10 % of ``total`` or per 30 s, never a ``\\r``."""

    def __init__(
        self,
        total: int,
        desc: str = "",
        *,
        disable: bool = False,
        every_fraction: float = LINE_EVERY_FRACTION,
        every_seconds: float = LINE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc.rstrip()
        self.disable = disable
        self.n = 0
        self.postfix = ""
        self._every_fraction = every_fraction
        self._every_seconds = every_seconds
        self._clock = clock
        self._start = self._last_time = clock()
        self._last_step = 0  # index of the last 10 % step reported
        self._last_n = -1
        self._closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self) -> int:
        if self.total <= 0:
            return 0
        return math.floor(self.n / self.total / self._every_fraction + 1e-9)

    def _write(self) -> None:
        now = self._clock()
        elapsed = now - self._start
        if self.total > 0:
            text = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            text = str(self.n)
        text += f", {elapsed:.0f} s"
        if 0 < self.n < self.total:
            text += f", ~{elapsed * (self.total - self.n) / self.n:.0f} s left"
        name = f"{self.desc}: " if self.desc else ""
        post = f" [{self.postfix}]" if self.postfix else ""
        line = f"{name}{text}{post}"
        if _line_format == "json":
            record = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "progress": self.desc.strip(),
                "done": self.n,
                "total": self.total,
                "elapsed_s": round(elapsed, 1),
            }
            if self.postfix:
                record["note"] = self.postfix
            line = json.dumps(record, ensure_ascii=False)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self._last_time, self._last_step, self._last_n = now, self._step(), self.n

    def update(self, n: int = 1) -> None:
        """Add ``n`` finished items; write a line when a 10 % step or 30 s has passed."""
        self.n += int(n)
        if self.disable or self._closed:
            return
        due = self._step() > self._last_step
        due = due or self._clock() - self._last_time >= self._every_seconds
        if due and self.n != self._last_n:
            self._write()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text shown after the counts in the next line (e.g. the current slide)."""
        self.postfix = s

    def write(self, s: str) -> None:
        """A message line on stdout, as ``tqdm.write`` prints it."""
        sys.stdout.write(s.rstrip("\n") + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        """Write the final count unless the last line already showed it."""
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n != self._last_n and (self.n > 0 or self.total > 0):
            self._write()


def progress_bar(total: int, desc: str = "", *, disable: bool = False, **tqdm_options: Any) -> Bar:
    """A tqdm bar on a terminal, else a :class:`LineProgress` (``tqdm_options`` go to tqdm)."""
    if stderr_is_terminal():
        return tqdm(total=total, desc=desc, disable=disable, **tqdm_options)  # type: ignore[no-any-return]
    return LineProgress(total, desc, disable=disable)


class BarProgress:
    """One bar (or progress lines) per pipeline phase; silent when ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def phase(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        bar = progress_bar(total, name, unit="", disable=self.quiet or total == 0, leave=True)
        try:
            yield bar.update
        finally:
            bar.close()
