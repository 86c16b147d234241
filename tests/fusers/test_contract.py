"""One contract test over every registered fuser (shape, dtype, range, weights, margin).

Learned fusers run the shape/range contract with seeded random weights (so the test needs no
trained file, as in timm's registry-wide tests); the behavioural checks (blank glass, identical
planes) use their shipped weights and skip when those are missing.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_fusion.fusers import FusionResult, create_fuser, fuser_class, list_fusers
from wsi_fusion.tiling.plan import make_plan

Z, C, H, W = 3, 3, 96, 128


def structured_stack(seed: int = 0) -> np.ndarray:
    """Random-ish structured (Z, C, H, W) stack: smooth colour field + texture, blur per plane."""
    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.random((C, H, W)), (0, 6, 6))
    base = (base - base.min()) / (base.max() - base.min())
    texture = rng.random((C, H, W))
    sharp = np.clip(0.6 * base + 0.4 * texture, 0, 1)
    sigmas = [0.0, 1.5, 3.0]
    return np.stack(
        [sharp if s == 0 else ndi.gaussian_filter(sharp, (0, s, s)) for s in sigmas]
    ).astype(np.float32)


def make_fuser(name: str, random_weights: bool):  # type: ignore[no-untyped-def]
    """The fuser ``name``: learned ones with seeded random weights or their shipped weights."""
    cls = fuser_class(name)
    if not cls.needs_weights:
        return create_fuser(name)
    pytest.importorskip("torch")
    if random_weights:
        return cls.untrained(seed=0, device="cpu")
    if cls.weights_status() != "present":
        pytest.skip(f"{name}: shipped weights {cls.weights_status()}")
    return create_fuser(name, device="cpu")


def check_result(result: FusionResult, z: int, c: int, h: int, w: int) -> None:
    fused = result.fused
    assert fused.shape == (c, h, w)
    assert fused.dtype == np.float32
    assert np.isfinite(fused).all()
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    if result.weights is not None:
        weights = result.weights
        assert weights.shape == (z, h, w)
        assert weights.dtype == np.float32
        assert np.isfinite(weights).all()
        assert weights.min() >= -1e-6
        np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", list_fusers())
def test_fuser_contract(name: str) -> None:
    cls = fuser_class(name)
    fuser = make_fuser(name, random_weights=True)
    assert isinstance(fuser.margin, int) and fuser.margin >= 0
    # The default tile plan (512 px tiles, 128 px overlap) must accept the default margin.
    make_plan((2048, 2048), tile=512, overlap=128, margin=fuser.margin)
    # Fusers on the depth surface pool on its 4-px cells: tiles must start on that grid.
    on_surface = getattr(fuser.params, "depth_radius", 0) > 0
    assert fuser.cell_grid == (4 if on_surface else 1)
    assert isinstance(cls.min_planes, int) and cls.min_planes >= 1
    assert fuser.paper
    stack = structured_stack()
    check_result(fuser.fuse(stack), Z, C, H, W)
    # Odd, non-square, small tile.
    odd = stack[:, :, :37, :51].copy()
    check_result(fuser.fuse(odd), Z, C, 37, 51)


@pytest.mark.parametrize("name", list_fusers())
def test_blank_glass_is_returned_unchanged(name: str) -> None:
    stack = np.full((Z, C, H, W), 0.9, dtype=np.float32)
    result = make_fuser(name, random_weights=False).fuse(stack)
    check_result(result, Z, C, H, W)
    # Fusers that copy source pixels must return them exactly; generative ones (weights None)
    # synthesise every pixel and may be off by a grey level or two.
    atol = 1e-5 if result.weights is not None else 2 / 255
    np.testing.assert_allclose(result.fused, 0.9, atol=atol)


@pytest.mark.parametrize("name", list_fusers())
def test_fusing_identical_planes_keeps_the_image(name: str) -> None:
    """No geometry or brightness change when every plane is the same image."""
    one = structured_stack()[0]
    stack = np.stack([one] * Z)
    result = make_fuser(name, random_weights=False).fuse(stack)
    if result.weights is not None:
        np.testing.assert_allclose(result.fused, one, atol=1e-4)
    else:  # generative: no geometry or brightness change, small synthesis error allowed
        assert abs(float(result.fused.mean() - one.mean())) < 2 / 255
        assert float(np.abs(result.fused - one).mean()) < 0.03
