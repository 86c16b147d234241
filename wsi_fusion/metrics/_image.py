"""Input conventions shared by every metric: luminance, grey-level scale, histograms, entropy.

Every metric works on the **luminance** of its inputs, on the **0-255 grey-level scale**, as the
MATLAB reference implementations do (they call ``rgb2gray`` and work on ``double`` images of
``uint8`` data):

* ``uint8`` input is taken as 0-255; ``float`` input as the package's [0, 1] convention and scaled
  by 255 (values outside [0, 1], e.g. a fuser's overshoot, are kept, not clipped).
* Colour is converted with ITU-R BT.601 luma weights, exactly MATLAB ``rgb2gray``'s
  (0.298936, 0.587043, 0.114021). ``skimage.color.rgb2gray`` is *not* used: it applies the
  BT.709 weights (0.2125, 0.7154, 0.0721), which would shift every value relative to published
  results. For ``uint8`` colour input the luma is rounded to integers, as ``rgb2gray`` does on
  ``uint8`` images.
* Accepted shapes: ``(H, W)``, ``(H, W, 3)`` (readers' layout) and ``(3, H, W)`` (the package's
  channel-first tile layout); a single channel ``(H, W, 1)`` / ``(1, H, W)`` is also accepted.
  A last axis of length 3 (or 1) wins when both readings would be possible.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from wsi_fusion.errors import PlaneMismatch, UnsupportedInput

#: MATLAB ``rgb2gray`` (ITU-R BT.601 luma) weights, to the digits MATLAB uses.
RGB2GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)

FloatImage = npt.NDArray[np.float64]
ImageLike = npt.ArrayLike


def to_luma(image: ImageLike, *, name: str = "image") -> FloatImage:
    """Luminance of ``image`` as float64 on the 0-255 scale, shape (H, W).

    Parameters
    ----------
    image
        (H, W), (H, W, 3), (3, H, W), (H, W, 1) or (1, H, W); ``uint8`` (0-255) or float ([0, 1]).
    name
        What to call the argument in error messages.

    Raises
    ------
    UnsupportedInput
        For another dtype or shape, or non-finite values.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        scale, is_int = 1.0, True
    elif np.issubdtype(arr.dtype, np.floating):
        scale, is_int = 255.0, False
    else:
        raise UnsupportedInput(
            f"{name} has dtype {arr.dtype}; metrics take uint8 (0-255) or float ([0, 1]) images"
        )
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 3):
            arr = np.moveaxis(arr, -1, 0)
        elif arr.shape[0] not in (1, 3):
            raise UnsupportedInput(
                f"{name} has shape {arr.shape}; expected (H, W), (H, W, 3) or (3, H, W)"
            )
        if arr.shape[0] == 1:
            arr = arr[0]
    elif arr.ndim != 2:
        raise UnsupportedInput(
            f"{name} has shape {arr.shape}; expected (H, W), (H, W, 3) or (3, H, W)"
        )
    if min(arr.shape[-2:]) < 2:
        raise UnsupportedInput(f"{name} has shape {arr.shape}; metrics need at least 2 x 2 pixels")
    if arr.ndim == 3:
        w = RGB2GRAY_WEIGHTS
        luma = w[0] * arr[0].astype(np.float64) + w[1] * arr[1] + w[2] * arr[2]
        if is_int:
            luma = np.rint(luma)
    else:
        luma = arr.astype(np.float64)
    if not is_int:
        luma = luma * scale
        if not np.all(np.isfinite(luma)):
            raise UnsupportedInput(f"{name} contains NaN or infinite values")
    return luma


def to_sources(sources: Iterable[ImageLike], shape: tuple[int, int]) -> list[FloatImage]:
    """Luminance of every source image; all must match the fused image's ``shape``.

    Raises
    ------
    UnsupportedInput
        When there are no sources.
    PlaneMismatch
        When a source's size differs from ``shape``.
    """
    if isinstance(sources, np.ndarray) and (
        sources.ndim == 2 or (sources.ndim == 3 and sources.shape[-1] == 3)
    ):
        raise UnsupportedInput(
            f"sources is a single {sources.shape} image; pass a sequence of images (a list, or "
            "an (N, H, W) array)"
        )
    out = [to_luma(s, name=f"sources[{i}]") for i, s in enumerate(sources)]
    if not out:
        raise UnsupportedInput("sources is empty; no-reference metrics need at least one source")
    for i, s in enumerate(out):
        if s.shape != shape:
            raise PlaneMismatch(
                f"sources[{i}] is {s.shape[0]} x {s.shape[1]} but the fused image is "
                f"{shape[0]} x {shape[1]}; register and crop the planes to one size"
            )
    return out


def check_same_shape(a: FloatImage, b: FloatImage, what: str) -> None:
    """Raise :class:`PlaneMismatch` when two luminance images differ in size."""
    if a.shape != b.shape:
        raise PlaneMismatch(
            f"{what}: the fused image is {a.shape[0]} x {a.shape[1]} but the other is "
            f"{b.shape[0]} x {b.shape[1]}"
        )


def filter2_same(image: FloatImage, kernel_1d: FloatImage) -> FloatImage:
    """MATLAB ``filter2(k' * k, image, 'same')`` for a separable kernel with 1-D factor ``k``.

    Correlation (not convolution) with zero padding outside the image, as ``filter2`` does.
    """
    out = ndimage.correlate1d(image, kernel_1d, axis=0, mode="constant")
    return ndimage.correlate1d(out, kernel_1d, axis=1, mode="constant")


def gradient_magnitude(luma: FloatImage, sigma: float = 1.0) -> FloatImage:
    """Gaussian-derivative gradient magnitude at scale ``sigma`` px, (H, W), mirrored borders."""
    return ndimage.gaussian_gradient_magnitude(luma, sigma=sigma, mode="reflect")


def grey_levels(luma: FloatImage) -> npt.NDArray[np.intp]:
    """Integer grey levels 0-255 (rounded, clipped) for 256-bin histograms."""
    return np.clip(np.rint(luma), 0, 255).astype(np.intp)


def normalize1(luma: FloatImage) -> npt.NDArray[np.intp]:
    """Min-max stretch to integer levels 0-255, Z. Liu's ``normalize1.m``.

    The fusion-metric toolboxes (Liu's imageFusionMetrics, VIFB) apply this to every image before
    their histogram- and contrast-based metrics, so the metrics ignore global gain and offset.
    A constant image maps to all zeros (Liu returns it unchanged only when it is all zero; the
    histogram metrics cannot tell the difference).
    """
    lo, hi = float(luma.min()), float(luma.max())
    if hi == lo:
        return np.zeros(luma.shape, dtype=np.intp)
    return np.rint((luma - lo) / (hi - lo) * 255.0).astype(np.intp)


def joint_histogram(
    a: npt.NDArray[np.intp], b: npt.NDArray[np.intp], bins: int = 256
) -> FloatImage:
    """Joint probability table p(a, b), shape (bins, bins), of two integer-level images."""
    counts = np.bincount((a * bins + b).ravel(), minlength=bins * bins).astype(np.float64)
    return (counts / counts.sum()).reshape(bins, bins)


def entropy(p: npt.NDArray[np.float64], base: float = 2.0) -> float:
    """Shannon entropy of a probability table (any shape), zero cells skipped.

    Hand-written rather than ``skimage.measure.shannon_entropy``: that one histograms the raw
    values of one image, whereas the metrics need the marginals *and* the joint entropy of one
    joint table, which must be computed from the same counts to keep MI >= 0.
    """
    q = p[p > 0]
    return float(-(q * np.log(q)).sum() / np.log(base))


def mutual_information(
    a: npt.NDArray[np.intp], b: npt.NDArray[np.intp]
) -> tuple[float, float, float]:
    """``(I(A; B), H(A), H(B))`` in bits from the 256 x 256 joint histogram of two level images."""
    pab = joint_histogram(a, b)
    ha, hb = entropy(pab.sum(axis=1)), entropy(pab.sum(axis=0))
    return ha + hb - entropy(pab), ha, hb
