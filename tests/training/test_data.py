"""The training-sample recipes: shapes, ranges, masks that say where the blur is, held-out split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_fusion.training import data


@pytest.fixture(scope="module")
def sharp() -> np.ndarray:
    return data.random_crop(data.sharp_sources()[0], 192, np.random.default_rng(0))


def sharpness(image: np.ndarray) -> float:
    return float(np.abs(ndi.laplace(image.mean(axis=2))).mean())


def test_train_and_heldout_sources_do_not_overlap() -> None:
    train = data.sharp_sources()[0]
    held = data.heldout_sources()["he"]
    assert train.shape[0] == data.HELDOUT_Y
    assert train.shape[1] == held.shape[1]
    assert train.shape[0] + held.shape[0] == 2967


def test_local_blur_mask_marks_the_blurred_regions(sharp: np.ndarray) -> None:
    image, mask = data.local_blur_sample(sharp, np.random.default_rng(1), noise=0.0)
    assert image.shape == sharp.shape and image.dtype == np.float32
    assert mask.shape == sharp.shape[:2] and set(np.unique(mask)) <= {0.0, 1.0}
    assert 0.1 < mask.mean() < 0.9
    # Inside the unblurred region the image is the source (up to JPEG), inside the mask it is not.
    inner_sharp = ndi.binary_erosion(mask == 0, iterations=4)
    err = np.abs(image - sharp / 255.0).mean(axis=2)
    assert err[inner_sharp].mean() < 0.04  # JPEG round trip at q >= 70
    assert err[ndi.binary_erosion(mask == 1, iterations=4)].mean() > 1.2 * err[inner_sharp].mean()


def test_mask_pair_is_complementary(sharp: np.ndarray) -> None:
    a, b, mask = data.mask_pair_sample(sharp, np.random.default_rng(2), noise=0.0)
    ref = sharp / 255.0
    in_a = ndi.binary_erosion(mask == 1, iterations=4)
    in_b = ndi.binary_erosion(mask == 0, iterations=4)
    assert np.abs(a - ref).mean(axis=2)[in_a].mean() < np.abs(b - ref).mean(axis=2)[in_a].mean()
    assert np.abs(b - ref).mean(axis=2)[in_b].mean() < np.abs(a - ref).mean(axis=2)[in_b].mean()


def test_patch_pair_label_points_at_the_focused_patch(sharp: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    for _ in range(8):
        a, b, label = data.patch_pair_sample(sharp, rng, size=32, sigma=(2.0, 4.0), noise=0.0)
        assert a.shape == b.shape == (32, 32, 3)
        assert (sharpness(a) > sharpness(b)) == bool(label)


def test_focal_stack_sample_and_heldout_are_deterministic(sharp: np.ndarray) -> None:
    s1 = data.focal_stack_sample(sharp, np.random.default_rng(4), n_planes=3, size=96)
    s2 = data.focal_stack_sample(sharp, np.random.default_rng(4), n_planes=3, size=96)
    assert s1.planes.shape == (3, 96, 96, 3)
    np.testing.assert_array_equal(s1.planes, s2.planes)
    held = data.heldout_stacks(n=2, size=128, n_planes=3)
    again = data.heldout_stacks(n=2, size=128, n_planes=3)
    assert [name for name, _ in held] == ["he_1001", "ihc_1002"]
    np.testing.assert_array_equal(held[1][1].planes, again[1][1].planes)


def test_stain_jitter_changes_colour_not_structure(sharp: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(data.stain_jitter(sharp, rng, 0.0), sharp)
    jittered = data.stain_jitter(sharp, rng, 0.5)
    assert np.abs(jittered.astype(int) - sharp).mean() > 2
    grey, grey_j = sharp.mean(axis=2), jittered.mean(axis=2)
    assert np.corrcoef(ndi.laplace(grey).ravel(), ndi.laplace(grey_j).ravel())[0, 1] > 0.8
    # Off by default: the recipes the shipped models were trained with are unchanged.
    a = data.augment(sharp, np.random.default_rng(6))
    b = data.augment(sharp, np.random.default_rng(6), stain=0.0)
    np.testing.assert_array_equal(a, b)
