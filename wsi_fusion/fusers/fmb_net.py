"""``fmb_net``: focus-measure block + fusion network over any number of planes.

X. Zhou, L. Hao, Q. Nie, Y. Zhou, L. Wang, Y. Hu and J. Liu, "A novel multi-focus fusion network
for retinal microsurgery" (``../shared/papers/fmb_fn_retinal_microsurgery.txt``). Network:
:mod:`wsi_fusion.nets.fmb_net`; training: :mod:`wsi_fusion.training.fmb_net`; model card:
``models/fmb_net/README.md``.

Method
------
Every plane goes through the focus-measure block (per-channel sum-modified-Laplacian, T = 7,
3×3 window) and a shared encoder; the element-wise maximum over planes is refined by nine
blocks and mapped to RGB. All planes of a tile go through one batched forward pass.

Blank tiles (no plane has any structure) are returned as their middle plane, as
``focus_measure`` does: there is nothing to fuse, and the network's zero-padded borders would
tint them by a few grey levels.

Weights: ``None``. The fusion happens in feature space (a maximum over encoder channels), and
the output is decoded by the network, not copied from a plane, so no per-plane weight map
exists; deriving one (e.g. the plane that wins most channels of the maximum) would label as a
"decision" something the output does not follow. The pipeline writes no focus map for it.

Deviations: reduced width trained on CPU, synthetic ground truth, BM features for the
perceptual loss, Sobel-at-Canny edge loss, output ``sigmoid(conv + logit(prior))`` where the
prior is the planes' focus-weighted average (``prior="focus"``, round 2, shipped; the plane
mean in round 1), with its focus measure averaged over a wider window at inference
(``prior_radius`` 12) than in training (4) (see the network and training modules). Measured on
held-out synthetic stacks of four stains the shipped model is 0.94 dB ahead of the classical
``focus_measure`` on average, 0.29 dB behind on one stain (``models/fmb_net/README.md``).

Margin: every layer is a 3×3 convolution at full resolution, so the output depends on inputs
within ``receptive_halo`` pixels (24 for the shipped model): tiled fusion equals whole-image
fusion exactly beyond it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import TileStack
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._torch import TorchFuser, TorchParams
from wsi_fusion.fusers._weights import WeightsRecord
from wsi_fusion.fusers.base import FusionResult
from wsi_fusion.fusers.cgan_blurmask import BLANK_SML, plane_sharpness

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.fmb_net import FmbNet

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

#: Halo of the shipped network (FMB 2 + encoder 3 + 9 refinement blocks × 2 + output 1).
HALO = 24


class FmbNetParams(TorchParams):
    #: Network width: ``lite`` (shipped) or ``paper`` (64 channels; weights from a GPU run of
    #: ``configs/presets/h100-8min/train_fmb_net.yaml``, given with ``weights: PATH``).
    width: Literal["lite", "paper"] = "lite"
    #: The skip inside the output sigmoid the weights were trained with (``nets.fmb_net``):
    #: the focus-weighted plane average (round 2, shipped) or the plane mean (round 1).
    prior: Literal["mean", "focus"] = "focus"
    #: Window radius of the focus prior's averaged focus measure (``prior="focus"``). Trained
    #: at 4; 12 (default) keeps the synthetic PSNR (−0.03 dB) and stops the per-pixel prior
    #: from following noise inside cells (blood-smear fidelity p10 0.86 -> 0.90, model card).
    prior_radius: int = Field(default=12, ge=1, le=12)


@register_fuser(
    "fmb_net",
    paper=(
        "X. Zhou, L. Hao, Q. Nie, Y. Zhou, L. Wang, Y. Hu and J. Liu, 'A novel multi-focus fusion "
        "network for retinal microsurgery' (focus measure block + fusion network)"
    ),
)
class FmbNetFuser(TorchFuser):
    """Focus-measure block + shared encoder, max over planes, nine refinement blocks."""

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
    def margin(self) -> int:
        return max(HALO, 1 + self.params.prior_radius)

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
        model = self.model
        bs = self.tparams.batch_size
        with self.autocast():
            for indices in groups.values():
                for start in range(0, len(indices), bs):
                    chunk = indices[start : start + bs]
                    x = torch.from_numpy(np.stack([stacks[i] for i in chunk])).to(self.device)
                    out = _run(model, x).float().clamp_(0.0, 1.0).cpu().numpy()
                    fused.update(zip(chunk, out.astype(np.float32), strict=True))
        return [FusionResult(fused=fused[i], weights=None) for i in range(len(stacks))]


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
