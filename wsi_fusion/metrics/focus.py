"""Focus attainment, halo and seam scores: checks for real stacks that have no ground truth.

These are this package's own measures, not published metrics. They compare the fused image with
the registered focal planes it was made from (or, for seams, with itself):

* :func:`focus_attainment` -- per textured block, the fused image's sharpness relative to the
  sharpest plane's. This is a **window, not "higher is better"**: 0.95-1.15 is healthy (as sharp
  as the best plane, give or take noise and JPEG); below, focus was lost; well above, the fused
  image has texture that no plane has -- noise picked from defocused planes, edges made by
  switching planes inside an object, ringing or over-sharpening. A fuser that scores 1.3 is not
  sharper than one at 1.0, it is inventing detail. Read it with
  :func:`~wsi_fusion.metrics.fidelity.block_fidelity`, which sees patchwork that keeps the
  sharpness up.
* :func:`halo_score` -- how far the fused image leaves the range the planes span near strong
  edges (the bright/dark fringes of over-sharpening and of pyramid/wavelet fusers).
* :func:`seam_score` -- the jump across tile-boundary lines relative to neighbouring lines.

All work on luminance on the 0-255 scale (see :mod:`._image`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from wsi_fusion.errors import UnsupportedInput
from wsi_fusion.metrics._image import (
    FloatImage,
    ImageLike,
    gradient_magnitude,
    to_luma,
    to_sources,
)
from wsi_fusion.tiling.plan import make_plan

__all__ = [
    "HEALTHY_WINDOW",
    "FocusAttainment",
    "block_sharpness",
    "focus_attainment",
    "halo_score",
    "outside_window",
    "seam_score",
    "sharpness_map",
]


class FocusAttainment(TypedDict):
    """Result of :func:`focus_attainment`; block arrays are (ceil(H / block), ceil(W / block))."""

    #: Fused sharpness / best plane's sharpness per block; NaN where the block is not textured.
    ratios: npt.NDArray[np.float64]
    #: Which blocks count (best plane's sharpness above the texture threshold).
    textured: npt.NDArray[np.bool_]
    #: Index of the sharpest plane per block (the local focus map at block resolution).
    best_plane: npt.NDArray[np.intp]
    #: Summary over textured blocks (NaN when there is none). Healthy: inside the window
    #: ``[low, high]`` (default 0.95-1.15); see :data:`HEALTHY_WINDOW`.
    mean: float
    median: float
    p10: float
    #: Fraction of textured blocks with ratio < ``low`` (lost focus), > ``high`` (invented
    #: texture: noise, plane-switching edges, ringing) and outside the window (their sum).
    frac_below: float
    frac_above: float
    frac_outside: float
    n_textured: int


#: Healthy range of the focus-attainment ratio (fused / sharpest plane's block sharpness).
#: Below: focus lost. Above: texture no plane has. Not "higher is better".
HEALTHY_WINDOW = (0.95, 1.15)


def outside_window(
    ratios: npt.NDArray[np.float64], low: float = HEALTHY_WINDOW[0], high: float = HEALTHY_WINDOW[1]
) -> npt.NDArray[np.float64]:
    """How far each ratio lies outside ``[low, high]``, as ``|log|`` of the nearer edge's ratio.

    0 inside the window; symmetric in the multiplicative sense (half the sharpness and twice the
    sharpness are equally far off). NaN stays NaN.
    """
    with np.errstate(divide="ignore"):
        below = np.log(low / np.maximum(ratios, 1e-12))
        above = np.log(ratios / high)
    out = np.maximum(np.maximum(below, above), 0.0)
    return np.where(np.isnan(ratios), np.nan, out)


def sharpness_map(luma: FloatImage, sigma: float = 1.0) -> FloatImage:
    """Squared Gaussian-derivative gradient magnitude per pixel, (H, W), in (grey levels/px)^2.

    The derivative-of-Gaussian at scale ``sigma`` (default 1 px) responds to the mid frequencies
    that defocus removes first while damping single-pixel noise and JPEG block edges, which every
    plane shares and which would otherwise dilute the ratio.
    """
    g = gradient_magnitude(luma, sigma)
    return g * g


def _block_rms(energy: FloatImage, block: int) -> FloatImage:
    """RMS over ``block`` x ``block`` blocks (edge blocks may be smaller), (By, Bx)."""
    ys = np.arange(0, energy.shape[0], block)
    xs = np.arange(0, energy.shape[1], block)
    sums = np.add.reduceat(np.add.reduceat(energy, ys, axis=0), xs, axis=1)
    counts = np.outer(
        np.diff(np.append(ys, energy.shape[0])), np.diff(np.append(xs, energy.shape[1]))
    )
    return np.sqrt(sums / counts)


def block_sharpness(luma: FloatImage, block: int, sigma: float = 1.0) -> FloatImage:
    """RMS of :func:`sharpness_map` over ``block`` x ``block`` blocks, (By, Bx), grey levels/px.

    The block grid starts at (0, 0); edge blocks may be smaller. Shared by focus attainment and
    block fidelity (:mod:`.fidelity`), so both pick the same sharpest plane per block.
    """
    return _block_rms(sharpness_map(luma, sigma), block)


def focus_attainment(
    fused: ImageLike,
    planes: Iterable[ImageLike],
    block: int = 64,
    *,
    sigma: float = 1.0,
    min_sharpness: float = 1.0,
    rel_sharpness: float = 0.2,
    low: float = HEALTHY_WINDOW[0],
    high: float = HEALTHY_WINDOW[1],
) -> FocusAttainment:
    """Per-block sharpness of the fused image relative to the sharpest registered plane.

    Sharpness of a block is the RMS Gaussian-derivative gradient magnitude (:func:`sharpness_map`)
    in grey levels per pixel. A block is *textured* when its sharpest plane reaches both
    ``min_sharpness`` (absolute; excludes blank glass and background) and ``rel_sharpness`` times
    the 90th percentile over blocks (relative; excludes faint blocks whose ratio is mostly noise).

    Read the ratio as a window (``low``-``high``, default 0.95-1.15), not "higher is better":
    a ratio well above 1 means texture that no plane has (noise picked from defocused planes,
    edges made by switching planes inside an object, ringing), not a sharper image.

    Parameters
    ----------
    fused
        The fused image.
    planes
        The registered focal planes, same size.
    block
        Block side in pixels.
    sigma
        Derivative-of-Gaussian scale in pixels.
    min_sharpness, rel_sharpness
        Texture thresholds (see above).
    low, high
        The healthy window: thresholds of ``frac_below``, ``frac_above`` and ``frac_outside``.

    Returns
    -------
    FocusAttainment
        Block arrays and the summary over textured blocks.
    """
    if block < 4:
        raise UnsupportedInput(f"block {block} is too small; use at least 4 px (default 64)")
    f = to_luma(fused, name="fused")
    stack = to_sources(planes, f.shape)
    plane_s = np.stack([block_sharpness(p, block, sigma) for p in stack])
    best_plane = plane_s.argmax(axis=0)
    best = plane_s.max(axis=0)
    fused_s = block_sharpness(f, block, sigma)
    threshold = max(min_sharpness, rel_sharpness * float(np.percentile(best, 90)))
    textured = best >= threshold
    ratios = np.full(best.shape, np.nan)
    ratios[textured] = fused_s[textured] / best[textured]
    vals = ratios[textured]
    n = int(vals.size)
    return FocusAttainment(
        ratios=ratios,
        textured=textured,
        best_plane=best_plane,
        mean=float(vals.mean()) if n else math.nan,
        median=float(np.median(vals)) if n else math.nan,
        p10=float(np.percentile(vals, 10)) if n else math.nan,
        frac_below=float((vals < low).mean()) if n else math.nan,
        frac_above=float((vals > high).mean()) if n else math.nan,
        frac_outside=float(((vals < low) | (vals > high)).mean()) if n else math.nan,
        n_textured=n,
    )


def halo_score(
    fused: ImageLike,
    planes: Iterable[ImageLike],
    *,
    radius: int = 3,
    edge_quantile: float = 0.9,
    tolerance: float = 2.0,
) -> float:
    """Overshoot of the fused image beyond the planes' local envelope, near strong edges.

    Any plane-selecting or plane-blending fuser stays inside the envelope
    ``[min over planes and a (2 radius + 1)^2 neighbourhood, max over the same]``; a halo or
    ringing fringe leaves it. The score is the mean overshoot beyond the envelope (less
    ``tolerance`` grey levels, for rounding and interpolation), as a fraction of the envelope's
    local range, over the pixels within ``radius`` of a strong edge (the sharpest plane's gradient
    magnitude above its ``edge_quantile`` quantile and above 4 grey levels/px).

    Parameters
    ----------
    fused
        The fused image.
    planes
        The registered focal planes, same size.
    radius
        Neighbourhood radius in pixels for the envelope and the edge zone.
    edge_quantile
        Quantile of the best-plane gradient magnitude that defines strong edges.
    tolerance
        Overshoot in grey levels (0-255) that is ignored.

    Returns
    -------
    float
        0 = no halo; e.g. 0.05 = fringes reaching on average 5 % of the local edge contrast beyond
        the envelope. NaN when the planes have no strong edge.
    """
    f = to_luma(fused, name="fused")
    stack = np.stack(to_sources(planes, f.shape))
    size = 2 * radius + 1
    hi = ndimage.maximum_filter(stack.max(axis=0), size=size, mode="nearest")
    lo = ndimage.minimum_filter(stack.min(axis=0), size=size, mode="nearest")
    over = np.maximum(np.maximum(f - hi, lo - f) - tolerance, 0.0)
    grad = np.max([gradient_magnitude(p, 1.0) for p in stack], axis=0)
    strong = grad >= max(float(np.quantile(grad, edge_quantile)), 4.0)
    if not strong.any():
        return math.nan
    zone = ndimage.binary_dilation(strong, structure=np.ones((size, size), dtype=bool))
    return float(over[zone].mean() / max(float((hi - lo)[zone].mean()), 1.0))


def _line_jumps(luma: FloatImage, axis: int) -> FloatImage:
    """Mean absolute difference across each line between pixel ``k-1`` and ``k`` along ``axis``.

    Entry ``k - 1`` belongs to the boundary in front of pixel ``k``.
    """
    return np.abs(np.diff(luma, axis=axis)).mean(axis=1 - axis)


def _seam_ratios(jumps: FloatImage, seams: list[int], reach: int) -> list[float]:
    """Jump at each seam over the mean jump of the lines within ``reach`` (seam +- 1 excluded)."""
    out = []
    for s in seams:
        k = s - 1  # boundary in front of pixel s
        idx = [j for j in range(k - reach, k + reach + 1) if abs(j - k) > 1 and 0 <= j < jumps.size]
        ref = float(np.mean(jumps[idx])) if idx else 0.0
        out.append(float(jumps[k]) / ref if ref > 0.0 else (1.0 if jumps[k] == 0.0 else math.inf))
    return out


def seam_score(fused: ImageLike, tile: int = 512, overlap: int = 128, *, reach: int = 8) -> float:
    """Gradient excess across the tile-boundary lines of a tiled fusion.

    The tile grid is :func:`wsi_fusion.tiling.plan.make_plan`'s for the fused image's size, so the
    candidate seams are the inner tile edges (every tile start and end that is not on the image
    border). For each seam line the mean absolute step across it is divided by the mean step
    across the parallel lines within ``reach`` pixels (excluding the lines next to it), which
    cancels the local image content; the score is the mean over all seam lines. (The mean, not
    the median, of the neighbours: on natural images the ratio of a line to the median of its
    neighbours averages above 1, because line steps are right-skewed.)

    Blending ramps spread a mismatch over the overlap; this score detects hard seams (steps at
    the tile edges), e.g. a missing or too narrow blend, or margin artefacts.

    Parameters
    ----------
    fused
        The fused image (or a region of it whose origin is a tile-grid origin).
    tile, overlap
        The plan's tile size and overlap in pixels.
    reach
        Half-width in pixels of the neighbourhood of reference lines.

    Returns
    -------
    float
        ~1.0 = no seam; e.g. 2.0 = steps across seams twice as large as across nearby lines.
        NaN when the image fits in one tile (no seam).
    """
    f = to_luma(fused, name="fused")
    plan = make_plan(f.shape, tile=tile, overlap=overlap)
    h, w = f.shape
    row_seams = sorted({y for y in plan.ys if y > 0} | {y + tile for y in plan.ys if y + tile < h})
    col_seams = sorted({x for x in plan.xs if x > 0} | {x + tile for x in plan.xs if x + tile < w})
    ratios = _seam_ratios(_line_jumps(f, 0), row_seams, reach)
    ratios += _seam_ratios(_line_jumps(f, 1), col_seams, reach)
    return float(np.mean(ratios)) if ratios else math.nan
