"""Fusers: classical and learned methods behind one contract (see :mod:`.base`)."""

from __future__ import annotations

from wsi_fusion.fusers._registry import (
    DEFAULT_FUSER,
    create_fuser,
    fuser_class,
    list_fusers,
    register_fuser,
)
from wsi_fusion.fusers.base import Fuser, FuserParams, FusionResult

__all__ = [
    "DEFAULT_FUSER",
    "Fuser",
    "FuserParams",
    "FusionResult",
    "create_fuser",
    "fuser_class",
    "list_fusers",
    "register_fuser",
]
