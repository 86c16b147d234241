"""An in-memory plane stack and synthetic drifted focal stacks with a known shift field."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from wsi_fusion._types import Box, RGBRegion

UInt8Array = npt.NDArray[np.uint8]
#: Drift of plane z at level-0 (y, x) grids: (dy, dx) arrays; plane[y + dy, x + dx] ~ sharp[y, x].
DriftFn = Callable[
    [int, npt.NDArray[np.float64], npt.NDArray[np.float64]],
    tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
]


class ArrayStack:
    """A :class:`~wsi_fusion._types.PlaneStack` over a (Z, H, W, 3) uint8 array; white outside."""

    def __init__(self, planes: UInt8Array) -> None:
        self.planes = planes
        self.sources = ("memory",)
        self.z_positions_um: tuple[float | None, ...] = (None,) * planes.shape[0]
        self.shape = (int(planes.shape[1]), int(planes.shape[2]))
        self.mpp = None
        self.reads = 0

    @property
    def n_planes(self) -> int:
        return int(self.planes.shape[0])

    def read(self, plane: int, box: Box) -> RGBRegion:
        self.reads += 1
        out = np.full((box.h, box.w, 3), 255, dtype=np.uint8)
        inside = box.intersect(Box(0, 0, *self.shape))
        if inside is not None:
            out[inside.slices(origin=box)] = self.planes[plane][inside.slices()]
        return out

    def thumbnail(self, plane: int, max_side: int) -> RGBRegion:
        step = max(1, -(-max(self.shape) // max_side))
        image = self.planes[plane].astype(np.float32)
        h, w = (self.shape[0] // step) * step, (self.shape[1] // step) * step
        image = image[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3))
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def close(self) -> None:
        pass


def sharp_rgb(name: str = "astronaut") -> UInt8Array:
    """A texture-rich RGB image bundled with scikit-image, (H, W, 3) uint8."""
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)())


def drifted_stack(
    sharp: UInt8Array, blurs: list[float], drift: DriftFn
) -> tuple[UInt8Array, UInt8Array]:
    """Planes = ``sharp`` blurred by ``blurs[z]`` (Gaussian sigma, px) and displaced by ``drift``.

    Returns (drifted planes, the same planes without drift), both (Z, H, W, 3) uint8. Plane ``z``
    is sampled at ``(y - dy, x - dx)`` so that ``plane[y + dy, x + dx] = blurred[y, x]``, the
    convention of :class:`~wsi_fusion.registration.DriftField`.
    """
    h, w = sharp.shape[:2]
    yy = np.arange(h, dtype=np.float64)
    xx = np.arange(w, dtype=np.float64)
    drifted, aligned = [], []
    for z, sigma in enumerate(blurs):
        image = sharp.astype(np.float64)
        if sigma > 0:
            image = ndi.gaussian_filter(image, (sigma, sigma, 0), mode="reflect")
        aligned.append(image)
        dy, dx = drift(z, yy, xx)
        dy, dx = np.broadcast_to(dy, (h, w)), np.broadcast_to(dx, (h, w))
        coords = np.stack([yy[:, None] - dy, xx[None, :] - dx])
        moved = np.stack(
            [ndi.map_coordinates(image[..., c], coords, order=3, mode="reflect") for c in range(3)],
            axis=-1,
        )
        drifted.append(moved)

    def to_uint8(planes: list[npt.NDArray[np.float64]]) -> UInt8Array:
        return np.clip(np.rint(np.stack(planes)), 0, 255).astype(np.uint8)

    return to_uint8(drifted), to_uint8(aligned)
