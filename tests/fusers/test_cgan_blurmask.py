"""cgan_blurmask: plane choice, networks, single-plane operation, shipped weights, bad files.

Regenerate the reference after retraining with
``python tests/fusers/test_cgan_blurmask.py --regenerate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sharp_image
from learned_checks import (  # one_torch_thread: a fixture
    check_bad_weights,
    check_sha256,
    one_torch_thread,  # noqa: F401
    reference_stack,
)
from learned_checks import shipped as shipped_fuser
from scipy import ndimage as ndi

from wsi_fusion.fusers.cgan_blurmask import (
    CganBlurMaskFuser,
    few_plane_indices,
    reference_plane,
)

torch = pytest.importorskip("torch")

REFERENCE = Path(__file__).parent / "data" / "cgan_blurmask_reference.npz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shipped(**params: str) -> CganBlurMaskFuser:
    return shipped_fuser(CganBlurMaskFuser, **params)


# -- which planes the generator sees -------------------------------------------------------------


def test_reference_plane_is_the_sharpest_or_the_middle() -> None:
    sharp = sharp_image("astronaut")[:, :64, :64]
    stack = np.stack([ndi.gaussian_filter(sharp, (0, s, s)) for s in (3.0, 2.0, 0.0, 1.5)])
    assert reference_plane(stack) == 2
    assert reference_plane(stack, "middle") == 2  # Z // 2
    assert reference_plane(stack[[2, 0, 1, 3]]) == 0
    blank = np.full((5, 3, 32, 32), 0.9, np.float32)
    assert reference_plane(blank) == 2  # no structure anywhere: the middle plane


def test_few_plane_window_stays_inside_the_stack() -> None:
    assert few_plane_indices(5, 2) == [1, 2, 3]
    assert few_plane_indices(5, 0) == [0, 1, 2]
    assert few_plane_indices(5, 4) == [2, 3, 4]
    assert few_plane_indices(2, 0) == [0, 0, 1]
    assert few_plane_indices(2, 1) == [0, 1, 1]
    assert few_plane_indices(1, 0) == [0, 0, 0]


# -- networks ------------------------------------------------------------------------------------


def test_generator_starts_from_the_identity_and_discriminator_map() -> None:
    from wsi_fusion.nets.cgan_blurmask import (
        DenseUNetGenerator,
        PatchDiscriminator,
        discriminator_receptive_field,
    )

    torch.manual_seed(0)
    planes = torch.rand(2, 3, 3, 40, 56)
    masks = torch.rand(2, 3, 1, 40, 56)
    out = DenseUNetGenerator(3)(planes, masks)
    # Zero-initialised output convolution: the reference (middle) plane comes back.
    torch.testing.assert_close(out, planes[:, 1].clamp(0.0005, 0.9995), atol=1e-4, rtol=0)
    d = PatchDiscriminator()
    assert d(torch.rand(1, 3, 512, 512)).shape == (1, 1, 8, 8)  # the paper's 8 x 8 map
    assert discriminator_receptive_field() == (94, 64)


def test_gated_generator_keeps_the_plane_where_the_mask_says_sharp() -> None:
    from wsi_fusion.nets.cgan_blurmask import DenseUNetGenerator

    torch.manual_seed(0)
    gen = DenseUNetGenerator(1, gated=True)
    torch.nn.init.normal_(gen.tail.weight, std=0.1)  # a generator that changes the image
    planes = torch.rand(1, 1, 3, 32, 48)
    masks = torch.zeros(1, 1, 1, 32, 48)
    masks[..., 16:, :] = 1.0  # bottom half "blurred"
    with torch.no_grad():
        out = gen(planes, masks)
        ungated = DenseUNetGenerator(1)
        ungated.load_state_dict(gen.state_dict())
        free = ungated(planes, masks)
    assert torch.equal(out[..., :16, :], planes[:, 0, :, :16, :])  # sharp: the input, exactly
    torch.testing.assert_close(out[..., 16:, :], free[..., 16:, :])  # blurred: G's output
    assert (free[..., :16, :] - planes[:, 0, :, :16, :]).abs().max() > 0.01


def test_gate_threshold_keeps_the_plane_below_it_and_rescales_above() -> None:
    from wsi_fusion.nets.cgan_blurmask import DenseUNetGenerator

    torch.manual_seed(1)
    gen = DenseUNetGenerator(1, gated=True)
    torch.nn.init.normal_(gen.tail.weight, std=0.1)
    planes = torch.rand(1, 1, 3, 32, 48)
    masks = torch.full((1, 1, 1, 32, 48), 0.6)
    masks[..., 16:, :] = 0.9
    with torch.no_grad():
        gen.gate_threshold = 0.0
        soft = gen(planes, masks)
        gen.gate_threshold = 0.7
        calibrated = gen(planes, masks)
    # Below the threshold: the input exactly, although BM said 0.6 "blurred".
    assert torch.equal(calibrated[..., :16, :], planes[:, 0, :, :16, :])
    assert (soft[..., :16, :] - planes[:, 0, :, :16, :]).abs().max() > 0.005
    # Above it: the same generated image blended with weight (0.9 - 0.7) / 0.3 instead of 0.9.
    ref = planes[:, 0, :, 16:, :]
    full = ref + (soft[..., 16:, :] - ref) / 0.9
    torch.testing.assert_close(calibrated[..., 16:, :], ref + (full - ref) * (0.2 / 0.3))


def test_gate_threshold_parameter_reaches_the_single_plane_generator() -> None:
    from wsi_fusion.nets.cgan_blurmask import GATE_THRESHOLD_SINGLE

    assert shipped().model.single.gate_threshold == GATE_THRESHOLD_SINGLE  # type: ignore[union-attr]
    tuned = CganBlurMaskFuser(device="cpu", gate_threshold=0.3)
    assert tuned.model.single.gate_threshold == 0.3  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="gate_threshold"):  # pydantic ValidationError
        CganBlurMaskFuser(device="cpu", gate_threshold=1.5)


def test_deeplab_variants_build_and_lite_is_local() -> None:
    from wsi_fusion.nets.deeplab import build_deeplab

    torch.manual_seed(0)
    lite = build_deeplab("deeplab_v3_lite").eval()
    assert lite(torch.rand(1, 3, 37, 51)).shape == (1, 2, 37, 51)
    # No image-pooling branch: a far-away change leaves a pixel's mask unchanged.
    x = torch.rand(1, 3, 160, 160)
    x2 = x.clone()
    x2[..., 120:, 120:] = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(lite(x)[..., :20, :20], lite(x2)[..., :20, :20])
    r50 = build_deeplab("deeplab_v3_resnet50")
    relus = (
        sum(3 for m in r50.backbone.modules() if type(m).__name__ == "Bottleneck") + 1
    )  # three per bottleneck + the stem: the paper's "40th activation"
    assert relus == 40


# -- fuser (random weights) ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "few"])
def test_one_and_two_plane_inputs_and_batching(mode: str) -> None:
    fuser = CganBlurMaskFuser.untrained(seed=0, device="cpu", mode=mode, batch_size=2)
    assert isinstance(fuser, CganBlurMaskFuser)
    assert CganBlurMaskFuser.min_planes == 1
    stack = reference_stack()
    stacks = [stack[:1].copy(), stack[:2].copy(), stack, stack[:, :, :20, :30].copy(), stack]
    batched = fuser.fuse_batch(stacks)
    for s, r in zip(stacks, batched, strict=True):
        assert r.weights is None and r.fused.shape == (3, *s.shape[2:])
        np.testing.assert_allclose(r.fused, fuser.fuse(s).fused, atol=1e-5)
    mask = fuser.blur_mask(stack)
    assert mask.shape == (48, 64) and mask.min() >= 0 and mask.max() <= 1


def test_blur_mask_extra_comes_from_the_same_forward_pass() -> None:
    fuser = CganBlurMaskFuser.untrained(seed=0, device="cpu", mode="few", batch_size=2)
    assert isinstance(fuser, CganBlurMaskFuser)
    assert CganBlurMaskFuser.extra_outputs == ("blur_mask",)
    stack = reference_stack()
    blank = np.full_like(stack, 0.9)
    plain = fuser.fuse_batch([stack, blank])
    assert all(not r.extras for r in plain)

    fuser.request_extras(["blur_mask"])
    forwards = []
    model = fuser.model
    model.register_forward_hook(lambda *args: forwards.append(1))
    with_mask = fuser.fuse_batch([stack, stack[:, :, :20, :30].copy(), blank])
    assert len(forwards) == 2  # one batch per tile shape; the blank tile needs none
    for r, s in zip(with_mask, [stack, stack[:, :, :20, :30], blank], strict=True):
        mask = r.extras["blur_mask"]
        assert mask.shape == s.shape[2:] and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() <= 1.0
    np.testing.assert_allclose(with_mask[0].fused, plain[0].fused, atol=1e-6)
    np.testing.assert_allclose(with_mask[0].extras["blur_mask"], fuser.blur_mask(stack), atol=1e-6)
    # A blank tile is returned as it is: nothing was synthesised.
    assert not with_mask[2].extras["blur_mask"].any()


def test_an_extra_the_fuser_cannot_produce_is_refused() -> None:
    from wsi_fusion.errors import ConfigError
    from wsi_fusion.fusers import create_fuser

    with pytest.raises(ConfigError, match=r"'focus_measure'.*'blur_mask'.*--fuser cgan_blurmask"):
        create_fuser("focus_measure").request_extras(["blur_mask"])
    with pytest.raises(ConfigError, match="'depth'"):
        CganBlurMaskFuser.untrained(device="cpu").request_extras(["depth"])


# -- shipped weights -----------------------------------------------------------------------------


def test_weights_load_and_match_sha256() -> None:
    shipped()
    check_sha256(CganBlurMaskFuser)


def test_forward_reproduces_stored_reference() -> None:
    shipped()
    ref = np.load(REFERENCE)
    stack = reference_stack()
    # The networks' own output: few planes with the reference plane as the generator's base.
    for mode, base in (("single", "fusion"), ("few", "plane")):
        fused = shipped(mode=mode, few_base=base).fuse(stack).fused
        np.testing.assert_allclose(fused, ref[mode].astype(np.float32), atol=2e-3)
    mask = shipped().blur_mask(stack)
    np.testing.assert_allclose(mask, ref["mask"].astype(np.float32), atol=2e-3)


def test_few_planes_keep_the_fusion_of_the_three_planes_and_fill_only_where_all_are_blurred() -> (
    None
):
    from wsi_fusion.fusers import create_fuser

    shipped()
    stack = reference_stack()
    fill = shipped(mode="few")
    base = create_fuser("focus_measure").fuse(stack[fill.input_planes(stack)]).fused
    # At the calibrated gate nothing on this tile is blurred in all three planes: the output is
    # the default fuser's fusion of those planes.
    np.testing.assert_allclose(fill.fuse(stack).fused, base, atol=1e-6)
    # With the raw gate the generated pixels fade in by the least blurred plane's probability.
    raw = shipped(mode="few", gate_threshold="0")
    generated = shipped(mode="few", few_base="plane", gate_threshold="0").fuse(stack).fused
    least_blurred = raw.blur_mask(stack)
    assert least_blurred.max() <= shipped(mode="few", few_base="plane").blur_mask(stack).max()
    np.testing.assert_allclose(
        raw.fuse(stack).fused, base + least_blurred[None] * (generated - base), atol=1e-5
    )


def test_shipped_blur_mask_marks_the_blurred_half() -> None:
    sharp = np.ascontiguousarray(sharp_image("astronaut")[:, 100:228, 150:278])
    half = sharp.copy()
    half[:, :, 64:] = ndi.gaussian_filter(sharp, (0, 4, 4))[:, :, 64:]
    mask = shipped().blur_mask(half[None])
    assert mask[:, 80:].mean() > mask[:, :48].mean() + 0.3


def test_bad_weights_raise_weights_error(tmp_path: Path) -> None:
    from wsi_fusion.nets.cgan_blurmask import CganBlurMask, DenseUNetGenerator

    # A generator for five planes where the model has one: the input convolution differs.
    state = dict(CganBlurMask().state_dict())
    five = DenseUNetGenerator(5).state_dict()
    state.update({f"single.{k}": v for k, v in five.items()})
    check_bad_weights(CganBlurMaskFuser, state, tmp_path)


def test_cli_fuses_a_single_plane_slide(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``wsi-fusion fuse slide_z0.tif --fuser cgan_blurmask -o x.ome.zarr``: one plane, CPU."""
    import tifffile
    import zarr
    from helpers import run_cli

    shipped()
    image = np.moveaxis(sharp_image("astronaut")[:, :200, :260], 0, -1)
    rgb = np.rint(ndi.gaussian_filter(image, (1.5, 1.5, 0)) * 255).astype(np.uint8)
    slide = tmp_path / "slide_z0.tif"
    tifffile.imwrite(slide, rgb, photometric="rgb", tile=(128, 128))
    out = tmp_path / "x.ome.zarr"
    code, _, err = run_cli(
        monkeypatch, capsys, "fuse", str(slide), "--fuser", "cgan_blurmask", "-o", str(out), "-q"
    )
    assert code == 0, err
    level0 = np.asarray(zarr.open_group(str(out), mode="r")["0"])
    assert level0.shape == (3, 200, 260) and level0.dtype == np.uint8
    fused = np.moveaxis(level0, 0, -1).astype(np.float32)
    assert abs(float(fused.mean()) - float(rgb.mean())) < 3  # no brightness shift
    assert not np.array_equal(level0, np.moveaxis(rgb, -1, 0))  # generated, not copied


def regenerate() -> None:
    """Write the reference outputs of the shipped weights (run after retraining)."""
    stack = reference_stack()
    out = {m: CganBlurMaskFuser(device="cpu", mode=m).fuse(stack).fused for m in ("single", "few")}
    mask = CganBlurMaskFuser(device="cpu").blur_mask(stack)
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(
        REFERENCE,
        single=out["single"].astype(np.float16),
        few=out["few"].astype(np.float16),
        mask=mask.astype(np.float16),
    )


if __name__ == "__main__" and "--regenerate" in sys.argv:
    regenerate()
