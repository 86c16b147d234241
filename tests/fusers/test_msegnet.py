"""m-SegNet: network, paper's blur metric and fusion rule, shipped weights, training recipe."""

from __future__ import annotations

from pathlib import Path

import learned_checks
import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_fusion.fusers.msegnet import (
    MSegNetFuser,
    blur_metric_regions,
    blur_metric_window,
    fuse_decisions,
)
from wsi_fusion.fusers.surface import surface_margin

torch = pytest.importorskip("torch")

REFERENCE = Path(__file__).parent / "data" / "msegnet_reference.npz"


def textured(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """(3, H, W) float32 texture with edges at many scales, in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h, w))
    base = ndi.gaussian_filter(noise, 1.0) + 0.5 * ndi.gaussian_filter(noise, 4.0)
    base = (base - base.min()) / (base.max() - base.min())
    return np.stack([0.1 + 0.8 * base, 0.9 - 0.6 * base, 0.3 + 0.4 * base]).astype(np.float32)


def pixel_sharp(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """(3, H, W) float32 uniform noise in [0.2, 0.8]: sharp at the pixel scale.

    The paper's blur metric only calls an edge sharp when its curvature exceeds 10 % of the
    local intensity (Th_B = 0.1), which needs pixel-scale contrast like this.
    """
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * rng.random((1, h, w))).repeat(3, 0).astype(np.float32)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(image, (0, sigma, sigma)).astype(np.float32)


def shipped() -> MSegNetFuser:
    return learned_checks.shipped(MSegNetFuser)


# -- the paper's no-reference blur metric (Eqs. 5-13) ------------------------------------------


def test_blur_metric_ranks_sharp_above_blurred() -> None:
    sharp = pixel_sharp()
    lum = np.stack([sharp.mean(0), blur(sharp, 0.7).mean(0), blur(sharp, 1.2).mean(0)])
    window = blur_metric_window(lum, radius=8)
    assert window.shape == lum.shape and window.dtype == np.float32
    means = window.mean(axis=(1, 2))
    assert means[0] > means[1] > means[2]
    labels = np.ones(lum.shape[1:], dtype=np.intp)
    region = blur_metric_regions(lum, labels, 1)
    assert region.shape == (3, 2)
    assert region[0, 1] > region[1, 1] > region[2, 1]


def test_blur_metric_of_flat_region_is_lowest() -> None:
    """No edge point at all counts as fully blurred: Metric = 1 - w2 = 0.05."""
    lum = np.full((1, 32, 32), 0.5, dtype=np.float32)
    np.testing.assert_allclose(blur_metric_window(lum, 4), 0.05, atol=1e-6)


# -- fusion rule (Section 2.4) --------------------------------------------------------------------


def test_rule_single_claims_base_and_overlaps() -> None:
    sharp = pixel_sharp()
    stack = np.stack([blur(sharp, 3.0), sharp, blur(sharp, 1.0)])
    h, w = sharp.shape[1:]
    p = np.zeros((3, h, w), dtype=np.float32)
    p[1, :, : w // 2] = 0.9  # plane 1 claims the left half: largest share -> base
    p[0, : h // 4, w // 2 :] = 0.8  # plane 0 alone claims the top-right quarter
    p[1, h // 2 :, w // 2 :] = 0.7  # planes 1 and 2 both claim the bottom-right quarter
    p[2, h // 2 :, w // 2 :] = 0.95
    for arbitration, winner in (("probability", 2), ("window", 1), ("region", 1)):
        index = fuse_decisions(stack, p, arbitration=arbitration, unclaimed="base")
        assert (index[:, : w // 2] == 1).all()
        assert (index[: h // 4, w // 2 :] == 0).all()
        assert (index[h // 4 : h // 2, w // 2 :] == 1).all()  # unclaimed -> base
        # The paper's metric gives the overlap to the sharp plane, the network to its likelier one.
        assert (index[h // 2 + 10 : -10, w // 2 + 10 : -10] == winner).mean() > 0.9
    # Default: the per-pixel argmax of the focused probability, claimed or not.
    p[0, h // 4 : h // 2, w // 2 :] = 0.3
    np.testing.assert_array_equal(fuse_decisions(stack, p), p.argmax(axis=0))


# -- network and fuser ---------------------------------------------------------------------------


def test_network_shapes_and_receptive_halo() -> None:
    from wsi_fusion.nets.msegnet import build_msegnet, receptive_halo

    torch.manual_seed(0)
    net = build_msegnet().eval()
    halo = receptive_halo(net.config)
    assert halo == 46
    assert MSegNetFuser(depth_radius=0).margin == halo
    default = MSegNetFuser()
    assert default.margin == surface_margin(halo, default.params) and 2 * default.margin <= 128
    x = torch.rand(1, 3, 160, 160)
    c = 80 + 5
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 2, 160, 160)
        # Whatever lies beyond the halo cannot change the output pixel.
        x2 = torch.rand_like(x)
        keep = slice(c - halo, c + halo + 1)
        x2[..., keep, keep] = x[..., keep, keep]
        assert torch.equal(net(x2)[..., c, c], y[..., c, c])
    net.train()
    logits, sides = net(x[:, :, :64, :64])
    assert logits.shape == (1, 2, 64, 64)
    assert [s.shape[-1] for s in sides] == [8, 16, 32]


def test_fuse_batch_equals_fuse_and_odd_sizes() -> None:
    fuser = MSegNetFuser.untrained(seed=0, device="cpu", batch_size=2)
    sharp = textured(37, 51)
    stacks = [np.stack([sharp, blur(sharp, 2.0)]), np.stack([blur(sharp, 2.0), sharp])] * 2
    stacks.append(np.stack([sharp, blur(sharp, 1.0)])[:, :, :20, :30].copy())
    batched = fuser.fuse_batch(stacks)
    for stack, result in zip(stacks, batched, strict=True):
        single = fuser.fuse(stack)
        np.testing.assert_allclose(result.fused, single.fused, atol=1e-6)
        np.testing.assert_array_equal(result.weights, single.weights)


# -- shipped weights ------------------------------------------------------------------------------


def test_weights_load_and_match_sha256() -> None:
    shipped()
    learned_checks.check_sha256(MSegNetFuser)


def test_forward_reproduces_stored_reference() -> None:
    fuser = shipped()
    ref = np.load(REFERENCE)
    stack = ref["stack"].astype(np.float32) / 255.0
    p = fuser.focused_probability([stack])[0]
    np.testing.assert_allclose(p, ref["p_focused"].astype(np.float32), atol=2e-3)
    # The stored index is the network's own decision, before the depth surface.
    result = MSegNetFuser(depth_radius=0).fuse(stack)
    assert result.weights is not None
    np.testing.assert_array_equal(result.weights.argmax(0), ref["index"])


def test_shipped_model_finds_the_focused_plane() -> None:
    """On a two-plane stack (sharp / strongly blurred) the sharp plane wins almost everywhere."""
    fuser = shipped()
    ref = np.load(REFERENCE)
    sharp = ref["stack"][0].astype(np.float32) / 255.0
    result = fuser.fuse(np.stack([blur(sharp, 4.0), sharp]))
    assert result.weights is not None
    assert result.weights[1].mean() > 0.9


def test_bad_weights_are_refused(tmp_path: Path) -> None:
    from wsi_fusion.nets.msegnet import build_msegnet

    narrow = build_msegnet(widths=(8, 16, 32, 64))
    learned_checks.check_bad_weights(MSegNetFuser, narrow, tmp_path)


# -- training recipe ------------------------------------------------------------------------------


def test_focal_loss_matches_its_definition() -> None:
    from wsi_fusion.training.msegnet import deep_supervision_loss, focal_loss

    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.5).float()
    p = torch.softmax(logits, 1)[:, 1]
    alpha, gamma = 0.25, 2.0
    expected = torch.where(
        target > 0,
        -alpha * (1 - p) ** gamma * torch.log(p),
        -(1 - alpha) * p**gamma * torch.log(1 - p),
    ).mean()
    torch.testing.assert_close(focal_loss(logits, target, alpha, gamma), expected)
    side = torch.randn(2, 2, 4, 4)
    total = deep_supervision_loss(logits, [side], target, alpha, gamma)
    up = torch.nn.functional.interpolate(side, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(total, (expected + focal_loss(up, target, alpha, gamma)) / 2)


def test_training_batch_follows_the_recipe() -> None:
    from wsi_fusion.training.msegnet import MSegNetTrainConfig, make_batch

    cfg = MSegNetTrainConfig(crop=48, blur_samples=2, stacks=1, planes_per_stack=3, n_planes=3)
    rng = np.random.default_rng(0)
    source = (textured(120, 120).transpose(1, 2, 0) * 255).astype(np.uint8)
    x, y = make_batch([source], rng, cfg)
    assert x.shape == (5, 3, 48, 48) and x.dtype == np.float32
    assert y.shape == (5, 48, 48) and set(np.unique(y)) <= {0.0, 1.0}
    # Each pixel of a synthetic stack is focused in exactly one of its planes.
    np.testing.assert_array_equal((1 - y[2:]).sum(axis=0), 1.0)
