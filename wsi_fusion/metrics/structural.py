"""Yang's SSIM-based fusion metric Q_Y.

C. Yang, J.-Q. Zhang, X.-R. Wang, X. Liu, "A novel similarity based quality metric for image
fusion", Information Fusion 9 (2008) 156-160. Computed as Z. Liu's ``metricYang.m``:

* local SSIM maps with a 7 x 7 Gaussian window (sigma 1.5, normalised), ``'valid'`` filtering,
  population variances, and constants ``C1 = C2 = 2e-16`` (i.e. essentially none);
* where the sources are similar (``SSIM(A, B | w) >= 0.75``) the window scores
  ``lambda SSIM(A, F | w) + (1 - lambda) SSIM(B, F | w)`` with the saliency weight
  ``lambda = s_A^2 / (s_A^2 + s_B^2)`` (local variances); elsewhere
  ``max(SSIM(A, F | w), SSIM(B, F | w))``;
* ``Q_Y`` is the mean over windows.

``skimage.metrics.structural_similarity`` is not used here: its Gaussian window is fixed at
11 x 11 (``truncate = 3.5``) and it does not return the local variances Q_Y needs.

N-source generalisation
    "Similar sources" becomes "every pair of sources similar" (minimum pairwise SSIM >= 0.75);
    there the window scores the variance-weighted mean ``sum_s lambda_s SSIM(S, F | w)`` with
    ``lambda_s = s_S^2 / sum_t s_t^2``, elsewhere ``max_s SSIM(S, F | w)``. For N = 2 this is the
    published formula; it is symmetric in the order of the sources. Where every source is flat
    (all variances 0, the reference gives 0/0) the weights are taken equal.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from wsi_fusion.errors import UnsupportedInput
from wsi_fusion.metrics._image import FloatImage, ImageLike, filter2_same, to_luma, to_sources

__all__ = ["q_y"]

_C = 2e-16
_SIMILAR = 0.75


def _gauss_window(size: int = 7, sigma: float = 1.5) -> FloatImage:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)`` (it is separable)."""
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


_WIN = _gauss_window()
_HALF = len(_WIN) // 2


def _filt(img: FloatImage) -> FloatImage:
    """``filter2(window, img, 'valid')`` with the separable 7 x 7 Gaussian."""
    return filter2_same(img, _WIN)[_HALF:-_HALF, _HALF:-_HALF]


def _moments(img: FloatImage) -> tuple[FloatImage, FloatImage]:
    """Local mean and (population) variance in the window."""
    mu = _filt(img)
    return mu, _filt(img * img) - mu * mu


def _ssim_map(
    a: FloatImage,
    mu_a: FloatImage,
    var_a: FloatImage,
    b: FloatImage,
    mu_b: FloatImage,
    var_b: FloatImage,
) -> FloatImage:
    """Yang's local SSIM map (``ssim_yang`` in ``metricYang.m``)."""
    cov = _filt(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + _C) * (2 * cov + _C)) / (
        (mu_a * mu_a + mu_b * mu_b + _C) * (var_a + var_b + _C)
    )


def q_y(fused: ImageLike, sources: Iterable[ImageLike]) -> float:
    """Yang's metric Q_Y, generalised to N sources (see the module docstring).

    Parameters
    ----------
    fused
        The fused image, at least 7 x 7 pixels.
    sources
        N >= 1 source images of the same size.

    Returns
    -------
    float
        At most 1; 1 when the fused image equals every source.
    """
    f = to_luma(fused, name="fused")
    if min(f.shape) < len(_WIN):
        raise UnsupportedInput(f"Q_Y needs images of at least 7 x 7 pixels, got {f.shape}")
    srcs = to_sources(sources, f.shape)
    mu_f, var_f = _moments(f)
    mom = [_moments(s) for s in srcs]
    to_f = np.stack(
        [_ssim_map(s, m, v, f, mu_f, var_f) for s, (m, v) in zip(srcs, mom, strict=True)]
    )
    similar = np.ones(mu_f.shape, dtype=bool)
    for i in range(len(srcs)):
        for j in range(i + 1, len(srcs)):
            pair = _ssim_map(srcs[i], *mom[i], srcs[j], *mom[j])
            similar &= pair >= _SIMILAR
    var = np.stack([np.maximum(v, 0.0) for _, v in mom])
    total = var.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(total > 0.0, var / np.where(total > 0.0, total, 1.0), 1.0 / len(srcs))
    q = np.where(similar, (lam * to_f).sum(axis=0), to_f.max(axis=0))
    return float(q.mean())
