"""Gradient-based no-reference metrics: Q^AB/F (Xydeas-Petrovic) and the average gradient Q_AVG.

Q^AB/F
    C. S. Xydeas and V. Petrovic, "Objective image fusion performance measure", Electronics
    Letters 36(4), 2000; the ``Q_g`` of GACN (Ma et al. 2021, Eqs. 8-18) and m-SegNet's
    ``Q^AB/F`` (Eqs. 14-15). Constants follow the widely used reference ``Qabf.m`` (as shipped
    with VIFB, ``metricsQabf.m``), which the published tables are computed with:
    ``L = 1, Gamma_g = 0.9994, kappa_g = -15, sigma_g = 0.5, Gamma_a = 0.9879, kappa_a = -22,
    sigma_a = 0.8``. (GACN's text quotes the original paper's ``1, -10, 0.5, 1, -20, 0.75``, which
    Z. Liu's ``metricXydeas.m`` uses; pass ``constants=`` to reproduce those.)

Q_AVG
    Average gradient, m-SegNet Eq. 16.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsi_fusion.metrics._image import FloatImage, ImageLike, to_luma, to_sources

__all__ = ["QABF_REFERENCE", "QabfConstants", "q_abf", "q_avg"]

# Sobel kernels of Qabf.m, applied with conv2(..., 'same') (true convolution, zero padding):
# h3 responds to x (columns), h1 to y (rows).
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


@dataclass(frozen=True)
class QabfConstants:
    """Sigmoid constants of Q^AB/F (GACN Eqs. 15-16) and the weight exponent L."""

    gamma_g: float = 0.9994
    kappa_g: float = -15.0
    sigma_g: float = 0.5
    gamma_a: float = 0.9879
    kappa_a: float = -22.0
    sigma_a: float = 0.8
    L: float = 1.0


#: The reference implementation's constants (``Qabf.m`` / VIFB ``metricsQabf.m``).
QABF_REFERENCE = QabfConstants()


def _sobel(luma: FloatImage) -> tuple[FloatImage, FloatImage]:
    """Edge strength g and orientation alpha per pixel, as ``Qabf.m`` computes them."""
    sx = ndimage.convolve(luma, _SOBEL_X, mode="constant", cval=0.0)
    sy = ndimage.convolve(luma, _SOBEL_Y, mode="constant", cval=0.0)
    g = np.hypot(sx, sy)
    # atan(sy / sx) in (-pi/2, pi/2), pi/2 where sx == 0 -- the reference's convention (not atan2).
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sx == 0.0, np.pi / 2, np.arctan(sy / np.where(sx == 0.0, 1.0, sx)))
    return g, alpha


def _preservation(
    g_s: FloatImage, a_s: FloatImage, g_f: FloatImage, a_f: FloatImage, c: QabfConstants
) -> FloatImage:
    """Edge information preservation Q^{SF} per pixel (GACN Eqs. 10, 11, 15-17)."""
    hi = np.maximum(g_s, g_f)
    # Relative strength min/max. Qabf.m sets it to g_F (not 1) where g_S == g_F; that only
    # differs where 0 < g < ~1 grey level, whose weight g^L is ~0, and 1 is the ratio's limit.
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(hi > 0.0, np.minimum(g_s, g_f) / np.where(hi > 0.0, hi, 1.0), 1.0)
    orient = 1.0 - np.abs(a_s - a_f) / (np.pi / 2)
    q_g = c.gamma_g / (1.0 + np.exp(c.kappa_g * (rel - c.sigma_g)))
    q_a = c.gamma_a / (1.0 + np.exp(c.kappa_a * (orient - c.sigma_a)))
    return q_g * q_a


def q_abf(
    fused: ImageLike, sources: Iterable[ImageLike], *, constants: QabfConstants = QABF_REFERENCE
) -> float:
    """Xydeas-Petrovic edge-preservation metric Q^AB/F, generalised to N sources.

    ``Q = sum_s sum_i Q_i^{sF} w_i^s / sum_s sum_i w_i^s`` with ``w^s = (g^s)^L``: every source's
    edge-preservation map weighted by that source's edge strength, normalised by the summed
    weights. For N = 2 this is exactly GACN Eq. 18 / the reference ``Qabf.m``; the order of the
    sources does not matter.

    Sobel gradients with zero padding (``conv2(..., 'same')``), orientation ``atan(s_y / s_x)``,
    luminance on the 0-255 scale (the metric is scale-invariant apart from the g_S == g_F tie).

    Parameters
    ----------
    fused
        The fused image.
    sources
        N >= 1 source images (focal planes) of the fused image's size.
    constants
        Sigmoid constants; the default is the reference implementation's.

    Returns
    -------
    float
        In [0, ~0.975]: the maximum, reached when the fused image reproduces every source's
        edges, is ``Gamma_g / (1 + e^{kappa_g / 2}) * Gamma_a / (1 + e^{0.2 kappa_a})`` = 0.9748
        with the reference constants. 0.0 when no source has any edge.
    """
    f = to_luma(fused, name="fused")
    srcs = to_sources(sources, f.shape)
    g_f, a_f = _sobel(f)
    num = den = 0.0
    for s in srcs:
        g_s, a_s = _sobel(s)
        w = g_s**constants.L
        num += float((_preservation(g_s, a_s, g_f, a_f, constants) * w).sum())
        den += float(w.sum())
    return num / den if den > 0.0 else 0.0


def q_avg(fused: ImageLike, sources: Iterable[ImageLike] | None = None) -> float:
    """Average gradient of the fused image (m-SegNet Eq. 16).

    ``Q_AVG = 1/((M-1)(N-1)) sum_{i<M, j<N} sqrt((dx^2 + dy^2) / 2)`` with
    ``dy = H[i+1, j] - H[i, j]``, ``dx = H[i, j+1] - H[i, j]``: forward differences on the
    (M-1) x (N-1) grid, in grey levels per pixel (0-255 scale).
    VIFB's ``metricsAvg_gradient.m`` uses MATLAB's central-difference ``gradient`` instead; the
    paper's forward differences are used here.

    Parameters
    ----------
    fused
        The fused image.
    sources
        Ignored (the metric looks at the fused image only); accepted so that every no-reference
        metric has one signature.
    """
    h = to_luma(fused, name="fused")
    dy = h[1:, :-1] - h[:-1, :-1]
    dx = h[:-1, 1:] - h[:-1, :-1]
    return float(np.sqrt((dx * dx + dy * dy) / 2.0).mean())
