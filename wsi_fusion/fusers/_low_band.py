"""Two-band composition: the planes' low band blended smoothly, their detail picked sharply.

Why
---
A hard pick between planes is right for detail but wrong for brightness. Where a thick specimen
is out of focus on every plane (the pseudoscorpion sweep's body, an algae colony's glass), the
depth surface still has to change plane somewhere, and planes far apart in z differ there by tens
of grey levels: a one-hot pick turns every change of plane into a hard-edged band or, along the
surface's 4-px cells, a blocky patch -- edges that no plane has (focus attainment 1.09 and above
on the pseudoscorpion, its worst contact-sheet rows). The guided filter only softens a decision
over ~5 px, far less than the width of such a step.

Method
------
Multi-band blending with two bands (P. J. Burt and E. H. Adelson, "A Multiresolution Spline with
Application to Image Mosaics", ACM Trans. Graph. 2(4):217-236, 1983)::

    fused = sum_k W_k (I_k - L_k) + sum_k S_k L_k

``W_k`` are the decision's weights, ``L_k`` plane ``k``'s low band and ``S_k`` the share of
plane ``k`` in the depth surface around the pixel, low-passed the same way: detail comes from
the decision as before, brightness and colour from the surface's planes, changing over the
low-pass's width instead of at once. Where the surface keeps one plane within that reach and the
pixel is picked from it, the output is the picked pixel, up to float rounding; a fine pick from
another plane keeps its detail on the surface plane's brightness. On stacks whose planes share
their brightness (every synthetic stack: defocus keeps the low frequencies) the result is the
hard pick's.

Why the surface and not the smoothed weights: both score the same (below), but the weights
reach 61 px and the low band 15 px more, beyond the 64 px the design's 512/128 tiles can hide;
the surface's cells reach 52 px, so the margin stays 64 px (``FocusMeasureFuser.margin``).

The low-pass works on the depth surface's grid of ``cell``-px cells (:func:`._depth.cell_means`;
the tiles of a block plan start on it): cell means, two box passes of ``radius`` cells, then
bilinear interpolation back to pixels (cell centres at ``cell * i + (cell - 1) / 2``, edge cells
held: torch's ``interpolate(..., mode="bilinear", align_corners=False)`` positions). The smooth
part ``sum_k S_k L_k`` is formed on the cells and interpolated once; that differs from the
product of the two interpolations only inside transitions, by at most a quarter of the change of
each factor across one cell.

Measured (``workflows/evaluate.py``, 1024² crops, fidelity p10 / median, attainment median;
4-px cells): radius 1 cell (a ~15-px blend) -- pseudoscorpion 0.090 / 0.595, 1.089 ->
0.147 / 0.686, 0.996 (the decision-map fusers 0.54-0.58 -> 0.67-0.69, attainment 1.09-1.20 ->
1.00-1.01); algae 0.427 / 0.825 -> 0.444 / 0.841 (1.020 -> 1.005; the learned fusers
0.79-0.80 -> 0.83-0.84); unstained cells p10 0.965 -> 0.973; blood smear, grey smear and
skeleton unchanged; halo 0; synthetic stacks 37.79 -> 37.78 dB (the oracle 38.07). The
pseudoscorpion's attainment p10 falls 1.00 -> 0.80: blocks out of focus on every plane, where
the band edges had counted as sharpness. Smoothing the weights instead of the surface: the same
to 0.002. Radius 2 (σ 8 px with a true Gaussian): pseudoscorpion median 0.70 but algae 0.83.
The low band of the luminance alone, added to every channel, scores the same but leaves the
colour steps between planes visible. Cost: ~+19 % CPU per 512² tile of 5 planes (two
interleaved runs), mostly the cell means of every plane and the interpolation per plane and
channel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from wsi_fusion.fusers._depth import DepthParams, cell_means
from wsi_fusion.fusers._filters import box_mean

Float32Array = npt.NDArray[np.float32]


def low_band_cells(params: DepthParams) -> int:
    """``low_band_radius`` in ``pool_step`` cells, rounded, at least 1 (0: no low band, which
    follows the depth surface and so needs one)."""
    k = params.pool_step
    if not (params.low_band_radius and params.depth_radius):
        return 0
    return max(1, (params.low_band_radius + k // 2) // k)


def low_band_reach(cell: int, radius: int) -> int:
    """How far (px) the composition looks beyond the weights' own reach: the cells on both sides
    of a pixel's interpolation, widened by two box passes of ``radius`` cells."""
    return (2 * radius + 2) * cell - 1 if radius else 0


def two_band_sum(
    stack: Float32Array,
    weights: Float32Array,
    present: npt.NDArray[np.intp],
    surface: npt.NDArray[np.intp],
    cell: int,
    radius: int,
) -> Float32Array:
    """Fused ``(C, H, W)`` of ``stack`` ``(Z, C, H, W)`` by ``weights`` ``(Z, H, W)`` (nonzero
    for the ``present`` planes only), the low band blended by the depth ``surface`` (its plane
    per ``cell``-px cell) smoothed over ``radius`` cells. Clipped to [0, 1]."""
    _, c, h, w = stack.shape
    planes = np.union1d(present, surface)
    low = np.empty((planes.size, c, *surface.shape), dtype=np.float32)
    for j, k in enumerate(planes):
        low[j] = cell_means(stack[k], cell)
    low = box_mean(box_mean(low, radius), radius)
    # The smooth part on the cells: sum_k S_k L_k, S_k the surface's share of plane k around
    # each cell, summed plane by plane.
    shares = (surface == planes[:, None, None]).astype(np.float32)
    smooth = box_mean(box_mean(shares, radius), radius)
    blend = smooth[0][None] * low[0]
    for j in range(1, planes.size):
        blend += smooth[j][None] * low[j]
    # Interpolated to pixels strip by strip of rows, from the few cell rows each strip needs:
    # the ~6 passes per plane then run on arrays that stay in cache.
    columns = interpolation_taps(low.shape[-1], cell, w)
    above, frac = interpolation_taps(low.shape[-2], cell, h)
    # Rows where each plane has weight, (planes, H), without copying the weights.
    has_weight = np.stack([weights[k].any(axis=1) for k in planes])
    fused = np.empty((c, h, w), dtype=np.float32)
    detail = np.empty((c, _STRIP, w), dtype=np.float32)
    for y0 in range(0, h, _STRIP):
        y1 = min(h, y0 + _STRIP)
        rows = above[y0:y1]
        cells = slice(rows[0], rows[-1] + 2)
        taps = (rows - rows[0], frac[y0:y1, None])
        out, part = fused[:, y0:y1], detail[:, : y1 - y0]
        _interpolate(blend[:, cells], columns, taps, out)
        # The detail part: sum_k W_k (I_k - L_k), over the planes with weight in the strip.
        for j, k in enumerate(planes):
            if not has_weight[j, y0:y1].any():
                continue
            _interpolate(low[j][:, cells], columns, taps, part)
            np.subtract(stack[k, :, y0:y1], part, out=part)
            part *= weights[k, y0:y1]
            out += part
    return np.clip(fused, 0.0, 1.0, out=fused)


#: Rows per strip of :func:`two_band_sum` (a multiple of any cell size): 3 channels x 32 rows x
#: ~1150 px of float32 is ~440 kB per array, so a strip's working arrays stay in cache. Measured
#: on a 1144² block of 5 planes: 16 / 32 / 64 rows within 10 % of each other, whole images
#: (4 passes per plane and channel through memory) ~1.3x slower.
_STRIP = 32

Taps = tuple[npt.NDArray[np.intp], Float32Array]


def _interpolate(cells: Float32Array, columns: Taps, rows: Taps, out: Float32Array) -> None:
    """Bilinear interpolation of ``(..., h', w')`` cells into ``out`` ``(..., h, w)``: along x
    on the cells' rows, then along y; each ``a0 + (a1 - a0) * f`` with the taps
    (:func:`interpolation_taps`) of the columns and of the rows."""
    along_x = np.take(_differences(cells, axis=-1), columns[0], axis=-1)
    along_x *= columns[1]
    along_x += np.take(cells, columns[0], axis=-1)
    np.take(_differences(along_x, axis=-2), rows[0], axis=-2, out=out, mode="clip")
    out *= rows[1]
    out += np.take(along_x, rows[0], axis=-2, mode="clip")


def _differences(values: Float32Array, axis: int) -> Float32Array:
    """``a[i + 1] - a[i]`` along ``axis``, 0 at the last index."""
    size = values.shape[axis]
    diff = np.take(values, np.minimum(np.arange(size) + 1, size - 1), axis=axis)
    diff -= values
    return diff


def interpolation_taps(size: int, cell: int, n: int) -> tuple[npt.NDArray[np.intp], Float32Array]:
    """Left cell and the right cell's weight for ``n`` pixels over ``size`` cells (the right
    cell is the next one, or the same at the last cell, whose difference is then 0).

    The weight depends only on the pixel's place within its cell, so tiles that start on the
    cell grid get the same float32 weights as the whole image (``(x + 0.5) / cell`` rounds
    differently at different ``x`` when ``1 / cell`` is not a power of two).
    """
    whole, phase = np.divmod(np.arange(n), cell)
    offset = (np.arange(cell, dtype=np.float32) + np.float32(0.5)) / np.float32(cell)
    offset -= np.float32(0.5)  # in [-0.5, 0.5): left of the cell's centre below 0
    left = offset < 0
    offset[left] += np.float32(1.0)
    i0 = whole - left[phase]
    frac = offset[phase]
    frac[i0 < 0] = 0.0  # before the first cell's centre: held
    i0 = np.clip(i0, 0, size - 1)
    return i0, frac
