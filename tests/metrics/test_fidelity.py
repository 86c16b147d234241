"""Block fidelity (:mod:`wsi_fusion.metrics.fidelity`): known answers.

The sharp image is a crop of scikit-image's immunohistochemistry image (tissue everywhere); the
defocused plane is a Gaussian blur (sigma 3 px) with a brightness change, as a plane far from
focus looks after the microscope's auto-exposure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage
from skimage import data

from wsi_fusion._types import Box
from wsi_fusion.errors import PlaneMismatch, UnsupportedInput
from wsi_fusion.metrics import block_fidelity, focus_attainment, worst_blocks
from wsi_fusion.metrics.contact_sheet import CROP, sheet_rows, sheet_size, write_contact_sheet
from wsi_fusion.metrics.fidelity import block_box

U8 = npt.NDArray[np.uint8]
SIDE = 384
IHC = data.immunohistochemistry()  # 512 x 512 RGB
SHARP = IHC[40 : 40 + SIDE, 40 : 40 + SIDE]


def defocus(image: U8, sigma: float = 3.0) -> U8:
    """Gaussian blur plus a brightness change (gain 0.85, offset +20 grey levels)."""
    blurred = ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0))
    return np.clip(blurred * 0.85 + 20, 0, 255).astype(np.uint8)


DEFOCUSED = defocus(SHARP)
PLANES = [DEFOCUSED, SHARP]


def blobs(seed: int, scale: float = 8.0) -> npt.NDArray[np.bool_]:
    """About half of the image in random blobs ~ 2-4 ``scale`` px across."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((SIDE,) * 2), scale)
    return noise > 0


def test_best_plane_scores_one() -> None:
    res = block_fidelity(SHARP, PLANES)
    assert res["scores"].shape == (6, 6) and res["block"] == 64
    # Top 60 % of the 36 blocks by sharpness.
    assert res["n_textured"] == int(res["textured"].sum()) >= 20
    assert res["p10"] >= 0.99 and res["median"] >= 0.999
    assert np.all(res["best_plane"][res["textured"]] == 1)
    assert np.all(res["shifts"][res["textured"]] == 0)
    assert np.all(np.isnan(res["scores"][~res["textured"]]))


def test_patchwork_of_two_planes_scores_lower() -> None:
    # Measured: median 0.75, p10 0.66 (and 0.81 / 0.68 for seed 1, scale 12).
    for seed, scale in ((0, 8.0), (1, 12.0)):
        mask = blobs(seed, scale)
        fused = np.where(mask[..., None], SHARP, DEFOCUSED)
        res = block_fidelity(fused, PLANES)
        assert res["median"] < 0.87 and res["p10"] < 0.8, (seed, res["median"], res["p10"])
        # The worst block is mostly taken from the defocused plane.
        worst = block_box(worst_blocks(res, 1)[0], 64, fused.shape[:2])
        assert mask[worst.slices()].mean() < 0.5


def test_stack_shifted_by_10_px_still_scores_one() -> None:
    # The fused image shows IHC[50:, 50:]; the planes IHC[40:, 60:]: shifted by (+10, -10).
    fused = IHC[50 : 50 + SIDE, 50 : 50 + SIDE]
    sharp = IHC[40 : 40 + SIDE, 60 : 60 + SIDE]
    res = block_fidelity(fused, [defocus(sharp), sharp])
    assert res["median"] >= 0.99
    inner = res["textured"].copy()
    inner[-1, :] = inner[:, 0] = False  # blocks whose content left the planes' field of view
    assert np.all(res["scores"][inner] >= 0.99)
    assert np.all(res["shifts"][inner] == (10, -10))
    # Planes read with a margin (as evaluate does for a tile): every block finds its match.
    margin = IHC[40 - 24 : 40 + SIDE + 24, 60 - 24 : 60 + SIDE + 24]
    res = block_fidelity(fused, [defocus(margin), margin], offset=(24, 24))
    assert res["p10"] >= 0.99
    assert np.all(res["shifts"][res["textured"]] == (10, -10))


def test_defocus_noise_and_doubling_score_lower() -> None:
    # Measured: whole defocused plane 0.59, noise sigma 12 0.89, a doubled copy 12 px apart 0.73.
    rng = np.random.default_rng(0)
    noisy = np.clip(SHARP + rng.normal(0, 12, SHARP.shape), 0, 255).astype(np.uint8)
    doubled = ((SHARP.astype(np.float64) + np.roll(SHARP, 12, axis=1)) / 2).astype(np.uint8)
    assert block_fidelity(DEFOCUSED, PLANES)["median"] < 0.7
    assert block_fidelity(noisy, PLANES)["median"] < 0.95
    assert block_fidelity(doubled, PLANES)["median"] < 0.8
    # Noise keeps focus attainment in its healthy window: fidelity is what sees it.
    assert 0.95 < focus_attainment(noisy, PLANES)["median"] < 1.15


def test_worst_blocks_order_and_edge_blocks() -> None:
    mask = blobs(0)
    fused = np.where(mask[..., None], SHARP, DEFOCUSED)
    res = block_fidelity(fused, PLANES)
    order = worst_blocks(res)
    assert len(order) == res["n_textured"]
    values = [res["scores"][i] for i in order]
    assert values == sorted(values)
    assert worst_blocks(res, 3) == order[:3]
    # A 100 x 90 image: edge blocks of 36 / 26 px are scored, the 26 px-wide ones are not (< 32).
    small = block_fidelity(SHARP[:100, :90], [SHARP[:100, :90]], textured_fraction=1.0)
    assert small["scores"].shape == (2, 2)
    assert small["textured"].tolist() == [[True, False], [True, False]]


def test_blank_and_bad_input() -> None:
    flat = np.full((128, 128), 200, dtype=np.uint8)
    res = block_fidelity(flat, [flat, flat])
    assert res["n_textured"] == 0 and math.isnan(res["p10"]) and math.isnan(res["median"])
    with pytest.raises(UnsupportedInput, match="block"):
        block_fidelity(SHARP, PLANES, block=4)
    with pytest.raises(UnsupportedInput, match="textured_fraction"):
        block_fidelity(SHARP, PLANES, textured_fraction=0.0)
    with pytest.raises(UnsupportedInput, match="empty"):
        block_fidelity(SHARP, [])
    with pytest.raises(UnsupportedInput, match="single"):
        block_fidelity(SHARP[..., 0], SHARP[..., 0])
    with pytest.raises(PlaneMismatch):
        block_fidelity(SHARP, [SHARP, SHARP[:200]])
    with pytest.raises(PlaneMismatch, match="offset"):
        block_fidelity(SHARP, PLANES, offset=(5, 0))


def test_contact_sheet_rows_and_size(tmp_path: Path) -> None:
    import imageio.v3 as iio

    fused = np.where(blobs(0)[..., None], SHARP, DEFOCUSED)
    planes = [DEFOCUSED, SHARP, defocus(SHARP, 1.5)]
    fid = block_fidelity(fused, planes)
    att = focus_attainment(fused, planes, block=64)
    rows = sheet_rows(fused, planes, fid, att, n=3, where="patchwork", origin=(1000, 2000))
    assert [r.kind for r in rows] == ["fidelity"] * 3 + ["attainment"] * 3
    worst = block_box(worst_blocks(fid, 1)[0], 64, fused.shape[:2])
    assert rows[0].box == Box(worst.y + 1000, worst.x + 2000, 64, 64)
    assert rows[0].plane == 1 and rows[0].score == pytest.approx(np.nanmin(fid["scores"]))
    assert all(c.shape == (CROP, CROP, 3) for r in rows for c in r.crops)
    # The sharpest-plane crop at shift 0 shows the sharp plane around the block (clear of the
    # block's outline), the fused crop the fusion.
    y, x = (int(np.clip(v - 32, 0, SIDE - CROP)) for v in (worst.y, worst.x))
    assert np.array_equal(rows[0].crops[1][:30, :30], SHARP[y : y + 30, x : x + 30])
    assert np.array_equal(rows[0].crops[0][:30, :30], fused[y : y + 30, x : x + 30])
    path = write_contact_sheet(rows, tmp_path / "sheet.png", n=2)
    assert iio.imread(path).shape == (*sheet_size(4), 3)
    listed = json.loads((tmp_path / "sheet.png.json").read_text())
    assert [r["kind"] for r in listed["rows"]] == ["fidelity"] * 2 + ["attainment"] * 2
