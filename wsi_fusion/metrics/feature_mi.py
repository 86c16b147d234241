"""Feature mutual information FMI (Haghighat), on edge, DCT and other feature maps.

M. B. A. Haghighat, A. Aghagolzadeh, H. Seyedarabi, "A non-reference image fusion metric based on
mutual information of image features", Computers & Electrical Engineering 37(5), 2011; computed
as the authors' Fast-FMI code ``fmi.m`` (M. Haghighat, M. A. Razian, "Fast-FMI: non-reference
image fusion metric", AICT 2014), which GACN's ``FMI_EDGE`` / ``FMI_DCT`` columns come from:

* feature maps: ``'edge'`` = MATLAB ``edge(I)`` (binary Sobel edges, automatic threshold
  ``4 * mean(b)`` on the squared gradient ``b``, directional thinning), ``'dct'`` = ``dct2(I)``
  (global orthonormal 2-D DCT-II), ``'gradient'`` = MATLAB ``gradient(I)`` (its first output,
  the x-derivative), ``'none'`` = raw luminance (0-255 scale), ``'wavelet'`` = the one-level
  discrete Meyer DWT mosaic ``[cA cH; cV cD]`` stretched to [0, 1] (PyWavelets, symmetric
  extension; not checked against MATLAB);
  The DCT is taken over the whole image passed in, so FMI_DCT of a tile depends on the tile
  size; compare FMI_DCT values only between images of one size.
* sliding ``w x w`` windows (``w = 3``) over the feature maps, ``'valid'`` positions only;
* in each window the source and fused features are min-max normalised (a flat window becomes all
  ones) and divided by their sum to give "marginal PDFs" over the ``w^2`` pixel positions (in
  MATLAB's column-major order), whose joint PDF is estimated by Nelsen's method: a mix of the
  product (independence) and the Frechet upper (``c >= 0``) or lower (``c < 0``) bound
  copula, matched to the Pearson correlation ``c`` of the two PDFs;
* per window ``FMI_SF = 2 I(S; F) / (H(S) + H(F))`` (1 if the windows are identical, 0 if the
  mutual information is exactly 0); the metric is the mean over windows of the mean over sources.

N-source generalisation
    The reference averages ``(FMI_AF + FMI_BF) / 2`` per window; for N sources the mean over the
    N sources is taken. For N = 2 this is the published value, with one deviation: ``fmi.m``
    normalises the fused window in place while scoring source A and then tests source B's window
    for identity against that *normalised* window, which makes the value depend on the source
    order (e.g. an all-zero edge window counts as identical for A but not for B). Here every
    source is compared with the raw fused window, which is order-independent and what the paper
    describes.

The windows are processed vectorised in row chunks; windows identical in source and fused image
(most windows of binary edge maps) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import numpy.typing as npt
import pywt
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft, ndimage

from wsi_fusion.errors import UnsupportedInput
from wsi_fusion.metrics._image import FloatImage, ImageLike, to_luma, to_sources

__all__ = ["FmiFeature", "fmi", "fmi_features"]

FmiFeature = Literal["edge", "dct", "gradient", "none", "wavelet"]
_FEATURES = ("edge", "dct", "gradient", "none", "wavelet")

#: Windows per vectorised chunk; bounds the (chunk, w^2, w^2) joint-PDF arrays to ~10 MB each.
_CHUNK = 16384


def _matlab_edge(img: FloatImage) -> FloatImage:
    """MATLAB ``edge(I)`` with its defaults: Sobel, threshold ``sqrt(4 mean(b))``, thinning."""
    op = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 8.0
    # imfilter(..., 'replicate') is a correlation with edge replication.
    bx = np.abs(ndimage.correlate(img, op.T, mode="nearest"))
    by = np.abs(ndimage.correlate(img, op, mode="nearest"))
    b = bx * bx + by * by
    cutoff = 4.0 * b.mean()
    m, n = b.shape
    # Thinning: a pixel is an edge if b is a strict local maximum across the dominant gradient
    # direction (left/right when |bx| >= |by|, up/down when |by| >= |bx|); borders never qualify.
    # This is the pure-MATLAB thinning of edge.m before it moved to a MEX file; how the MEX
    # breaks exact ties (a two-pixel plateau of b) has not been checked.
    horiz = np.zeros((m, n), dtype=bool)
    horiz[:, 1:-1] = (b[:, :-2] < b[:, 1:-1]) & (b[:, 1:-1] > b[:, 2:])
    vert = np.zeros((m, n), dtype=bool)
    vert[1:-1, :] = (b[:-2, :] < b[1:-1, :]) & (b[1:-1, :] > b[2:, :])
    edges = (b > cutoff) & (((bx >= by) & horiz) | ((by >= bx) & vert))
    return edges.astype(np.float64)


def _rerange(x: FloatImage) -> FloatImage:
    """Stretch to [0, 1]; a constant array becomes all ones (``rerange`` in ``fmi.m``)."""
    lo, hi = x.min(), x.max()
    return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)


def fmi_features(luma: FloatImage, feature: FmiFeature) -> FloatImage:
    """The feature map ``fmi.m`` extracts from a luminance image (0-255 scale)."""
    if feature == "edge":
        return _matlab_edge(luma)
    if feature == "dct":
        return fft.dctn(luma, type=2, norm="ortho")
    if feature == "gradient":
        return np.gradient(luma, axis=1)
    if feature == "none":
        return luma
    if feature == "wavelet":
        ca, (ch, cv, cd) = pywt.dwt2(luma, "dmey", mode="symmetric")
        return _rerange(np.block([[ca, ch], [cv, cd]]))
    raise UnsupportedInput(f"FMI feature {feature!r} is unknown; use one of {', '.join(_FEATURES)}")


def _windows(feat: FloatImage, w: int, rows: slice) -> FloatImage:
    """The ``w x w`` windows whose top rows are ``rows``, flattened column-major, (P, w^2)."""
    view = sliding_window_view(feat, (w, w))[rows]
    return np.swapaxes(view, -1, -2).reshape(-1, w * w)


def _to_pdf(x: FloatImage) -> FloatImage:
    """Min-max normalise each row (flat rows -> ones), then divide by the row sum."""
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    flat = span == 0.0
    y = np.where(flat, 1.0, (x - lo) / np.where(flat, 1.0, span))
    return y / y.sum(axis=1, keepdims=True)


def _entropy_rows(p: FloatImage) -> FloatImage:
    """``sum -p log2|p|`` over all but the first axis, zero cells skipped.

    ``|p|`` because Nelsen's mix can leave tiny negative joint "probabilities", for which
    MATLAB's ``real(-p .* log2(p))`` is ``-p log2|p|``.
    """
    a = np.abs(p)
    np.log2(a, out=a, where=a > 0.0)
    return -(p * a).reshape(p.shape[0], -1).sum(axis=1)


def _nelsen_nmi(a_pdf: FloatImage, f_pdf: FloatImage) -> FloatImage:
    """Normalised MI ``2 I / (H_a + H_f)`` per window from the Nelsen joint PDF, (P,)."""
    n = a_pdf.shape[1]
    a_cdf, f_cdf = np.cumsum(a_pdf, axis=1), np.cumsum(f_pdf, axis=1)

    # Pearson correlation of the two PDFs; exactly 0 where the raw cross-product sums to 0.
    at = a_pdf - a_pdf.mean(axis=1, keepdims=True)
    ft = f_pdf - f_pdf.mean(axis=1, keepdims=True)
    cross = (at * ft).sum(axis=1)
    denom = np.sqrt((at * at).sum(axis=1) * (ft * ft).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(cross == 0.0, 0.0, cross / np.where(denom > 0.0, denom, 1.0))

    # "Standard deviations" of the PDFs over positions 1..n, as the reference computes them.
    pos = np.arange(1, n + 1, dtype=np.float64)
    a_sd = np.sqrt(np.maximum(a_pdf @ (pos * pos) - (a_pdf @ pos) ** 2, 0.0))
    f_sd = np.sqrt(np.maximum(f_pdf @ (pos * pos) - (f_pdf @ pos) ** 2, 0.0))
    sd_ok = (a_sd > 0.0) & (f_sd > 0.0)

    h_a, h_f = _entropy_rows(a_pdf), _entropy_rows(f_pdf)
    h_joint = np.empty_like(c)
    for upper in (True, False):
        idx = np.flatnonzero((c >= 0.0) == upper)
        if idx.size == 0:
            continue
        fi, aj = f_cdf[idx, :, None], a_cdf[idx, None, :]  # joint tables are [window, f, a]
        # Frechet-Hoeffding bound copula on the two CDFs: upper for c >= 0, lower for c < 0.
        if upper:
            bound = np.minimum(fi, aj)
        else:
            bound = fi + aj - 1.0
            np.maximum(bound, 0.0, out=bound)
        # sum_ij (bound - F_i A_j) = sum bound - (sum_i F_i)(sum_j A_j)
        cov = bound.sum(axis=(1, 2)) - f_cdf[idx].sum(axis=1) * a_cdf[idx].sum(axis=1)
        ci, ok = c[idx], sd_ok[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            mix = ci / (cov / np.where(ok, f_sd[idx] * a_sd[idx], 1.0))
        mix = np.where(ok & (ci != 0.0) & np.isfinite(mix), mix, 0.0)[:, None, None]
        # Joint PDF: 2-D difference of the bound (zero outside), mixed with independence.
        jpdf = np.diff(np.diff(bound, axis=1, prepend=0.0), axis=2, prepend=0.0)
        jpdf *= mix
        indep = f_pdf[idx, :, None] * a_pdf[idx, None, :]
        indep *= 1.0 - mix
        jpdf += indep
        h_joint[idx] = _entropy_rows(jpdf)
    info = h_a + h_f - h_joint
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(info == 0.0, 0.0, 2.0 * info / (h_a + h_f))


def _fmi_windows(s_win: FloatImage, f_win: FloatImage) -> FloatImage:
    """Per-window normalised feature MI between source and fused windows, (P,)."""
    out = np.ones(s_win.shape[0])
    # Identical windows score 1 without further work: most windows of binary edge maps.
    todo = np.flatnonzero(~np.all(s_win == f_win, axis=1))
    if todo.size:
        out[todo] = _nelsen_nmi(_to_pdf(s_win[todo]), _to_pdf(f_win[todo]))
    return out


def fmi(
    fused: ImageLike,
    sources: Iterable[ImageLike],
    feature: FmiFeature = "edge",
    window: int = 3,
) -> float:
    """Haghighat's feature mutual information, generalised to N sources (module docstring).

    Parameters
    ----------
    fused
        The fused image.
    sources
        N >= 1 source images of the same size.
    feature
        ``'edge'`` (FMI_EDGE, the reference's default), ``'dct'`` (FMI_DCT), ``'gradient'``,
        ``'none'`` (FMI_pixel) or ``'wavelet'`` (FMI_W).
    window
        Odd sliding-window size (reference default 3).

    Returns
    -------
    float
        In [0, 1]; 1 when the fused image equals every source.
    """
    if window < 3 or window % 2 == 0:
        raise UnsupportedInput(f"FMI window {window} must be an odd size >= 3 (reference: 3)")
    if feature not in _FEATURES:
        raise UnsupportedInput(
            f"FMI feature {feature!r} is unknown; use one of {', '.join(_FEATURES)}"
        )
    f = to_luma(fused, name="fused")
    srcs = to_sources(sources, f.shape)
    f_feat = fmi_features(f, feature)
    if min(f_feat.shape) < window:
        raise UnsupportedInput(f"FMI needs images of at least {window} x {window} pixels")
    s_feats = [fmi_features(s, feature) for s in srcs]
    n_rows = f_feat.shape[0] - window + 1
    n_cols = f_feat.shape[1] - window + 1
    rows_per_chunk = max(1, _CHUNK // n_cols)
    total = 0.0
    for r0 in range(0, n_rows, rows_per_chunk):
        rows = slice(r0, min(r0 + rows_per_chunk, n_rows))
        f_win = _windows(f_feat, window, rows)
        acc: npt.NDArray[np.float64] = np.zeros(f_win.shape[0])
        for s_feat in s_feats:
            acc += _fmi_windows(_windows(s_feat, window, rows), f_win)
        total += float(acc.sum())
    return total / (len(s_feats) * n_rows * n_cols)
