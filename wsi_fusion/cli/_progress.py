"""Progress bars for the pipeline's phases (tqdm on stderr)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from tqdm import tqdm


class BarProgress:
    """One bar per pipeline phase; silent when ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def phase(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        with tqdm(
            total=total, desc=name, unit="", disable=self.quiet or total == 0, leave=True
        ) as bar:
            yield bar.update
