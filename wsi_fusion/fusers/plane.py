"""``plane``: copy one focal plane unchanged.

Not a fusion method: it extracts a plane through the same pipeline (useful to convert one plane
of a z-stack into a pyramid) and is the identity that the stitching invariants are tested with.
"""

from __future__ import annotations

import numpy as np

from wsi_fusion._types import TileStack
from wsi_fusion.errors import UnsupportedInput
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers.base import Fuser, FuserParams, FusionResult, one_hot_weights


class PlaneParams(FuserParams):
    #: Plane to copy; negative values count from the end, ``None`` takes the middle plane.
    index: int | None = None


@register_fuser("plane", paper="none (identity / plane extraction)")
class PlaneFuser(Fuser):
    """Return one plane of the stack as the fused tile."""

    Params = PlaneParams
    min_planes = 1
    params: PlaneParams

    @property
    def margin(self) -> int:
        return 0

    def fuse(self, stack: TileStack) -> FusionResult:
        z = stack.shape[0]
        index = z // 2 if self.params.index is None else self.params.index
        if not -z <= index < z:
            raise UnsupportedInput(
                f"plane index {index} is outside a stack of {z} planes; use 0..{z - 1} or -1"
            )
        index %= z
        choice = np.full(stack.shape[2:], index, dtype=np.int64)
        return FusionResult(fused=stack[index].copy(), weights=one_hot_weights(choice, z))
