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
perceptual loss, Sobel-at-Canny edge loss, output ``sigmoid(conv + logit(plane mean))`` (see the
network and training modules). Measured on held-out synthetic stacks the shipped model loses to
the classical ``focus_measure`` by ~6 dB (``models/fmb_net/README.md``).

Margin: every layer is a 3×3 convolution at full resolution, so the output depends on inputs
within ``receptive_halo`` pixels (24 for the shipped model): tiled fusion equals whole-image
fusion exactly beyond it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt

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
    #: The skip inside the output sigmoid the weights were trained with (``nets.fmb_net``):
    #: the plane mean or the focus-weighted plane average.
    prior: Literal["mean", "focus"] = "mean"


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
        sha256="503d8fb7cabeba25b56d32aabc158239aa6152b0f0a0b2d83e8140387b3910f1",
    )

    def build_model(self) -> FmbNet:
        from wsi_fusion.nets.fmb_net import FmbNet

        return FmbNet("lite", step=1, prior=self.params.prior)

    @property
    def margin(self) -> int:
        return HALO

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
