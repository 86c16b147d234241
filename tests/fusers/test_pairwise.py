"""The pairwise → N-plane adapter: serial folding and GACN's decision calibration (Eq. 19)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FloatArray, depth_map, focal_stack, psnr, sharp_image

from wsi_fusion.errors import ConfigError
from wsi_fusion.fusers._filters import box_mean, luminance
from wsi_fusion.fusers.base import weighted_sum
from wsi_fusion.fusers.pairwise import (
    baseline_plane,
    calibrated_weights,
    check_serial_depth,
    decision_volume,
    fuse_pairwise,
    serial_margin,
)


def local_variance(images: FloatArray, radius: int = 3) -> FloatArray:
    """Windowed luminance variance of ``(P, C, H, W)`` images, ``(P, H, W)``."""
    lum = luminance(images)
    mean = box_mean(lum, radius)
    return np.maximum(box_mean(lum * lum, radius) - mean * mean, 0.0) + np.float32(1e-8)


class VarianceDecider:
    """Toy pairwise method: A wins where its local variance is higher.

    ``graded=True`` returns ``v_A / (v_A + v_B)``, a Bradley-Terry decision, for which the
    calibration recovers the per-pixel ranking exactly; ``graded=False`` returns a hard 0/1 map.
    """

    def __init__(self, graded: bool = True) -> None:
        self.graded = graded
        self.calls = {"decide": 0, "decide_against": 0, "decide_pairs": 0}

    def _p(self, a: FloatArray, b: FloatArray) -> FloatArray:
        va, vb = local_variance(a), local_variance(b)
        if self.graded:
            return (va / (va + vb)).astype(np.float32)
        return (va > vb).astype(np.float32)

    def decide(self, a: FloatArray, b: FloatArray) -> FloatArray:
        self.calls["decide"] += 1
        return self._p(a, b)

    def decide_against(self, base: FloatArray, others: FloatArray) -> FloatArray:
        self.calls["decide_against"] += 1
        return self._p(np.broadcast_to(base, others.shape), others)

    def decide_pairs(self, stack: FloatArray, pairs: list[tuple[int, int]]) -> FloatArray:
        self.calls["decide_pairs"] += 1
        i, j = (list(x) for x in zip(*pairs, strict=True))
        return self._p(stack[i], stack[j])


@pytest.fixture(scope="module")
def small_stack() -> tuple[FloatArray, FloatArray]:
    """(sharp (3, 128, 160), stack (4, 3, 128, 160)) with regions focused on every plane."""
    sharp = np.ascontiguousarray(sharp_image("astronaut")[:, 40:168, 180:340])
    depth = depth_map(sharp.shape[1:], n_planes=4)
    return sharp, focal_stack(sharp, depth, n_planes=4, blur_per_plane=2.0)


def test_decision_volume_is_eq19() -> None:
    p = np.array([0.8, 0.5, 0.2], dtype=np.float32).reshape(3, 1, 1)  # base vs planes 1, 2, 3
    dv = decision_volume(p, baseline=0)[:, 0, 0]
    np.testing.assert_allclose(dv, [0.8, 0.2, 0.8 * 0.5 / 0.5, 0.8 * 0.8 / 0.2], rtol=1e-6)
    # Another baseline: plane 2 against planes 0, 1, 3.
    dv2 = decision_volume(p, baseline=2)[:, 0, 0]
    np.testing.assert_allclose(dv2, [0.2, 0.8 * 0.5 / 0.5, 0.8, 0.8 * 0.8 / 0.2], rtol=1e-6)


def test_binary_decisions_stay_finite() -> None:
    p = np.array([0.0, 1.0, 0.0], dtype=np.float32).reshape(3, 1, 1)
    w = calibrated_weights(p, weighting="soft")
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=1e-6)


def test_calibration_recovers_ranking_of_consistent_decider(
    small_stack: tuple[FloatArray, FloatArray],
) -> None:
    _, stack = small_stack
    decider = VarianceDecider(graded=True)
    result = fuse_pairwise(stack, decider, "calibration", weighting="argmax")
    assert result.weights is not None
    expected = np.argmax(local_variance(stack), axis=0)
    # Bradley-Terry decisions p = v_A / (v_A + v_B): DV is proportional to v, so its argmax is
    # the per-pixel most-variant plane (up to float ties).
    agree = np.mean(np.argmax(result.weights, axis=0) == expected)
    assert agree > 0.999
    assert decider.calls == {"decide": 0, "decide_against": 1, "decide_pairs": 0}
    np.testing.assert_array_equal(np.unique(result.weights), [0.0, 1.0])


def test_soft_calibration_of_two_planes_is_the_decision_map(
    small_stack: tuple[FloatArray, FloatArray],
) -> None:
    _, stack = small_stack
    pair = stack[1:3]
    decider = VarianceDecider(graded=True)
    result = fuse_pairwise(pair, decider, "calibration", weighting="soft")
    assert result.weights is not None
    p = decider._p(pair[:1], pair[1:])[0]
    np.testing.assert_allclose(result.weights[0], np.clip(p, 1e-4, 1 - 1e-4), atol=1e-5)
    np.testing.assert_allclose(result.fused, weighted_sum(pair, result.weights), atol=1e-6)


@pytest.mark.parametrize("graded", [True, False])
def test_serial_weights_are_exact(small_stack: tuple[FloatArray, FloatArray], graded: bool) -> None:
    _, stack = small_stack
    decider = VarianceDecider(graded=graded)
    result = fuse_pairwise(stack, decider, "serial")
    assert result.weights is not None
    assert result.weights is not None
    assert decider.calls == {"decide": stack.shape[0] - 1, "decide_against": 0, "decide_pairs": 0}
    np.testing.assert_allclose(result.weights.sum(axis=0), 1.0, atol=1e-6)
    assert result.weights.min() >= 0.0
    # The tracked weights reproduce the folded image exactly.
    np.testing.assert_allclose(result.fused, weighted_sum(stack, result.weights), atol=1e-5)
    if not graded:
        np.testing.assert_array_equal(np.unique(result.weights), [0.0, 1.0])


@pytest.mark.parametrize(
    ("strategy", "graded"),
    [("serial", False), ("calibration", True), ("round_robin", False), ("round_robin", True)],
)
def test_toy_decider_fuses_better_than_any_plane(
    small_stack: tuple[FloatArray, FloatArray], strategy: str, graded: bool
) -> None:
    sharp, stack = small_stack
    result = fuse_pairwise(stack, VarianceDecider(graded=graded), strategy)  # type: ignore[arg-type]
    assert result.weights is not None
    best_plane = max(psnr(plane, sharp) for plane in stack)
    assert psnr(result.fused, sharp) > best_plane + 3.0


def test_calibration_needs_graded_decisions(small_stack: tuple[FloatArray, FloatArray]) -> None:
    """Binary DMs make every plane sharper than the baseline tie (module notes): worse fusion."""
    sharp, stack = small_stack
    graded = fuse_pairwise(stack, VarianceDecider(graded=True), "calibration")
    binary = fuse_pairwise(stack, VarianceDecider(graded=False), "calibration")
    assert psnr(graded.fused, sharp) > psnr(binary.fused, sharp) + 2.0


@pytest.mark.parametrize("graded", [True, False])
def test_round_robin_picks_the_pairwise_winner(
    small_stack: tuple[FloatArray, FloatArray], graded: bool
) -> None:
    """With a transitive decider (variance order), the round robin recovers the best plane."""
    _, stack = small_stack
    decider = VarianceDecider(graded=graded)
    result = fuse_pairwise(stack, decider, "round_robin")
    assert result.weights is not None
    assert decider.calls == {"decide": 0, "decide_against": 0, "decide_pairs": 1}
    variance = local_variance(stack)
    expected = np.argmax(variance, axis=0)
    # Where the two most variant planes tie (flat regions) any pick is right.
    top2 = np.sort(variance, axis=0)[-2:]
    clear = top2[1] > 1.01 * top2[0]
    assert clear.mean() > 0.8
    assert np.mean((np.argmax(result.weights, axis=0) == expected)[clear]) > 0.999
    np.testing.assert_array_equal(np.unique(result.weights), [0.0, 1.0])


def test_single_plane_and_margin() -> None:
    one = np.random.default_rng(0).random((1, 3, 8, 9), dtype=np.float32)
    result = fuse_pairwise(one, VarianceDecider(), "serial")
    assert result.weights is not None
    np.testing.assert_array_equal(result.fused, one[0])
    np.testing.assert_array_equal(result.weights, 1.0)
    assert serial_margin(10, 5) == 40
    assert serial_margin(10, 2) == 10


def test_unknown_strategy_is_refused(small_stack: tuple[FloatArray, FloatArray]) -> None:
    with pytest.raises(ValueError, match="unknown pairwise strategy"):
        fuse_pairwise(small_stack[1], VarianceDecider(), "parallel")  # type: ignore[arg-type]


def test_baseline_plane_is_the_middle_or_clipped() -> None:
    assert [baseline_plane(-1, z) for z in (1, 2, 5)] == [0, 1, 2]
    assert [baseline_plane(3, z) for z in (2, 4, 6)] == [1, 3, 3]


def test_serial_depth_beyond_max_planes_is_refused() -> None:
    check_serial_depth("x", "serial", 3, 3, 10)
    check_serial_depth("x", "round_robin", 9, 3, 10)  # only serial folding is limited
    with pytest.raises(ConfigError, match=r"max_planes >= 4 .*overlap of at least 60 px"):
        check_serial_depth("x", "serial", 4, 3, 10)


def test_round_robin_over_planes_in_play(small_stack: tuple[FloatArray, FloatArray]) -> None:
    """Leaving planes out of the round robin: they get weight 0 and the kept planes play the
    same tournament as the sub-stack alone (only their pairs are decided)."""
    _, stack = small_stack
    decider = VarianceDecider()
    part = fuse_pairwise(stack, decider, "round_robin", planes=[1, 3])
    alone = fuse_pairwise(stack[[1, 3]], VarianceDecider(), "round_robin")
    assert part.weights is not None and alone.weights is not None
    np.testing.assert_array_equal(part.weights[[0, 2]], 0.0)
    np.testing.assert_array_equal(part.weights[[1, 3]], alone.weights)
    np.testing.assert_array_equal(part.fused, alone.fused)
    # One plane in play: it is taken everywhere without deciding any pair.
    one = VarianceDecider()
    single = fuse_pairwise(stack, one, "round_robin", planes=[2])
    assert single.weights is not None and one.calls["decide_pairs"] == 0
    np.testing.assert_array_equal(single.weights[2], 1.0)


def test_planes_in_play_are_the_surface_and_its_neighbours() -> None:
    """A stack focused on planes 3-4 of 9: the planes far from the surface are left out."""
    from wsi_fusion.fusers._depth import DepthParams
    from wsi_fusion.fusers.pairwise import planes_in_play

    sharp = np.ascontiguousarray(sharp_image("astronaut")[:, 40:168, 180:340])
    depth = 3.0 + (np.arange(sharp.shape[2]) >= 80)[None, :].repeat(sharp.shape[1], 0)
    stack = focal_stack(sharp, depth.astype(np.float32), n_planes=9, blur_per_plane=2.0)
    keep = planes_in_play(stack, DepthParams())
    assert {3, 4} <= set(keep) <= {2, 3, 4, 5}
