"""Information-theoretic no-reference metrics: MI, normalised MI (Hossny) and Q_NCIE.

All three follow the convention of the toolboxes the papers' numbers come from (Z. Liu's
imageFusionMetrics, VIFB): each image is min-max stretched to integer levels 0-255
(``normalize1.m``) and probabilities come from 256-bin (joint) histograms; logarithms are base 2.

N-source generalisation
    The two-source formulas are sums of one term per source. Summing over N sources would make
    the value grow with the number of planes, so the sum is rescaled by ``2 / N``: the value for
    N = 2 is exactly the published one, and values stay comparable between stacks of different
    depth. Q_NCIE needs no rescaling: its correlation matrix simply has ``N + 1`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from wsi_fusion.metrics._image import (
    ImageLike,
    entropy,
    joint_histogram,
    mutual_information,
    normalize1,
    to_luma,
    to_sources,
)

__all__ = ["mi", "mi_norm", "q_ncie"]


def _levels(fused: ImageLike, sources: Iterable[ImageLike]) -> tuple[np.ndarray, list[np.ndarray]]:
    f = to_luma(fused, name="fused")
    srcs = to_sources(sources, f.shape)
    return normalize1(f), [normalize1(s) for s in srcs]


def mi(fused: ImageLike, sources: Iterable[ImageLike]) -> float:
    """Fusion mutual information ``MI = (2/N) sum_s I(S; F)`` in bits.

    m-SegNet (Pei et al. 2021, Eq. 20) defines ``MI(A, B) = H(A) + H(B) + H(A, B)``; the ``+``
    before the joint entropy is a typo (it would exceed ``H(A) + H(B)``), the standard
    ``I(A; F) = H(A) + H(F) - H(A, F)`` is used. The fusion score for two sources is
    ``I(A; F) + I(B; F)`` (Qu et al. 2002; VIFB ``metricsMutinf.m``), rescaled by ``2 / N`` for N
    sources (module docstring).

    Returns
    -------
    float
        In [0, 2 log2(256)] = [0, 16]; ``2 H(F)`` when the fused image equals every source.
    """
    fl, sl = _levels(fused, sources)
    return 2.0 / len(sl) * sum(mutual_information(s, fl)[0] for s in sl)


def mi_norm(fused: ImageLike, sources: Iterable[ImageLike]) -> float:
    """Hossny's normalised fusion MI ``(2/N) sum_s 2 I(S; F) / (H(S) + H(F))``.

    M. Hossny, S. Nahavandi, D. Creighton, "Comments on 'Information measure for performance of
    image fusion'", Electronics Letters 44(18), 2008, as Z. Liu's ``metricMI.m`` (``sw = 1``)
    computes it: ``2 [I(A;F)/(H(A)+H(F)) + I(B;F)/(H(B)+H(F))]`` for two sources. Unlike plain MI
    it does not reward a fused image merely for having a high entropy.

    Returns
    -------
    float
        In [0, 2]; 2 when the fused image equals every source. A constant image pair (zero
        entropies) contributes 0.
    """
    fl, sl = _levels(fused, sources)
    total = 0.0
    for s in sl:
        info, hs, hf = mutual_information(s, fl)
        total += 2.0 * info / (hs + hf) if hs + hf > 0.0 else 0.0
    return 2.0 / len(sl) * total


def _ncc(a: np.ndarray, b: np.ndarray, bins: int = 256) -> float:
    """Nonlinear correlation coefficient with base-``bins`` entropies (Liu's ``NCC.m``)."""
    pab = joint_histogram(a, b, bins)
    return (entropy(pab.sum(axis=1), bins) + entropy(pab.sum(axis=0), bins)) - entropy(pab, bins)


def q_ncie(fused: ImageLike, sources: Iterable[ImageLike]) -> float:
    """Nonlinear correlation information entropy Q_NCIE (Wang, Shen & Zhang), N sources.

    Q. Wang, Y. Shen, J. Jin, "Performance evaluation of image fusion techniques", ch. 19 of
    *Image Fusion: Algorithms and Applications* (2008); NCC from Q. Wang, Y. Shen, J. Q. Zhang,
    Physica D 200 (2005). Computed as Z. Liu's ``metricWang.m`` / ``NCC.m``:

    * ``NCC(X, Y) = H_b(X) + H_b(Y) - H_b(X, Y)`` from the 256 x 256 joint histogram of the
      ``normalize1``-d images, entropies in base ``b = 256``. (Wang's paper bins by *rank* so
      that ``NCC(X, X) = 1``; the toolbox bins grey levels, and its numbers are the published
      ones.)
    * ``R`` = the ``K x K`` matrix of NCCs between all images (sources and fused), unit diagonal,
      ``K = N + 1`` -- NCIE is defined for any number of variables, so this *is* the N-source
      form; for N = 2 it is the toolbox's 3 x 3 matrix.
    * ``H_R = -sum_k (lambda_k / K) log_b(lambda_k / K)`` over the eigenvalues of R, with the
      toolbox's base ``b = 256`` (the paper uses base K, giving a [0, 1] range);
      ``Q_NCIE = 1 - H_R``. Eigenvalues that round-off makes slightly negative are clipped to 0.

    Returns
    -------
    float
        ``1 - log_256(K)`` (all images independent) .. 1 (all identical with uniform histograms);
        about 0.80-0.85 for real fusion results with N = 2.
    """
    fl, sl = _levels(fused, sources)
    images = [*sl, fl]
    k = len(images)
    r = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            r[i, j] = r[j, i] = _ncc(images[i], images[j])
    lam = np.clip(np.linalg.eigvalsh(r), 0.0, None) / k
    lam = lam[lam > 0]
    h_r = float(-(lam * np.log(lam)).sum() / math.log(256))
    return 1.0 - h_r
