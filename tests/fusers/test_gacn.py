"""GACN: network reach, antisymmetry, differentiable Q_g, Dice, margins, batching.

The checks shared with acnn (contract, shipped weights, reference, bad files) are in
``test_decision_fusers.py``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from learned_checks import reference_stack, regenerate

from wsi_fusion.errors import ConfigError
from wsi_fusion.fusers.gacn import DM_HALO, DM_HALO_HALF, GACNFuser
from wsi_fusion.fusers.surface import surface_margin
from wsi_fusion.tiling.plan import make_plan

torch = pytest.importorskip("torch")

from wsi_fusion.nets.gacn import (  # noqa: E402
    GACN,
    SMALL,
    ChannelSE,
    pool_half,
    receptive_halo,
    upsample_to,
)
from wsi_fusion.training.gacn import dice_loss, qg_loss  # noqa: E402


def test_halo_constant_matches_network() -> None:
    assert receptive_halo(SMALL) == DM_HALO
    assert receptive_halo(SMALL, half=True) == DM_HALO_HALF


@pytest.mark.parametrize("shape", [(96, 96), (97, 95)])
@pytest.mark.parametrize("at", [(48, 48), (49, 49), (48, 49)])
def test_half_resolution_dm_reach_is_within_halo(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int], at: tuple[int, int]
) -> None:
    """The half-resolution decision (pooled activities, upsampled logit) reaches at most
    ``DM_HALO_HALF``, at either pixel parity and for odd sizes; the upsampled map has the
    input's size."""
    monkeypatch.setattr(ChannelSE, "scale", lambda self, x: torch.ones(x.shape[:2]))
    torch.manual_seed(0)
    net = GACN(SMALL).eval()
    a, b = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)

    def logit(a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            half = net.logit(pool_half(net.activity(a)), pool_half(net.activity(b)))
            return upsample_to(half, shape)

    base = logit(a)
    assert base.shape[2:] == shape
    a2 = a.clone()
    a2[0, 0, at[0], at[1]] += 0.5
    changed = torch.nonzero((logit(a2) - base).abs()[0, 0] > 0)
    reach = int((changed - torch.tensor(at)).abs().max())
    assert 0 < reach <= DM_HALO_HALF


def test_half_resolution_and_smoothing_defaults() -> None:
    """On the depth surface (default) the decision path runs at half resolution without the
    DM's boundary smoothing; the network's own decisions (``depth_radius=0``) keep the paper's
    full-resolution, smoothed DM; both can be set explicitly."""
    default = GACNFuser.untrained(device="cpu")
    assert default.half and not default.smooths
    assert default.pair_margin == DM_HALO_HALF
    raw = GACNFuser.untrained(device="cpu", depth_radius=0)
    assert not raw.half and raw.smooths
    assert raw.pair_margin == DM_HALO + 8
    paper = GACNFuser.untrained(device="cpu", half_resolution=False, smooth=True)
    assert not paper.half and paper.smooths
    stack = reference_stack()[:, :, :33, :41]  # odd sizes
    for fuser in (default, paper, GACNFuser.untrained(device="cpu", half_resolution=True)):
        result = fuser.fuse(stack)
        assert result.fused.shape == stack.shape[1:]
        assert result.weights is not None
        np.testing.assert_allclose(result.weights.sum(axis=0), 1.0, atol=1e-5)


def test_initial_dm_reach_is_within_halo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Perturbing one pixel changes the initial DM only within the declared halo.

    Channel SE pools globally (documented); it is made the identity for this check.
    """
    monkeypatch.setattr(ChannelSE, "scale", lambda self, x: torch.ones(x.shape[:2]))
    torch.manual_seed(0)
    net = GACN(SMALL).eval()
    a, b = torch.rand(1, 1, 96, 96), torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        base = net.logit(net.activity(a), net.activity(b))
        a2 = a.clone()
        a2[0, 0, 48, 48] += 0.5
        moved = net.logit(net.activity(a2), net.activity(b))
    changed = torch.nonzero((moved - base).abs()[0, 0] > 0)
    reach = int((changed - 48).abs().max())
    assert 0 < reach <= DM_HALO


def test_decision_is_antisymmetric() -> None:
    torch.manual_seed(1)
    net = GACN(SMALL).eval()
    a, b = torch.rand(2, 1, 40, 40), torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        p_ab = net(a, b, steepness=1.0)
        p_ba = net(b, a, steepness=1.0)
    torch.testing.assert_close(p_ab, 1 - p_ba, atol=1e-6, rtol=0)


def test_fast_inference_paths_equal_the_plain_network() -> None:
    """The CPU speed-ups compute the same function: the first decision convolution once per
    image (``logit_projected``), the SSE projections regrouped, the shifted-sum box mean."""
    from torch.nn import functional as F

    from wsi_fusion.nets.gacn import SpatialSE, box_mean

    torch.manual_seed(2)
    net = GACN(SMALL).eval()
    a, b = torch.rand(2, 1, 50, 60), torch.rand(2, 1, 50, 60)
    with torch.no_grad():
        act_a, act_b = net.activity(a), net.activity(b)
        plain = net.logit(act_a, act_b)
        fast = net.logit_projected(net.project(act_a), net.project(act_b))
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    # Inference on a CPU regroups the feature path (``activity_cpu``): no concatenation, the
    # channel SE folded into the weights; with gradients on, the plain path runs. Odd and
    # minimal sizes (the SF window mirrors), trained-like non-trivial SE scales.
    for shape in [(2, 1, 50, 60), (1, 1, 6, 9), (1, 1, 33, 17)]:
        g = torch.rand(*shape)
        reference = net.activity(g).detach()
        with torch.no_grad():
            torch.testing.assert_close(net.activity(g), reference, atol=1e-6, rtol=1e-5)
    for channels in (8, 1):
        se = SpatialSE(channels, 7)
        x = torch.randn(2, channels, 33, 41)
        reference = F.conv2d(x, se.proj.weight, se.proj.bias, padding=3)
        torch.testing.assert_close(se.projection(x), reference, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(se.projection(x), reference, atol=1e-5, rtol=1e-5)
    # Training still reaches the SSE weights through the regrouped projection.
    se = SpatialSE(8, 7)
    se(torch.randn(1, 8, 20, 20)).sum().backward()
    assert se.proj.weight.grad is not None and se.proj.weight.grad.abs().sum() > 0
    x = torch.rand(2, 3, 37, 29)
    r = 4
    padded = F.pad(x, (r, r, r, r), mode="reflect")
    torch.testing.assert_close(box_mean(x, r), F.avg_pool2d(padded, 2 * r + 1, stride=1))


def test_differentiable_qg_matches_metric() -> None:
    """1 − qg_loss equals wsi_fusion.metrics.q_abf with the paper's constants, and has gradients."""
    from wsi_fusion.metrics.gradient import QabfConstants, q_abf

    rng = np.random.default_rng(0)
    a = rng.random((1, 1, 40, 48)).astype(np.float32) * 255
    b = rng.random((1, 1, 40, 48)).astype(np.float32) * 255
    w = torch.rand(1, 1, 40, 48, requires_grad=True)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fused = w * ta + (1 - w) * tb
    loss = qg_loss(ta, tb, fused)
    paper = QabfConstants(1.0, -10.0, 0.5, 1.0, -20.0, 0.75, 1.0)
    expected = q_abf(fused.detach()[0, 0].numpy(), [a[0, 0], b[0, 0]], constants=paper)
    assert abs((1 - loss.item()) - expected) < 1e-4
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_dice_loss() -> None:
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0]])[None]
    assert float(dice_loss(g, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(1 - g, g)) > 0.5


def test_margins_and_serial_refusal() -> None:
    raw = {"device": "cpu", "depth_radius": 0}  # the network's own decisions
    calib = GACNFuser.untrained(strategy="calibration", **raw)
    assert GACNFuser.untrained(**raw).margin == calib.margin  # round robin
    serial = GACNFuser.untrained(strategy="serial", max_planes=3, **raw)
    assert calib.margin == DM_HALO + 8  # guided filter radius 4 reaches 8 px
    assert serial.margin == 2 * calib.margin
    # The depth surface (default) adds the pooled focus energy's reach; it fits 512/128 tiling.
    default = GACNFuser.untrained(device="cpu")
    assert default.margin == surface_margin(DM_HALO_HALF, default.params) > calib.margin
    make_plan((2048, 2048), tile=512, overlap=128, margin=default.margin)
    with pytest.raises(ConfigError, match="max_planes"):
        serial.fuse(np.zeros((4, 3, 16, 16), np.float32))


def test_fuse_batch_equals_fuse_per_tile() -> None:
    # Soft weighting: continuous in the DMs, so float-level differences between batched and
    # single convolutions cannot flip a near-tied argmax of an untrained network.
    fuser = GACNFuser.untrained(
        device="cpu", batch_size=2, strategy="calibration", weighting="soft"
    )
    stack = reference_stack()[:, :, :32, :40]
    stacks = [stack, stack[:, :, ::-1, :].copy(), stack[:, :, :, ::-1].copy()]
    batched = fuser.fuse_batch(stacks)
    for one, result in zip(stacks, batched, strict=True):
        single = fuser.fuse(one)
        np.testing.assert_allclose(result.fused, single.fused, atol=1e-4)
        assert result.weights is not None and single.weights is not None
        np.testing.assert_allclose(result.weights, single.weights, atol=1e-4)


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate("gacn")
