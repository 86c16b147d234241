"""wsi_fusion: fuse multi-focal-plane whole-slide images into one all-in-focus pyramidal slide.

The public API (re-exported here; numpy, Dask and torch load only when one is first used):

- :func:`fuse` — files in, pyramidal slide out (``wsi-fusion fuse`` in Python); returns a
  :class:`RunReport`. :func:`fuse_slide` is the pipeline entry point it calls (takes a
  :class:`RunConfig`).
- :func:`fuse_array` — an in-memory focal stack in, the fused image out (for notebooks).
- :func:`open_stack` — open focal planes as one stack (``read(plane, Box(y, x, h, w))``).
- :func:`list_fusers`, :func:`create_fuser` — the fuser registry.
- :class:`RunConfig`, :func:`load_config` — run settings (YAML, validated).
- The errors of :mod:`wsi_fusion.errors` (all subclasses of :class:`WsiFusionError`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsi_fusion.errors import (
    ConfigError,
    OutputExists,
    OutputNotWritable,
    PlaneMismatch,
    SlideNotFound,
    UnknownFuser,
    UnreadableSlide,
    UnsupportedInput,
    WeightsError,
    WsiFusionError,
)

__version__ = "0.1.0"

#: Public name -> module defining it, imported on first attribute access.
_LAZY = {
    "fuse": "wsi_fusion.api",
    "fuse_array": "wsi_fusion.api",
    "fuse_slide": "wsi_fusion.pipeline",
    "RunReport": "wsi_fusion.pipeline",
    "open_stack": "wsi_fusion.io.readers",
    "Box": "wsi_fusion._types",
    "list_fusers": "wsi_fusion.fusers",
    "create_fuser": "wsi_fusion.fusers",
    "RunConfig": "wsi_fusion.config",
    "load_config": "wsi_fusion.config",
}

if TYPE_CHECKING:
    from wsi_fusion._types import Box
    from wsi_fusion.api import fuse, fuse_array
    from wsi_fusion.config import RunConfig, load_config
    from wsi_fusion.fusers import create_fuser, list_fusers
    from wsi_fusion.io.readers import open_stack
    from wsi_fusion.pipeline import RunReport, fuse_slide

__all__ = [
    "Box",
    "ConfigError",
    "OutputExists",
    "OutputNotWritable",
    "PlaneMismatch",
    "RunConfig",
    "RunReport",
    "SlideNotFound",
    "UnknownFuser",
    "UnreadableSlide",
    "UnsupportedInput",
    "WeightsError",
    "WsiFusionError",
    "__version__",
    "create_fuser",
    "fuse",
    "fuse_array",
    "fuse_slide",
    "list_fusers",
    "load_config",
    "open_stack",
]


def __getattr__(name: str) -> Any:
    """Import the public API on first use (PEP 562), keeping ``import wsi_fusion`` light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_fusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
