"""2x downsampling for resolution pyramids (plain numpy; the writers schedule it with Dask).

Image levels use a 2x2 mean: it is what viewers expect of a brightfield pyramid and it matches the
``(2**l - 1) / 2 * mpp`` translation the OME-Zarr writer records (a level-``l`` pixel is centred on
the middle of the ``2**l`` level-0 pixels it averages). Label maps (the focus/depth map) use a
stride-2 pick instead, because averaging plane indices invents planes that do not exist.

Blocks handed to :func:`downsample2` must start at an even row and column of their level, so that
chunked downsampling equals whole-image downsampling; only a block ending at the image edge may
have an odd size, and its last row/column is replicated (as if the image were padded by edge).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["downsample2", "downsample_labels2", "level_shapes"]


def level_shapes(shape_hw: tuple[int, int], min_side: int = 256) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels, level 0 first.

    Parameters
    ----------
    shape_hw
        Level-0 size (height, width) in pixels.
    min_side
        Levels are added, each half the previous one (rounded up), until both sides are at most
        ``min_side``.

    Returns
    -------
    list of (int, int)
        ``(height, width)`` per level; always holds at least level 0.

    Raises
    ------
    ValueError
        If a side or ``min_side`` is not a positive integer.
    """
    h, w = (int(s) for s in shape_hw)
    if h < 1 or w < 1:
        raise ValueError(f"image size {shape_hw} must be positive in both dimensions")
    if min_side < 1:
        raise ValueError(f"min_side {min_side} must be at least 1")
    shapes = [(h, w)]
    while max(h, w) > min_side:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        shapes.append((h, w))
    return shapes


def downsample2(block: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Halve a uint8 image block with a 2x2 mean, rounding half up.

    Parameters
    ----------
    block
        (C, h, w) uint8 (any leading axes are kept). An odd ``h`` or ``w`` is treated as if the
        last row/column were repeated, so the edge pixel is averaged with itself.

    Returns
    -------
    numpy.ndarray
        (C, ceil(h/2), ceil(w/2)) uint8, each pixel ``(a + b + c + d + 2) // 4``.
    """
    if block.dtype != np.uint8:
        raise TypeError(f"downsample2 takes uint8 blocks, got {block.dtype}")
    h, w = block.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
        block = np.pad(block, pad, mode="edge")
    # uint16 holds the sum of four uint8 values (max 1020) plus the rounding term.
    acc = block[..., 0::2, 0::2].astype(np.uint16)
    acc += block[..., 1::2, 0::2]
    acc += block[..., 0::2, 1::2]
    acc += block[..., 1::2, 1::2]
    acc += 2
    acc >>= 2
    return acc.astype(np.uint8)


def downsample_labels2(block: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """Halve a label block by picking every second pixel (no averaging).

    Parameters
    ----------
    block
        (h, w) or (C, h, w) label map of any dtype.

    Returns
    -------
    numpy.ndarray
        (..., ceil(h/2), ceil(w/2)), a contiguous copy of ``block[..., ::2, ::2]``.
    """
    return np.ascontiguousarray(block[..., ::2, ::2])
