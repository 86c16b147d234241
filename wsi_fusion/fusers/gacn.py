"""``gacn``: GACN decision maps folded over the z-stack (round robin, calibration or serial).

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
   :mod:`wsi_fusion.fusers.pairwise`, ``strategy``:

   - ``"round_robin"`` (default; not in the paper): every pair of planes once on the final
     DMs, per-pixel argmax of the summed decisions; each plane's features are computed once.
     On the depth surface only the planes in play take part (``prune_planes``, see
     :func:`~wsi_fusion.fusers.pairwise.planes_in_play`).
   - ``"calibration"`` (Sec. 3.3, Eq. 19): plane ``baseline`` against every other plane, the
     baseline's features computed once.
   - ``"serial"`` (Fig. 3 top): one by one.

   All three are timed and measured side by side in the model card.

Deviations from the paper and why
---------------------------------
- Default N-plane strategy: the round robin, chosen on validation stacks from the training
  rows. There the calibration loses 2.2 dB against it and 14.8 dB as published (first-plane
  baseline, k = 1000). The argmax of Eq. 19 ranks planes by the *magnitude* of the
  decision-path output, which the Dice/Q_g training does not calibrate: it only fixes its sign.
  Serial folding is as good as the round robin (−0.01 dB), but its margin grows with the number
  of planes beyond the default 128 px tile overlap. The round robin only uses signs and keeps
  the reach of one DM. Held-out numbers are in the model card.
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
- On the depth surface (the default, ``depth_radius > 0``) the decision path runs at half
  resolution and the DM is not boundary-smoothed (``half_resolution`` and ``smooth``, both
  ``None`` = by the surface; issue 13, CPU speed). There the DMs only enter as votes, the
  share of round-robin winners within 8 px (``surface.VOTE_RADIUS``), that tip the focus
  measure by at most one plane, and the surface's own guided filter places the boundaries;
  the activity levels are spatial frequencies averaged over 11 x 11 px, so they carry little
  detail that a 2x2-pooled copy loses. The network's weights are the full-resolution ones
  (not retrained). The activities are 2x2-averaged, the decision path (4 convolutions and 4
  SSE projections per pair and antisymmetric half, the bulk of the round robin's cost) runs
  on a quarter of the pixels, and its logit is upsampled bilinearly before the projection.
  Measured on the held-out synthetic stacks and real 1024² crops against the full path: see
  the model card ("CPU speed"). The reach grows from 26 to 44 px (``DM_HALO_HALF``); without
  the smoothing's 8 px the fuser's margin stays the depth surface's 64 px (512/128 tiling).
  ``depth_radius=0`` (the network's own decisions, which the stored reference pins) keeps
  the paper's full-resolution, smoothed DM; ``half_resolution=False, smooth=True`` restores
  it on the surface.
- Channel SE pools over the whole tile, so the DM depends weakly on the tile beyond the margin
  (one scalar per channel); tiles of 512 px with 128 px overlap and the distance-ramp blending
  keep this below visibility, but tiled fusion is not bit-identical to whole-image fusion.

Width (``width``, issue 13): ``lite`` (default) is the shipped ``gacn.small`` (growth 8, decision
width 8); ``paper`` is the paper's ``GACNConfig()`` (growth 16, decision width 16;
``nets.gacn.PAPER``), as ``workflows/gpu_run.sh`` trains it with the ``h100-8min`` preset. Its
weights are not shipped: ``weights: PATH`` names them, else
``models/gacn/gacn.paper.safetensors`` (the preset's output) is loaded, unpinned and recorded
in run.json by its sha256; without it the fuser says how to get it. Layers, kernels and the SF
window are the same at both widths, so is the reach (``DM_HALO``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import TileStack
from wsi_fusion.fusers._filters import luminance
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._weights import WeightsRecord
from wsi_fusion.fusers.pairwise import (
    PairwiseDecider,
    PairwiseParams,
    PairwiseTorchFuser,
    Weighting,
    baseline_plane,
)

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.gacn import GACN, BoundarySmoothing

Float32Array = npt.NDArray[np.float32]

#: Receptive halo of the shipped ``gacn.small`` initial DM (``nets.gacn.receptive_halo``):
#: 4 convs + SF window (5 + 1) + 4 x (3x3 conv + 7x7 SSE). Kept here so the margin is known
#: without importing torch; a test checks it against the network.
DM_HALO = 26
#: The same with the decision path at half resolution (``half_resolution``): its 16 px of
#: reach count twice, plus one px each for the 2x2 pooling and the bilinear upsampling.
DM_HALO_HALF = 44


class GACNParams(PairwiseParams):
    #: Calibration: per-pixel argmax of the decision volume (paper) or DV normalised to 1.
    weighting: Literal["argmax", "soft"] = "argmax"
    #: Sigmoid-projection steepness k (Eq. 4) of the pairwise/serial DM; paper: 1000.
    steepness: float = Field(default=1000.0, gt=0.0)
    #: Steepness of the DMs fed to the decision calibration (graded, see module notes).
    calibration_steepness: float = Field(default=1.0, gt=0.0)
    #: Boundary smoothing of the DM (Sec. 3.1.2): Gaussian sigma of the region test (the
    #: region is the paper's [0.1, 0.8]), guided-filter radius and eps. ``smooth=False`` keeps
    #: the initial DM. ``None`` (default): on for the network's own decisions
    #: (``depth_radius=0``), off on the depth surface, where the DMs only count as votes pooled
    #: over 17 px and the surface's own guided filter places the boundaries (see the notes).
    smooth: bool | None = None
    #: Run the decision path on 2x2-pooled activities and upsample its logit (bilinear) before
    #: the projection: 4x less decision work. ``None`` (default): on the depth surface only, so
    #: ``depth_radius=0`` keeps the paper's full-resolution decision (see the notes).
    half_resolution: bool | None = None
    smooth_sigma: float = Field(default=2.0, gt=0.0, le=8.0)
    guided_radius: int = Field(default=4, ge=1, le=16)
    guided_eps: float = Field(default=1e-2, gt=0.0)


@register_fuser(
    "gacn",
    paper=(
        "B. Ma, X. Yin, D. Wu, H. Shen, X. Ban and Y. Wang, 'End-to-end learning for "
        "simultaneously generating decision map and multi-focus image fusion result', "
        "Neurocomputing 470:204-216, 2022, doi:10.1016/j.neucom.2021.10.115"
    ),
)
class GACNFuser(PairwiseTorchFuser):
    """GACN decision maps, N planes by round robin (default), decision calibration or serial."""

    Params = GACNParams
    params: GACNParams
    weights_record: ClassVar[WeightsRecord] = WeightsRecord(
        model="gacn.small",
        file="gacn/gacn.small.safetensors",
        sha256="ac28d7d5e15bc4a64594f16a5304331fa10b22d71145c704892cf21801a8f7f1",
    )

    @property
    def smooths(self) -> bool:
        """Whether the DMs are boundary-smoothed (``smooth``, resolved)."""
        p = self.params
        return p.depth_radius == 0 if p.smooth is None else p.smooth

    @property
    def half(self) -> bool:
        """Whether the decision path runs at half resolution (``half_resolution``, resolved)."""
        p = self.params
        return p.depth_radius > 0 if p.half_resolution is None else p.half_resolution

    @property
    def pair_margin(self) -> int:
        """Reach of one final decision map."""
        p = self.params
        smoothing = max(max(int(round(2 * p.smooth_sigma)), 1), 2 * p.guided_radius)
        halo = DM_HALO_HALF if self.half else DM_HALO
        return halo + (smoothing if self.smooths else 0)

    def build_model(self) -> torch.nn.Module:
        import torch

        from wsi_fusion.nets.gacn import GACN, PAPER, SMALL

        net = GACN(PAPER if self.paper_width else SMALL)
        # Thin convolutions run faster channels-last on one CPU thread (measured: decision path
        # ~1.7x, feature path and its spatial frequency 145 -> 121 ms per 512² plane).
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return net

    def _smoothing(self) -> BoundarySmoothing:
        from wsi_fusion.nets.gacn import BoundarySmoothing

        p = self.params
        return BoundarySmoothing(sigma=p.smooth_sigma, radius=p.guided_radius, eps=p.guided_eps)

    def _grey(self, images: Float32Array) -> torch.Tensor:
        """``(P, C, H, W)`` numpy -> ``(P, 1, H, W)`` grey tensor on the device."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(luminance(images)))[:, None].to(self.device)

    def _chunk(self, planes: bool) -> int:
        """Images (``planes``) or pairs per forward pass.

        On CPU one at a time: the 512² feature maps of a larger batch overflow the caches, and
        one pair (two decision-path images, the antisymmetric halves) per pass was measured
        2x faster per pair than two pairs on one thread. On a GPU, ``batch_size`` tiles' worth.
        """
        if self.device.type == "cpu":
            return 1
        return max(self.params.batch_size * (5 if planes else 1), 1)

    def _activities(self, grey: torch.Tensor) -> torch.Tensor:
        """Per-scale activity of grey images, ``batch_size`` tiles' planes per forward pass;
        2x2-pooled when the decision path runs at half resolution."""
        import torch

        from wsi_fusion.nets.gacn import pool_half

        net: GACN = self.model  # type: ignore[assignment]
        chunk = self._chunk(planes=True)
        with self.autocast():
            acts = torch.cat([net.activity(g) for g in grey.split(chunk)])
            return pool_half(acts) if self.half else acts

    def _projections(self, acts: torch.Tensor) -> torch.Tensor:
        """Per-plane share of the first decision convolution (``GACN.project``), channels-last.

        Computed once per plane instead of twice per pair (it is linear in the activity
        difference the decision path reads).
        """
        import torch

        net: GACN = self.model  # type: ignore[assignment]
        chunk = self._chunk(planes=True)
        with self.autocast():
            return torch.cat(
                [
                    net.project(a.contiguous(memory_format=torch.channels_last))
                    for a in acts.split(chunk)
                ]
            ).contiguous(memory_format=torch.channels_last)

    def _final_dm(
        self,
        proj: Mapping[int, torch.Tensor],
        grey: Mapping[int, torch.Tensor],
        i: list[int],
        j: list[int],
        k: float,
    ) -> Float32Array:
        """Projected, boundary-smoothed DMs ``(P, H, W)`` of images ``i[p]`` against ``j[p]``.

        ``proj[n]`` is the :meth:`_projections` ``(1, C, H, W)`` of image ``n``, ``grey[n]`` its
        grey image ``(1, 1, H, W)`` (the guide of the boundary smoothing); pairs are gathered a
        chunk at a time, not all at once.
        """
        import torch

        from wsi_fusion.nets.gacn import smooth_boundary, upsample_to

        def gather(images: Mapping[int, torch.Tensor], which: list[int]) -> torch.Tensor:
            return images[which[0]] if len(which) == 1 else torch.cat([images[n] for n in which])

        net: GACN = self.model  # type: ignore[assignment]
        out = np.empty((len(i), *grey[0].shape[2:]), dtype=np.float32)
        step = self._chunk(planes=False)
        with self.autocast():
            for s in range(0, len(i), step):
                ia, ib = i[s : s + step], j[s : s + step]
                logit = net.logit_projected(gather(proj, ia), gather(proj, ib))
                if self.half:
                    logit = upsample_to(logit, out.shape[1:])
                dm = torch.sigmoid(k * logit.float()).contiguous()
                if self.smooths:
                    dm = smooth_boundary(dm, gather(grey, ia), gather(grey, ib), self._smoothing())
                out[s : s + len(ia)] = dm[:, 0].float().cpu().numpy()
        return out

    def decide(self, a: TileStack, b: TileStack) -> Float32Array:
        """Final DMs ``(P, H, W)``: probability that ``a`` is sharper than ``b`` (pairs)."""
        n = len(a)
        planes = _CachedPlanes(self, np.concatenate([a, b]))
        return planes._dms(list(range(n)), list(range(n, 2 * n)), self.params.steepness)

    def decide_against(self, base: Float32Array, others: TileStack) -> Float32Array:
        """Graded DMs of ``base`` against each of ``others``; base features computed once."""
        return _CachedPlanes(self, np.concatenate([base[None], others])).decide_against_first()

    def decide_pairs(self, stack: TileStack, pairs: list[tuple[int, int]]) -> Float32Array:
        """Final DMs of plane ``i`` against ``j`` per pair; each plane's features once."""
        return _CachedPlanes(self, stack).decide_pairs(stack, pairs)

    def weighting(self) -> Weighting:
        return self.params.weighting

    def batch_deciders(self, arrays: list[Float32Array]) -> list[PairwiseDecider]:
        """Grey planes and activities of every tile in one feature pass, cached per tile.

        Channel SE pools per image, so tiles do not mix.
        """
        z = arrays[0].shape[0]
        grey = self._grey(np.concatenate(arrays))
        proj = self._projections(self._activities(grey))
        return [
            _CachedPlanes(self, stack, grey[i * z : (i + 1) * z], proj[i * z : (i + 1) * z])
            for i, stack in enumerate(arrays)
        ]


class _CachedPlanes:
    """A pairwise decider over one stack whose per-plane network work (activity and its share
    of the first decision convolution) is done once per plane, and only for the planes that
    some decided pair uses (the round robin may leave planes out: ``pairwise.planes_in_play``).
    """

    def __init__(
        self,
        fuser: GACNFuser,
        stack: TileStack,
        grey: torch.Tensor | None = None,
        proj: torch.Tensor | None = None,
    ) -> None:
        self.fuser = fuser
        self.stack = stack
        grey = fuser._grey(stack) if grey is None else grey
        self.n_planes = grey.shape[0]
        self.grey = {n: grey[n : n + 1] for n in range(self.n_planes)}
        self.proj: dict[int, torch.Tensor] = {}
        if proj is not None:
            self.proj = {n: proj[n : n + 1] for n in range(self.n_planes)}

    def _dms(self, i: list[int], j: list[int], k: float) -> Float32Array:
        missing = sorted((set(i) | set(j)) - set(self.proj))
        if missing:
            import torch

            grey = torch.cat([self.grey[n] for n in missing])
            proj = self.fuser._projections(self.fuser._activities(grey))
            self.proj.update({n: proj[m : m + 1] for m, n in enumerate(missing)})
        return self.fuser._final_dm(self.proj, self.grey, i, j, k)

    def decide(self, a: TileStack, b: TileStack) -> Float32Array:
        return self.fuser.decide(a, b)

    def decide_against_first(self) -> Float32Array:
        """Plane 0 against planes 1.. (graded, the calibration's steepness)."""
        n = self.n_planes
        k = self.fuser.params.calibration_steepness
        return self._dms([0] * (n - 1), list(range(1, n)), k)

    def decide_against(self, base: Float32Array, others: TileStack) -> Float32Array:
        """Calibration on the cached stack; the baseline is the fuser's (as the adapter's)."""
        index = baseline_plane(self.fuser.params.baseline, self.n_planes)
        rest = [j for j in range(self.n_planes) if j != index]
        k = self.fuser.params.calibration_steepness
        return self._dms([index] * len(rest), rest, k)

    def decide_pairs(self, stack: TileStack, pairs: list[tuple[int, int]]) -> Float32Array:
        i, j = [a for a, _ in pairs], [b for _, b in pairs]
        return self._dms(i, j, self.fuser.params.steepness)
