"""Logging of the command line: verbosity, text or JSON records, an optional log file, and the
console adjustments shared by the subcommands that run the pipeline."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

_CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The handlers this module added to the root logger (reconfigured on the next invocation).
_handlers: dict[str, logging.Handler] = {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``
    (and ``exception`` with the traceback text when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def level_for(verbose: int) -> int:
    """Log level for ``verbose`` ``-v`` flags: WARNING, INFO (-v), DEBUG (-vv)."""
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure_logging(
    verbose: int,
    *,
    log_format: LogFormat = "text",
    log_file: str | os.PathLike[str] | None = None,
) -> None:
    """Set up the root logger for one command-line invocation.

    The console (stderr) shows records at the ``-v`` level, as text or JSON lines; a log file,
    when given, is appended to with at least INFO records (DEBUG with ``-vv``), with a timestamp,
    in the same format. Handlers of an earlier invocation in this process are replaced. When
    something else already configured the root logger (a test harness, an application embedding
    the CLI), its handlers are left alone and only the level is set.
    """
    root = logging.getLogger()
    for name in ("file",):
        old = _handlers.pop(name, None)
        if old is not None:
            root.removeHandler(old)
            old.close()
    if "console" not in _handlers and not root.handlers:
        _handlers["console"] = logging.StreamHandler()
        root.addHandler(_handlers["console"])
    json_lines = log_format == "json"
    if "console" in _handlers:
        _handlers["console"].setFormatter(
            JsonFormatter() if json_lines else logging.Formatter(_CONSOLE_FORMAT)
        )
    if log_file is not None:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_FILE_FORMAT))
        root.addHandler(handler)
        _handlers["file"] = handler
    set_verbosity(verbose)


def set_verbosity(verbose: int) -> None:
    """Apply ``verbose`` ``-v`` flags to the console, and keep the log file at INFO or below."""
    level = level_for(verbose)
    root = logging.getLogger()
    if "console" in _handlers:
        _handlers["console"].setLevel(level)
    lowest = level
    if "file" in _handlers:
        lowest = min(level, logging.INFO)
        _handlers["file"].setLevel(lowest)
    root.setLevel(lowest)


def tame_console() -> None:
    """Keep the console at the chosen verbosity.

    ``distributed`` sets its own loggers to INFO (a local cluster would print a dozen lines on
    start and stop), and batch conversion lowers the package's level so that per-slide log files
    get INFO records; pinning the console handlers to the root level keeps both off the console
    unless ``-v`` was given.
    """
    root = logging.getLogger()
    if root.level > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    for handler in root.handlers:
        if handler.level == logging.NOTSET:
            handler.setLevel(root.level)
