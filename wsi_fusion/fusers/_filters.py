"""Image-processing helpers shared by the classical fusers (numpy/scipy only).

All filters work on the last two axes and are vectorised over any leading axes (planes,
channels), so a whole ``(Z, H, W)`` stack goes through one call. Borders are mirrored
(``scipy.ndimage`` mode ``"reflect"``, i.e. ``d c b a | a b c d``), the same at a tile edge as at
the slide edge; that is what makes the result inside a fuser's ``margin`` independent of the
tiling.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

Float32Array = npt.NDArray[np.float32]

#: ITU-R BT.601 luma weights (R, G, B); the usual choice for focus measures on RGB.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(images: npt.NDArray[np.floating]) -> Float32Array:
    """Luma of channel-first images ``(..., C, H, W)`` as ``(..., H, W)`` float32.

    RGB uses the BT.601 weights; any other channel count is averaged (one channel is returned
    as is).
    """
    images = np.asarray(images, dtype=np.float32)
    channels = images.shape[-3]
    if channels == 3:
        return np.einsum("...chw,c->...hw", images, _LUMA, optimize=True)
    if channels == 1:
        return images[..., 0, :, :].copy()
    return images.mean(axis=-3, dtype=np.float32)


def _shifted_sum(padded: Float32Array, radius: int, axis: int) -> Float32Array:
    """Sums over ``2 * radius + 1`` consecutive samples along ``axis`` (0 or 1) of a padded
    ``(H, W)`` image: the output is ``2 * radius`` shorter along ``axis``. Every output adds its
    samples in the same order wherever the image starts, so tiles and whole images agree bit
    for bit."""
    n = padded.shape[axis] - 2 * radius

    def part(shift: int) -> Float32Array:
        return padded[shift : shift + n] if axis == 0 else padded[:, shift : shift + n]

    out = np.add(part(0), part(1))
    for shift in range(2, 2 * radius + 1):
        out += part(shift)
    return out


def box_mean(image: npt.NDArray[np.floating], radius: int) -> Float32Array:
    """Mean over a ``(2 * radius + 1)²`` window on the last two axes (mirrored borders)."""
    image = np.asarray(image, dtype=np.float32)
    if radius <= 0:
        return image.copy()
    size = 2 * radius + 1
    if radius <= 8:
        # Shifted-slice sums: 3-6× faster than scipy's running sum along the strided axis for
        # small windows, and every output is summed in the same order wherever the tile starts,
        # so tiled and whole-image results are bit-identical.
        out = np.empty(image.shape, dtype=np.float32)
        # One (H, W) image at a time: its padded copy and partial sums stay in cache (1.5-2x
        # faster on (planes, H, W) stacks of 1024-px blocks than one pass over the stack). The
        # image is mirrored on all sides once; numpy "symmetric" == scipy.ndimage "reflect".
        for index in np.ndindex(image.shape[:-2]):
            padded = np.pad(image[index], radius, mode="symmetric")
            out[index] = _shifted_sum(_shifted_sum(padded, radius, 0), radius, 1)
        out *= np.float32(1.0 / (size * size))
        return out
    # Large windows: running sum in double precision, O(1) per pixel whatever the radius.
    out = ndi.uniform_filter1d(image, size, axis=-1, mode="reflect")
    return ndi.uniform_filter1d(out, size, axis=-2, mode="reflect", output=out)


def guided_filter(
    guide: npt.NDArray[np.floating],
    source: npt.NDArray[np.floating],
    radius: int,
    eps: float,
) -> Float32Array:
    """Edge-preserving smoothing of ``source`` steered by a grey ``guide`` (He et al. 2013).

    Parameters
    ----------
    guide
        Guidance image ``(H, W)``; the output follows its edges.
    source
        Images to filter, ``(..., H, W)``; every leading index is filtered with the same guide.
    radius
        Window radius ``r`` (windows are ``(2r + 1)²``).
    eps
        Regularisation: windows whose guide variance is well below ``eps`` are smoothed, those
        well above keep the guide's edges.

    Returns
    -------
    numpy.ndarray
        ``(..., H, W)`` float32. The output at a pixel depends on inputs within ``2 * radius``.

    Notes
    -----
    K. He, J. Sun and X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6):1397-1409, 2013,
    algorithm 1 (grey guide), with mirrored instead of truncated windows at the borders.
    """
    guide = np.asarray(guide, dtype=np.float32)
    source = np.asarray(source, dtype=np.float32)
    mean_i = box_mean(guide, radius)
    # Clamp at 0: float32 cancellation can make a flat window's variance slightly negative.
    var_i = np.maximum(box_mean(guide * guide, radius) - mean_i * mean_i, 0.0)
    var_i += np.float32(eps)
    out = np.empty(source.shape, dtype=np.float32)
    # One (H, W) image at a time: the ~8 image-sized temporaries of algorithm 1 then stay
    # image-sized instead of (planes, H, W)-sized (a 1144² block of 5 planes: 260 -> 60 MB at
    # the peak), and smaller arrays stay in cache.
    for index in np.ndindex(source.shape[:-2]):
        out[index] = _guided_one(guide, mean_i, var_i, source[index], radius)
    return out


def _guided_one(
    guide: Float32Array, mean_i: Float32Array, var_i: Float32Array, p: Float32Array, radius: int
) -> Float32Array:
    """Algorithm 1 for one ``(H, W)`` source, with the guide's window statistics given."""
    mean_p = box_mean(p, radius)
    # The same arithmetic as algorithm 1, in place: fresh temporaries cost page faults as much
    # as arithmetic.
    a = box_mean(p * guide, radius)
    scratch = mean_i * mean_p
    a -= scratch  # cov_ip
    a /= var_i
    b = mean_p
    np.multiply(a, mean_i, out=scratch)
    b -= scratch
    out = box_mean(a, radius)
    out *= guide
    out += box_mean(b, radius)
    return out
