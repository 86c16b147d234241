"""Chen-Blum perceptual fusion metric Q_CB.

Y. Chen, R. S. Blum, "A new automated quality assessment algorithm for image fusion", Image and
Vision Computing 27 (2009) 1421-1432. Computed as Z. Liu's ``metricChenBlum.m`` (also VIFB's
``metricsQcb.m``), whose settings are:

1. every image min-max stretched to integer levels 0-255 (``normalize1``);
2. contrast-sensitivity filtering in the frequency domain with the DoG CSF
   ``S(r) = exp(-(r/f0)^2) - a exp(-(r/f1)^2)``, ``f0 = 15.3870, f1 = 1.3456, a = 0.7622``, on the
   ``freqspace`` grid scaled by ``(W/30, H/30)`` (the code's "DoG1" setting);
3. Peli's band-limited local contrast ``C = (G_2 * I) / (G_4 * I) - 1`` with 31 x 31 (unnormalised)
   Gaussians of sigma 2 and 4, correlated with zero padding (``filter2(..., 'same')``);
4. masked contrast ``C' = k |C|^p / (h |C|^q + Z)``, ``k = h = 1, p = 3, q = 2, Z = 1e-4``;
5. contrast preservation ``Q_SF = min(C'_S, C'_F) / max(C'_S, C'_F)``;
6. saliency weights ``lambda_S = C'_S^2 / sum_T C'_T^2`` and ``Q_CB = mean(sum_S lambda_S Q_SF)``.

Deviations: the CSF-filtered images are taken as real (the imaginary part of ``ifft2`` is
round-off, the filter being even); where a ratio or weight is 0/0 -- both contrasts zero, which
the reference turns into NaN -- the preservation is taken as 1 and the weights as equal.

N-source generalisation
    Step 6 already is one: the saliency weights run over all N sources. For N = 2 it is the
    published formula, and it is symmetric in the order of the sources.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from wsi_fusion.metrics._image import (
    FloatImage,
    ImageLike,
    filter2_same,
    normalize1,
    to_luma,
    to_sources,
)

__all__ = ["q_cb"]

_F0, _F1, _A = 15.3870, 1.3456, 0.7622
_K, _H, _P, _Q, _Z = 1.0, 1.0, 3.0, 2.0, 1e-4


def _csf(shape: tuple[int, int]) -> FloatImage:
    """The DoG contrast-sensitivity filter on MATLAB's centred ``freqspace`` grid."""
    rows, cols = shape

    def freqspace(n: int) -> FloatImage:
        return (np.arange(n, dtype=np.float64) - n // 2) * (2.0 / n)

    u = freqspace(cols)[None, :] * (cols / 30.0)
    v = freqspace(rows)[:, None] * (rows / 30.0)
    r = np.sqrt(u * u + v * v)
    csf: FloatImage = np.exp(-((r / _F0) ** 2)) - _A * np.exp(-((r / _F1) ** 2))
    return csf


def _gauss31(sigma: float) -> FloatImage:
    """1-D factor of the reference's 31 x 31 Gaussian ``exp(-(x^2+y^2)/2s^2) / (2 pi s^2)``."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


_G2, _G4 = _gauss31(2.0), _gauss31(4.0)


def _masked_contrast(luma: FloatImage, csf: FloatImage) -> FloatImage:
    """Masked local contrast C' of one image (steps 1-4)."""
    img = normalize1(luma).astype(np.float64)
    filtered = np.real(np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(img)) * csf)))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(filter2_same(filtered, _G2) / filter2_same(filtered, _G4) - 1.0)
    c = np.nan_to_num(c, nan=0.0, posinf=0.0)
    return _K * c**_P / (_H * c**_Q + _Z)


def q_cb(fused: ImageLike, sources: Iterable[ImageLike]) -> float:
    """Chen-Blum metric Q_CB, generalised to N sources (see the module docstring).

    Parameters
    ----------
    fused
        The fused image.
    sources
        N >= 1 source images of the same size.

    Returns
    -------
    float
        In [0, 1]; 1 when the fused image equals every source.
    """
    f = to_luma(fused, name="fused")
    srcs = to_sources(sources, f.shape)
    csf = _csf(f.shape)
    cf = _masked_contrast(f, csf)
    pres, weight = [], []
    for s in srcs:
        cs = _masked_contrast(s, csf)
        hi = np.maximum(cs, cf)
        with np.errstate(divide="ignore", invalid="ignore"):
            pres.append(np.where(hi > 0.0, np.minimum(cs, cf) / np.where(hi > 0.0, hi, 1.0), 1.0))
        weight.append(cs * cs)
    p, w = np.stack(pres), np.stack(weight)
    wsum = w.sum(axis=0)
    # Where every source has zero contrast the weights are 0/0 (NaN in the reference): equal.
    w = np.where(wsum > 0.0, w, 1.0)
    q = (w * p).sum(axis=0) / w.sum(axis=0)
    return float(q.mean())
