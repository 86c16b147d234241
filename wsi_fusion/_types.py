"""Shared value types and protocols.

Coordinates are level-0 pixels in numpy order: ``Box(y, x, h, w)``. OpenSlide's ``(x, y)`` only
appears inside reader adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

#: A tile stack: float32 in [0, 1], shape (Z, C, H, W).
TileStack = npt.NDArray[np.float32]
#: A fused tile: float32 in [0, 1], shape (C, H, W).
FusedTile = npt.NDArray[np.float32]
#: Per-plane soft weights: float32, shape (Z, H, W), summing to 1 over Z.
PlaneWeights = npt.NDArray[np.float32]
#: An RGB region as readers return it: uint8, shape (H, W, 3).
RGBRegion = npt.NDArray[np.uint8]


@dataclass(frozen=True, order=True)
class Box:
    """A rectangle in level-0 pixels, numpy order."""

    y: int
    x: int
    h: int
    w: int

    @property
    def y1(self) -> int:
        return self.y + self.h

    @property
    def x1(self) -> int:
        return self.x + self.w

    def intersect(self, other: Box) -> Box | None:
        """The overlap of two boxes, or ``None`` when they do not touch."""
        y, x = max(self.y, other.y), max(self.x, other.x)
        y1, x1 = min(self.y1, other.y1), min(self.x1, other.x1)
        if y1 <= y or x1 <= x:
            return None
        return Box(y, x, y1 - y, x1 - x)

    def slices(self, origin: Box | None = None) -> tuple[slice, slice]:
        """Numpy slices of this box, relative to ``origin``'s corner when given."""
        oy, ox = (origin.y, origin.x) if origin is not None else (0, 0)
        return slice(self.y - oy, self.y1 - oy), slice(self.x - ox, self.x1 - ox)


@runtime_checkable
class PlaneStack(Protocol):
    """A focal-plane stack, whatever form it is stored in.

    Implementations live in :mod:`wsi_fusion.io.readers`; open one with
    :func:`wsi_fusion.io.readers.open_stack`.
    """

    #: Files or stores this stack was read from (for error messages and provenance).
    sources: tuple[str, ...]
    #: Focal-plane positions in µm, in plane order (``None`` where unknown).
    z_positions_um: tuple[float | None, ...]
    #: Level-0 size (height, width) in pixels.
    shape: tuple[int, int]
    #: Microns per pixel at level 0, ``None`` when the file does not say.
    mpp: float | None

    @property
    def n_planes(self) -> int: ...

    def read(self, plane: int, box: Box) -> RGBRegion:
        """Read ``box`` of ``plane`` as (h, w, 3) uint8; pixels outside the slide are white."""
        ...

    def thumbnail(self, plane: int, max_side: int) -> RGBRegion:
        """A downsampled view of ``plane`` whose longer side is at most ``max_side``."""
        ...

    def close(self) -> None: ...
