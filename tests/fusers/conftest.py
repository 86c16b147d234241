"""Small synthetic focal stacks with a known depth map and ground truth, for the fuser tests.

Deliberately self-contained (the package's own ``wsi_fusion.synth`` is tested on its own): a sharp
image is blurred per pixel by a Gaussian whose sigma grows with the distance between the pixel's
depth and the plane's focus, ``sigma = blur_per_plane * |depth - k|``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

FloatArray = npt.NDArray[np.float32]


def sharp_image(name: str = "astronaut") -> FloatArray:
    """A texture-rich RGB image bundled with scikit-image, as (C, H, W) float32 in [0, 1]."""
    from skimage import data

    image = getattr(data, name)()
    return (np.moveaxis(image, -1, 0).astype(np.float32) / np.float32(255.0)).copy()


def depth_map(shape: tuple[int, int], n_planes: int = 5) -> FloatArray:
    """A depth map in plane units: a few flat regions plus a smooth ramp.

    The left third ramps smoothly from plane 0 to the last plane (so most of it lies *between*
    planes); the rest is a background at plane 1 with a disc at the last plane, a square at 0 and
    a band at the middle plane, so the map has sharp depth edges too.
    """
    h, w = shape
    top = n_planes - 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = np.full((h, w), 1.0, dtype=np.float32)
    ramp = xx < w / 3
    depth[ramp] = (top * yy / max(h - 1, 1))[ramp]
    disc = (yy - 0.35 * h) ** 2 + (xx - 0.62 * w) ** 2 < (0.18 * min(h, w)) ** 2
    depth[disc & ~ramp] = top
    square = (yy > 0.6 * h) & (yy < 0.9 * h) & (xx > 0.45 * w) & (xx < 0.7 * w)
    depth[square] = 0.0
    band = (xx > 0.78 * w) & (xx < 0.9 * w)
    depth[band] = top / 2
    return depth


def focal_stack(
    sharp: FloatArray, depth: FloatArray, n_planes: int = 5, blur_per_plane: float = 1.5
) -> FloatArray:
    """Blur ``sharp`` (C, H, W) into a (Z, C, H, W) float32 stack focused at depths 0..Z-1.

    Each plane interpolates, per pixel, between Gaussian blurs precomputed at a few sigmas
    (steps of 0.25 plane), which is close to a per-pixel Gaussian of the exact sigma.
    """
    step = 0.25
    n_levels = int(np.ceil((n_planes - 1) / step)) + 2
    sigmas = [blur_per_plane * step * i for i in range(n_levels)]
    levels = np.stack(
        [sharp if s == 0 else ndi.gaussian_filter(sharp, (0, s, s), mode="reflect") for s in sigmas]
    )
    planes = []
    for k in range(n_planes):
        pos = np.abs(depth - k) / step
        lo = np.floor(pos).astype(np.int64)
        frac = (pos - lo)[None].astype(np.float32)
        a = np.take_along_axis(levels, lo[None, None].repeat(sharp.shape[0], 1), 0)[0]
        b = np.take_along_axis(levels, (lo + 1)[None, None].repeat(sharp.shape[0], 1), 0)[0]
        planes.append((1 - frac) * a + frac * b)
    return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)


def psnr(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


@pytest.fixture(scope="session")
def truth_and_stack() -> tuple[FloatArray, FloatArray, FloatArray]:
    """(sharp (C, H, W), depth (H, W), stack (5, C, H, W)) from the 512² astronaut image."""
    sharp = sharp_image("astronaut")
    depth = depth_map(sharp.shape[1:])
    return sharp, depth, focal_stack(sharp, depth)
