"""The inlined sub-pixel refinement gives skimage's phase_cross_correlation shifts exactly."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from wsi_fusion.registration import _correlate


def test_refinement_matches_skimage() -> None:
    rng = np.random.default_rng(0)
    base = ndi.gaussian_filter(rng.random((300, 340)), 2).astype(np.float32) * 255
    for dy, dx in [(3.37, -2.81), (-0.45, 0.6), (7.9, 5.05)]:
        fixed = base[20:276, 30:310]
        moving = ndi.shift(base, (dy, dx), order=3)[20:276, 30:310].astype(np.float32)
        f1, f2 = _correlate.spectrum(fixed), _correlate.spectrum(moving)
        match = _correlate.correlate_spectra(f1, f2, upsample=20)
        product = f1 * np.conj(f2)
        product /= np.maximum(np.abs(product), np.float32(1e-12))
        product *= _correlate._lowpass(*product.shape, 1.0)
        shift, _, _ = phase_cross_correlation(
            product, np.ones_like(product), space="fourier", upsample_factor=20, normalization=None
        )
        assert (match.dy, match.dx) == (float(-shift[0]), float(-shift[1]))
        assert abs(match.dy - dy) < 0.2 and abs(match.dx - dx) < 0.2
