"""Tissue detection on a low-resolution thumbnail.

Otsu on grey OR a saturation threshold (stained tissue is coloured even where it is pale), then a
morphological closing and removal of small specks. Tiles whose tissue fraction is below a
threshold are not fused: they are copied from the reference plane, so the output stays complete.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, remove_small_objects
from skimage.util import img_as_float

from wsi_fusion._types import Box, RGBRegion

#: Saturation above which a pixel counts as stained tissue whatever its brightness.
_MIN_SATURATION = 0.07


def tissue_mask(thumbnail: RGBRegion) -> npt.NDArray[np.bool_]:
    """Boolean tissue mask of an (h, w, 3) uint8 thumbnail."""
    grey = thumbnail.mean(axis=2)
    if float(grey.max() - grey.min()) < 2.0:
        # A uniform image has no Otsu threshold; glass and tissue cannot be told apart, so fuse it
        # all rather than risk copying tissue unfused.
        return np.ones(grey.shape, dtype=bool)
    dark = grey < threshold_otsu(grey)
    saturated = _saturation(thumbnail) > _MIN_SATURATION
    mask = closing(dark | saturated, disk(2))
    min_area = max(4, mask.size // 20000)
    return remove_small_objects(mask, max_size=min_area)


def _saturation(rgb: RGBRegion) -> npt.NDArray[np.float64]:
    """HSV saturation of an (h, w, 3) uint8 image, as ``skimage.color.rgb2hsv(rgb)[..., 1]``.

    Same arithmetic on the channel extremes only: rgb2hsv also computes hue and value in float64
    for every pixel, which costs ~1 s on a 2048-px thumbnail.
    """
    high = img_as_float(rgb.max(axis=2))
    delta = high - img_as_float(rgb.min(axis=2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = delta / high
    out[delta == 0.0] = 0.0
    return out  # type: ignore[no-any-return]


def tile_fractions(
    mask: npt.NDArray[np.bool_], shape: tuple[int, int], boxes: list[Box]
) -> npt.NDArray[np.float32]:
    """Fraction of tissue in each level-0 ``box``, measured on ``mask`` of a ``shape`` slide."""
    sy, sx = mask.shape[0] / shape[0], mask.shape[1] / shape[1]
    # An integral image makes each box sum O(1).
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out = np.empty(len(boxes), dtype=np.float32)
    for i, b in enumerate(boxes):
        y0 = min(int(b.y * sy), mask.shape[0] - 1)
        x0 = min(int(b.x * sx), mask.shape[1] - 1)
        y1 = max(min(int(np.ceil(b.y1 * sy)), mask.shape[0]), y0 + 1)
        x1 = max(min(int(np.ceil(b.x1 * sx)), mask.shape[1]), x0 + 1)
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        out[i] = total / ((y1 - y0) * (x1 - x0))
    return out
