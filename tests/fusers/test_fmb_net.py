"""fmb_net: focus-measure block, any-plane network properties, the depth surface, shipped
weights, bad files.

Regenerate the reference after retraining with ``python tests/fusers/test_fmb_net.py --regenerate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import depth_map, focal_stack
from learned_checks import (  # one_torch_thread: a fixture
    check_bad_weights,
    check_sha256,
    one_torch_thread,  # noqa: F401
    reference_stack,
)
from learned_checks import shipped as shipped_fuser
from test_depth_surface import FOCUS, cell_stack

from wsi_fusion.fusers import fmb_net
from wsi_fusion.fusers._depth import DepthParams
from wsi_fusion.fusers.fmb_net import (
    CLOSEST_RADIUS,
    HALO,
    FmbNetFuser,
    apply_correction,
    closest_plane_votes,
)
from wsi_fusion.fusers.surface import on_depth_surface, surface_margin

torch = pytest.importorskip("torch")

REFERENCE = Path(__file__).parent / "data" / "fmb_net_reference.npz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shipped() -> FmbNetFuser:
    return shipped_fuser(FmbNetFuser)


# -- focus-measure block -------------------------------------------------------------------------


def test_sml_matches_the_formula_and_threshold() -> None:
    from wsi_fusion.nets.fmb_net import sum_modified_laplacian

    rng = np.random.default_rng(0)
    img = rng.random((1, 3, 12, 14)).astype(np.float32)
    got = sum_modified_laplacian(torch.from_numpy(img), step=2, threshold=0.3).numpy()
    p = np.pad(img, [(0, 0), (0, 0), (2, 2), (2, 2)], mode="reflect")
    c = p[..., 2:-2, 2:-2]
    ml = np.abs(2 * c - p[..., :-4, 2:-2] - p[..., 4:, 2:-2])
    ml += np.abs(2 * c - p[..., 2:-2, :-4] - p[..., 2:-2, 4:])
    ml = np.where(ml >= 0.3, ml, 0.0)
    q = np.pad(ml, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="reflect")
    want = sum(q[..., i : i + 12, j : j + 14] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Per channel: a change in the red channel only leaves the other channels' measure alone.
    img2 = img.copy()
    img2[:, 0] = 0.5
    got2 = sum_modified_laplacian(torch.from_numpy(img2), step=2, threshold=0.3).numpy()
    np.testing.assert_allclose(got2[:, 1:], got[:, 1:], atol=1e-6)
    assert np.all(got2[:, 0] == 0)


# -- network properties (random weights) ---------------------------------------------------------


def test_any_number_of_planes_and_order_invariance() -> None:
    fuser = FmbNetFuser.untrained(seed=0, device="cpu")
    stack = reference_stack()
    for z in (1, 2, 3):
        result = fuser.fuse(stack[:z])
        assert result.fused.shape == (3, 48, 64) and result.weights is None
    # The element-wise maximum and the mean over planes do not depend on the planes' order; the
    # depth surface does (a jump of n planes needs clearly_sharper ** n: focal order matters).
    raw = FmbNetFuser.untrained(seed=0, device="cpu", depth_radius=0)
    a = raw.fuse(stack).fused
    np.testing.assert_allclose(raw.fuse(stack[[2, 0, 1]].copy()).fused, a, atol=1e-6)


def test_margin_is_the_exact_receptive_halo() -> None:
    """Off the surface, tiled fusion equals whole-image fusion beyond ``HALO`` from the edge."""
    from wsi_fusion.nets.fmb_net import FmbNet

    assert FmbNet("lite").receptive_halo == HALO
    fuser = FmbNetFuser.untrained(seed=1, device="cpu", depth_radius=0)
    assert fuser.margin == HALO
    # The output convolution starts at zero (plane-mean prior); give it weights so that the
    # whole receptive field matters.
    out_conv = fuser.model.out
    assert isinstance(out_conv, torch.nn.Conv2d)
    torch.nn.init.normal_(out_conv.weight, 0.0, 0.1)
    rng = np.random.default_rng(0)
    stack = rng.random((2, 3, 96, 80)).astype(np.float32)
    whole = fuser.fuse(stack).fused
    top = fuser.fuse(np.ascontiguousarray(stack[:, :, :48])).fused
    np.testing.assert_allclose(top[:, : 48 - HALO], whole[:, : 48 - HALO], atol=1e-5)
    assert np.abs(top - whole[:, :48]).max() > 1e-4  # ...and the border does depend on it


def test_untrained_network_returns_the_plane_mean() -> None:
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", prior="mean", depth_radius=0)
    stack = reference_stack()
    np.testing.assert_allclose(
        fuser.fuse(stack).fused, stack.mean(0).clip(1e-3, 1 - 1e-3), atol=1e-5
    )


def test_untrained_focus_prior_is_a_focus_weighted_average() -> None:
    """``prior="focus"``: untrained, a per-pixel convex combination of the planes that leans on
    the sharper plane, independent of the planes' order (off the surface)."""
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", prior="focus", depth_radius=0)
    stack = reference_stack()
    fused = fuser.fuse(stack).fused
    assert np.all(fused >= stack.min(0).clip(1e-3) - 1e-5)
    assert np.all(fused <= stack.max(0).clip(max=1 - 1e-3) + 1e-5)
    np.testing.assert_allclose(fuser.fuse(stack[[2, 0, 1]].copy()).fused, fused, atol=1e-6)
    sharp = np.ascontiguousarray(stack[0])
    blurred = np.stack([sharp, np.repeat(sharp.mean((1, 2), keepdims=True), 48, 1).repeat(64, 2)])
    two = fuser.fuse(blurred.astype(np.float32)).fused
    assert np.abs(two - sharp).mean() < 0.25 * np.abs(blurred[1] - sharp).mean()


@pytest.mark.parametrize("depth_radius", [24, 0])
def test_fuse_batch_equals_fuse(depth_radius: int) -> None:
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", batch_size=2, depth_radius=depth_radius)
    torch.nn.init.normal_(fuser.model.out.weight, 0.0, 0.1)  # a correction that is not 0
    stack = reference_stack()
    stacks = [stack, stack[::-1].copy(), stack[:2], stack[:, :, :20, :30].copy(), stack]
    for s, r in zip(stacks, fuser.fuse_batch(stacks), strict=True):
        np.testing.assert_allclose(r.fused, fuser.fuse(s).fused, atol=1e-6)


# -- on the depth surface ------------------------------------------------------------------------


def test_closest_plane_votes_known_answer() -> None:
    """One-hot votes for the plane whose luminance is nearest the fused image's."""
    stack = np.stack([np.full((3, 8, 10), v, np.float32) for v in (0.1, 0.5, 0.9)])
    fused = np.full((3, 8, 10), 0.52, np.float32)
    fused[:, :, 6:] = 0.8  # right part nearest plane 2 (3 px inside: the window is 3 x 3)
    votes = closest_plane_votes(stack, fused)
    assert votes.shape == (3, 8, 10) and votes.dtype == np.float32
    np.testing.assert_array_equal(votes.sum(0), 1.0)
    assert np.all(votes[1, :, :5] == 1) and np.all(votes[2, :, 7:] == 1)
    assert CLOSEST_RADIUS == 1


def test_apply_correction_known_answers() -> None:
    """No correction returns the base (clipped as the network's skip is); a correction is added
    in logit space; a grey base goes through as grey RGB and comes back as the channel mean."""
    rng = np.random.default_rng(0)
    base = rng.random((3, 5, 6)).astype(np.float32)
    zero = np.zeros((3, 5, 6), np.float32)
    np.testing.assert_allclose(apply_correction(zero, base), base.clip(1e-3, 1 - 1e-3), atol=1e-6)
    corr = np.log(3.0) * np.ones((3, 5, 6), np.float32)  # odds x 3
    half = np.full((3, 5, 6), 0.5, np.float32)
    np.testing.assert_allclose(apply_correction(corr, half), 0.75, atol=1e-6)
    grey = base[:1]
    corr[1] = 0.0
    out = apply_correction(corr, grey)
    want = (2 * (3 * grey / (3 * grey + 1 - grey)) + grey) / 3
    assert out.shape == (1, 5, 6)
    np.testing.assert_allclose(out, want.clip(1e-3, 1 - 1e-3), atol=1e-3)


@pytest.mark.parametrize("channels", [3, 1])
def test_network_parts_recombine_to_its_output(channels: int) -> None:
    """The correction and the network's own output (``_run_parts``) are the forward pass's."""
    fuser = FmbNetFuser.untrained(seed=2, device="cpu")
    torch.nn.init.normal_(fuser.model.out.weight, 0.0, 0.1)
    stack = reference_stack()
    if channels == 1:
        stack = stack.mean(1, keepdims=True)
    x = torch.from_numpy(stack[None])
    with torch.inference_mode():
        corr, net = fmb_net._run_parts(fuser.model, x)
        want = fmb_net._run(fuser.model, x)
        prior = fuser.model.focus_prior(x.expand(-1, -1, 3, -1, -1))
    assert corr.shape == (1, 3, 48, 64) and net.shape == (1, channels, 48, 64)
    np.testing.assert_allclose(net.numpy(), want.numpy(), atol=1e-6)
    again = apply_correction(corr[0].numpy(), prior[0].numpy()[:channels])
    if channels == 3:
        np.testing.assert_allclose(again, want[0].numpy(), atol=1e-5)


def test_untrained_on_the_surface_returns_the_surface_pick_it_votes_for() -> None:
    """With no correction (output convolution at 0) the output is the depth-surface pick of
    source pixels that the network's own output votes for: per pixel a convex combination of
    the planes."""
    # Without the low band, which blends the planes' brightness along the surface (test_low_band).
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", low_band_radius=0)
    stack = reference_stack()
    fused = fuser.fuse(stack).fused
    prior = FmbNetFuser.untrained(seed=0, device="cpu", depth_radius=0).fuse(stack).fused
    picked = on_depth_surface(stack, closest_plane_votes(stack, prior), fuser.params)
    assert picked is not None and picked.weights is not None
    np.testing.assert_allclose(picked.weights.sum(0), 1.0, atol=1e-5)
    assert picked.weights.min() >= 0.0
    np.testing.assert_allclose(fused, picked.fused.clip(1e-3, 1 - 1e-3), atol=1e-5)
    assert np.all(fused >= stack.min(0).clip(1e-3) - 1e-5)
    assert np.all(fused <= stack.max(0).clip(max=1 - 1e-3) + 1e-5)


def test_votes_go_through_the_depth_surface(monkeypatch: pytest.MonkeyPatch) -> None:
    """The network's votes are one-hot per pixel and reach ``on_depth_surface``; with
    ``depth_radius`` 0 the surface is not used."""
    calls: list[tuple[np.ndarray, DepthParams]] = []

    def spy(stack, weights, params):  # type: ignore[no-untyped-def]
        calls.append((weights, params))
        return on_depth_surface(stack, weights, params)

    monkeypatch.setattr(fmb_net, "on_depth_surface", spy)
    stack = reference_stack()
    FmbNetFuser.untrained(seed=0, device="cpu", clearly_sharper=2.0).fuse(stack)
    assert len(calls) == 1
    votes, params = calls[0]
    assert votes.shape == (3, 48, 64)
    assert set(np.unique(votes)) <= {0.0, 1.0}
    np.testing.assert_array_equal(votes.sum(0), 1.0)
    assert params.clearly_sharper == 2.0 and params.depth_radius == 24
    FmbNetFuser.untrained(seed=0, device="cpu", depth_radius=0).fuse(stack)
    assert len(calls) == 1


def test_surface_margin_and_tiles_equal_the_whole_image() -> None:
    """On the surface the margin is the decision fusers' (votes + surface + guided filter, and
    the low band along the surface); a tile whose origin is on the surface's 4-px grid equals
    the whole image beyond it."""
    fuser = FmbNetFuser.untrained(seed=1, device="cpu")
    net = max(HALO, 1 + fuser.params.prior_radius)
    assert fuser.margin == surface_margin(net + CLOSEST_RADIUS, fuser.params) == 64
    assert 2 * fuser.margin <= 128
    torch.nn.init.normal_(fuser.model.out.weight, 0.0, 0.1)
    stack, _ = cell_stack()
    stack = np.ascontiguousarray(stack[:, :, :200, :144])
    m = fuser.margin
    whole = fuser.fuse(stack).fused
    top = fuser.fuse(np.ascontiguousarray(stack[:, :, :136])).fused
    np.testing.assert_allclose(top[:, : 136 - m], whole[:, : 136 - m], atol=1e-5)
    low = fuser.fuse(np.ascontiguousarray(stack[:, :, 64:])).fused
    np.testing.assert_allclose(low[:, m:], whole[:, 64 + m :], atol=1e-5)


# -- shipped weights -----------------------------------------------------------------------------


def test_weights_load_and_match_sha256() -> None:
    shipped()
    check_sha256(FmbNetFuser)


def test_forward_reproduces_stored_reference() -> None:
    """The stored reference pins the network's own output (before the depth surface)."""
    fuser = shipped_fuser(FmbNetFuser, depth_radius=0)
    ref = np.load(REFERENCE)
    fused = fuser.fuse(reference_stack()).fused
    np.testing.assert_allclose(fused, ref["fused"].astype(np.float32), atol=2e-3)


def test_shipped_model_on_held_out_tissue() -> None:
    """On held-out H&E it beats its own starting point (the plane mean) by far and is about as
    good as the best plane (the shipped CPU model is no better than that; see the model card)."""
    from wsi_fusion.training.data import heldout_sources, random_crop

    fuser = shipped()
    crop = random_crop(heldout_sources()["he"], 128, np.random.default_rng(0), 0.6, tries=30)
    sharp = np.ascontiguousarray(np.moveaxis(crop, -1, 0), dtype=np.float32) / 255.0
    stack = focal_stack(sharp, depth_map(sharp.shape[1:], n_planes=3), 3, blur_per_plane=2.0)
    err = float(np.abs(fuser.fuse(stack).fused - sharp).mean())
    assert err < 0.6 * float(np.abs(stack.mean(0) - sharp).mean())
    assert err < 1.1 * min(float(np.abs(p - sharp).mean()) for p in stack)


def test_shipped_model_keeps_cells_whole() -> None:
    """Inside smooth cells the per-pixel output follows noise; on the surface it stays on the
    focused plane (measured: mean |error| 0.0029 vs 0.0078, 90th percentile 0.006 vs 0.023)."""
    stack, interior = cell_stack()
    surface = shipped().fuse(stack).fused
    raw = shipped_fuser(FmbNetFuser, depth_radius=0).fuse(stack).fused
    err = np.abs(surface - stack[FOCUS]).mean(0)[interior]
    raw_err = np.abs(raw - stack[FOCUS]).mean(0)[interior]
    assert err.mean() < 0.5 * raw_err.mean()
    assert np.quantile(err, 0.9) < 0.01 < np.quantile(raw_err, 0.9)


def test_bad_weights_raise_weights_error(tmp_path: Path) -> None:
    from wsi_fusion.nets.fmb_net import FmbNet

    check_bad_weights(FmbNetFuser, FmbNet("paper"), tmp_path)  # the wider network


def regenerate() -> None:
    """Write the reference output of the shipped weights (run after retraining)."""
    fused = FmbNetFuser(device="cpu", depth_radius=0).fuse(reference_stack()).fused
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, fused=fused.astype(np.float16))


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate()
