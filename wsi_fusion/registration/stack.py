"""A plane stack whose planes are resampled onto the reference plane's grid.

:class:`RegisteredStack` wraps any :class:`~wsi_fusion._types.PlaneStack`: ``read(plane, box)``
reads a box grown by the plane's largest shift plus the interpolation kernel's reach, resamples
it by the drift field and crops it back, so the geometry never changes (same box in, same box out;
white outside the slide). Inside the slide, content that would come from beyond the slide edge is
edge-replicated instead of white, so a drifted plane does not gain a white strip along the border.

Interpolation is Keys cubic convolution (a = -0.5, Catmull-Rom): bilinear interpolation low-passes
the moved planes (at a half-pixel shift it averages neighbours), which would make every registered
plane look less sharp than the untouched reference to the fuser's focus measure. The shift is held
constant over the read box when it varies by at most ``tolerance`` px across it (the usual case on a
slide, whose grid nodes lie thousands of px apart); otherwise the box is split into up to 16 x 16
parts that each satisfy it (steps of at most ``tolerance`` px between parts). A constant shift is a
separable 4-tap filter: two :func:`scipy.ndimage.correlate1d` passes, ~8 ms per 512 px RGB plane,
where a per-pixel cubic :func:`scipy.ndimage.map_coordinates` takes ~10x longer.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from wsi_fusion._types import Box, PlaneStack, RGBRegion
from wsi_fusion.errors import PlaneMismatch
from wsi_fusion.registration.drift import DriftField

_WHITE = 255
#: Extra context beyond the shift that the 4-tap kernel reaches (taps at -1..+2).
_KERNEL_REACH = 2
#: Field probes per side of a read box (also the most parts per side it is split into).
_PROBES = 16


class RegisteredStack:
    """``stack`` with every plane aligned to ``field.reference`` by the drift ``field``.

    Parameters
    ----------
    stack
        The stack to wrap (not closed by this wrapper unless :meth:`close` is called).
    field
        Drift of each plane, from :func:`~wsi_fusion.registration.estimate_drift` on ``stack``.
    tolerance
        Largest variation of the shift (px) over which one shift is used (the read box, or the
        parts it is split into).
    """

    def __init__(self, stack: PlaneStack, field: DriftField, *, tolerance: float = 0.1) -> None:
        if field.n_planes != stack.n_planes or tuple(field.shape) != tuple(stack.shape):
            raise PlaneMismatch(
                f"drift field for {field.n_planes} planes of {field.shape} does not fit the stack "
                f"{', '.join(stack.sources)} ({stack.n_planes} planes of {stack.shape}); "
                "estimate the drift on this stack"
            )
        self.stack = stack
        self.field = field
        self.tolerance = tolerance
        self.sources = stack.sources
        self.z_positions_um = stack.z_positions_um
        self.shape = stack.shape
        self.mpp = stack.mpp
        self._margins = [math.ceil(field.max_abs(z)) + _KERNEL_REACH for z in range(field.n_planes)]
        self._still = [field.max_abs(z) < 1e-3 for z in range(field.n_planes)]

    @property
    def n_planes(self) -> int:
        return self.stack.n_planes

    def read(self, plane: int, box: Box) -> RGBRegion:
        """Read ``box`` of ``plane`` as (h, w, 3) uint8, resampled onto the reference plane."""
        if plane == self.field.reference or self._still[plane]:
            return self.stack.read(plane, box)
        m = self._margins[plane]
        grown = Box(box.y - m, box.x - m, box.h + 2 * m, box.w + 2 * m)
        raw = _replicate_outside(self.stack.read(plane, grown), grown, self.shape)
        moved = np.empty((box.h, box.w, raw.shape[2]), dtype=np.float32)
        ys, xs = self._edges(plane, box)
        # All part centres in one field evaluation (per-part calls cost more than the resampling).
        centres_y = np.array(
            [y0 + (y1 - y0 - 1) / 2 for y0, y1 in zip(ys[:-1], ys[1:], strict=True)]
        )
        centres_x = np.array(
            [x0 + (x1 - x0 - 1) / 2 for x0, x1 in zip(xs[:-1], xs[1:], strict=True)]
        )
        shifts_y, shifts_x = self.field.shift_map(plane, centres_y, centres_x)
        for i, (y0, y1) in enumerate(zip(ys[:-1], ys[1:], strict=True)):
            for j, (x0, x1) in enumerate(zip(xs[:-1], xs[1:], strict=True)):
                if y1 <= y0 or x1 <= x0:
                    continue
                y, x = y0 - box.y, x0 - box.x
                window = raw[y : y1 - box.y + 2 * m, x : x1 - box.x + 2 * m]
                moved[y : y1 - box.y, x : x1 - box.x] = shift_constant(
                    window, m, float(shifts_y[i, j]), float(shifts_x[i, j]), (y1 - y0, x1 - x0)
                )
        out = _to_uint8(moved)
        inside = box.intersect(Box(0, 0, *self.shape))
        if inside != box:
            keep = np.zeros((box.h, box.w), dtype=bool)
            if inside is not None:
                keep[inside.slices(origin=box)] = True
            out[~keep] = _WHITE
        return out

    def _parts(self, plane: int, box: Box) -> list[Box]:
        """``box`` split into n x n equal parts (n = 1, 2, 4, 8 or 16, the fewest that work)
        over each of which the shift varies by at most ``tolerance`` px."""
        ys, xs = self._edges(plane, box)
        return [
            Box(y0, x0, y1 - y0, x1 - x0)
            for y0, y1 in zip(ys[:-1], ys[1:], strict=True)
            for x0, x1 in zip(xs[:-1], xs[1:], strict=True)
            if y1 > y0 and x1 > x0
        ]

    def _edges(self, plane: int, box: Box) -> tuple[list[int], list[int]]:
        """Row and column edges of the parts of :meth:`_parts` (``n + 1`` each)."""
        k = _PROBES
        dy, dx = self.field.shift_map(
            plane, np.linspace(box.y, box.y1 - 1, k + 1), np.linspace(box.x, box.x1 - 1, k + 1)
        )
        n = 1
        while n < k:
            step = k // n
            spans = [
                max(np.ptp(d[i : i + step + 1, j : j + step + 1]) for d in (dy, dx))
                for i in range(0, k, step)
                for j in range(0, k, step)
            ]
            if max(spans) <= self.tolerance:
                break
            n *= 2
        ys = [box.y + round(i * box.h / n) for i in range(n + 1)]
        xs = [box.x + round(j * box.w / n) for j in range(n + 1)]
        return ys, xs

    def thumbnail(self, plane: int, max_side: int) -> RGBRegion:
        """The wrapped stack's thumbnail (drift is far below a thumbnail pixel on a slide)."""
        return self.stack.thumbnail(plane, max_side)

    def close(self) -> None:
        self.stack.close()


def _replicate_outside(raw: RGBRegion, grown: Box, shape: tuple[int, int]) -> RGBRegion:
    """Pixels of ``raw`` (covering ``grown``) outside the slide: the nearest inside ones."""
    inner = grown.intersect(Box(0, 0, *shape))
    if inner is None or inner == grown:
        return raw
    core = raw[inner.slices(origin=grown)]
    pad = (
        (inner.y - grown.y, grown.y1 - inner.y1),
        (inner.x - grown.x, grown.x1 - inner.x1),
        (0, 0),
    )
    return np.pad(core, pad, mode="edge")


def _to_uint8(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Round half up and clip to 0..255 (in place; ``np.clip(np.rint(.))`` is 20x slower here)."""
    values += np.float32(0.5)
    np.clip(values, np.float32(0.0), np.float32(255.0), out=values)
    return values.astype(np.uint8)


def _keys_weights(t: float) -> tuple[float, float, float, float]:
    """Catmull-Rom weights of the taps at offsets -1, 0, 1, 2 for a fractional position ``t``."""
    a = -0.5

    def kernel(s: float) -> float:
        s = abs(s)
        if s <= 1.0:
            return ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
        if s < 2.0:
            return ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a
        return 0.0

    return kernel(1.0 + t), kernel(t), kernel(1.0 - t), kernel(2.0 - t)


def shift_constant(
    raw: npt.NDArray[np.uint8], margin: int, dy: float, dx: float, size: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Sample ``raw`` (a box grown by ``margin`` on every side) at ``(y + dy, x + dx)``.

    Returns the (h, w, C) float32 result for the inner ``size`` box; needs
    ``margin >= ceil(max(|dy|, |dx|)) + 2``.
    """
    h, w = size
    iy, ix = math.floor(dy), math.floor(dx)
    y0, x0 = margin + iy - 1, margin + ix - 1
    if y0 < 0 or x0 < 0 or y0 + h + 3 > raw.shape[0] or x0 + w + 3 > raw.shape[1]:
        raise ValueError(f"margin {margin} is too small for a shift of ({dy:.2f}, {dx:.2f}) px")
    window = raw[y0 : y0 + h + 3, x0 : x0 + w + 3]
    rows = _taps(window, _keys_weights(dy - iy), axis=0)
    return _taps(rows, _keys_weights(dx - ix), axis=1)


def _taps(
    src: npt.NDArray[np.uint8] | npt.NDArray[np.float32],
    weights: tuple[float, float, float, float],
    axis: int,
) -> npt.NDArray[np.float32]:
    """``out[i] = sum_k weights[k] * src[i + k]`` along ``axis`` (3 shorter than ``src``)."""
    index: list[slice] = [slice(None)] * src.ndim
    index[axis] = slice(1, src.shape[axis] - 2)
    if weights[1] == 1.0:  # integer position: a plain copy
        return src[tuple(index)].astype(np.float32)
    index[axis] = slice(0, src.shape[axis] - 3)
    # origin -2 aligns tap k with src[i + k] (checked in tests against a direct sum).
    out = ndi.correlate1d(
        src, np.asarray(weights, dtype=np.float64), axis=axis, output=np.float32, origin=-2
    )
    return out[tuple(index)]
