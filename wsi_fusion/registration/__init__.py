"""Lateral registration of focal planes before fusion.

Real z-stacks drift sideways between planes; fusing misaligned planes doubles every edge.
:func:`estimate_drift` measures a smooth per-plane shift field by sub-pixel phase correlation
(chained between neighbouring planes, per region of the slide); :class:`RegisteredStack` wraps a
:class:`~wsi_fusion._types.PlaneStack` so that every plane it reads is resampled onto the reference
plane. Plain numpy/scipy/scikit-image: no Dask, no torch.
"""

from __future__ import annotations

from wsi_fusion.registration.drift import DriftField, estimate_drift
from wsi_fusion.registration.stack import RegisteredStack, shift_constant


def should_apply(field: DriftField, mode: str, threshold_px: float) -> bool:
    """Whether to register: always for ``"on"``, never for ``"off"``, and for ``"auto"`` only
    when the largest measured shift exceeds ``threshold_px``."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return field.max_abs() > threshold_px


__all__ = ["DriftField", "RegisteredStack", "estimate_drift", "shift_constant", "should_apply"]
