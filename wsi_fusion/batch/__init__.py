"""Batch conversion: many slides per run, skipping finished ones and surviving failures."""

from __future__ import annotations

from wsi_fusion.batch.discover import (
    DEFAULT_PATTERN,
    SlideSpec,
    collect_slides,
    discover_folder,
    read_manifest,
)
from wsi_fusion.batch.runner import BatchSummary, SlideResult, run_batch

__all__ = [
    "DEFAULT_PATTERN",
    "BatchSummary",
    "SlideResult",
    "SlideSpec",
    "collect_slides",
    "discover_folder",
    "read_manifest",
    "run_batch",
]
