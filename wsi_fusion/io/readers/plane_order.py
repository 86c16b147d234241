"""Whether per-plane files were probably given out of focal order.

Per-plane files are taken as focal planes in the order given. A shell glob sorts names as text,
so ``plane_1.png plane_10.png plane_2.png ...`` reaches the reader with plane 10 second: the
stack then jumps through focus and back, which the depth surface reads as depth (a pixel may
leave the surface for a plane "one step away" that is really eight) and which moves the middle
(reference) plane. Names that differ only in their numbers say which order was meant; a list
that follows them neither upward nor downward is probably a glob's.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_NUMBERS = re.compile(r"(\d+)")


def _numbers(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _NUMBERS.findall(path))


def _text(path: str) -> tuple[str, ...]:
    return tuple(_NUMBERS.split(path)[0::2])


def out_of_name_order(paths: Sequence[str]) -> tuple[str, str] | None:
    """Two consecutive ``paths`` that break the numeric order of the names, or ``None``.

    Only for names that differ in their numbers alone (``plane_2.png`` and ``plane_10.png``, not
    ``top.png`` and ``bottom.png``). A list in ascending or in descending numeric order is
    fine; otherwise the first pair that breaks the order of the first two is returned.
    """
    if len(paths) < 3 or len({_text(p) for p in paths}) != 1:
        return None
    keys = [_numbers(p) for p in paths]
    if len(set(keys)) != len(keys):
        return None
    descending = keys[1] < keys[0]
    for (a, ka), (b, kb) in itertools.pairwise(zip(paths, keys, strict=True)):
        if (kb < ka) != descending:
            return a, b
    return None


def warn_if_out_of_order(paths: Sequence[str]) -> None:
    """Log a warning naming :func:`out_of_name_order`'s pair and the fix, once per process for
    one file list (a batch may run the same list again)."""
    pair = out_of_name_order(paths)
    if pair is not None:
        _warn_once(*pair)


@functools.lru_cache(maxsize=32)
def _warn_once(first: str, second: str) -> None:
    logger.warning(
        "the plane files are taken in the order given, and %s comes right after %s, against "
        "the numbers in their names (a shell glob sorts plane_10 before plane_2). If that is "
        "not the focal order, list the files in focal order (e.g. with 'ls -v').",
        second,
        first,
    )
