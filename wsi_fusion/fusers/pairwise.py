"""One adapter that turns a pairwise (two-source) decision method into an N-plane fuser.

Most multi-focus papers fuse two sources A and B: a network predicts, per pixel, the probability
``p`` that A is the sharper one (the decision map, DM) and the fused image is
``F = p·A + (1 − p)·B``. A z-stack has Z planes; this module folds a pairwise decider over them
in one of three ways, so that no method re-implements it.

``serial`` — one-by-one serial fusion (GACN, Ma et al. 2021, Fig. 3 top)
    Fuse plane 1 with plane 2, the result with plane 3, and so on:
    ``F_1 = P_0``, ``F_k = p_k·F_{k−1} + (1 − p_k)·P_k`` with ``p_k = decide(F_{k−1}, P_k)``.
    Because every step is a convex combination, the fused image is exactly
    ``Σ_z w_z·P_z`` with weights tracked alongside: ``w ← p_k·w`` then ``w_k += 1 − p_k``.
    They sum to 1 by induction, so the per-plane weights are exact, not estimated. It costs
    ``2·(Z − 1)`` feature extractions and ``Z − 1`` decisions, and each step reads the previous
    fused image, so the dependence reach grows with every fold: the output depends on inputs
    within ``(Z − 1)·m`` of a pixel when one decision reaches ``m`` (:func:`serial_margin`).

``calibration`` — decision calibration (GACN, Sec. 3.3, Eq. 19, Fig. 3 bottom)
    The baseline plane (plane 1 in the paper, ``baseline=0`` here) is compared with every other
    plane ``j``: ``p^j = decide(P_base, P_j)``, the probability that the baseline is sharper. The
    decision volume is

    .. code-block:: text

        DV^base = p^{o1}
        DV^{o1} = 1 − p^{o1}
        DV^j    = p^{o1} · (1 − p^j) / p^j        (every other j)

    where ``o1`` is the first non-baseline plane. Read as relative clarities ``c``, every
    pairwise DM is ``p^j = c_base / (c_base + c_j)``, so ``c_j / c_base = (1 − p^j) / p^j``, and
    the first pair fixes the scale (``c_base + c_{o1} = 1``). The paper takes the per-pixel
    argmax of DV (``weighting="argmax"``: one-hot weights); ``weighting="soft"`` normalises DV
    to sum 1 instead (for Z = 2 that reproduces ``p, 1 − p`` exactly). Only ``Z`` feature
    extractions and ``Z − 1`` decisions are needed when the decider caches the baseline's
    features (:meth:`PairwiseDecider.decide_against`), and the reach stays that of one decision.

``round_robin`` — every pair once (not in the GACN paper)
    Each pair ``(i, j)`` is decided once, plane ``i`` scores ``p_ij`` and plane ``j`` scores
    ``1 − p_ij`` (a Copeland/Borda count), and the per-pixel argmax wins (one-hot weights).
    Only the *sign* of each decision matters, so it works with binary DMs, and the reach stays
    that of one decision. It costs ``Z`` feature extractions (when the decider caches them per
    plane, :meth:`PairwiseDecider.decide_pairs`) and ``Z·(Z − 1)/2`` decisions. It exists
    because the calibration is only as good as the *magnitudes* of the decisions (next
    section), which networks trained on a decision loss do not calibrate, and serial folding's
    reach grows with Z beyond the default tile overlap.

Planes in play (round robin on the depth surface)
-------------------------------------------------
With the depth surface on (the default), the round robin's decisions only tip pixels of the
default fuser's decision to a neighbouring plane (:mod:`.surface`). ``prune_planes`` (default
on) therefore decides only the pairs among the planes within one plane of the default fuser's
own decision somewhere in the tile (:func:`planes_in_play`); the other planes get no votes. On
real 10-plane tiles most pairs go (45 -> 6-21), which is most of the cost; the 5-plane
synthetic tiles usually keep every plane. The output is not bit-identical: a far plane the
focus measure nearly picks loses the network's vote, and votes a dropped plane would have taken
go to the runner-up. Measured in ``benchmarks/bench_fusers_cpu.py`` and the model cards.

Notes on the calibration
------------------------
Eq. 19 needs *graded* decisions. With a binary DM (``p ∈ {0, 1}``), all planes judged sharper
than the baseline tie at ``DV ≈ 1`` and the argmax picks the first of them, not the sharpest.
The GACN paper says so itself (calibration "can only [be] applied to the DM based network
structure without the empirical post-processing methods" that binarise the DM). ``p`` is clipped
to ``[eps, 1 − eps]`` so the odds stay finite; ties are broken towards the lower plane index.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import PlaneWeights, TileStack
from wsi_fusion.errors import ConfigError
from wsi_fusion.fusers._depth import DepthParams
from wsi_fusion.fusers._torch import TorchFuser, TorchParams
from wsi_fusion.fusers.base import FusionResult, one_hot_weights, weighted_sum
from wsi_fusion.fusers.focus_measure import FocusMeasureFuser
from wsi_fusion.fusers.surface import on_depth_surface, surface_margin

Float32Array = npt.NDArray[np.float32]

#: N-plane strategies of :func:`fuse_pairwise`.
Strategy = Literal["calibration", "serial", "round_robin"]
#: How the decision volume becomes weights: the paper's per-pixel argmax, or DV normalised to 1.
Weighting = Literal["argmax", "soft"]

#: Decisions are clipped to ``[EPS, 1 − EPS]`` before taking odds (float32-safe, ratio ≤ 1e4).
EPS = 1e-4
#: A clearly-sharper factor no focus-measure ratio reaches: the decision stays on the surface.
_ON_SURFACE = 1e30


class PairwiseDecider(Protocol):
    """A two-source decision method: the probability that source A is sharper than B."""

    def decide(self, a: TileStack, b: TileStack) -> Float32Array:
        """Decision maps ``(P, H, W)`` in [0, 1] for pairs ``a``, ``b`` of ``(P, C, H, W)``.

        ``1`` means "take A", ``0`` "take B"; the map is final (any boundary smoothing or
        morphological refinement of the method is applied), so ``p·A + (1 − p)·B`` is the
        method's two-source fusion result.
        """
        ...

    def decide_against(self, base: Float32Array, others: TileStack) -> Float32Array:
        """Graded decisions ``(P, H, W)`` of ``base`` ``(C, H, W)`` against each of ``others``.

        Used by the decision calibration; a decider may reuse the baseline's features across
        the ``P`` pairs (the point of the strategy) and should return graded, not binarised,
        probabilities (see the module notes).
        """
        ...

    def decide_pairs(self, stack: TileStack, pairs: list[tuple[int, int]]) -> Float32Array:
        """Final DMs ``(P, H, W)`` of planes ``i`` against ``j`` for each ``(i, j)`` in ``pairs``.

        Used by the round robin; a decider should compute each plane's features once.
        """
        ...


def serial_margin(pair_margin: int, n_planes: int) -> int:
    """Reach of serial folding over ``n_planes`` when one decision reaches ``pair_margin``.

    Step ``k`` decides on the previous fused image, which is itself unreliable within the reach
    of the steps before it, so the halo adds up over the ``n_planes − 1`` folds.
    """
    return pair_margin * max(n_planes - 1, 1)


def check_serial_depth(
    fuser: str, strategy: str, n_planes: int, max_planes: int, pair_margin: int
) -> None:
    """Refuse serial folding of more planes than the tile margin was sized for.

    The serial margin grows with the number of planes (:func:`serial_margin`), and the fuser
    declared it for ``max_planes``; a deeper stack would be unreliable inside the overlap.

    Raises
    ------
    ConfigError
        ``strategy`` is ``"serial"`` and ``n_planes > max_planes``; the message gives the
        ``max_planes`` and overlap to set, or the strategy to use instead.
    """
    if strategy == "serial" and n_planes > max_planes:
        raise ConfigError(
            f"{fuser} serial fusion of {n_planes} planes needs max_planes >= {n_planes} (got "
            f"{max_planes}); set max_planes={n_planes} and a tile overlap of at least "
            f"{2 * serial_margin(pair_margin, n_planes)} px, or use strategy='round_robin'"
        )


def baseline_plane(baseline: int, n_planes: int) -> int:
    """The calibration's baseline plane: the middle one for ``baseline=-1``, else ``baseline``
    clipped to the stack."""
    return n_planes // 2 if baseline < 0 else min(baseline, n_planes - 1)


def fuse_serial(stack: TileStack, decider: PairwiseDecider) -> FusionResult:
    """One-by-one serial fusion of ``stack`` ``(Z, C, H, W)`` in plane order, exact weights."""
    stack = np.asarray(stack, dtype=np.float32)
    z, _, h, w = stack.shape
    weights = np.zeros((z, h, w), dtype=np.float32)
    weights[0] = 1.0
    fused = stack[0].copy()
    for k in range(1, z):
        p = np.clip(decider.decide(fused[None], stack[k][None])[0], 0.0, 1.0).astype(np.float32)
        # Linear in the planes: the fused image is Σ_z weights_z · P_z at every step.
        weights *= p[None]
        weights[k] += 1.0 - p
        fused = p[None] * fused + (1.0 - p)[None] * stack[k]
    return FusionResult(fused=np.clip(fused, 0.0, 1.0), weights=weights)


def decision_volume(decisions: Float32Array, baseline: int = 0) -> Float32Array:
    """Decision volume ``(Z, H, W)`` of GACN Eq. 19 from ``Z − 1`` baseline-vs-other maps.

    Parameters
    ----------
    decisions
        ``(Z − 1, H, W)``: ``p^j``, the probability that the baseline plane is sharper than
        plane ``j``, for the non-baseline planes ``j`` in increasing order.
    baseline
        Index of the baseline plane (the paper's "first image" is ``0``).

    Returns
    -------
    numpy.ndarray
        ``(Z, H, W)`` float32, not normalised (Eq. 19 as written).
    """
    p = np.clip(np.asarray(decisions, dtype=np.float32), EPS, 1.0 - EPS)
    z = p.shape[0] + 1
    if not 0 <= baseline < z:
        raise ValueError(f"baseline plane {baseline} is outside 0..{z - 1}")
    others = [j for j in range(z) if j != baseline]
    first = p[0]
    volume = np.empty((z, *p.shape[1:]), dtype=np.float32)
    volume[baseline] = first
    volume[others[0]] = 1.0 - first
    for i, j in enumerate(others[1:], start=1):
        volume[j] = first * (1.0 - p[i]) / p[i]
    return volume


def calibrated_weights(
    decisions: Float32Array, baseline: int = 0, weighting: Weighting = "argmax"
) -> PlaneWeights:
    """Per-plane weights ``(Z, H, W)`` from baseline decisions: argmax of DV, or DV / ΣDV."""
    volume = decision_volume(decisions, baseline)
    if weighting == "argmax":
        return one_hot_weights(np.argmax(volume, axis=0), volume.shape[0])
    volume /= volume.sum(axis=0, keepdims=True)
    return volume


def fuse_calibrated(
    stack: TileStack,
    decider: PairwiseDecider,
    baseline: int = 0,
    weighting: Weighting = "argmax",
) -> FusionResult:
    """Decision-calibration fusion of ``stack`` ``(Z, C, H, W)`` (GACN Sec. 3.3)."""
    stack = np.asarray(stack, dtype=np.float32)
    z = stack.shape[0]
    baseline = min(baseline, z - 1)
    others = np.array([j for j in range(z) if j != baseline])
    decisions = decider.decide_against(stack[baseline], stack[others])
    weights = calibrated_weights(decisions, baseline, weighting)
    return FusionResult(fused=weighted_sum(stack, weights), weights=weights)


def fuse_round_robin(
    stack: TileStack, decider: PairwiseDecider, planes: Sequence[int] | None = None
) -> FusionResult:
    """Every pair decided once; per-pixel argmax of the summed decisions (one-hot weights).

    ``planes`` (increasing indices) restricts the tournament to those planes; the others get
    weight 0 everywhere (see :func:`planes_in_play`). ``None``: all planes.
    """
    stack = np.asarray(stack, dtype=np.float32)
    z, _, h, w = stack.shape
    keep = list(range(z)) if planes is None else sorted(set(planes))
    pairs = [(i, j) for n, i in enumerate(keep) for j in keep[n + 1 :]]
    score = np.zeros((len(keep), h, w), dtype=np.float32)
    if pairs:
        decisions = np.clip(decider.decide_pairs(stack, pairs), 0.0, 1.0)
        slot = {plane: n for n, plane in enumerate(keep)}
        for (i, j), p in zip(pairs, decisions, strict=True):
            score[slot[i]] += p
            score[slot[j]] += 1.0 - p
    winner = np.asarray(keep, dtype=np.intp)[np.argmax(score, axis=0)]
    weights = one_hot_weights(winner, z)
    return FusionResult(fused=weighted_sum(stack, weights), weights=weights)


def planes_in_play(stack: TileStack, params: DepthParams) -> list[int]:
    """The depth surface's planes in the tile, and their neighbours.

    The network's round-robin decisions only enter the final decision as votes that tip a pixel
    of the depth surface to another plane (:mod:`.surface`): a unanimous network is worth one
    plane of distance. A plane more than one plane away from the depth surface at every pixel
    of the tile can be chosen only where the focus measure alone makes the jump (clearly
    sharper by 1.3 per plane); its pairs are dropped from the round robin and its votes count
    as 0, so such a jump needs the focus measure's 1.3 ** n without the network's help. The
    effect on the output and the number of planes kept are measured in
    ``benchmarks/bench_fusers_cpu.py`` and the model cards.
    """
    stack = np.asarray(stack, dtype=np.float32)
    z = stack.shape[0]
    # An unbeatable clearly-sharper factor keeps every pixel on the depth surface (blank
    # pixels on the middle plane): the decision is the surface itself.
    surface = FocusMeasureFuser(
        depth_radius=params.depth_radius,
        clearly_sharper=_ON_SURFACE,
        surface_measure=params.surface_measure,
    )
    with np.errstate(over="ignore", invalid="ignore"):  # its powers overflow to inf: unbeatable
        index, _ = surface.decision(stack)
    present = np.flatnonzero(np.bincount(index.ravel(), minlength=z))
    keep = {k + d for k in present.tolist() for d in (-1, 0, 1)}
    return sorted(k for k in keep if 0 <= k < z)


def fuse_pairwise(
    stack: TileStack,
    decider: PairwiseDecider,
    strategy: Strategy = "calibration",
    *,
    baseline: int = 0,
    weighting: Weighting = "argmax",
    planes: Sequence[int] | None = None,
) -> FusionResult:
    """Fuse a ``(Z, C, H, W)`` stack with a pairwise decider, by ``strategy``.

    A single plane is returned as is (weights all 1). ``baseline`` and ``weighting`` only apply
    to the calibration, ``planes`` (the planes in play) only to the round robin.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.shape[0] == 1:
        return FusionResult(
            fused=stack[0].copy(), weights=np.ones((1, *stack.shape[2:]), dtype=np.float32)
        )
    if strategy == "serial":
        return fuse_serial(stack, decider)
    if strategy == "calibration":
        return fuse_calibrated(stack, decider, baseline, weighting)
    if strategy == "round_robin":
        return fuse_round_robin(stack, decider, planes)
    raise ValueError(
        f"unknown pairwise strategy {strategy!r}; use 'round_robin', 'calibration' or 'serial'"
    )


class PairwiseParams(TorchParams, DepthParams):
    """Parameters of a learned pairwise fuser's N-plane strategy."""

    #: N-plane strategy: every pair once (default), decision calibration (Eq. 19) or
    #: one-by-one serial folding (see the module notes).
    strategy: Strategy = "round_robin"
    #: Calibration baseline plane; -1 is the middle plane, 0 the first (GACN's choice).
    baseline: int = Field(default=-1, ge=-1)
    #: Serial mode only: the most planes a tile may have (its margin grows with them).
    max_planes: int = Field(default=5, ge=2)
    #: Round robin on the depth surface only: decide only the pairs of planes within one plane
    #: of the default fuser's decision somewhere in the tile (:func:`planes_in_play`).
    prune_planes: bool = True


class PairwiseTorchFuser(TorchFuser):
    """A learned pairwise decider that fuses N planes through :func:`fuse_pairwise`.

    Subclasses are the decider (``decide``, ``decide_against``, ``decide_pairs``) and provide
    :attr:`pair_margin` and :meth:`batch_deciders`; checking the serial depth, choosing the
    baseline and batching tiles live here once.
    """

    params: PairwiseParams

    @property
    @abstractmethod
    def pair_margin(self) -> int:
        """Reach of one final two-source decision (what serial folding accumulates)."""

    @abstractmethod
    def batch_deciders(self, arrays: list[Float32Array]) -> list[PairwiseDecider]:
        """One decider per equal-sized tile, their per-plane network work done in one pass."""

    @property
    def combined_reach(self) -> int:
        """Reach of the decisions the round robin and the calibration combine."""
        return self.pair_margin

    @property
    def margin(self) -> int:
        p = self.params
        if p.strategy == "serial":
            reach = serial_margin(self.pair_margin, p.max_planes)
        else:
            reach = self.combined_reach
        return surface_margin(reach, p)

    def weighting(self) -> Weighting:
        """How the calibration turns the decision volume into weights."""
        return "argmax"

    def _fuse_with(self, stack: Float32Array, decider: PairwiseDecider) -> FusionResult:
        p = self.params
        z = stack.shape[0]
        check_serial_depth(self.name, p.strategy, z, p.max_planes, self.pair_margin)
        baseline = baseline_plane(p.baseline, z)
        weighting = self.weighting()
        planes = None
        if p.strategy == "round_robin" and p.prune_planes and p.depth_radius > 0 and z > 3:
            planes = planes_in_play(stack, p)
        result = fuse_pairwise(
            stack, decider, p.strategy, baseline=baseline, weighting=weighting, planes=planes
        )
        return on_depth_surface(stack, result.weights, p) or result

    def fuse(self, stack: TileStack) -> FusionResult:
        return self._fuse_with(np.asarray(stack, dtype=np.float32), self)  # type: ignore[arg-type]

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Several equal-sized tiles with the per-plane network work batched over all planes.

        Equals :meth:`fuse` per tile. Serial mode (each fold needs the previous result) and
        tiles of different shapes fall back to :meth:`fuse` per tile.
        """
        arrays = [np.asarray(s, dtype=np.float32) for s in stacks]
        serial = self.params.strategy == "serial"
        if serial or len(arrays) < 2 or len({a.shape for a in arrays}) != 1:
            return super().fuse_batch(stacks)
        deciders = self.batch_deciders(arrays)
        return [self._fuse_with(a, d) for a, d in zip(arrays, deciders, strict=True)]
