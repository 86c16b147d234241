"""``gacn``: GACN decision maps folded over the z-stack (serial or decision calibration).

B. Ma, X. Yin, D. Wu, H. Shen, X. Ban and Y. Wang, "End-to-end learning for simultaneously
generating decision map and multi-focus image fusion result", Neurocomputing 470:204-216, 2022,
doi:10.1016/j.neucom.2021.10.115. Network: :mod:`wsi_fusion.nets.gacn`; training:
:mod:`wsi_fusion.training.gacn`; weights and model card: ``models/gacn/``.

Method
------
1. Each plane is converted to grey (BT.601 luma; the paper fuses colour images through their
   grey decision map) and passed through the siamese feature path; per-scale spatial frequency
   gives its activity levels.
2. Pairs of planes go through the decision path and the sigmoid projection (Eq. 4) to an
   initial decision map (DM), whose boundary region is guided-filter smoothed (Sec. 3.1.2).
3. Two sources fuse as ``F = p·A + (1 − p)·B`` (Eq. 5). N planes go through
   :mod:`wsi_fusion.fusers.pairwise`: ``strategy="calibration"`` (default; Sec. 3.3, Eq. 19:
   plane ``baseline`` against every other plane, features of the baseline computed once) or
   ``strategy="serial"`` (one by one). Their speeds are compared in the model card.

Deviations from the paper and why
---------------------------------
- Calibration steepness: Eq. 19 needs graded decisions, but the k = 1000 projection makes the
  DM binary, so every plane sharper than the baseline ties (see ``pairwise``). The DM used for
  the calibration is projected with ``calibration_steepness`` (default 1: the decision-path
  output as a plain logit); ``steepness`` (default 1000, the paper) is used for pairwise and
  serial fusion. Measured choice, see the model card.
- The baseline plane defaults to the middle of the stack (``baseline=-1``) rather than the
  first: with 5+ planes the first plane is far from most in-focus regions and its decisions
  against them are all near 0, where ratios of small probabilities are least reliable.
  ``baseline=0`` reproduces the paper.
- Serial folding reads the previous fused image, so its dependence reach grows by one DM reach
  per fold: ``margin = (max_planes − 1) × DM reach``; a stack with more than ``max_planes``
  planes is refused in serial mode (raise ``max_planes`` and the tile overlap together).
- Channel SE pools over the whole tile, so the DM depends weakly on the tile beyond the margin
  (one scalar per channel); tiles of 512 px with 128 px overlap and the distance-ramp blending
  keep this below visibility, but tiled fusion is not bit-identical to whole-image fusion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import TileStack
from wsi_fusion.errors import ConfigError
from wsi_fusion.fusers._filters import luminance
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._torch import TorchFuser, TorchParams
from wsi_fusion.fusers._weights import WeightsRecord
from wsi_fusion.fusers.base import FusionResult, weighted_sum
from wsi_fusion.fusers.pairwise import calibrated_weights, fuse_pairwise, serial_margin

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.gacn import GACN, BoundarySmoothing

Float32Array = npt.NDArray[np.float32]

#: Receptive halo of the shipped ``gacn.small`` initial DM (``nets.gacn.receptive_halo``):
#: 4 convs + SF window (5 + 1) + 4 x (3x3 conv + 7x7 SSE). Kept here so the margin is known
#: without importing torch; a test checks it against the network.
DM_HALO = 26


class GACNParams(TorchParams):
    #: N-plane strategy: GACN's decision calibration (Eq. 19) or one-by-one serial fusion.
    strategy: Literal["calibration", "serial"] = "calibration"
    #: Calibration: per-pixel argmax of the decision volume (paper) or DV normalised to 1.
    weighting: Literal["argmax", "soft"] = "argmax"
    #: Calibration baseline plane; -1 is the middle plane, 0 the paper's first plane.
    baseline: int = Field(default=-1, ge=-1)
    #: Sigmoid-projection steepness k (Eq. 4) of the pairwise/serial DM; paper: 1000.
    steepness: float = Field(default=1000.0, gt=0.0)
    #: Steepness of the DMs fed to the decision calibration (graded, see module notes).
    calibration_steepness: float = Field(default=1.0, gt=0.0)
    #: Boundary smoothing of the DM (Sec. 3.1.2): Gaussian sigma of the region test, the
    #: region's bounds, guided-filter radius and eps. ``smooth=False`` keeps the initial DM.
    smooth: bool = True
    smooth_sigma: float = Field(default=2.0, gt=0.0, le=8.0)
    guided_radius: int = Field(default=4, ge=1, le=16)
    guided_eps: float = Field(default=1e-2, gt=0.0)
    #: Serial mode only: the most planes a tile may have (its margin grows with them).
    max_planes: int = Field(default=5, ge=2)


@register_fuser(
    "gacn",
    paper=(
        "B. Ma, X. Yin, D. Wu, H. Shen, X. Ban and Y. Wang, 'End-to-end learning for "
        "simultaneously generating decision map and multi-focus image fusion result', "
        "Neurocomputing 470:204-216, 2022, doi:10.1016/j.neucom.2021.10.115"
    ),
)
class GACNFuser(TorchFuser):
    """GACN decision maps, N planes by decision calibration (default) or serial folding."""

    Params = GACNParams
    params: GACNParams
    weights_record: ClassVar[WeightsRecord] = WeightsRecord(
        model="gacn.small",
        file="gacn/gacn.small.safetensors",
        sha256="ac28d7d5e15bc4a64594f16a5304331fa10b22d71145c704892cf21801a8f7f1",
    )

    @property
    def dm_margin(self) -> int:
        """Reach of one final decision map."""
        p = self.params
        smoothing = max(max(int(round(2 * p.smooth_sigma)), 1), 2 * p.guided_radius)
        return DM_HALO + (smoothing if p.smooth else 0)

    @property
    def margin(self) -> int:
        if self.params.strategy == "serial":
            return serial_margin(self.dm_margin, self.params.max_planes)
        return self.dm_margin

    def build_model(self) -> torch.nn.Module:
        from wsi_fusion.nets.gacn import GACN, SMALL

        return GACN(SMALL)

    def _smoothing(self) -> BoundarySmoothing:
        from wsi_fusion.nets.gacn import BoundarySmoothing

        p = self.params
        return BoundarySmoothing(sigma=p.smooth_sigma, radius=p.guided_radius, eps=p.guided_eps)

    def _grey(self, images: Float32Array) -> torch.Tensor:
        """``(P, C, H, W)`` numpy -> ``(P, 1, H, W)`` grey tensor on the device."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(luminance(images)))[:, None].to(self.device)

    def _final_dm(
        self, act_a: torch.Tensor, act_b: torch.Tensor, a: torch.Tensor, b: torch.Tensor, k: float
    ) -> Float32Array:
        """Projected, boundary-smoothed DM ``(P, H, W)`` from activities and grey sources."""
        import torch

        from wsi_fusion.nets.gacn import smooth_boundary

        net: GACN = self.model  # type: ignore[assignment]
        dm = torch.sigmoid(k * net.logit(act_a, act_b).float())
        if self.params.smooth:
            dm = smooth_boundary(dm, a, b, self._smoothing())
        return dm[:, 0].float().cpu().numpy()

    def decide(self, a: TileStack, b: TileStack) -> Float32Array:
        """Final DMs ``(P, H, W)``: probability that ``a`` is sharper than ``b`` (pairs)."""
        net: GACN = self.model  # type: ignore[assignment]
        ga, gb = self._grey(a), self._grey(b)
        with self.autocast():
            act = net.activity(torch_cat(ga, gb))
            n = ga.shape[0]
            return self._final_dm(act[:n], act[n:], ga, gb, self.params.steepness)

    def decide_against(self, base: Float32Array, others: TileStack) -> Float32Array:
        """Graded DMs of ``base`` against each of ``others``; base features computed once."""
        net: GACN = self.model  # type: ignore[assignment]
        g_base, g_others = self._grey(base[None]), self._grey(others)
        with self.autocast():
            act = net.activity(torch_cat(g_base, g_others))
            n = g_others.shape[0]
            act_base = act[:1].expand(n, -1, -1, -1)
            base_grey = g_base.expand(n, -1, -1, -1)
            k = self.params.calibration_steepness
            return self._final_dm(act_base, act[1:], base_grey, g_others, k)

    def fuse(self, stack: TileStack) -> FusionResult:
        stack = np.asarray(stack, dtype=np.float32)
        p = self.params
        z = stack.shape[0]
        if p.strategy == "serial" and z > p.max_planes:
            raise ConfigError(
                f"gacn serial fusion of {z} planes needs max_planes >= {z} (got "
                f"{p.max_planes}); set max_planes={z} and a tile overlap of at least "
                f"{2 * serial_margin(self.dm_margin, z)} px, or use strategy='calibration'"
            )
        return fuse_pairwise(
            stack, self, p.strategy, baseline=self._baseline(z), weighting=p.weighting
        )

    def _baseline(self, z: int) -> int:
        return z // 2 if self.params.baseline < 0 else min(self.params.baseline, z - 1)

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Calibration over several equal-sized tiles with batched forward passes.

        Feature extraction runs on ``batch_size`` tiles' planes at a time and the decision path
        on all baseline pairs of the batch at once; the result equals :meth:`fuse` per tile
        (channel SE pools per image, so tiles do not mix). Serial mode, one tile or unequal
        shapes fall back to :meth:`fuse` per tile.
        """
        import torch

        p = self.params
        shapes = {np.shape(s) for s in stacks}
        if p.strategy != "calibration" or len(stacks) < 2 or len(shapes) != 1:
            return super().fuse_batch(stacks)
        arr = np.stack([np.asarray(s, dtype=np.float32) for s in stacks])
        n, z, c, h, w = arr.shape
        if z < 2:
            return super().fuse_batch(stacks)
        base = self._baseline(z)
        others = [j for j in range(z) if j != base]
        net: GACN = self.model  # type: ignore[assignment]
        grey = self._grey(arr.reshape(n * z, c, h, w))
        with self.autocast():
            acts = torch.cat([net.activity(g) for g in grey.split(p.batch_size * z)])
            acts = acts.view(n, z, -1, h, w)
            greys = grey.view(n, z, 1, h, w)

            def pairs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                b = t[:, base : base + 1].expand(-1, z - 1, -1, -1, -1)
                return b.reshape(n * (z - 1), -1, h, w), t[:, others].reshape(n * (z - 1), -1, h, w)

            act_b, act_o = pairs(acts)
            grey_b, grey_o = pairs(greys)
            dms = self._final_dm(act_b, act_o, grey_b, grey_o, p.calibration_steepness)
        dms = dms.reshape(n, z - 1, h, w)
        results = []
        for i in range(n):
            weights = calibrated_weights(dms[i], base, p.weighting)
            results.append(FusionResult(fused=weighted_sum(arr[i], weights), weights=weights))
        return results


def torch_cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the batch axis (one forward pass for several images)."""
    import torch

    return torch.cat(tensors, dim=0)
