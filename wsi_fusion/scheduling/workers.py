"""Per-worker caches: open plane stacks and fusers, never pickled open.

Tasks receive only plain descriptions (paths, names, parameters). Each worker thread opens what
it needs once and keeps it; OpenSlide handles and torch models are not safe to share between
threads, and reopening per tile would dominate the run time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from wsi_fusion._types import PlaneStack
from wsi_fusion.fusers import Fuser, create_fuser
from wsi_fusion.registration import DriftField, RegisteredStack

_local = threading.local()


def _cache(name: str) -> dict[Any, Any]:
    cache = getattr(_local, name, None)
    if cache is None:
        cache = {}
        setattr(_local, name, cache)
    return cache


def thread_stack(inputs: Sequence[str]) -> PlaneStack:
    """The calling thread's open stack for ``inputs``."""
    from wsi_fusion.io.readers import open_stack

    cache = _cache("stacks")
    key = tuple(inputs)
    if key not in cache:
        cache[key] = open_stack(list(inputs))
    return cache[key]  # type: ignore[no-any-return]


def thread_registered_stack(inputs: Sequence[str], drift: DriftField) -> PlaneStack:
    """The calling thread's stack for ``inputs`` with its planes aligned by ``drift``."""
    cache = _cache("registered")
    key = (tuple(inputs), drift.digest())
    if key not in cache:
        cache[key] = RegisteredStack(thread_stack(inputs), drift)
    return cache[key]  # type: ignore[no-any-return]


def thread_fuser(name: str, params: dict[str, Any]) -> Fuser:
    """The calling thread's instance of fuser ``name`` with ``params``."""
    cache = _cache("fusers")
    key = (name, json.dumps(params, sort_keys=True, default=str))
    if key not in cache:
        cache[key] = create_fuser(name, **params)
    return cache[key]  # type: ignore[no-any-return]
