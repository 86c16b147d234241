"""ACNN: dense = patch-wise scores, reach, refinement, margins, batching.

The checks shared with gacn (contract, shipped weights, reference, bad files) are in
``test_decision_fusers.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from learned_checks import needs_weights, reference_stack, regenerate

from wsi_fusion.errors import ConfigError
from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers.acnn import FOCUS_HALO, ACNNFuser, refine
from wsi_fusion.fusers.surface import surface_margin
from wsi_fusion.tiling.plan import make_plan

torch = pytest.importorskip("torch")

from wsi_fusion.nets.acnn import ACNN, SMALL, focus_map, receptive_halo  # noqa: E402

shipped_weights = needs_weights(ACNNFuser)


def _dense_focus(net: ACNN, a: Any, b: Any) -> Any:
    ta, _ = net.head_terms(net.branch(a))
    _, tb = net.head_terms(net.branch(b))
    return focus_map(net.score_map(ta, tb), net.cfg, a.shape[-2:])


def test_halo_constant_matches_network() -> None:
    assert receptive_halo(SMALL) == FOCUS_HALO


def test_dense_scores_equal_patch_classifier() -> None:
    """The factorised dense head gives the patch classifier's output at stride 4."""
    torch.manual_seed(0)
    net = ACNN(SMALL).eval()
    a, b = torch.rand(1, 1, 64, 72), torch.rand(1, 1, 64, 72)
    with torch.no_grad():
        ta, _ = net.head_terms(net.branch(a))
        _, tb = net.head_terms(net.branch(b))
        dense = net.score_map(ta, tb)
        full = torch.softmax(net(a, b), dim=1)[:, 1:2]
        torch.testing.assert_close(dense, full, atol=1e-6, rtol=0)
        # An interior patch: only zero padding differs between patch and dense evaluation.
        i, j = 4, 6
        patch = torch.softmax(
            net(
                a[..., 4 * i : 4 * i + 16, 4 * j : 4 * j + 16],
                b[..., 4 * i : 4 * i + 16, 4 * j : 4 * j + 16],
            ),
            dim=1,
        )[0, 1]
    assert abs(float(patch) - float(dense[0, 0, i, j])) < 0.05


def test_focus_map_reach_is_within_halo() -> None:
    torch.manual_seed(0)
    net = ACNN(SMALL).eval()
    a, b = torch.rand(1, 1, 96, 96), torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        base = _dense_focus(net, a, b)
        a2 = a.clone()
        a2[0, 0, 48, 50] += 0.5
        changed = torch.nonzero((_dense_focus(net, a2, b) - base).abs()[0, 0] > 0)
    reach = int((changed - torch.tensor([48, 50])).abs().max())
    assert 0 < reach <= FOCUS_HALO


def test_refine_removes_specks_and_fills_holes() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True
    mask[15, 15] = False  # a one-pixel hole
    mask[35, 35] = True  # a one-pixel speck
    out = refine(mask, 2)
    assert out[15, 15] and not out[35, 35]
    assert out[10:25, 10:25].all()
    np.testing.assert_array_equal(refine(mask, 0), mask)


def test_margins_and_serial_refusal() -> None:
    raw = {"device": "cpu", "depth_radius": 0}  # the network's own decisions
    calib = ACNNFuser.untrained(strategy="calibration", **raw)
    assert ACNNFuser.untrained(**raw).margin == calib.margin  # round robin
    serial = ACNNFuser.untrained(strategy="serial", max_planes=3, **raw)
    assert calib.margin == FOCUS_HALO
    assert serial.margin == 2 * (FOCUS_HALO + 8)
    # The depth surface (default) adds the pooled focus energy's reach; it fits 512/128 tiling.
    default = ACNNFuser.untrained(device="cpu")
    assert default.margin == surface_margin(FOCUS_HALO, default.params) > FOCUS_HALO
    make_plan((2048, 2048), tile=512, overlap=128, margin=default.margin)
    with pytest.raises(ConfigError, match="max_planes"):
        serial.fuse(np.zeros((4, 3, 24, 24), np.float32))


@shipped_weights
@pytest.mark.parametrize("strategy", ["round_robin", "calibration"])
def test_fuse_batch_equals_fuse_per_tile(strategy: str) -> None:
    fuser = create_fuser("acnn", device="cpu", batch_size=2, strategy=strategy)
    stack = reference_stack()
    stacks = [stack, stack[:, :, ::-1, :].copy(), stack[:, :, :, ::-1].copy()]
    for one, result in zip(stacks, fuser.fuse_batch(stacks), strict=True):
        single = fuser.fuse(one)
        assert result.weights is not None and single.weights is not None
        # Batched and single convolutions may differ in the last float bits; a decision can
        # flip only where two planes are tied.
        assert np.mean(np.abs(result.weights - single.weights).max(axis=0) > 0) < 0.005


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate("acnn")
