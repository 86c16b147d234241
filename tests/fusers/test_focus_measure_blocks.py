"""focus_measure fuses large images in blocks: the result equals fusing each region whole."""

from __future__ import annotations

import numpy as np

from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers import focus_measure as fm
from wsi_fusion.fusers.base import weighted_sum


def test_block_fusion_equals_one_call(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    sharp = rng.random((3, 150, 170)).astype(np.float32)
    planes = np.stack([sharp, sharp * 0.5 + 0.25, sharp[:, ::-1, :].copy()])
    fuser = create_fuser("focus_measure")
    whole = fuser.fuse(planes)  # 150 x 170 < 2 x 512²: one block
    monkeypatch.setattr(fm, "_BLOCK", 40)  # now 4 x 5 blocks with a margin halo
    blocked = fuser.fuse(planes)
    assert whole.weights is not None and blocked.weights is not None
    np.testing.assert_array_equal(blocked.weights, whole.weights)
    np.testing.assert_array_equal(blocked.fused, whole.fused)


def test_weighted_sum_matches_the_base_helper() -> None:
    rng = np.random.default_rng(1)
    stack = rng.random((4, 3, 30, 20)).astype(np.float32)
    weights = rng.random((4, 30, 20)).astype(np.float32)
    weights[2] = 0.0  # a plane without weight
    weights /= weights.sum(axis=0)
    ours = fm._weighted_sum(stack, weights, np.array([0, 1, 3]))
    np.testing.assert_allclose(ours, weighted_sum(stack, weights), atol=1e-6)
