"""Full-reference metrics: the fused image against a ground-truth all-in-focus image.

These are the three metrics of the cytology cGAN paper (its Eqs. 7-11: SSIM, CC, Q_MI) plus PSNR
(m-SegNet's Eqs. 18-19). All work on luminance on the 0-255 scale (see :mod:`._image`), so the
dynamic range is ``L = 255`` and Q_MI's histograms have ``n + 1 = 256`` bins, as in the paper.

PSNR and SSIM call scikit-image; CC and Q_MI are a few lines of numpy.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from wsi_fusion.metrics._image import (
    ImageLike,
    check_same_shape,
    grey_levels,
    mutual_information,
    to_luma,
)

__all__ = ["cc", "psnr", "q_mi", "ssim"]

_DATA_RANGE = 255.0


def _pair(fused: ImageLike, ground_truth: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    f = to_luma(fused, name="fused")
    g = to_luma(ground_truth, name="ground_truth")
    check_same_shape(f, g, "full-reference metric")
    return f, g


def psnr(fused: ImageLike, ground_truth: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(255^2 / MSE)`` (m-SegNet Eqs. 18-19).

    Parameters
    ----------
    fused, ground_truth
        Images of one size, (H, W) / (H, W, 3) / (3, H, W), uint8 or float in [0, 1].

    Returns
    -------
    float
        PSNR of the luminance; ``inf`` for identical images (no warning).
    """
    f, g = _pair(fused, ground_truth)
    if np.array_equal(f, g):
        return math.inf
    return float(peak_signal_noise_ratio(g, f, data_range=_DATA_RANGE))


def ssim(fused: ImageLike, ground_truth: ImageLike) -> float:
    """Mean structural similarity (cytology paper Eq. 7; Wang et al. 2004).

    Uses :func:`skimage.metrics.structural_similarity` with the settings of Wang's reference
    ``ssim_index.m``: 11 x 11 Gaussian window with sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
    population (not sample) covariance, ``L = 255``, mean over the window-valid region. Wang's
    later ``ssim.m`` also downsamples images larger than 256 px; that is not done here, so the
    value does not depend on the tile size.

    Returns
    -------
    float
        In [-1, 1]; 1 for identical images.
    """
    f, g = _pair(fused, ground_truth)
    return float(
        structural_similarity(
            g,
            f,
            data_range=_DATA_RANGE,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def cc(fused: ImageLike, ground_truth: ImageLike) -> float:
    """Pearson correlation coefficient of the two images (cytology paper Eq. 8).

    Returns
    -------
    float
        In [-1, 1]; ``nan`` when either image is constant (the coefficient is undefined).
    """
    f, g = _pair(fused, ground_truth)
    fd, gd = f - f.mean(), g - g.mean()
    denom = math.sqrt(float((fd * fd).sum()) * float((gd * gd).sum()))
    if denom == 0.0:
        return math.nan
    return float((fd * gd).sum() / denom)


def q_mi(fused: ImageLike, ground_truth: ImageLike) -> float:
    """Normalised mutual information ``2 I(X, Y) / (H(X) + H(Y))`` (cytology paper Eqs. 9-11).

    Entropies in bits from the 256 x 256 joint histogram of the grey levels 0..255 (the paper's
    ``n = 255``); float input is rounded to those levels. This is the symmetric-uncertainty form
    that the paper bounds in [0, 1]; ``skimage.metrics.normalized_mutual_information`` computes
    Studholme's ``(H(X) + H(Y)) / H(X, Y)`` in [1, 2] on a data-dependent binning, so it is not
    used.

    Returns
    -------
    float
        In [0, 1]; 1 for identical images, ~0 for independent ones; ``nan`` when both images are
        constant (0 / 0).
    """
    f, g = _pair(fused, ground_truth)
    info, hf, hg = mutual_information(grey_levels(f), grey_levels(g))
    if hf + hg == 0.0:
        return math.nan
    return 2.0 * info / (hf + hg)
