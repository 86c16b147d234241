"""fmb_net: focus-measure block, any-plane network properties, shipped weights, bad files.

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

from wsi_fusion.fusers.fmb_net import HALO, FmbNetFuser

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
    # The element-wise maximum and the mean over planes do not depend on the planes' order.
    a = fuser.fuse(stack).fused
    np.testing.assert_allclose(fuser.fuse(stack[[2, 0, 1]].copy()).fused, a, atol=1e-6)


def test_margin_is_the_exact_receptive_halo() -> None:
    """Tiled fusion equals whole-image fusion beyond ``margin`` from the tile edge."""
    from wsi_fusion.nets.fmb_net import FmbNet

    assert FmbNet("lite").receptive_halo == HALO
    fuser = FmbNetFuser.untrained(seed=1, device="cpu")
    assert 2 * fuser.margin <= 128
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
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", prior="mean")
    stack = reference_stack()
    np.testing.assert_allclose(
        fuser.fuse(stack).fused, stack.mean(0).clip(1e-3, 1 - 1e-3), atol=1e-5
    )


def test_untrained_focus_prior_is_a_focus_weighted_average() -> None:
    """``prior="focus"``: untrained, a per-pixel convex combination of the planes that leans on
    the sharper plane, independent of the planes' order."""
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", prior="focus")
    stack = reference_stack()
    fused = fuser.fuse(stack).fused
    assert np.all(fused >= stack.min(0).clip(1e-3) - 1e-5)
    assert np.all(fused <= stack.max(0).clip(max=1 - 1e-3) + 1e-5)
    np.testing.assert_allclose(fuser.fuse(stack[[2, 0, 1]].copy()).fused, fused, atol=1e-6)
    sharp = np.ascontiguousarray(stack[0])
    blurred = np.stack([sharp, np.repeat(sharp.mean((1, 2), keepdims=True), 48, 1).repeat(64, 2)])
    two = fuser.fuse(blurred.astype(np.float32)).fused
    assert np.abs(two - sharp).mean() < 0.25 * np.abs(blurred[1] - sharp).mean()


def test_fuse_batch_equals_fuse() -> None:
    fuser = FmbNetFuser.untrained(seed=0, device="cpu", batch_size=2)
    stack = reference_stack()
    stacks = [stack, stack[::-1].copy(), stack[:2], stack[:, :, :20, :30].copy(), stack]
    for s, r in zip(stacks, fuser.fuse_batch(stacks), strict=True):
        np.testing.assert_allclose(r.fused, fuser.fuse(s).fused, atol=1e-6)


# -- shipped weights -----------------------------------------------------------------------------


def test_weights_load_and_match_sha256() -> None:
    shipped()
    check_sha256(FmbNetFuser)


def test_forward_reproduces_stored_reference() -> None:
    fuser = shipped()
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


def test_bad_weights_raise_weights_error(tmp_path: Path) -> None:
    from wsi_fusion.nets.fmb_net import FmbNet

    check_bad_weights(FmbNetFuser, FmbNet("paper"), tmp_path)  # the wider network


def regenerate() -> None:
    """Write the reference output of the shipped weights (run after retraining)."""
    fused = FmbNetFuser(device="cpu").fuse(reference_stack()).fused
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, fused=fused.astype(np.float16))


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate()
