"""Synthetic focal stacks with known ground truth, made from any sharp image.

* :func:`make_stack` — small, in memory (tests, training): planes, ground truth, focus index,
  depth and drift as arrays.
* :func:`synthesize` — any size, streamed tile by tile to OME-Zarr, OME-TIFF and per-plane
  TIFFs, with the ground truth as tiled TIFFs and the parameters in ``synth.json``.
* :func:`make_demo_stack` — the built-in demo stack from the bundled H&E region.

Both paths share :class:`SynthParams` and give the same pixels for the same seed.
"""

from __future__ import annotations

from wsi_fusion.synth.defocus import (
    SynthParams,
    SynthStack,
    depth_field,
    focus_index_from_depth,
    make_stack,
)
from wsi_fusion.synth.demo import demo_source_path, make_demo_stack
from wsi_fusion.synth.write import FORMS, synthesize

__all__ = [
    "FORMS",
    "SynthParams",
    "SynthStack",
    "demo_source_path",
    "depth_field",
    "focus_index_from_depth",
    "make_demo_stack",
    "make_stack",
    "synthesize",
]
