"""``acnn``: all-convolutional patch-pair classifier run densely, folded over the z-stack.

C. Du and S. Gao, "Multi-focus image fusion with the all convolutional neural network",
Optoelectronics Letters 14(1):71-75, 2018, doi:10.1007/s11801-018-7207-x. Network:
:mod:`wsi_fusion.nets.acnn`; training: :mod:`wsi_fusion.training.acnn`; weights and model card:
``models/acnn/``.

Method (the letter's four steps, Fig. 2)
----------------------------------------
1. Focus detection: the grey sources run through the network fully convolutionally; each score
   is the probability that source A's 16 x 16 patch is the focused one; the per-pixel focus map
   ``S`` averages the scores of the overlapping patches covering a pixel.
2. Initial segmentation: ``T = S > 0.9`` (Eq. 4, threshold ``threshold``).
3. Morphological refinement: binary opening then closing with a disc of radius ``morph_radius``
   (the letter says "morphological operation" without details; CNN-Fuse's small-region removal
   is not used: it depends on the whole image, not a bounded neighbourhood).
4. Fusion: ``F = D·A + (1 − D)·B`` (Eq. 5) with the refined decision map ``D``.

N planes go through :mod:`wsi_fusion.fusers.pairwise` (the letter fuses two sources only):

- ``strategy="round_robin"`` (default): every pair of planes once on the *graded* focus maps
  ``S`` (each plane scores ``S`` of its pairs, the other ``1 − S``), per-pixel argmax. Each
  plane's branch features and head terms are computed once, so pairs cost only the small head.
- ``strategy="calibration"``: GACN's decision calibration (Eq. 19) on the graded ``S`` of the
  baseline plane against every other plane, argmax per pixel.
- ``strategy="serial"``: the letter's two-source method (steps 1-4) folded one plane at a time.
  Its dependence reach grows by one decision reach per fold, so its margin is
  ``(max_planes − 1)`` times that and stacks deeper than ``max_planes`` are refused.

Steps 2-3 (threshold, morphology) only run in serial mode: the asymmetric threshold (A only
where ``S > 0.9``) hands every near-tie to B, which in a round robin or a calibration would
favour later planes, and it destroys the relative clarity Eq. 19 needs (GACN Sec. 3.3 says the
same of CNN-Fuse's post-processing). The model card measures all three.

Deviations from the paper and why
---------------------------------
- The threshold of Eq. 4 is asymmetric (``S > 0.9`` → A, else B): where both patches are
  equally sharp (plain areas, S ≈ 0.5) B is taken. Kept as written.
- N-plane fusion and its default (round robin on ``S``) are not in the letter; the default was
  chosen on validation stacks from the training rows (round robin 37.25 dB, the letter's
  method folded serially 36.74 dB, calibration 33.78 dB; held-out numbers in the model card).
- The morphological structuring element (disc, radius 2) is a choice; see step 3.
- The stride-4 score grid starts at the tile's corner, so tiles at different offsets see
  slightly different patch grids: tiled fusion is not bit-identical to whole-image fusion.

Width (``width``, issue 13): ``lite`` (default) is the shipped ``acnn.small`` (16, 32, 48, FC
64); ``paper`` is CNN-Fuse's widths (64, 128, 256, FC 256; ``nets.acnn.PAPER``), as
``workflows/gpu_run.sh`` trains it with the ``h100-8min`` preset. Its weights are not shipped:
``weights: PATH`` names them, else ``models/acnn/acnn.paper.safetensors`` (the preset's output)
is loaded, unpinned and recorded in run.json by its sha256; without it the fuser says how to
get it. Patch size and strides are the same at both widths, and so is the margin.

Margin: the focus map reaches ``patch − 1 + 7 = 22`` px
(:func:`wsi_fusion.nets.acnn.receptive_halo`); opening + closing add ``4 × morph_radius`` in
serial mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy import ndimage as ndi

from wsi_fusion._types import TileStack
from wsi_fusion.fusers._filters import luminance
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._weights import WeightsRecord
from wsi_fusion.fusers.pairwise import (
    PairwiseDecider,
    PairwiseParams,
    PairwiseTorchFuser,
    baseline_plane,
)

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.acnn import ACNN

Float32Array = npt.NDArray[np.float32]

#: Reach of the focus map of the shipped ``acnn.small`` (``nets.acnn.receptive_halo``), kept here
#: so the margin is known without importing torch; a test checks it against the network.
FOCUS_HALO = 22


class ACNNParams(PairwiseParams):
    # Round robin and calibration run on the graded focus maps; serial folding is the letter's
    # two-source method (threshold + morphology) applied one plane at a time.
    #: Segmentation threshold of the focus map (Eq. 4); the letter uses 0.9.
    threshold: float = Field(default=0.9, gt=0.0, lt=1.0)
    #: Radius of the disc of the opening + closing refinement (0 disables it).
    morph_radius: int = Field(default=2, ge=0, le=8)


def _disc(radius: int) -> npt.NDArray[np.bool_]:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def refine(binary: npt.NDArray[np.bool_], radius: int) -> npt.NDArray[np.bool_]:
    """Binary opening then closing with a disc (mirrored borders, so tiles match inside)."""
    if radius <= 0:
        return binary
    disc = _disc(radius)
    pad = 2 * radius
    padded = np.pad(binary, pad, mode="symmetric")
    opened = ndi.binary_opening(padded, disc)
    closed = ndi.binary_closing(opened, disc)
    return np.asarray(closed[pad:-pad, pad:-pad])


@register_fuser(
    "acnn",
    paper=(
        "C. Du and S. Gao, 'Multi-focus image fusion with the all convolutional neural "
        "network', Optoelectronics Letters 14(1):71-75, 2018, doi:10.1007/s11801-018-7207-x"
    ),
)
class ACNNFuser(PairwiseTorchFuser):
    """ACNN focus maps, N planes by round robin (default), decision calibration or serial."""

    Params = ACNNParams
    params: ACNNParams
    weights_record: ClassVar[WeightsRecord] = WeightsRecord(
        model="acnn.small",
        file="acnn/acnn.small.safetensors",
        sha256="951e31d69cf5196019200e77a3e218157af88eb790ac6823800c27feffde14e3",
    )

    @property
    def pair_margin(self) -> int:
        """Reach of one two-source decision map (focus map + refinement)."""
        return FOCUS_HALO + 4 * self.params.morph_radius

    @property
    def combined_reach(self) -> int:
        """The round robin and the calibration use the graded focus maps, without morphology."""
        return FOCUS_HALO

    def build_model(self) -> torch.nn.Module:
        from wsi_fusion.nets.acnn import ACNN, PAPER, SMALL

        return ACNN(PAPER if self.paper_width else SMALL)

    def _terms(self, images: Float32Array) -> tuple[torch.Tensor, torch.Tensor]:
        """Head terms (as A, as B) of ``(P, C, H, W)`` images, one branch pass each."""
        import torch

        net: ACNN = self.model  # type: ignore[assignment]
        grey = torch.from_numpy(np.ascontiguousarray(luminance(images)))[:, None].to(self.device)
        # On CPU two planes per pass: larger batches of 512² maps overflow the caches (measured
        # slower per image on one thread, as for gacn); on a GPU batch_size tiles' planes.
        chunk = 2 if self.device.type == "cpu" else max(self.params.batch_size * 5, 1)
        terms = [net.head_terms(net.branch(g)) for g in grey.split(chunk)]
        return torch.cat([a for a, _ in terms]), torch.cat([b for _, b in terms])

    def focus_maps(self, a: Float32Array, b: Float32Array) -> Float32Array:
        """Graded focus maps ``S`` ``(P, H, W)`` of pairs (step 1): A is the focused one."""
        from wsi_fusion.nets.acnn import focus_map

        net: ACNN = self.model  # type: ignore[assignment]
        with self.autocast():
            ta, _ = self._terms(a)
            _, tb = self._terms(b)
            s = focus_map(net.score_map(ta, tb).float(), net.cfg, a.shape[-2:])
        return s[:, 0].cpu().numpy()

    def decide(self, a: TileStack, b: TileStack) -> Float32Array:
        """Refined binary decision maps ``D`` ``(P, H, W)`` (steps 1-3)."""
        s = self.focus_maps(a, b)
        out = np.empty_like(s)
        for i, si in enumerate(s):
            out[i] = refine(si > self.params.threshold, self.params.morph_radius)
        return out

    def decide_against(self, base: Float32Array, others: TileStack) -> Float32Array:
        """Graded focus maps of ``base`` against each of ``others``; base branch run once."""
        stack = np.concatenate([base[None], others])
        return _CachedTerms(self, stack).against(0)

    def decide_pairs(self, stack: TileStack, pairs: list[tuple[int, int]]) -> Float32Array:
        """Graded focus maps of plane ``i`` against ``j`` per pair; each plane's branch once,
        and only for the planes the pairs use (the round robin may leave planes out)."""
        used = sorted({k for pair in pairs for k in pair})
        slot = {plane: n for n, plane in enumerate(used)}
        local = [(slot[i], slot[j]) for i, j in pairs]
        sub = np.asarray(stack)[used]
        return _CachedTerms(self, sub).decide_pairs(sub, local)

    def batch_deciders(self, arrays: list[Float32Array]) -> list[PairwiseDecider]:
        """Head terms of every plane of every tile in one branch pass, cached per tile."""
        z = arrays[0].shape[0]
        with self.autocast():
            ta, tb = self._terms(np.concatenate(arrays))
        return [
            _CachedTerms(self, stack, ta[i * z : (i + 1) * z], tb[i * z : (i + 1) * z])
            for i, stack in enumerate(arrays)
        ]


class _CachedTerms:
    """A pairwise decider over one stack whose head terms are computed once per plane."""

    def __init__(
        self,
        fuser: ACNNFuser,
        stack: TileStack,
        ta: torch.Tensor | None = None,
        tb: torch.Tensor | None = None,
    ) -> None:
        self.fuser = fuser
        self.shape = stack.shape[-2:]
        if ta is None or tb is None:
            with fuser.autocast():
                ta, tb = fuser._terms(stack)
        self.ta, self.tb = ta, tb

    def _maps(self, i: list[int], j: list[int]) -> Float32Array:
        from wsi_fusion.nets.acnn import focus_map

        net: ACNN = self.fuser.model  # type: ignore[assignment]
        step = max(self.fuser.params.batch_size, 1)
        out = []
        with self.fuser.autocast():
            for s in range(0, len(i), step):
                scores = net.score_map(self.ta[i[s : s + step]], self.tb[j[s : s + step]])
                out.append(focus_map(scores.float(), net.cfg, self.shape)[:, 0].cpu().numpy())
        return np.concatenate(out)

    def against(self, base: int) -> Float32Array:
        """Plane ``base`` against every other plane, in plane order."""
        rest = [j for j in range(self.ta.shape[0]) if j != base]
        return self._maps([base] * len(rest), rest)

    def decide(self, a: TileStack, b: TileStack) -> Float32Array:
        return self.fuser.decide(a, b)

    def decide_against(self, base: Float32Array, others: TileStack) -> Float32Array:
        """Calibration on the cached stack; the baseline is the fuser's (as the adapter's)."""
        return self.against(baseline_plane(self.fuser.params.baseline, self.ta.shape[0]))

    def decide_pairs(self, stack: TileStack, pairs: list[tuple[int, int]]) -> Float32Array:
        return self._maps([a for a, _ in pairs], [b for _, b in pairs])
