"""``msegnet``: per-plane focus segmentation with m-SegNet, parallel N-plane fusion.

R. Pei, W. Fu, K. Yao, T. Zheng, S. Ding, H. Zhang and Y. Zhang, "Real-Time Multi-Focus
Biomedical Microscopic Image Fusion Based on m-SegNet", IEEE Photonics Journal 13(3), 2021,
doi:10.1109/JPHOT.2021.3073022 (CC BY 4.0). The network is :mod:`wsi_fusion.nets.msegnet`.

Method (Sections 2.2-2.4)
-------------------------
1. Every plane of the tile goes through m-SegNet (all planes in one batched forward pass);
   a pixel is *focused* in a plane when its focused-class probability exceeds ``threshold``.
2. The plane with the largest focused share is the base image.
3. Pixels that exactly one plane claims come from that plane; pixels that no plane claims come
   from the base image.
4. Pixels that several planes claim (overlaps) go to the claimant whose no-reference blur
   metric (Eqs. 5-13, after M. G. Choi, J. H. Jung and J. W. Jeon, "No-reference image quality
   assessment using blur and noise", World Acad. Sci. Eng. Technol. 50, 2009) is highest:
   horizontal/vertical absolute differences, candidate edges above the region's mean
   difference, edge points at local maxima, inverse blurriness ``|f - A| / A`` at edge points,
   blurred edges below ``Th_B = 0.1``, ``Metric = 1 - (w1 Blur_mean + w2 Blur_ratio)`` with
   ``w1 = 1, w2 = 0.95``.

The weights are one-hot (the paper's hard decision map). ``unclaimed="base",
arbitration="region"`` is exactly this rule; the defaults differ (next section).

Deviations from the paper and why
---------------------------------
- Defaults chosen by measurement on validation stacks from the *training* rows (never the
  held-out set; ``workflows/train_msegnet.py --validate``, numbers in the model card):
  ``unclaimed="most_likely"`` (unclaimed pixels from the plane with the highest focused
  probability, not the base plane) and ``arbitration="probability"`` (overlaps to the claimant
  with the highest focused probability). Together they make the decision the per-pixel argmax
  of the network's focused probability: +1.9 dB over the paper's rule on the validation stacks.
  The base plane is a whole-image choice that fills every unclaimed pixel, including those a
  neighbouring plane almost claimed; on focal stacks whose depth varies smoothly that is the
  largest error source.
- The paper's blur metric is implemented and selectable: per connected overlap region
  (``arbitration="region"``, 8-connectivity, as the paper) or in a ``(2r + 1)²`` window around
  each pixel (``"window"``). It is a weak sharpness ranking on stained tissue: it inspects edge
  points at gradient maxima, where a symmetric edge sits at its inflection point and ``|f - A|``
  is near 0 however sharp it is, so with ``Th_B = 0.1`` nearly every edge of an H&E image at
  0.5 um/px counts as blurred whatever its focus, and the index is decided by the small
  ``Blur_mean`` term, which *grows* with sharpness. Picking among all planes by the windowed
  metric alone gives 25-29 dB where the true plane gives 38.7 dB (held-out stacks).
- Eq. 9 reads ``A_h = D_h / 2``, which makes Eq. 10 depend on absolute grey level instead of
  local curvature; Choi et al., whom the metric comes from, define ``A_h`` as the mean of the two
  horizontal neighbours ``(f(x, y+1) + f(x, y-1)) / 2``. That definition is used. Eq. 11's
  ``max(BR_h, BR_h)`` is read as ``max(BR_h, BR_v)``; the inverse blurriness of a point that is
  an edge in one direction only is that direction's value.
- The paper picks "the one with the largest proportion of focal area" as base in Section 2 and
  "randomly" in Section 2.4; the largest share is used (deterministic).
- Luminance (BT.601) is the grey image of the blur metric; the paper does not say which it uses.
- Whole images in the paper, tiles here (see Margin).

Width (``width``, issue 13): ``lite`` (default) is the shipped ``msegnet.small``, encoder widths
16/32/64/128; ``paper`` is 32/64/128/256 (``nets.msegnet.WIDTHS_FULL``, the paper's "first four
layers of MobileNet"), one unit per level, as ``workflows/gpu_run.sh`` trains it with the
``h100-8min`` preset. Its weights are not shipped: ``weights: PATH`` names them, else
``models/msegnet/msegnet.paper.safetensors`` (the preset's output) is loaded, unpinned and
recorded in run.json by its sha256; without it the fuser says how to get it.

Margin: the network's receptive-field halo (:func:`wsi_fusion.nets.msegnet.receptive_halo`, 46 px
at either width: it depends on the levels and units, which both widths share), plus
``window_radius + 2`` with ``arbitration="window"``. Tiles are padded to a multiple of 16 and
pooled on the tile's own grid (max-pooling is not shift-invariant), and with
``unclaimed="base"`` or ``arbitration="region"`` the base plane and the overlap regions are
tile-level choices: those are not margin-bounded, so tiled fusion equals whole-image fusion only
approximately; the stitcher blends the 128 px overlaps.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy import ndimage as ndi

from wsi_fusion._types import TileStack
from wsi_fusion.fusers._depth import DepthParams
from wsi_fusion.fusers._filters import box_mean, luminance
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._torch import TorchFuser, TorchParams
from wsi_fusion.fusers._weights import WeightsRecord
from wsi_fusion.fusers.base import FusionResult, one_hot_weights, weighted_sum
from wsi_fusion.fusers.surface import on_depth_surface, surface_margin

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.msegnet import MSegNet

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

#: Encoder widths of the shipped (reduced-width, CPU-trained) model.
SHIPPED_WIDTHS = (16, 32, 64, 128)
#: Encoder widths by the ``width`` parameter: the shipped model, and the paper-sized one
#: (``nets.msegnet.WIDTHS_FULL``) that ``configs/presets/h100-8min/train_msegnet.yaml`` trains.
WIDTHS: dict[str, tuple[int, ...]] = {"lite": SHIPPED_WIDTHS, "paper": (32, 64, 128, 256)}
#: Separable units per level (``MSegNetConfig.blocks``), at both widths.
BLOCKS = 1

#: Inverse blurriness below this marks a blurred edge point (Eq. 11, ``Th_B``).
TH_B = 0.1
#: Weights of Eq. 13.
W1, W2 = 1.0, 0.95
_EPS = 1e-6


class MSegNetParams(TorchParams, DepthParams):
    #: Overlap arbitration: the paper's blur metric per overlap region (``region``) or per pixel
    #: window (``window``), or the network's own focused probability (``probability``).
    arbitration: Literal["probability", "window", "region"] = "probability"
    #: Window radius of the blur metric in ``window`` arbitration (pixels).
    window_radius: int = Field(default=8, ge=1, le=32)
    #: Probability of the focused class above which a pixel counts as focused.
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: Pixels no plane claims: the base plane (paper) or the plane most likely focused.
    unclaimed: Literal["most_likely", "base"] = "most_likely"


# --- the no-reference blur metric (Eqs. 5-13) ---------------------------------------------------


def _neighbours(f: Float32Array, axis: int) -> tuple[Float32Array, Float32Array]:
    """``f`` shifted by -1 and +1 along ``axis`` (edge-replicated), same shape."""
    pad = [(0, 0)] * f.ndim
    pad[axis] = (1, 1)
    p = np.pad(f, pad, mode="edge")
    n = f.shape[axis]
    before = np.take(p, np.arange(0, n), axis=axis)
    after = np.take(p, np.arange(2, n + 2), axis=axis)
    return before, after


def _difference(f: Float32Array, axis: int) -> Float32Array:
    """Eq. 5: ``D = |f(+1) - f(-1)|`` along ``axis``."""
    before, after = _neighbours(f, axis)
    return np.abs(after - before)


def _edge_points(d: Float32Array, d_mean: Float32Array, axis: int) -> BoolArray:
    """Eqs. 7-8: candidates above the mean difference that are local maxima along ``axis``."""
    c = np.where(d > d_mean, d, 0.0).astype(np.float32)
    before, after = _neighbours(c, axis)
    return (c > before) & (c > after)


def _inverse_blurriness(f: Float32Array, axis: int) -> Float32Array:
    """Eqs. 9-10 (Choi et al.'s ``A``): ``|f - A| / A`` with ``A`` the neighbours' mean."""
    before, after = _neighbours(f, axis)
    a = 0.5 * (before + after)
    return np.abs(f - a) / np.maximum(a, _EPS)


def _metric(edges: Float32Array, blurred: Float32Array, blur_sum: Float32Array) -> Float32Array:
    """Eqs. 12-13 from (windowed or per-region) counts of edge and blurred-edge points."""
    blur_mean = np.where(blurred > 0, blur_sum / np.maximum(blurred, _EPS), 0.0)
    # A region without a single edge point is flat, i.e. as blurred as it gets.
    blur_ratio = np.where(edges > 0, blurred / np.maximum(edges, _EPS), 1.0)
    return (1.0 - (W1 * blur_mean + W2 * blur_ratio)).astype(np.float32)


def _edge_maps(
    lum: Float32Array, d_mean: tuple[Float32Array, Float32Array]
) -> tuple[BoolArray, BoolArray, Float32Array]:
    """Edge points, blurred edge points and inverse blurriness of ``(Z, H, W)`` luminance."""
    edges = np.zeros(lum.shape, dtype=bool)
    inv = np.zeros(lum.shape, dtype=np.float32)
    # Horizontal (along x, axis -1) then vertical (along y, axis -2).
    for axis, mean in zip((-1, -2), d_mean, strict=True):
        e = _edge_points(_difference(lum, axis), mean, axis)
        edges |= e
        inv = np.maximum(inv, np.where(e, _inverse_blurriness(lum, axis), 0.0))
    blurred = edges & (inv < TH_B)
    return edges, blurred, inv


def blur_metric_window(lum: Float32Array, radius: int) -> Float32Array:
    """Eqs. 5-13 evaluated in a ``(2 radius + 1)²`` window around every pixel.

    Parameters
    ----------
    lum : ndarray
        Luminance planes (Z, H, W) float32 in [0, 1].
    radius : int
        Window radius in pixels.

    Returns
    -------
    ndarray
        (Z, H, W) float32 sharpness index; higher is sharper.
    """
    d_mean = (box_mean(_difference(lum, -1), radius), box_mean(_difference(lum, -2), radius))
    edges, blurred, inv = _edge_maps(lum, d_mean)
    # Window means are proportional to window counts; the ratios of Eq. 12 are unchanged.
    n_edges = box_mean(edges.astype(np.float32), radius)
    n_blurred = box_mean(blurred.astype(np.float32), radius)
    blur_sum = box_mean(np.where(blurred, inv, 0.0).astype(np.float32), radius)
    return _metric(n_edges, n_blurred, blur_sum)


def blur_metric_regions(lum: Float32Array, labels: npt.NDArray[np.intp], n: int) -> Float32Array:
    """Eqs. 5-13 per region: one index per plane and label, ``(Z, n + 1)`` (label 0 = rest)."""
    z = lum.shape[0]
    flat = (labels[None] + (n + 1) * np.arange(z)[:, None, None]).ravel()
    size = z * (n + 1)
    area = np.maximum(np.bincount(flat, minlength=size), 1).astype(np.float32)

    def per_region_mean(values: Float32Array) -> Float32Array:
        mean = np.bincount(flat, weights=values.ravel(), minlength=size) / area
        return mean.astype(np.float32)[flat].reshape(lum.shape)

    d_mean = (per_region_mean(_difference(lum, -1)), per_region_mean(_difference(lum, -2)))
    edges, blurred, inv = _edge_maps(lum, d_mean)
    n_edges = np.bincount(flat, weights=edges.ravel().astype(np.float64), minlength=size)
    n_blurred = np.bincount(flat, weights=blurred.ravel().astype(np.float64), minlength=size)
    blur_sum = np.bincount(flat, weights=np.where(blurred, inv, 0.0).ravel(), minlength=size)
    metric = _metric(
        n_edges.astype(np.float32), n_blurred.astype(np.float32), blur_sum.astype(np.float32)
    )
    return metric.reshape(z, n + 1)


# --- fusion rule (Section 2.4) -----------------------------------------------------------------


def fuse_decisions(
    stack: TileStack,
    p_focused: Float32Array,
    *,
    threshold: float = 0.5,
    arbitration: str = "probability",
    window_radius: int = 8,
    unclaimed: str = "most_likely",
) -> npt.NDArray[np.intp]:
    """Plane index (H, W) from per-plane focused probabilities (Z, H, W) by the paper's rule."""
    focused = p_focused > threshold
    count = focused.sum(axis=0)
    base = int(np.argmax(focused.reshape(focused.shape[0], -1).mean(axis=1)))
    if unclaimed == "base":
        index = np.full(count.shape, base, dtype=np.intp)
    else:
        index = np.argmax(p_focused, axis=0).astype(np.intp)
    single = count == 1
    index[single] = np.argmax(focused, axis=0)[single]
    overlap = count >= 2
    if overlap.any():
        if arbitration == "probability":
            metric = p_focused
        elif arbitration == "window":
            metric = blur_metric_window(luminance(stack), window_radius)
        else:
            labels, n = ndi.label(overlap, structure=np.ones((3, 3), dtype=bool))
            per_region = blur_metric_regions(luminance(stack), labels, n)
            metric = per_region[:, labels]
        # Only planes that claim the pixel compete for it.
        metric = np.where(focused, metric, -np.inf)
        index[overlap] = np.argmax(metric, axis=0)[overlap]
    return index


@register_fuser(
    "msegnet",
    paper=(
        "R. Pei, W. Fu, K. Yao, T. Zheng, S. Ding, H. Zhang and Y. Zhang, 'Real-Time Multi-Focus "
        "Biomedical Microscopic Image Fusion Based on m-SegNet', IEEE Photonics Journal 13(3), "
        "2021, doi:10.1109/JPHOT.2021.3073022"
    ),
    licence="Apache-2.0 (code and weights, trained here); method paper CC BY 4.0",
)
class MSegNetFuser(TorchFuser):
    """m-SegNet focus segmentation of every plane, base plane + blur-metric arbitration."""

    Params = MSegNetParams
    params: MSegNetParams
    min_planes: ClassVar[int] = 2
    weights_record: ClassVar[WeightsRecord] = WeightsRecord(
        model="msegnet.small",
        file="msegnet/msegnet.small.safetensors",
        sha256="e464d4432e1b9843e2c9008b54e87ac47e1766981ca32e07db0f6577ff9e389d",
    )

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder widths of the network (``width``: :data:`WIDTHS`)."""
        return WIDTHS[self.params.width]

    def build_model(self) -> MSegNet:
        from wsi_fusion.nets.msegnet import build_msegnet

        return build_msegnet(self.widths, blocks=BLOCKS)

    @property
    def margin(self) -> int:
        from wsi_fusion.nets.msegnet import MSegNetConfig, receptive_halo

        halo = receptive_halo(MSegNetConfig(widths=self.widths, blocks=BLOCKS))
        if self.params.arbitration == "window":
            # The window's mean difference, then edge maxima (1 px) and differences (1 px).
            halo += self.params.window_radius + 2
        return surface_margin(halo, self.params)

    def _forward(self, model: torch.nn.Module, planes: torch.Tensor, step: int) -> Float32Array:
        """Focused probability of planes (N, C, H, W), padded to a multiple of ``step``."""
        import torch
        from torch.nn import functional as F

        from wsi_fusion.nets.msegnet import DEFOCUSED

        n, c, h, w = planes.shape
        ph, pw = (-h) % step, (-w) % step
        x = planes.to(self.device, dtype=torch.float32)
        if c == 1:
            x = x.expand(n, 3, h, w)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        logits = model(x)[..., :h, :w]
        p = torch.softmax(logits.float(), dim=1)[:, 1 - DEFOCUSED]
        return p.cpu().numpy().astype(np.float32)

    def _combine(self, stack: TileStack, p_focused: Float32Array) -> FusionResult:
        p = self.params
        index = fuse_decisions(
            stack,
            p_focused,
            threshold=p.threshold,
            arbitration=p.arbitration,
            window_radius=p.window_radius,
            unclaimed=p.unclaimed,
        )
        weights = one_hot_weights(index, stack.shape[0])
        return on_depth_surface(stack, weights, p) or FusionResult(
            fused=weighted_sum(stack, weights), weights=weights
        )

    def fuse(self, stack: TileStack) -> FusionResult:
        return self.fuse_batch([stack])[0]

    def focused_probability(self, stacks: list[TileStack]) -> list[Float32Array]:
        """Per-plane probability of the focused class, (Z, H, W) for each (Z, C, H, W) stack.

        All planes of up to ``batch_size`` stacks of one shape go through one forward pass.
        """
        import torch

        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, s in enumerate(stacks):
            groups[s.shape].append(i)
        probs: dict[int, Float32Array] = {}
        model = self.model
        step = 2 ** len(self.widths)
        size = self.tparams.batch_size
        with self.autocast():
            for shape, members in groups.items():
                for start in range(0, len(members), size):
                    chunk = members[start : start + size]
                    planes = torch.from_numpy(np.concatenate([stacks[i] for i in chunk]))
                    p = self._forward(model, planes, step)
                    p = p.reshape(len(chunk), shape[0], *shape[2:])
                    for i, pi in zip(chunk, p, strict=True):
                        probs[i] = pi
        return [probs[i] for i in range(len(stacks))]

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Fuse stacks with batched forward passes (see :meth:`focused_probability`)."""
        stacks = [np.asarray(s, dtype=np.float32) for s in stacks]
        probs = self.focused_probability(stacks)
        return [self._combine(s, p) for s, p in zip(stacks, probs, strict=True)]
