"""``fmb_net``: focus-measure block + fusion network over any number of planes.

X. Zhou, L. Hao, Q. Nie, Y. Zhou, L. Wang, Y. Hu and J. Liu, "A novel multi-focus fusion network
for retinal microsurgery" (``../shared/papers/fmb_fn_retinal_microsurgery.txt``). Network:
:mod:`wsi_fusion.nets.fmb_net`; training: :mod:`wsi_fusion.training.fmb_net`; model card:
``models/fmb_net/README.md``.

Method
------
Every plane goes through the focus-measure block (per-channel sum-modified-Laplacian, T = 7,
3×3 window) and a shared encoder; the element-wise maximum over planes is refined by nine
blocks and mapped to a correction ``c`` (RGB logits) that the output layer adds to a prior:
``sigmoid(c + logit(prior))``. All planes of a tile go through one batched forward pass.

On the depth surface (default, ``depth_radius`` > 0; issue 13, round 3): the network's own
output ``sigmoid(c + logit(focus-weighted average))`` is not returned. Per pixel, the plane it
follows (the plane whose luminance is nearest it over a 3×3 window) casts a one-hot vote; the
votes go through :func:`~wsi_fusion.fusers.surface.on_depth_surface` as the decision-map fusers'
decisions do (counted within ``VOTE_RADIUS``, worth up to ``clearly_sharper`` against the
smooth depth surface of the default fuser); the surface pick of source pixels then replaces the
focus-weighted average inside the output layer: ``sigmoid(c + logit(surface pick))``. With
``depth_radius=0`` the output is the network's own, as before.

Blank tiles (no plane has any structure) are returned as their middle plane, as
``focus_measure`` does: there is nothing to fuse, and the network's zero-padded borders would
tint them by a few grey levels.

Weights: ``None``. The fusion happens in feature space (a maximum over encoder channels), and
the output is decoded by the network (the correction on top of the surface pick), not copied
from a plane, so it is no weighted sum of the planes; returning the surface pick's weights would
label as the output something it only starts from. The pipeline writes no focus map for it.

Deviations: reduced width trained on CPU, synthetic ground truth, BM features for the
perceptual loss, Sobel-at-Canny edge loss, output ``sigmoid(conv + logit(prior))`` where the
prior is the planes' focus-weighted average (``prior="focus"``, round 2; the plane mean in
round 1), with its focus measure averaged over a wider window at inference (``prior_radius``
12) than in training (4) (see the network and training modules).

Deviation of round 3, the depth surface (no retraining): the paper decodes the fused image from
the feature maximum alone and has no decision map. Its per-pixel output follows noise inside
smooth cells and defocus rings at their rims, as any per-pixel focus measure does (the prior is
one: a per-pixel softmax over windowed SML), so on the real blood smear it cut red cells into
patches: block fidelity p10 0.896, under issue 9's 0.90; on the unstained cells it lost focus
(attainment median 0.52). The network was trained to correct a per-pixel focus pick, and the
surface pick is one (the same kind of estimate of the all-in-focus image, made consistent
within objects), so its correction is applied to that pick unchanged. Measured on central 1024²
crops (``workflows/evaluate.py``, per stack in ``models/fmb_net/README.md``): blood-smear
fidelity p10 0.896 -> 0.920, attainment median 0.953 -> 1.006; unstained cells attainment
median 0.52 -> 1.05; algae fidelity p10 0.42 -> 0.34 (the decision fusers' level), median
0.73 -> 0.77. Held-out synthetic PSNR (``evaluate.py``, 3 H&E + 3 IHC stacks) 39.73 -> 39.81
dB, against ``focus_measure``'s 38.40. Without the network's votes (the plain surface pick
corrected) it is 39.75 dB, same on the real stacks; the votes also decide which plane a pixel
takes where the surface lets it move. Order: the surface reads planes in focal order (a jump
of ``n`` planes needs ``clearly_sharper ** n``), so unlike the network alone the result
depends on the planes' order, as every decision-map fuser's does.

Width (``width``, issue 13): ``lite`` (default) is the shipped 24-channel network; ``paper`` is
the 64-channel one (``FmbNet("paper")``) that ``workflows/gpu_run.sh`` trains with the
``h100-8min`` preset (``prior: focus``, step 1, as the fuser's defaults). Its weights are not
shipped: ``weights: PATH`` names them, else ``models/fmb_net/fmb_net.paper.safetensors`` (the
preset's output) is loaded, unpinned and recorded in run.json by its sha256; without it the
fuser says how to get it. The halo is the same at both widths (the layer count is).

Margin: every layer is a 3×3 convolution at full resolution, so the network's output depends
on inputs within ``receptive_halo`` pixels (24 for the shipped model). On the surface the
margin is the decision-map fusers' (:func:`~wsi_fusion.fusers.surface.surface_margin` of the
network's reach + 1 for the vote window, or the low band along the surface: 64 px); tiles whose
origins lie on the surface's 4-px grid equal the whole image beyond it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal, cast

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import TileStack
from wsi_fusion.fusers._depth import DepthParams, first_argmax
from wsi_fusion.fusers._filters import box_mean, luminance
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._torch import TorchFuser, TorchParams
from wsi_fusion.fusers._weights import WeightsRecord
from wsi_fusion.fusers.base import FusionResult, one_hot_weights
from wsi_fusion.fusers.cgan_blurmask import BLANK_SML, plane_sharpness
from wsi_fusion.fusers.surface import on_depth_surface, surface_margin

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.fmb_net import FmbNet

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

#: Halo of the shipped network (FMB 2 + encoder 3 + 9 refinement blocks × 2 + output 1).
HALO = 24
#: Radius (px) of the window over which the network's output is compared with each plane to
#: find the plane it follows (its vote on the depth surface); 1 is 0.01 dB better than 0.
CLOSEST_RADIUS = 1


class FmbNetParams(TorchParams, DepthParams):
    # ``width`` (TorchParams): ``lite`` (shipped, 24 channels) or ``paper`` (64 channels, the
    # GPU run of ``configs/presets/h100-8min/train_fmb_net.yaml``; see the module notes).
    #: The skip inside the output sigmoid the weights were trained with (``nets.fmb_net``):
    #: the focus-weighted plane average (round 2, shipped) or the plane mean (round 1).
    prior: Literal["mean", "focus"] = "focus"
    #: Window radius of the focus prior's averaged focus measure (``prior="focus"``). Trained
    #: at 4; 12 (default) keeps the synthetic PSNR (−0.03 dB) and stops the per-pixel prior
    #: from following noise inside cells (blood-smear fidelity p10 0.86 -> 0.90, model card).
    #: On the depth surface (``depth_radius`` > 0) it only shapes the network's votes.
    prior_radius: int = Field(default=12, ge=1, le=12)


@register_fuser(
    "fmb_net",
    paper=(
        "X. Zhou, L. Hao, Q. Nie, Y. Zhou, L. Wang, Y. Hu and J. Liu, 'A novel multi-focus fusion "
        "network for retinal microsurgery' (focus measure block + fusion network)"
    ),
)
class FmbNetFuser(TorchFuser):
    """Focus-measure block + shared encoder, max over planes, nine refinement blocks; the
    network's correction is applied to the depth-surface pick its own output votes for."""

    Params = FmbNetParams
    params: FmbNetParams
    weights_record: ClassVar[WeightsRecord] = WeightsRecord(
        model="fmb_net.lite",
        file="fmb_net/fmb_net.lite.safetensors",
        sha256="6abf7695fbc97ecb6f508d02ee267e716d058c60ae9d3897ed76128a3ea810df",
    )

    def build_model(self) -> FmbNet:
        from wsi_fusion.nets.fmb_net import FmbNet

        p = self.params
        return FmbNet(p.width, step=1, prior=p.prior, prior_radius=p.prior_radius)

    @property
    def network_margin(self) -> int:
        """Reach of the network's own output (its receptive halo or its prior's window)."""
        return max(HALO, 1 + self.params.prior_radius)

    @property
    def margin(self) -> int:
        # On the surface: the votes (network output + closest-plane window), the surface and
        # its guided filter (``surface_margin``); the correction reaches only ``HALO``.
        net = self.network_margin
        if self.params.depth_radius == 0:
            return net
        return surface_margin(net + CLOSEST_RADIUS, self.params)  # always beyond ``net``

    def fuse(self, stack: TileStack) -> FusionResult:
        return self.fuse_batch([stack])[0]

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Fuse tiles with batched forward passes (tiles of equal shape share a batch)."""
        import torch

        stacks = [np.asarray(s, dtype=np.float32) for s in stacks]
        groups: dict[tuple[int, ...], list[int]] = {}
        fused: dict[int, Float32Array] = {}
        for i, s in enumerate(stacks):
            if float(plane_sharpness(s).max()) < BLANK_SML:
                # Blank tile (empty glass, the white outside a slide): nothing to fuse; the
                # network's zero-padded borders would only tint it by a few grey levels.
                fused[i] = s[s.shape[0] // 2].copy()
            else:
                groups.setdefault(tuple(s.shape), []).append(i)
        model = cast("FmbNet", self.model)
        bs = self.tparams.batch_size
        on_surface = self.params.depth_radius > 0
        with self.autocast():
            for indices in groups.values():
                for start in range(0, len(indices), bs):
                    chunk = indices[start : start + bs]
                    x = torch.from_numpy(np.stack([stacks[i] for i in chunk])).to(self.device)
                    if not on_surface:
                        out = _run(model, x).float().clamp_(0.0, 1.0).cpu().numpy()
                        fused.update(zip(chunk, out.astype(np.float32), strict=True))
                        continue
                    corr, net = (t.float().cpu().numpy() for t in _run_parts(model, x))
                    for k, i in enumerate(chunk):
                        fused[i] = self._on_surface(stacks[i], corr[k], net[k])
        return [FusionResult(fused=fused[i], weights=None) for i in range(len(stacks))]

    def _on_surface(
        self, stack: Float32Array, corr: Float32Array, net: Float32Array
    ) -> Float32Array:
        """The network's correction ``corr`` (``(3, H, W)`` logits) applied to the depth-surface
        pick that its own output ``net`` (``(C, H, W)``) votes for."""
        votes = closest_plane_votes(stack, net)
        picked = on_depth_surface(stack, votes, self.params)
        assert picked is not None  # depth_radius > 0 and votes given
        return apply_correction(corr, picked.fused)


def closest_plane_votes(stack: Float32Array, fused: Float32Array) -> Float32Array:
    """One-hot ``(Z, H, W)``: per pixel, the plane whose luminance is closest to ``fused``'s
    (absolute difference averaged over a ``(2 CLOSEST_RADIUS + 1)²`` window)."""
    diff = np.abs(luminance(stack) - luminance(fused[None]))
    index, _ = first_argmax(-box_mean(diff, CLOSEST_RADIUS))
    return one_hot_weights(index, stack.shape[0])


def apply_correction(corr: Float32Array, base: Float32Array) -> Float32Array:
    """``sigmoid(corr + logit(base))`` as the network's output layer computes it, with ``base``
    ``(C, H, W)`` in place of its prior; a greyscale ``base`` goes in as grey RGB and the result
    comes back as its channel mean, as :func:`_run` does."""
    grey = base.shape[0] != 3
    rgb = np.broadcast_to(base.mean(axis=0, keepdims=True), corr.shape) if grey else base
    b = np.clip(rgb, np.float32(1e-3), np.float32(1.0 - 1e-3))
    # The sigmoid as 0.5 (1 + tanh(x / 2)): no overflow for large logits.
    out = 0.5 + 0.5 * np.tanh(0.5 * (corr + np.log(b / (1.0 - b))))
    if grey:
        out = np.broadcast_to(out.mean(axis=0, keepdims=True), base.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward ``(N, Z, 3, H, W)``; a greyscale stack is replicated to RGB and back."""
    if x.shape[2] == 3:
        return model(x)
    grey = x.mean(dim=2, keepdim=True)
    return (
        model(grey.expand(-1, -1, 3, -1, -1))
        .mean(dim=1, keepdim=True)
        .expand(-1, x.shape[2], -1, -1)
    )


def _run_parts(model: FmbNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's correction logits ``(N, 3, H, W)`` (output convolution of the refined
    plane maximum) and its own output ``(N, C, H, W)`` for ``(N, Z, C, H, W)`` planes; a
    greyscale stack is replicated to RGB and its output averaged back, as :func:`_run` does."""
    import torch

    rgb = x if x.shape[2] == 3 else x.mean(dim=2, keepdim=True).expand(-1, -1, 3, -1, -1)
    corr = model.out(model.refine(model.encode_max(rgb)))
    base = rgb.mean(dim=1) if model.prior == "mean" else model.focus_prior(rgb)
    net = torch.sigmoid(corr + torch.logit(base.clamp(1e-3, 1.0 - 1e-3)))
    if x.shape[2] != 3:
        net = net.mean(dim=1, keepdim=True).expand(-1, x.shape[2], -1, -1)
    return corr, net
