"""Tests for wsi_fusion.pyramid.downsample."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_fusion.pyramid.downsample import downsample2, downsample_labels2, level_shapes


def _reference_mean(block: np.ndarray) -> np.ndarray:
    """Straightforward 2x2 mean with edge replication, for comparison."""
    c, h, w = block.shape
    padded = np.pad(block, [(0, 0), (0, h % 2), (0, w % 2)], mode="edge").astype(np.int64)
    out = np.empty((c, (h + 1) // 2, (w + 1) // 2), np.int64)
    for y in range(out.shape[1]):
        for x in range(out.shape[2]):
            out[:, y, x] = (
                padded[:, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].sum(axis=(1, 2)) + 2
            ) // 4
    return out.astype(np.uint8)


def test_level_shapes_halves_until_min_side() -> None:
    assert level_shapes((1500, 2100), min_side=256) == [
        (1500, 2100),
        (750, 1050),
        (375, 525),
        (188, 263),
        (94, 132),
    ]


def test_level_shapes_small_image_has_level_zero_only() -> None:
    assert level_shapes((100, 256), min_side=256) == [(100, 256)]


def test_level_shapes_rounds_up_odd_sides() -> None:
    assert level_shapes((5, 3), min_side=1) == [(5, 3), (3, 2), (2, 1), (1, 1)]


@pytest.mark.parametrize("shape", [(0, 10), (10, -1)])
def test_level_shapes_rejects_empty(shape: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        level_shapes(shape)


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (1, 1), (2, 5)])
def test_downsample2_matches_reference(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (3, *hw), dtype=np.uint8)
    out = downsample2(block)
    assert out.dtype == np.uint8
    assert out.shape == (3, (hw[0] + 1) // 2, (hw[1] + 1) // 2)
    np.testing.assert_array_equal(out, _reference_mean(block))


def test_downsample2_rounds_half_up_and_saturates() -> None:
    block = np.array([[[0, 1], [1, 0]]], np.uint8)  # mean 0.5 -> 1
    assert downsample2(block)[0, 0, 0] == 1
    block = np.array([[[0, 0], [1, 0]]], np.uint8)  # mean 0.25 -> 0
    assert downsample2(block)[0, 0, 0] == 0
    assert downsample2(np.full((3, 4, 4), 255, np.uint8)).min() == 255


def test_downsample2_odd_edge_is_replicated() -> None:
    block = np.array([[[10, 20, 30], [10, 20, 30], [50, 60, 70]]], np.uint8)
    out = downsample2(block)
    # Right column: 30 with itself; bottom row: 50/60 row with itself; corner: 70 alone.
    np.testing.assert_array_equal(out[0], [[15, 30], [55, 70]])


def test_downsample2_chunked_equals_whole() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, 37, 53), dtype=np.uint8)
    whole = downsample2(img)
    step = 16  # even block starts, odd-sized blocks only at the image edge
    tiled = np.empty_like(whole)
    for y in range(0, 37, step):
        for x in range(0, 53, step):
            tiled[:, y // 2 : (y + step) // 2, x // 2 : (x + step) // 2] = downsample2(
                img[:, y : y + step, x : x + step]
            )
    np.testing.assert_array_equal(tiled, whole)


def test_downsample2_rejects_non_uint8() -> None:
    with pytest.raises(TypeError, match="uint8"):
        downsample2(np.zeros((3, 4, 4), np.float32))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(5, 7), (2, 5, 7)])
def test_downsample_labels2_picks_stride_two(shape: tuple[int, ...]) -> None:
    labels = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    out = downsample_labels2(labels)
    assert out.shape == (*shape[:-2], 3, 4)
    np.testing.assert_array_equal(out, labels[..., ::2, ::2])
    assert set(np.unique(out)) <= set(np.unique(labels))
