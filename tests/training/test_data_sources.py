"""Shared training data: the source-level split and the stain augmentation (issue 13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from wsi_fusion.training import data


@pytest.fixture(scope="module")
def he_crop() -> np.ndarray:
    return data.random_crop(data.training_sources("train")[0].image, 128, np.random.default_rng(0))


@pytest.mark.realdata
def test_split_has_no_source_in_common(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(shared_data))
    train = data.training_sources("train", shared_data)
    held = data.training_sources("heldout", shared_data)
    assert {s.group for s in train}.isdisjoint({s.group for s in held})
    assert {s.name for s in train}.isdisjoint({s.name for s in held})
    # All 15 tiles are used, each on exactly one side; the three frozen-section crops (one
    # slide) are on the same side.
    tiles = [s for s in train + held if s.name in data.TILE_GROUPS]
    assert len(tiles) == 15
    frozen = [s for s in tiles if s.group == "tcga-cr-7395-frozen"]
    assert len(frozen) == 3 and all(s in held for s in frozen)
    assert {s.stain for s in held} >= {"he", "ihc", "he-frozen"}
    # No pixel block of a held-out tile occurs in a training tile (no duplicated files).
    train_keys = {s.image[:16, :16].tobytes() for s in train}
    assert all(s.image[:16, :16].tobytes() not in train_keys for s in held)
    assert len(data.training_images("train")) == len(train)


def test_split_falls_back_to_the_bundled_region(tmp_path: Path) -> None:
    train = data.training_sources("train", tmp_path)  # no train_tiles here
    held = data.training_sources("heldout", tmp_path)
    assert [s.name for s in train] == ["cmu1-train"]
    assert [s.name for s in held] == ["cmu1-heldout", "ihc"]
    assert train[0].image.shape[0] + held[0].image.shape[0] == 2967
    with pytest.raises(ValueError, match="split"):
        data.training_sources("test")  # type: ignore[arg-type]


@pytest.mark.parametrize("palette", list(data.STAIN_PALETTES))
def test_stain_augment_keeps_shape_range_and_structure(he_crop: np.ndarray, palette: str) -> None:
    out = data.stain_augment(he_crop, np.random.default_rng(1), palette)
    assert out.shape == he_crop.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - he_crop).mean() > 3  # the colours changed

    # The same structure: edges (strongest channel gradient) where they were. IHC washes the
    # eosin out by design (faint counterstain), so cytoplasm edges weaken: rank correlation.
    def edges(image: np.ndarray) -> np.ndarray:
        smooth = ndi.gaussian_filter(image.astype(float), (1, 1, 0))
        return np.hypot(*np.gradient(smooth, axis=(0, 1))).max(axis=2).ravel()

    assert spearmanr(edges(he_crop), edges(out))[0] > 0.6
    assert spearmanr(edges(he_crop), edges(np.roll(out, 16, axis=0)))[0] < 0.3
    # Glass stays glass.
    white = np.full((8, 8, 3), 250, np.uint8)
    assert np.abs(data.stain_augment(white, np.random.default_rng(2), palette) - 250.0).max() <= 6


def brown_fraction(image: np.ndarray) -> float:
    """Share of DAB-brown pixels: hue 10-50 degrees, saturation > 0.25."""
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(image)
    hue = hsv[..., 0] * 360
    return float(((hue > 10) & (hue < 50) & (hsv[..., 1] > 0.25)).mean())


def test_stain_augment_covers_the_heldout_ihc_colours(he_crop: np.ndarray) -> None:
    """The IHC palette makes DAB brown from H&E, as much as the held-out IHC image shows."""
    ihc_brown = brown_fraction(data.heldout_sources()["ihc"])
    assert ihc_brown > 0.3 and brown_fraction(he_crop) < 0.01  # H&E alone has no brown
    rng = np.random.default_rng(3)
    augmented = [brown_fraction(data.stain_augment(he_crop, rng, "ihc")) for _ in range(8)]
    assert max(augmented) > 0.8 * ihc_brown
    assert np.median(augmented) > 0.05


def test_stain_augment_draws_palettes_and_is_deterministic(he_crop: np.ndarray) -> None:
    a = data.stain_augment(he_crop, np.random.default_rng(4))
    b = data.stain_augment(he_crop, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    grey = data.stain_augment(he_crop, np.random.default_rng(5), "grey")
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    with pytest.raises(ValueError, match="palette"):
        data.stain_augment(he_crop, np.random.default_rng(6), "trichrome")


@pytest.mark.realdata
def test_extended_heldout_stacks_have_one_set_per_stain(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(shared_data))
    stacks = data.heldout_stacks(n=4, size=128, n_planes=3, extended=True)
    assert sorted(name.split("_")[0] for name, _ in stacks) == [
        "he",
        "he-frozen",
        "he-tiles",
        "ihc",
    ]
    # The default set is unchanged (every existing model card was measured on it).
    assert [n for n, _ in data.heldout_stacks(n=2, size=128, n_planes=3)] == ["he_1001", "ihc_1002"]


def test_real_stack_split_is_by_stack_and_refuses_the_heldout_ones() -> None:
    assert set(data.REAL_TRAIN_STACKS).isdisjoint(data.REAL_HELDOUT_STACKS)
    assert set(data.REAL_HELDOUT_STACKS) == {"wbc", "smear"}
    with pytest.raises(ValueError, match="held out"):
        data.real_stack_pairs(["algae", "wbc"])


def test_real_training_stacks_are_licence_shippable_unless_explicitly_allowed() -> None:
    """Weights trained on research-only or GPL data must not ship in the Apache-2.0 wheel."""
    from wsi_fusion.training.cgan_blurmask import BlurMaskTrainConfig, CganTrainConfig

    assert data.SHIPPABLE_REAL_STACKS == ("algae",)
    assert set(data.REAL_TRAIN_STACKS) <= set(data.SHIPPABLE_REAL_STACKS)
    for name in ("unstained", "skeleton", "pseudoscorpion"):
        with pytest.raises(ValueError, match="allow_unshippable"):
            data.real_stack_pairs([name])
        with pytest.raises(ValueError, match="allow_unshippable"):
            CganTrainConfig(real_stacks=("algae", name))
        with pytest.raises(ValueError, match="allow_unshippable"):
            BlurMaskTrainConfig(real_stacks=(name,))
    with pytest.raises(ValueError, match="unknown"):
        data.check_real_stacks(["algea"])
    # The explicit opt-out (off by default) allows experiments, never the held-out stacks.
    assert CganTrainConfig(real_stacks=("skeleton",), allow_unshippable=True).allow_unshippable
    data.check_real_stacks(["algae", "unstained"], allow_unshippable=True)
    with pytest.raises(ValueError, match="held out"):
        data.check_real_stacks(["wbc"], allow_unshippable=True)
    # Defaults in code and the shipped recipe use the shippable stacks only.
    assert CganTrainConfig().real_stacks == BlurMaskTrainConfig().real_stacks == ("algae",)
    assert not CganTrainConfig().allow_unshippable


def test_training_configs_ask_only_for_shippable_real_stacks() -> None:
    from wsi_fusion.training.cgan_blurmask import BlurMaskTrainConfig, CganTrainConfig
    from wsi_fusion.training.config import load_train_config

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("train_cgan*.yaml")) + sorted(root.glob("train_blurmask*.yaml"))
    assert files
    for path in files:
        kind = CganTrainConfig if path.name.startswith("train_cgan") else BlurMaskTrainConfig
        cfg = load_train_config(path, kind)  # a non-shippable stack is an error at load
        assert not cfg.allow_unshippable, path.name
        assert set(cfg.real_stacks) <= set(data.SHIPPABLE_REAL_STACKS), path.name


def test_real_pair_sample_picks_planes_near_the_best_and_the_fused_target() -> None:
    rng = np.random.default_rng(7)
    planes = np.stack([np.full((40, 50, 3), 10 * z, np.uint8) for z in range(7)])
    crop = data.RealStackCrop("toy", planes, np.full((40, 50, 3), 200, np.uint8), best=3)
    seen = set()
    for _ in range(40):
        x, y = data.real_pair_sample([crop], rng, 32, "single", max_offset=2)
        assert x.shape == (1, 32, 32, 3) and y.shape == (32, 32, 3)
        assert np.all(y == np.float32(200 / 255))
        seen.add(round(float(x[0, 0, 0, 0]) * 255 / 10))
    assert seen == {1, 2, 3, 4, 5}  # best +- 2, each plane drawn
    x, _ = data.real_pair_sample([crop], rng, 32, "few", max_offset=0)
    np.testing.assert_allclose(x[:, 0, 0, 0] * 255, [20, 30, 40], atol=1e-3)


@pytest.mark.realdata
def test_prepared_real_stack_is_registered_fused_and_cached(
    shared_data: Path, tmp_path: Path
) -> None:
    crops = data.prepare_real_stack(
        "skeleton", max_crops=1, shared_data=shared_data, cache_dir=tmp_path
    )
    assert len(crops) == 1
    c = crops[0]
    assert c.planes.shape == (3, 116, 170, 3) and c.target.shape == (116, 170, 3)
    assert c.best == 1  # the README's sharpest plane

    def detail(image: np.ndarray) -> float:
        return float(np.abs(ndi.laplace(image.astype(float).mean(axis=2))).mean())

    # The fusion is at least as detailed as the best plane and close to it in colour.
    assert detail(c.target) >= 0.95 * detail(c.planes[c.best])
    assert np.abs(c.target.astype(int) - c.planes[c.best]).mean() < 8
    again = data.prepare_real_stack("skeleton", max_crops=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(again[0].target, c.target)
    assert data.prepare_real_stack("skeleton", shared_data=tmp_path, cache_dir=tmp_path) == []


def test_blur_labels_skip_regions_without_detail(he_crop: np.ndarray) -> None:
    """min_change: a blurred flat region (glass) is not labelled blurred; tissue still is."""
    flat = he_crop.copy()
    flat[:, :64] = 235  # left half: blank glass
    _, full = data.local_blur_sample(flat, np.random.default_rng(8), sigma=(4, 4))
    _, seen = data.local_blur_sample(flat, np.random.default_rng(8), sigma=(4, 4), min_change=0.015)
    assert full[:, :40].mean() > 0.1  # the old labels call glass "blurred"
    assert seen[:, :40].mean() == 0.0  # the new ones do not (the blurred edge spills ~20 px)
    assert seen[:, 72:].sum() > 0.7 * full[:, 72:].sum()  # tissue keeps its labels


def test_real_blur_labels_mark_the_plane_with_less_detail(he_crop: np.ndarray) -> None:
    sharp = he_crop.astype(np.float32) / 255.0
    blurred = ndi.gaussian_filter(sharp, (2, 2, 0))
    assert data.real_blur_labels(sharp, sharp).mean() == 0.0
    assert data.real_blur_labels(blurred, sharp).mean() > 0.5
    glass = np.full_like(sharp, 0.9)
    assert data.real_blur_labels(glass, glass + 0.001).mean() == 0.0  # no detail: not "blurred"
