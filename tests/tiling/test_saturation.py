"""The tissue mask's saturation equals skimage's HSV saturation exactly."""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2hsv

from wsi_fusion.tiling.tissue import _saturation


def test_saturation_matches_rgb2hsv_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    image[:4] = 0  # black: max == 0
    image[4:8] = 200  # grey: delta == 0
    assert np.array_equal(_saturation(image), rgb2hsv(image)[..., 1])
