"""The depth surface (fusers._depth, fusers.surface): cells stay whole, clear evidence wins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers._depth import (
    OD_FLOOR,
    OD_WEIGHT,
    DepthParams,
    cell_means,
    decide_on_surface,
    depth_reach,
    gradient_energy,
    od_gradient_energy,
    to_pixels,
)
from wsi_fusion.fusers.focus_measure import focus_map
from wsi_fusion.metrics import block_fidelity

FOCUS = 2  # the in-focus plane of the cell stack


def cell_stack(n_planes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A brightfield-like stack of round cells: crisp dark rims, smooth interiors, plane noise.

    Plane ``FOCUS`` is sharp; the others are blurred by ``1.5 * |z - FOCUS|`` px and their cell
    interiors lighten (as defocused red cells do). Every plane has its own read noise, which is
    all a per-pixel focus measure has to go by inside a cell. Returns the (Z, 3, H, W) stack and
    the mask of cell interiors.
    """
    rng = np.random.default_rng(seed)
    size = 256
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.full((size, size), 0.85, np.float32)
    interior = np.zeros((size, size), bool)
    for cy in range(40, size, 80):
        for cx in range(40, size, 80):
            r = np.hypot(yy - cy, xx - cx)
            image[r < 26] = 0.55
            image[(r >= 22) & (r < 26)] = 0.3  # the rim
            interior |= r < 18
    planes = []
    for z in range(n_planes):
        sigma = 1.5 * abs(z - FOCUS)
        plane = ndi.gaussian_filter(image, sigma) if sigma else image.copy()
        plane[interior] += 0.02 * abs(z - FOCUS)
        plane += rng.normal(0.0, 0.01, plane.shape).astype(np.float32)
        planes.append(np.clip(plane, 0, 1))
    stack = np.repeat(np.stack(planes)[:, None], 3, axis=1).astype(np.float32)
    return stack, interior


def test_cells_stay_whole_where_a_per_pixel_pick_makes_a_patchwork() -> None:
    stack, interior = cell_stack()
    surface = create_fuser("focus_measure").fuse(stack)
    per_pixel = create_fuser("focus_measure", depth_radius=0).fuse(stack)
    assert surface.weights is not None and per_pixel.weights is not None
    on_focus = surface.weights.argmax(0)[interior] == FOCUS
    patchwork = per_pixel.weights.argmax(0)[interior] == FOCUS
    # Measured: 100 % of cell interiors on the focused plane vs 55 % for the per-pixel pick.
    assert on_focus.mean() > 0.99
    assert patchwork.mean() < 0.8
    # The block fidelity sees it too: the surface's cells look like the focused plane.
    planes = [(p.transpose(1, 2, 0) * 255).astype(np.uint8) for p in stack]
    fused = (surface.fused.transpose(1, 2, 0) * 255).astype(np.uint8)
    patchy = (per_pixel.fused.transpose(1, 2, 0) * 255).astype(np.uint8)
    assert block_fidelity(fused, planes)["p10"] > block_fidelity(patchy, planes)["p10"]


@pytest.mark.parametrize("fuser", ["gacn", "acnn", "msegnet"])
def test_decision_map_fusers_end_on_the_surface(fuser: str) -> None:
    """Untrained networks vote arbitrarily; alone they can move a pixel one plane, no further."""
    cls = type(create_fuser(fuser, device="cpu", depth_radius=0))
    stack, interior = cell_stack()
    raw = cls.untrained(device="cpu", depth_radius=0).fuse(stack)
    result = cls.untrained(device="cpu").fuse(stack)
    assert raw.weights is not None and result.weights is not None
    off = np.abs(result.weights.argmax(0)[interior] - FOCUS)
    # Measured: 97.4-100 % (read-noise pixels where the planes' step-2 focus measures lie within
    # a factor 1.3² of each other, so a vote can tip them two planes; 99.7-100 % with step 1).
    assert (off <= 1).mean() > 0.97
    assert (np.abs(raw.weights.argmax(0)[interior] - FOCUS) >= 2).any()


def test_depth_decision_known_answers() -> None:
    params = DepthParams(depth_radius=4, clearly_sharper=1.3)
    z, size = 5, 48
    coarse = np.ones((z, size, size), np.float32)
    coarse[2] = 2.0  # the surface is plane 2 everywhere
    fine = coarse.copy()
    fine[3, 10:20, 10:20] = 2.0 * 1.31  # one plane away, clearly sharper: leaves
    fine[3, 30:40, 10:20] = 2.0 * 1.2  # one plane away, not clearly sharper: stays
    fine[0, 10:20, 30:40] = 2.0 * 1.6  # two planes away, 1.6 < 1.3 ** 2 = 1.69: stays
    fine[0, 30:40, 30:40] = 2.0 * 1.75  # two planes away, above 1.69: leaves
    index, surface = decide_on_surface(coarse, fine, params)
    assert index[15, 15] == 3 and index[35, 15] == 2
    assert index[15, 35] == 2 and index[35, 35] == 0
    assert (index[:5, :5] == 2).all()
    # The surface itself, per 4-px cell: plane 2 throughout.
    assert surface is not None and surface.shape == (12, 12) and (surface == 2).all()
    # Blank: nothing above the threshold takes the middle plane.
    blank, _ = decide_on_surface(np.zeros_like(coarse), np.zeros_like(fine), params, 1e-3)
    assert (blank == z // 2).all()


def test_cell_means_known_answers() -> None:
    values = np.arange(36, dtype=np.float32).reshape(1, 6, 6)
    cells = cell_means(values, 4)
    assert cells.shape == (1, 2, 2)
    assert cells[0, 0, 0] == values[0, :4, :4].mean()
    # The partial last cell is completed by mirroring (rows 4 5 | 5 4), as the filters do.
    mirrored = np.pad(values[0], ((0, 2), (0, 2)), mode="symmetric")
    assert cells[0, 1, 1] == mirrored[4:8, 4:8].mean()
    # Each pixel takes its cell's value: rows/columns 3 | 4 straddle a cell boundary.
    np.testing.assert_array_equal(to_pixels(cells[0], 4, (6, 6))[3:5, 3:5], cells[0])


def test_surface_on_a_grid_matches_full_resolution_pooling() -> None:
    """A 4-px grid under a ~100-px pooling window keeps the plane choice (it only saves time)."""
    stack, _ = cell_stack()
    full = create_fuser("focus_measure", pool_step=1).fuse(stack)
    grid = create_fuser("focus_measure").fuse(stack)
    assert full.weights is not None and grid.weights is not None
    assert (full.weights.argmax(0) == grid.weights.argmax(0)).mean() > 0.99
    assert np.abs(full.fused - grid.fused).max() < 0.05


def test_depth_reach_is_exact() -> None:
    """Scores ``depth_reach`` px away still move the surface; one px farther, nothing does."""
    params = DepthParams()
    coarse = np.ones((2, 200, 200), np.float32)
    coarse[1] = 0.9  # plane 0 everywhere
    reach = depth_reach(params)
    for distance, moves in ((reach, True), (reach + 1, False)):
        far = coarse.copy()
        far[1, 100 + distance :] = 100.0  # overwhelming focus on plane 1 from that row on
        index, _ = decide_on_surface(far, coarse, params)
        assert bool((index[100] == 1).all()) is moves
        assert (index[:100] == 0).all()


def test_gradient_energy_known_answers() -> None:
    ramp = np.tile(np.arange(6, dtype=np.float32) * 0.1, (5, 1))  # I = 0.1 x
    energy = gradient_energy(ramp[None])
    assert energy.shape == (1, 5, 6)
    # Inside: (I(x+1) - I(x-1))² = 0.2²; at the mirrored borders the one-sided 0.1².
    np.testing.assert_allclose(energy[0, :, 1:-1], 0.04, rtol=1e-5)
    np.testing.assert_allclose(energy[0, :, [0, -1]], 0.01, rtol=1e-5)
    # Both axes add up; a flat plane has none.
    both = ramp + 0.1 * np.arange(5, dtype=np.float32)[:, None]
    np.testing.assert_allclose(gradient_energy(both[None])[0, 1:-1, 1:-1], 0.08, rtol=1e-5)
    assert not gradient_energy(np.full((2, 4, 4), 0.5, np.float32)).any()


def test_depth_decision_pools_the_surface_energy_and_keeps_the_blank_test() -> None:
    params = DepthParams(depth_radius=4, clearly_sharper=10.0)
    coarse = np.ones((3, 32, 32), np.float32)
    coarse[1] = 2.0  # the focus measure's surface: plane 1
    energy = np.ones_like(coarse)
    energy[2] = 3.0  # the surface energy's: plane 2
    assert (decide_on_surface(coarse, coarse, params)[0] == 1).all()
    assert (decide_on_surface(coarse, coarse, params, 0.0, energy)[0] == 2).all()
    # Blank pixels are still judged by the focus measure: all blank -> the middle plane.
    blank, _ = decide_on_surface(coarse * 0, coarse * 0, params, 1e-3, energy)
    assert (blank == 1).all()


def fringe_stack() -> np.ndarray:
    """Two planes: strong, coarse edges (period 16 px, the in-focus object's rims) and a weak,
    fine ripple (period 4 px: defocus fringes, glass grain), as RGB ``(2, 3, 128, 128)``."""
    xx = np.mgrid[0:128, 0:128][1]
    edges = 0.5 + 0.2 * np.cos(2 * np.pi * xx / 16)
    ripple = 0.5 + 0.04 * np.cos(2 * np.pi * xx / 4)
    return np.repeat(np.stack([edges, ripple])[:, None], 3, axis=1).astype(np.float32)


def surface_of(stack: np.ndarray, measure: str) -> np.ndarray:
    """The depth surface itself: the decision with an unbeatable clearly-sharper factor."""
    fuser = create_fuser("focus_measure", surface_measure=measure, clearly_sharper=10.0)
    return fuser.decision(stack)[0]


def test_gradient_surface_follows_the_edges_not_the_fine_ripple() -> None:
    """The squared Laplacian (SML) weighs the 4-px ripple above the edges (its energy 0.0065 vs
    0.0054); the gradient energy, which the surface pools, the edges (0.012 vs 0.003)."""
    stack = fringe_stack()
    lum = stack[:, 0]
    assert (focus_map(lum, "sml", 4, 2) ** 2).mean(axis=(1, 2)).argmax() == 1
    assert gradient_energy(lum).mean(axis=(1, 2)).argmax() == 0
    assert (surface_of(stack, "gradient") == 0).all()
    assert (surface_of(stack, "focus") == 1).all()
    # With the default factor the fine picks leave the edge plane only where its SML dips
    # (the edges' inflection columns): measured 86 % stay on it.
    index, _ = create_fuser("focus_measure").decision(stack)
    assert (index == 0).mean() > 0.8


def test_od_gradient_energy_known_answers() -> None:
    # Grey RGB planes: the mean density is -log(I); a step 0.5 -> 1.0 along x.
    grey = np.full((1, 3, 4, 6), 0.5, np.float32)
    grey[..., 3:] = 1.0
    energy = od_gradient_energy(grey)
    assert energy.shape == (1, 4, 6)
    # Across the step, central differences of -log I: log(2)² on each side, weighted.
    np.testing.assert_allclose(energy[0, :, 2:4], OD_WEIGHT * np.log(2.0) ** 2, rtol=1e-5)
    assert not energy[0, :, [0, 1, 4, 5]].any()
    # Below OD_FLOOR a channel is black: a step within the dark range has no energy.
    dark = np.full((1, 3, 4, 6), OD_FLOOR / 4, np.float32)
    dark[..., 3:] = OD_FLOOR / 2
    assert not od_gradient_energy(dark).any()
    # One channel's step counts a third in density, a ninth in energy.
    red = np.full((1, 3, 4, 6), 1.0, np.float32)
    red[:, 0, :, 3:] = 0.5
    np.testing.assert_allclose(
        od_gradient_energy(red)[0, :, 2:4], OD_WEIGHT * np.log(2.0) ** 2 / 9, rtol=1e-5
    )


def test_absorbing_edge_outweighs_a_bright_fringe_of_equal_contrast() -> None:
    """Two grey planes, each one step of 0.25: an absorbing edge (0.3125 -> 0.5625, a stained rim
    in focus) and a bright one on glass (0.75 -> 1.0, a lens spot's fringe). The luminance
    gradient ties them exactly (plane 0 wins ties); the optical density sees the absorbing edge."""
    xx = np.mgrid[0:64, 0:64][1]
    step = (xx >= 32).astype(np.float32) / 4
    stack = np.stack([0.75 + step, 0.3125 + step])[:, None].astype(np.float32)
    lum = stack[:, 0]
    np.testing.assert_array_equal(gradient_energy(lum)[0], gradient_energy(lum)[1])
    assert od_gradient_energy(stack).sum(axis=(1, 2)).argmax() == 1
    assert (surface_of(stack, "gradient") == 0).all()
    assert (surface_of(stack, "gradient_od") == 1).all()
