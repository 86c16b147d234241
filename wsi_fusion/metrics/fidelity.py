"""Block fidelity: does each textured block of the fused image look like its sharpest plane?

A fuser that switches planes inside an object (patchwork), copies defocus rings, or pastes two
offset copies of a drifting cell (doubling) can keep the fused image as *sharp* as the best plane
-- focus attainment stays near or above 1 -- while the block no longer shows what any plane
shows. :func:`block_fidelity` measures that directly: for every textured ``block`` x ``block``
block, the best zero-mean normalised cross-correlation between the fused block's high-pass
(detail) component and the sharpest plane's, over every shift within ``±search`` px.

* **The sharpest plane** of a block is the plane with the highest RMS Gaussian-derivative
  gradient magnitude there (:func:`~wsi_fusion.metrics.focus.block_sharpness`, the measure of
  focus attainment), taken at the fused block's own position.
* **Textured** blocks are the top ``textured_fraction`` (60 %) of blocks by that sharpness (and
  above ``min_sharpness`` grey levels/px, which only bites on nearly blank images): blank glass
  carries no evidence either way.
* **High-pass**: luminance (0-255, :func:`~wsi_fusion.metrics._image.to_luma`) minus its
  Gaussian low-pass at ``sigma`` = 3 px. This keeps the detail a pathologist judges focus and
  patchwork by (chromatin, membranes, cell rims: features up to ~10-20 px across at 0.25-0.5
  µm/px) and removes what differs between planes without being a defect: illumination and
  brightness drift through the stack, and the smooth haze of defocused light. At 2 px the
  measure would rest on pixel noise and JPEG blocks; at 4 px and above, slow brightness changes
  between planes start to pull the score down.
* **Search**: the planes are *not* registered; the fused block is matched against the plane
  anywhere within ``±search`` px (24: real stacks drift by up to ~10 px between planes and
  breathe -- change magnification -- by more at the field edges), with
  :func:`skimage.feature.match_template` (the fused block as template). The window is clamped
  at the image border. Because only the best of ``(2 search + 1)^2`` shifts counts, an
  unrelated texture still scores about 0.1-0.2 by chance; a correct fusion scores close to 1.

Scores: 1 = the block is a (shifted) copy of its sharpest plane's detail; a patchwork of planes,
a blend with a defocused plane, invented texture (noise, ringing) or a doubled object score
lower. A fused block without any detail in a textured area scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.feature import match_template

from wsi_fusion._types import Box
from wsi_fusion.errors import PlaneMismatch, UnsupportedInput
from wsi_fusion.metrics._image import FloatImage, ImageLike, to_luma, to_sources
from wsi_fusion.metrics.focus import block_sharpness

__all__ = [
    "BlockFidelity",
    "block_box",
    "block_fidelity",
    "block_sharpness_of_planes",
    "high_pass",
    "match_block",
    "texture_threshold",
    "worst_blocks",
]

#: Gaussian low-pass scale (px) removed by :func:`high_pass`; see the module docstring.
HIGH_PASS_SIGMA = 3.0


class BlockFidelity(TypedDict):
    """Result of :func:`block_fidelity`; block arrays are (ceil(H / block), ceil(W / block))."""

    #: Best high-pass normalised correlation per block, in [-1, 1]; NaN where not textured.
    scores: npt.NDArray[np.float64]
    #: Which blocks are scored (top ``textured_fraction`` by the sharpest plane's sharpness).
    textured: npt.NDArray[np.bool_]
    #: Index of the sharpest plane per block, and its block sharpness (RMS gradient, grey
    #: levels/px; NaN for edge blocks too small to score).
    best_plane: npt.NDArray[np.intp]
    sharpness: npt.NDArray[np.float64]
    #: The sharpness a block needed to count as textured.
    threshold: float
    #: (By, Bx, 2): the (dy, dx) shift of the sharpest plane's block that matches best, in px
    #: (the plane's content at ``(y + dy, x + dx)`` matches the fused at ``(y, x)``); 0 where
    #: not textured.
    shifts: npt.NDArray[np.intp]
    #: 10th percentile and median of the scores over textured blocks (NaN when there is none).
    p10: float
    median: float
    n_textured: int
    #: Block side in px (to map block indices back to pixels, see :func:`block_box`).
    block: int


def high_pass(luma: FloatImage, sigma: float = HIGH_PASS_SIGMA) -> npt.NDArray[np.float32]:
    """Luminance minus its Gaussian low-pass at ``sigma`` px (mirrored borders), float32."""
    low = ndimage.gaussian_filter(luma, sigma=sigma, mode="reflect")
    return (luma - low).astype(np.float32)


def block_box(index: tuple[int, int], block: int, shape: tuple[int, int]) -> Box:
    """The pixel box of block ``(row, col)`` in an image of ``shape`` (edge blocks clipped)."""
    y, x = index[0] * block, index[1] * block
    return Box(y, x, min(block, shape[0] - y), min(block, shape[1] - x))


def match_block(
    fused_hp: npt.NDArray[np.float32],
    plane_hp: npt.NDArray[np.float32],
    box: Box,
    search: int,
    offset: tuple[int, int] = (0, 0),
) -> tuple[float, int, int]:
    """Best normalised correlation of ``fused_hp[box]`` within ``±search`` px of ``plane_hp``.

    ``offset`` is the position of the fused image's origin in ``plane_hp`` (planes read with a
    margin around the fused region). Returns ``(score, dy, dx)``.
    """
    template = fused_hp[box.slices()]
    ph, pw = plane_hp.shape
    y0, x0 = box.y + offset[0], box.x + offset[1]
    top, left = max(0, y0 - search), max(0, x0 - search)
    bottom, right = min(ph, y0 + box.h + search), min(pw, x0 + box.w + search)
    window = plane_hp[top:bottom, left:right]
    if window.shape[0] < box.h or window.shape[1] < box.w:
        return math.nan, 0, 0
    response = match_template(window, template)
    iy, ix = np.unravel_index(int(np.argmax(response)), response.shape)
    return float(response[iy, ix]), int(top + iy - y0), int(left + ix - x0)


def _big_enough(
    shape_b: tuple[int, ...], block: int, shape: tuple[int, ...]
) -> npt.NDArray[np.bool_]:
    """Blocks whose sides are both at least ``block // 2`` px (edge blocks may be smaller)."""
    rows = np.minimum(block, shape[0] - np.arange(shape_b[0]) * block)
    cols = np.minimum(block, shape[1] - np.arange(shape_b[1]) * block)
    return np.outer(rows >= block // 2, cols >= block // 2)


def _lumas(planes: Iterable[ImageLike]) -> list[FloatImage]:
    """Luminance of every plane; all of one size (which may exceed the fused image's)."""
    if isinstance(planes, np.ndarray) and planes.ndim < 3:
        return to_sources(planes, planes.shape[-2:])  # refuses a single image by name
    plane_list = planes if isinstance(planes, np.ndarray) else list(planes)
    if len(plane_list) == 0:
        raise UnsupportedInput("planes is empty; block fidelity needs at least one plane")
    first = to_luma(plane_list[0], name="sources[0]")
    return to_sources(plane_list, (int(first.shape[0]), int(first.shape[1])))


def block_fidelity(
    fused: ImageLike,
    planes: Iterable[ImageLike],
    block: int = 64,
    search: int = 24,
    textured_fraction: float = 0.6,
    *,
    sigma: float = HIGH_PASS_SIGMA,
    sharpness_sigma: float = 1.0,
    min_sharpness: float = 1.0,
    threshold: float | None = None,
    offset: tuple[int, int] = (0, 0),
) -> BlockFidelity:
    """Per textured block, the best high-pass normalised correlation with the sharpest plane.

    Parameters
    ----------
    fused
        The fused image, (H, W) / (H, W, 3) / (3, H, W), uint8 or float in [0, 1].
    planes
        The source focal planes, **unregistered** (the search window absorbs drift), all of one
        size: the fused image's, or larger when read with a margin (see ``offset``).
    block
        Block side in px. Edge blocks with a side under ``block // 2`` are not scored (too few
        pixels for a meaningful correlation).
    search
        Largest shift in px, in each direction, at which the plane's block is matched.
    textured_fraction
        Fraction of blocks scored: those with the highest sharpest-plane sharpness.
    sigma
        Gaussian low-pass scale in px removed before correlating (:func:`high_pass`).
    sharpness_sigma
        Derivative-of-Gaussian scale of the block sharpness (as in focus attainment).
    min_sharpness
        Absolute floor of the sharpest plane's RMS gradient (grey levels/px) for a textured block.
    threshold
        Sharpness a block needs to count as textured, instead of the ``textured_fraction``
        quantile of this image's blocks: to apply one threshold to several regions of a slide
        (see :func:`texture_threshold`).
    offset
        ``(y, x)`` of the fused image's origin within the planes, when the planes cover the fused
        region plus a margin (e.g. a tile read with ``search`` px of context): matches may then
        reach beyond the fused region's border.

    Returns
    -------
    BlockFidelity
        Per-block scores, texture mask, sharpest plane, best shift, and p10 / median.

    Raises
    ------
    UnsupportedInput
        Bad image, ``block`` < 8, negative ``search``, ``textured_fraction`` outside (0, 1].
    PlaneMismatch
        Planes of different sizes, or planes that do not cover the fused image at ``offset``.
    """
    if block < 8:
        raise UnsupportedInput(f"block {block} is too small; use at least 8 px (default 64)")
    if search < 0:
        raise UnsupportedInput(f"search {search} is negative; give a shift in px (default 24)")
    if not 0.0 < textured_fraction <= 1.0:
        raise UnsupportedInput(
            f"textured_fraction {textured_fraction} is outside (0, 1]; default 0.6"
        )
    f = to_luma(fused, name="fused")
    stack = _lumas(planes)
    h, w = f.shape
    oy, ox = offset
    ph, pw = stack[0].shape
    if oy < 0 or ox < 0 or oy + h > ph or ox + w > pw:
        raise PlaneMismatch(
            f"the planes ({ph} x {pw}) do not cover the fused image ({h} x {w}) at offset "
            f"{offset}; give planes of the fused image's size, or larger with offset=(y, x)"
        )
    inner = [p[oy : oy + h, ox : ox + w] for p in stack]
    plane_s = np.stack([block_sharpness(p, block, sharpness_sigma) for p in inner])
    best_plane = plane_s.argmax(axis=0)
    best = plane_s.max(axis=0)
    shape_b = best.shape
    big_enough = _big_enough(shape_b, block, (h, w))
    sharpness = np.where(big_enough, best, np.nan)
    if threshold is None:
        threshold = texture_threshold([sharpness], textured_fraction, min_sharpness)
    textured = big_enough & (best >= max(threshold, min_sharpness))

    scores = np.full(shape_b, np.nan)
    shifts = np.zeros((*shape_b, 2), dtype=np.intp)
    if textured.any():
        f_hp = high_pass(f, sigma)
        hp_cache: dict[int, npt.NDArray[np.float32]] = {}
        for by, bx in zip(*np.nonzero(textured), strict=True):
            z = int(best_plane[by, bx])
            if z not in hp_cache:
                hp_cache[z] = high_pass(stack[z], sigma)
            box = block_box((int(by), int(bx)), block, (h, w))
            score, dy, dx = match_block(f_hp, hp_cache[z], box, search, offset)
            scores[by, bx] = score
            shifts[by, bx] = (dy, dx)
    vals = scores[textured]
    n = int(vals.size)
    return BlockFidelity(
        scores=scores,
        textured=textured,
        best_plane=best_plane,
        sharpness=sharpness,
        threshold=float(threshold),
        shifts=shifts,
        p10=float(np.percentile(vals, 10)) if n else math.nan,
        median=float(np.median(vals)) if n else math.nan,
        n_textured=n,
        block=block,
    )


def block_sharpness_of_planes(
    planes: Iterable[ImageLike], block: int = 64, sigma: float = 1.0
) -> npt.NDArray[np.float64]:
    """The sharpest plane's block sharpness, (By, Bx), NaN for too-small edge blocks.

    What :func:`block_fidelity` ranks blocks by; for :func:`texture_threshold` over regions.
    """
    stack = _lumas(planes)
    best = np.max([block_sharpness(p, block, sigma) for p in stack], axis=0)
    return np.where(_big_enough(best.shape, block, stack[0].shape), best, np.nan)


def texture_threshold(
    sharpness: Iterable[npt.NDArray[np.float64]],
    textured_fraction: float = 0.6,
    min_sharpness: float = 1.0,
) -> float:
    """Sharpness above which the top ``textured_fraction`` of blocks lie, over all arrays given.

    NaN entries (too-small edge blocks) are ignored; at least ``min_sharpness``; infinite when
    there is no block.
    """
    values = np.concatenate([np.ravel(s) for s in sharpness] or [np.empty(0)])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.inf
    return max(min_sharpness, float(np.quantile(values, 1.0 - textured_fraction)))


def worst_blocks(result: BlockFidelity, n: int | None = None) -> list[tuple[int, int]]:
    """Indices ``(row, col)`` of the textured blocks, lowest score first (at most ``n``)."""
    scores = result["scores"]
    idx = np.flatnonzero(result["textured"].ravel())
    order = idx[np.argsort(scores.ravel()[idx], kind="stable")]
    if n is not None:
        order = order[:n]
    return [(int(r), int(c)) for r, c in zip(*np.unravel_index(order, scores.shape), strict=True)]
