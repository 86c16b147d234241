"""The two-band composition (``fusers._low_band``): known answers."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers._low_band import (
    _interpolate,
    interpolation_taps,
    low_band_reach,
    two_band_sum,
)


def upsample(cells: np.ndarray, cell: int, h: int, w: int) -> np.ndarray:
    """``two_band_sum``'s interpolation of cell values to ``(h, w)`` pixels, in one strip."""
    out = np.empty((h, w), dtype=np.float32)
    rows, frac = interpolation_taps(cells.shape[0], cell, h)
    _interpolate(cells, interpolation_taps(cells.shape[1], cell, w), (rows, frac[:, None]), out)
    return out


def test_upsample_is_bilinear_with_cell_centres() -> None:
    # torch's interpolate(mode="bilinear", align_corners=False) places the samples as we do.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for h_cells, w_cells, cell, h, w in [(7, 5, 4, 27, 20), (1, 3, 4, 3, 11), (6, 6, 1, 6, 6)]:
        cells = rng.random((h_cells, w_cells)).astype(np.float32)
        want = torch.nn.functional.interpolate(
            torch.from_numpy(cells)[None, None],
            size=(h_cells * cell, w_cells * cell),
            mode="bilinear",
            align_corners=False,
        )[0, 0, :h, :w].numpy()
        np.testing.assert_allclose(upsample(cells, cell, h, w), want, atol=1e-6)


def _two_flat_planes() -> np.ndarray:
    """Two grey planes 0.3 and 0.6 with the same texture, 64 x 96 px."""
    rng = np.random.default_rng(1)
    texture = rng.normal(0.0, 0.02, (64, 96)).astype(np.float32)
    return np.stack([np.repeat((level + texture)[None], 3, axis=0) for level in (0.3, 0.6)])


def test_brightness_ramps_across_a_change_of_plane_and_detail_stays_picked() -> None:
    stack = _two_flat_planes()
    weights = np.zeros((2, 64, 96), dtype=np.float32)
    weights[0, :, :48] = 1.0
    weights[1, :, 48:] = 1.0
    surface = np.zeros((16, 24), dtype=np.intp)
    surface[:, 12:] = 1
    fused = two_band_sum(stack, weights, np.array([0, 1]), surface, cell=4, radius=1)
    reach = low_band_reach(4, 1)
    # Beyond the low band's reach the output is the picked plane's pixel.
    np.testing.assert_allclose(fused[:, :, : 48 - reach], stack[0][:, :, : 48 - reach], atol=1e-6)
    np.testing.assert_allclose(fused[:, :, 48 + reach :], stack[1][:, :, 48 + reach :], atol=1e-6)
    # Across the change the brightness (the texture cancels in the column mean) ramps over
    # several px instead of stepping by 0.3 at once; the texture is the picked plane's.
    profile = (fused[0] - stack[0][0] + 0.3).mean(axis=0)
    steps = np.diff(profile)
    assert steps.min() > -1e-3 and steps.max() < 0.1
    assert profile[47] < 0.5 < profile[48] + 0.1
    detail = fused[0, :, 40:56] - fused[0, :, 40:56].mean(axis=0)
    texture = stack[0, 0, :, 40:56] - stack[0, 0, :, 40:56].mean(axis=0)
    np.testing.assert_allclose(detail, texture, atol=2e-3)


def test_default_fuser_blends_the_low_band_only_where_planes_change() -> None:
    """Where the surface changes between planes that differ only in brightness, the guided
    filter alone leaves a 0.3 step spread over ~4 px; the low band spreads it over ~15 px."""
    stack = _two_flat_planes()
    # Sharp detail on the left of plane 0 and the right of plane 1: the surface changes plane.
    edges = np.zeros((64, 96), dtype=np.float32)
    edges[::6, :] = 0.2
    stack[0, :, :, :40] += edges[:, :40]
    stack[1, :, :, 56:] += edges[:, 56:]
    hard = create_fuser("focus_measure", low_band_radius=0).fuse(stack).fused
    soft = create_fuser("focus_measure").fuse(stack).fused
    rows = slice(1, 64, 6)  # rows without the line pattern
    jump_hard = np.abs(np.diff(hard[0, rows].mean(axis=0))).max()
    jump_soft = np.abs(np.diff(soft[0, rows].mean(axis=0))).max()
    assert jump_hard > 0.08 and jump_soft < 0.04
