"""``focus_measure``: per-pixel pick of the sharpest plane, refined by a guided filter (default).

Method
------
1. Focus measure per plane on luminance: the *sum-modified-Laplacian* (SML) of S. K. Nayar and
   Y. Nakagawa, "Shape from Focus", IEEE TPAMI 16(8):824-831, 1994 —
   ``ML = |2I - I(x-s, y) - I(x+s, y)| + |2I - I(x, y-s) - I(x, y+s)|`` with step ``s``, summed
   over a ``(2r + 1)²`` window — or the windowed energy of the (step-``s``) Laplacian. The
   default step is 2 px: a band-pass a little below the pixel frequency, so JPEG blocking,
   sensor noise and the fine ringing of defocused transparent objects count less against real
   edges. Measured on the real stacks (1024² crops, ``workflows/results/real_stacks.md``), step
   1 -> 2: unstained cells fidelity p10 0.58 -> 0.96, algae attainment p10 0.89 -> 0.93, blood
   smear p10 0.928 -> 0.931, skeleton 0.78 -> 0.79; algae median 0.81 -> 0.80; synthetic
   stacks -0.03 dB. Step 3 gains more on the blood smear but costs 0.1 dB more on synthetic
   stacks and 0.05 on the algae median.
2. Decision: a hard pick per pixel, made consistent within objects by a smooth depth surface
   (:mod:`._depth`): the energy of the luminance gradient plus half that of the optical
   density's, pooled over ~50 px, chooses each region's plane (:func:`._depth.gradient_energy`:
   the Laplacian weighs the fine grain and defocus fringes of near-focus planes, blood smear p10
   0.93 -> 0.97; :func:`._depth.od_gradient_energy`: absorbing structures in focus outweigh the
   lens spots of transparent cells out of focus, which had cut small algae cells), and a pixel
   leaves it only for a plane that is clearly sharper (1.3x per plane of distance). A bare
   per-pixel argmax (``depth_radius=0``) follows noise in smooth cell interiors and defocus
   rings at cell rims: on the real blood smear it cut red cells into patches from planes far
   apart (fidelity p10 0.77 vs 0.91). Soft weighting across planes (weights proportional to a
   power of the focus measure) blurs and costs about 2 dB against the hard pick, so weights stay
   one-hot wherever the decision is clear.
3. Refinement (``refine=True``): the one-hot decision maps are smoothed by a guided filter
   (K. He, J. Sun and X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6), 2013) steered by the
   planes' mean luminance (Li, Kang and Hu steer each plane's weights by that plane itself: S. Li,
   X. Kang and J. Hu, "Image Fusion with Guided Filtering", IEEE TIP 22(7):2864-2875, 2013), so
   that decision boundaries snap to image edges instead of following the blocky window of the
   focus measure or the depth surface's 4-px cells (:func:`_mean_guide`).
4. Composition in two bands (``low_band_radius``, :mod:`._low_band`): the detail of each pixel
   comes from the planes its weights pick, the low band (brightness, colour) from the planes
   along the depth surface, blended over ~15 px, so a change of plane between planes of
   different brightness is a soft ramp instead of a band edge. Where the surface keeps one
   plane, the output is the picked pixel.

Deviations from Li, Kang & Hu (2013) and why
--------------------------------------------
- No two-scale (base/detail) decomposition and no separate base-layer weights: the planes of a
  z-stack share the same low frequencies, and the wide (r = 45) base filter of the paper makes
  weights soft over large areas, which is the blur we want to avoid. One guided filter with a
  small radius (2 px, eps 1e-2) is applied to the decision maps. Measured on synthetic stacks
  with known ground truth, wider filters (r = 4..16) cost 1-5 dB against the plain argmax, while
  r = 2 gains 0.1-0.5 dB.
- Focus measure is SML (windowed) instead of the paper's Laplacian-magnitude + Gaussian
  saliency; windowed Laplacian energy is available too (``measure``), 0.4-0.6 dB lower here.
- The filtered weights are clipped to [0, 1] and renormalised; wherever the strongest plane has
  at least ``hard_above`` of the weight the pixel becomes one-hot on it. Weights are therefore
  one-hot except in a narrow band along decision boundaries (~5 % of pixels on the test stacks).
  Each band of the output is a convex combination of the planes' bands (no geometry change, no
  ringing); with ``low_band_radius=0`` the output itself is one of source pixels.
- Blank or saturated glass (pooled focus measure below ``blank_threshold`` on every plane) takes
  the middle plane instead of an arbitrary argmax over noise; no NaN is possible.

Margin: the decision at a pixel depends on inputs within ``radius + step`` (focus measure) plus
``2 * depth_radius`` (depth surface) plus ``2 * guided_radius`` (guided filter), 61 px with the
defaults; the low band follows the depth surface a few cells farther (64 px: the surface's
reach, the low band's 15 px less the 3 px of a cell counted in both, and the 1 px of the
gradient it pools). The margin is the larger, 64 px, so the 512/128 tiling still holds it.
Within the margin the method is bounded; tiles whose origins are not on the depth surface's
4-px grid may differ where two planes tie (:mod:`._depth`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import PlaneWeights, TileStack
from wsi_fusion.fusers._depth import (
    DepthParams,
    decide_on_surface,
    depth_reach,
    first_argmax,
    gradient_energy,
    od_gradient_energy,
)
from wsi_fusion.fusers._filters import _LUMA, box_mean, guided_filter, luminance
from wsi_fusion.fusers._low_band import low_band_cells, low_band_reach, two_band_sum
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers.base import Fuser, FusionResult, one_hot_weights

Float32Array = npt.NDArray[np.float32]


class FocusMeasureParams(DepthParams):
    #: Focus measure: sum-modified-Laplacian or windowed Laplacian energy.
    measure: Literal["sml", "laplacian_energy"] = "sml"
    #: Window radius ``r`` of the focus measure (windows are ``(2r + 1)²`` pixels).
    radius: int = Field(default=4, ge=0, le=32)
    #: Step ``s`` of the (modified) Laplacian in pixels.
    step: int = Field(default=2, ge=1, le=8)
    #: Refine the hard decision with a guided filter so boundaries follow image edges.
    refine: bool = True
    #: Guided-filter radius (its influence reaches ``2 * guided_radius``).
    guided_radius: int = Field(default=2, ge=1, le=24)
    #: Guided-filter regularisation (luminance² units): larger values smooth across weaker edges.
    guided_eps: float = Field(default=1e-2, gt=0.0)
    #: After refinement, pixels whose strongest plane has at least this weight become one-hot;
    #: only the transition band between decisions keeps soft weights.
    hard_above: float = Field(default=0.8, ge=0.5, le=1.0)
    #: Regions whose best focus measure (per-pixel Laplacian magnitude, luminance units) is below
    #: this are treated as blank glass and take the middle plane.
    blank_threshold: float = Field(default=2e-3, ge=0.0)


def _laplacian_terms(lum: Float32Array, step: int) -> tuple[Float32Array, Float32Array]:
    """Second differences along y and x with step ``step`` (mirrored borders), ``(..., H, W)``."""
    s = step
    pad = [(0, 0)] * (lum.ndim - 2) + [(s, s), (s, s)]
    # "symmetric" numpy padding == scipy.ndimage "reflect", as used by the box filter.
    p = np.pad(lum, pad, mode="symmetric")
    centre = p[..., s:-s, s:-s]
    two = 2.0 * centre
    d_yy = two - p[..., : -2 * s, s:-s] - p[..., 2 * s :, s:-s]
    d_xx = two - p[..., s:-s, : -2 * s] - p[..., s:-s, 2 * s :]
    return d_yy, d_xx


def focus_map(
    lum: Float32Array, measure: str = "sml", radius: int = 4, step: int = 1
) -> Float32Array:
    """Per-pixel focus measure of luminance planes ``(Z, H, W)``, in luminance units.

    SML is the window mean of the modified Laplacian; Laplacian energy is the root of the window
    mean of the squared Laplacian (the root keeps both in the same units for thresholds and does
    not change the argmax).
    """
    out = np.empty(lum.shape, dtype=np.float32)
    # One (H, W) plane at a time: the temporaries stay in cache (faster than whole-stack passes).
    for index in np.ndindex(lum.shape[:-2]):
        d_yy, d_xx = _laplacian_terms(lum[index], step)
        if measure == "sml":
            ml = np.abs(d_yy, out=d_yy)
            ml += np.abs(d_xx, out=d_xx)
            out[index] = box_mean(ml, radius)
            continue
        lap = d_yy
        lap += d_xx
        lap *= lap
        # The running-sum box filter can leave -1e-9 where the energy is 0: clamp before the root.
        out[index] = np.sqrt(np.maximum(box_mean(lap, radius), 0.0))
    return out


@register_fuser(
    "focus_measure",
    paper=(
        "S. K. Nayar and Y. Nakagawa, 'Shape from Focus', IEEE Trans. Pattern Anal. Mach. Intell. "
        "16(8):824-831, 1994; decision refinement after S. Li, X. Kang and J. Hu, 'Image Fusion "
        "with Guided Filtering', IEEE Trans. Image Process. 22(7):2864-2875, 2013 (guided filter: "
        "K. He, J. Sun and X. Tang, IEEE Trans. Pattern Anal. Mach. Intell. 35(6):1397-1409, 2013)"
    ),
)
class FocusMeasureFuser(Fuser):
    """Hard per-pixel pick of the plane with the highest focus measure, edge-aware refinement."""

    Params = FocusMeasureParams
    params: FocusMeasureParams

    @property
    def margin(self) -> int:
        p = self.params
        decision = p.radius + p.step + depth_reach(p) + (2 * p.guided_radius if p.refine else 0)
        cells = low_band_cells(p)
        if not cells:
            return decision
        # The low band's smooth weights follow the depth surface: its cells' reach, widened by
        # the low band's, plus the reach of the scores the surface pools.
        scores = 1 if p.surface_measure != "focus" else p.radius + p.step
        surface = depth_reach(p) + low_band_reach(p.pool_step, cells) - (p.pool_step - 1)
        return max(decision, surface + scores)

    @property
    def block_side(self) -> int:
        """Side of the blocks a large image is fused in: ``_BLOCK`` rounded down to the cell
        grid, so that every block, less its :attr:`block_halo`, starts on the grid."""
        return _BLOCK - _BLOCK % self.cell_grid

    def decision(
        self, stack: TileStack, votes: Float32Array | None = None
    ) -> tuple[npt.NDArray[np.intp], Float32Array]:
        """Hard plane index ``(H, W)`` and the luminance planes ``(Z, H, W)`` of ``stack``
        (:meth:`decide`, without the surface)."""
        index, lum, _ = self.decide(np.asarray(stack, dtype=np.float32), votes)
        return index, lum

    def decide(
        self, stack: Float32Array, votes: Float32Array | None = None
    ) -> tuple[npt.NDArray[np.intp], Float32Array, npt.NDArray[np.intp] | None]:
        """Hard plane index ``(H, W)``, luminance planes ``(Z, H, W)`` and the depth surface's
        plane per ``pool_step`` cell (``None`` without a surface).

        ``votes`` (``(Z, H, W)`` in [0, 1]: a network's local share of decisions per plane) scale
        the focus measure by up to ``clearly_sharper`` as the evidence that moves a pixel off the
        depth surface: a unanimous network is worth one plane of distance, so it can move a
        pixel to a neighbouring plane (which looks alike) that the focus measure does not
        reject, but farther only with the focus measure's own clear support.
        """
        p = self.params
        lum = _luma(stack)
        focus = focus_map(lum, p.measure, p.radius, p.step)
        # Blank/saturated glass: every plane is flat, the argmax would pick noise (or plane 0 on
        # exact ties); the middle plane is the neutral choice.
        if votes is None:
            fine = focus
        else:
            fine = focus * (1.0 + (np.float32(p.clearly_sharper) - 1.0) * votes)
        energy = None
        if p.depth_radius and p.surface_measure != "focus":
            energy = gradient_energy(lum)
            if p.surface_measure == "gradient_od":
                energy += od_gradient_energy(stack)
        index, surface = decide_on_surface(focus, fine, p, p.blank_threshold, energy)
        return index, lum, surface

    def fuse(self, stack: TileStack) -> FusionResult:
        stack = np.asarray(stack, dtype=np.float32)
        z, c, h, w = stack.shape
        if h * w <= _BLOCK * _BLOCK * 2:
            return self._fuse_block(stack)
        # A whole image goes through in blocks with a ``margin`` halo: the method is exactly
        # margin-bounded (and its window sums do not depend on where a block starts), so this
        # gives the same result while the ~30 float32 temporaries per pixel stay block-sized.
        m, side = self.block_halo, self.block_side
        fused = np.empty((c, h, w), dtype=np.float32)
        weights = np.empty((z, h, w), dtype=np.float32)
        for y0 in range(0, h, side):
            for x0 in range(0, w, side):
                y1, x1 = min(y0 + side, h), min(x0 + side, w)
                gy0, gx0 = max(0, y0 - m), max(0, x0 - m)
                gy1, gx1 = min(h, y1 + m), min(w, x1 + m)
                part = self._fuse_block(stack[:, :, gy0:gy1, gx0:gx1])
                inner = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
                fused[:, y0:y1, x0:x1] = part.fused[(slice(None), *inner)]
                assert part.weights is not None
                weights[:, y0:y1, x0:x1] = part.weights[(slice(None), *inner)]
        return FusionResult(fused=fused, weights=weights)

    def fuse_on_surface(self, stack: Float32Array, votes: Float32Array) -> FusionResult:
        """Fuse one tile with a network's ``votes`` weighing in on leaving the depth surface."""
        return self._fuse_block(stack, votes)

    def _fuse_block(self, stack: Float32Array, votes: Float32Array | None = None) -> FusionResult:
        z = stack.shape[0]
        index, lum, surface = self.decide(stack, votes)
        if self.params.refine:
            weights, present = self._refine(index, lum, z)
        else:
            weights = one_hot_weights(index, z)
            present = np.flatnonzero(np.bincount(index.ravel(), minlength=z))
        cells = low_band_cells(self.params)
        if surface is not None and cells and not _one_plane(present, surface):
            fused = two_band_sum(stack, weights, present, surface, self.params.pool_step, cells)
        else:
            fused = _weighted_sum(stack, weights, present)
        return FusionResult(fused=fused, weights=weights)

    def _refine(
        self, index: npt.NDArray[np.intp], lum: Float32Array, z: int
    ) -> tuple[PlaneWeights, npt.NDArray[np.intp]]:
        """Guided-filter the one-hot maps of the planes that are picked somewhere in the tile.

        Returns the ``(Z, H, W)`` weights and the planes that have any weight.
        """
        p = self.params
        present = np.flatnonzero(np.bincount(index.ravel(), minlength=z))
        if present.size < 2:
            return one_hot_weights(index, z), present
        guide = _mean_guide(lum)
        maps = np.empty((present.size, *index.shape), dtype=np.float32)
        for k, plane in enumerate(present):
            np.equal(index, plane, out=maps[k], casting="unsafe")
        soft = guided_filter(guide, maps, p.guided_radius, p.guided_eps)
        del maps
        # The filter is linear and the maps sum to 1, so ``soft`` sums to 1 already; clipping its
        # small overshoots keeps the weights convex.
        np.clip(soft, 0.0, 1.0, out=soft)
        total = soft.sum(axis=0)
        soft /= np.maximum(total, np.float32(1e-6))
        top, strongest = first_argmax(soft)
        # One-hot wherever the refined decision is clear: soft weighting across planes blurs.
        hard = strongest >= p.hard_above
        soft_band = ~hard
        # soft[k] = top == k where hard: arithmetic, exact (weights are >= 0), and 3x faster
        # than masked copies.
        for k in range(present.size):
            soft[k] *= soft_band
            soft[k] += hard & (top == k)
        out = np.zeros((z, *index.shape), dtype=np.float32)
        out[present] = soft
        return out, present


def _one_plane(present: npt.NDArray[np.intp], surface: npt.NDArray[np.intp]) -> bool:
    """Whether the weights and the depth surface use one and the same plane throughout: then the
    two bands are that plane's and the picked pixels are the result as they are."""
    return present.size == 1 and bool((surface == present[0]).all())


def _mean_guide(lum: Float32Array) -> Float32Array:
    """The refinement's guide: the planes' mean luminance ``(H, W)``.

    Its edges are the objects' edges in every plane, and it has none where the decision only
    switches planes. The hard-pick image had been the guide: where a thick specimen is out of
    focus on every plane, neighbouring depth-surface regions take planes that differ a lot in
    brightness, and the guided filter kept the pick's own 4-px staircase between them as a hard
    edge (terraces on the pseudoscorpion sweep). Measured with ``workflows/evaluate.py``
    (1024² crops, fidelity p10 / median): pseudoscorpion 0.092 / 0.537 -> 0.104 / 0.603
    (attainment 1.134 -> 1.092), unstained cells p10 0.961 -> 0.965, algae 0.425 / 0.826 ->
    0.427 / 0.825, blood smear, skeleton and grey smear unchanged.

    Summed plane by plane, then divided: the same float32 operations as ``lum.mean(axis=0)``,
    written out so that the torch port can repeat them bit for bit.
    """
    guide = lum[0].copy()
    for plane in lum[1:]:
        guide += plane
    guide /= np.float32(lum.shape[0])
    return guide


#: Side of the blocks a whole image is fused in. The pipeline's tiles for this fuser (a 1024-px
#: output chunk plus its halo) go through in one block: splitting them would recompute the halo.
_BLOCK = 1024


def _luma(stack: Float32Array) -> Float32Array:
    """:func:`._filters.luminance` of ``(Z, C, H, W)`` planes, without BLAS for RGB.

    ``luminance`` contracts the channels with einsum, which calls BLAS: on many small blocks its
    worker threads spin between calls and burn more CPU than the contraction itself (the
    20-Mpx library run took 1.3x its wall time in CPU seconds on 2 cores). Three multiply-adds
    give the same values up to float rounding.
    """
    if stack.shape[1] != 3:
        return luminance(stack)
    out = stack[:, 0] * _LUMA[0]
    term = stack[:, 1] * _LUMA[1]
    out += term
    np.multiply(stack[:, 2], _LUMA[2], out=term)
    out += term
    return out


def _weighted_sum(
    stack: Float32Array, weights: PlaneWeights, present: npt.NDArray[np.intp]
) -> Float32Array:
    """``sum_z weights[z] * stack[z]`` over the planes with any weight, clipped to [0, 1].

    Same as :func:`~wsi_fusion.fusers.base.weighted_sum` up to float rounding (planes without
    weight add exact zeros there); products in place, about 1.5x faster than the einsum. Copying
    one-hot pixels and multiplying out only the soft ones is slower: on real stacks ~half of the
    pixels lie in a transition band, and gathering them costs more than the products.
    """
    first, *rest = (int(k) for k in present)
    fused = stack[first] * weights[first][None]
    term = np.empty_like(fused)
    for k in rest:
        np.multiply(stack[k], weights[k][None], out=term)
        fused += term
    return np.clip(fused, 0.0, 1.0, out=fused)
