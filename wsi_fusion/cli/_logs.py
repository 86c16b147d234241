"""Console logging adjustments shared by the subcommands that run the pipeline."""

from __future__ import annotations

import logging


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
