"""wsi_fusion: fuse multi-focal-plane whole-slide images into one all-in-focus pyramidal slide."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
