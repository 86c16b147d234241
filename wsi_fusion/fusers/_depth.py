"""Object-consistent plane choice: a smooth depth surface, finer picks only where clearly sharper.

Why
---
A per-pixel argmax of any focus measure (or of a network's per-plane decision) follows noise
wherever the planes differ by less than the noise -- smooth cell interiors, glass -- and follows
the bright/dark defocus rings of transparent objects, whose pixel-scale contrast beats the
in-focus plane's. On real brightfield stacks that cuts one red cell into light and dark patches
from planes far apart in z, speckles the glass with defocused dust and, where the planes drift or
breathe, pastes two offset copies of one cell. Real specimens (a smear, a 4 um section, most of
a thick sample within a few tens of px) lie on a *smooth* depth surface; that is the prior used
here.

Method (shape from focus with a smoothness prior, coarse to fine)
-----------------------------------------------------------------
1. **Depth surface.** A per-plane sharpness energy -- by default the squared luminance gradient
   plus half the squared gradient of the optical density (:func:`gradient_energy`,
   :func:`od_gradient_energy`; ``surface_measure="focus"`` pools the squared focus measure) -- is
   pooled over a wide window (two passes of a ``(2R + 1)²`` box, a triangular kernel ~``2R``
   px across; ``R = 24`` by default, about the size of a few nuclei or red cells) and its
   argmax is the coarse plane ``d_c`` at every pixel. A cell's interior and its rim fall in the
   same window, so the whole cell takes the plane that focuses its rim; glass takes the plane of
   the cells around it.
   The pooling runs on a grid of 4-px cells (``pool_step``): a window ~100 px wide needs no
   finer grid (same real-stack fidelity, -0.01 dB on synthetic stacks), and at full resolution
   it took half of the fuser's time.
2. **Finer picks, only where clearly sharper.** A pixel leaves the surface for another plane only
   where that plane's fine-scale score beats the surface plane's by ``clearly_sharper ** n``
   (1.3 per plane), ``n`` planes away in stack order (readers give planes in focal order). Noise
   (a few % in SML) cannot do that; a real depth step (a fold, a tilted section, synthetic stacks
   with steep depth) can. A step to a neighbouring plane, which looks alike, is easy; a jump to a
   far plane -- where defocus rings live -- needs overwhelming evidence (2.2x for 3 planes).
   On planes that registration had to move the factor is 2.5 per plane
   (:data:`REGISTERED_CLEARLY_SHARPER`, chosen by the pipeline): aligned by a smooth field,
   drifting planes still disagree by a px or two, and a neighbour's "sharper" detail there is
   mostly the same object a little off.
3. **Blank areas.** Where the pooled focus is below ``blank_threshold`` on every plane (glass with
   nothing near it), the middle plane is taken: any plane is as good, and a fixed one avoids
   speckle.

Measured effect (``../shared/data`` stacks, :func:`~wsi_fusion.metrics.block_fidelity`, README
"Real stacks" table): on 1024² crops the blood smear's fidelity p10 goes from 0.84 to 0.93 and
the unstained cells' median from 0.75 to 0.95 with the default focus measure, while held-out
synthetic stacks lose 0.18 dB (38.59 -> 38.41, ``workflows/results/synthetic_issue9.md``):
0.29 dB under the per-pixel oracle on average but 0.09-0.58 dB per stack (the oracle table of
``workflows/evaluate.py``). A pixel near a synthetic depth step whose pooled boundary lands a few
px off keeps the neighbouring plane unless the true one is 1.3x sharper. Letting pixels within
8-16 px of the surface's own boundaries take the neighbouring plane on weaker evidence recovers
that, but costs the unstained cells' fidelity p10 (0.973 -> 0.92-0.97) and widens the reach past
the 64-px margin: not adopted (``docs/PEERS.md``, ninth session). The literature behind it:
depth-map focus stacking (Nayar & Nakagawa 1994's shape from focus; the depth-map mode of
commercial stackers), with the multi-scale regularisation of the decision map that Li, Kang & Hu
(2013) do with a guided filter replaced by an explicit smoothness prior, because a guided filter
steered by the image keeps exactly the edges that a patchwork creates.

Small objects on a plane boundary of the surface. With the luminance gradient alone the pooled
argmax changed plane along the edge of a strong feature's pooling window, a straight line that
cut two ~30-px algae cells between their in-focus plane and another plane's bright lens spot,
whose energies tie. The optical-density term (:func:`od_gradient_energy`) makes both whole and
in focus. Tried before it on the 1024² algae crop, none adopted:
  - each small connected textured region (gradient energy above 2e-4 to 1e-3 on the 4-px grid,
    up to 48-80 px across) takes one plane, the argmax of its summed energy. It changed nothing
    visible: with their defocus rings the cut cells span ~100 px, which would need a halo of
    ~140 px (+27 % pixels per block), and their two planes tie in energy.
  - a second surface at the scale of one cell (radius 1-3 cells) where its energy is at least
    0.3-0.6 of the wide surface's: algae median 0.82 -> 0.68-0.78, unstained p10 0.96 -> 0.71-0.84.
  - chroma (max - min of RGB) added to the pooled energy: algae p10 0.40 -> 0.23-0.28; the cells
    are whole but on the lens spot's plane.
  - the energy raised to a power ``g`` before pooling: ``g`` = 1.5 lifts the algae median to
    0.86 but p10 drops to 0.35 (11 of 93 scored blocks lose > 0.1, 7 gain), the cuts stay, and
    a ringed cell gets a doubled edge.

Reach: a decision depends on scores within ``2R + pool_step - 1`` px (:func:`depth_reach`). The
grid starts at the tile's first pixel, so two overlapping tiles whose origins differ by other than
a multiple of ``pool_step`` may place a boundary between two near-tied planes a few px apart; the
blend takes one or mixes the two (both are picks of a plane in focus there). Blocks of one image
(``focus_measure.fuse``) start on the grid and are exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion.fusers._filters import box_mean
from wsi_fusion.fusers.base import FuserParams

Float32Array = npt.NDArray[np.float32]
IndexMap = npt.NDArray[np.intp]


class DepthParams(FuserParams):
    """Parameters of the depth-surface decision, shared by every decision-map fuser."""

    #: Pooling radius ``R`` of the depth surface in px (two box passes: reach ``2R``); 0 turns
    #: the surface off (per-pixel decisions, the behaviour before it existed).
    depth_radius: int = Field(default=24, ge=0, le=27)
    #: A pixel leaves the surface only for a plane whose score is this many times the surface
    #: plane's, raised to the number of planes between them (stack order).
    clearly_sharper: float = Field(default=1.3, ge=1.0)
    #: The surface is pooled on a grid of ``pool_step``-px cells (the energy averaged per cell,
    #: the radius rounded to whole cells) and each pixel takes its cell's plane; 1 pools at full
    #: resolution. The pooling window is ~100 px wide, so a 4-px grid changes no decision that
    #: matters, at a sixteenth of the cost (the pooling was half of the fuser's time).
    pool_step: int = Field(default=4, ge=1, le=8)
    #: What the depth surface pools: the energy of the luminance gradient plus that of the
    #: optical density (``"gradient_od"``: :func:`gradient_energy`, :func:`od_gradient_energy`),
    #: the luminance gradient alone (``"gradient"``, the behaviour before ``"gradient_od"``
    #: existed) or the squared focus measure (``"focus"``, before ``"gradient"``). Fine picks
    #: and the blank test use the focus measure either way. The functions' docstrings say why
    #: and what each measured.
    surface_measure: Literal["gradient_od", "gradient", "focus"] = "gradient_od"
    #: Radius (px, rounded to whole ``pool_step`` cells) over which the planes' low band is
    #: blended along the depth surface while the detail stays picked (:mod:`._low_band`); 0
    #: composes the picked pixels as they are (the behaviour before it existed).
    low_band_radius: int = Field(default=4, ge=0, le=16)


#: ``clearly_sharper`` for planes that registration had to move (unless one is given). Aligned by a
#: smooth field, planes that drift by several px still disagree by a px or two where the stack
#: breathes, so a neighbouring plane's "sharper" detail there is often the same object a little
#: off: pasted in, it doubles edges and cuts cells. Measured on the registered real stacks
#: (1024² crops, 1.3 -> 2.0, ``workflows/results/real_stacks.md``): algae fidelity median
#: 0.72 -> 0.81 and attainment 1.06 -> 1.02, skeleton 0.88 -> 0.94, pseudoscorpion attainment
#: 1.20 -> 1.11, blood smear and grey smear unchanged. Unregistered synthetic stacks with steep
#: depth steps keep 1.3: there the fine picks are real (2.0 costs 0.33 dB). 2.0 -> 2.5 with the
#: gradient surface (``surface_measure``), which lands on the in-focus plane more often, so
#: fewer fine picks are needed (``workflows/evaluate.py``, 1024² crops): algae median
#: 0.791 -> 0.818 (0.795 with the SML surface at 2.0), skeleton 0.942 -> 0.965, pseudoscorpion
#: 0.478 -> 0.497 (attainment 1.16 -> 1.14, p10 0.95 -> 0.94), blood smear (0.968) and grey
#: smear unchanged; acnn / msegnet / fmb_net / gacn algae 0.793 -> 0.804, 0.780 -> 0.795,
#: 0.766 -> 0.770, 0.764 -> 0.773. 3.0 changes nothing more on the algae.
REGISTERED_CLEARLY_SHARPER = 2.5


def registered_params(params_cls: type[FuserParams], given: Mapping[str, Any]) -> dict[str, Any]:
    """Fuser parameters for planes that registration moved: ``given`` plus the stricter
    ``clearly_sharper`` of a depth-surface fuser, unless ``given`` sets it."""
    params = dict(given)
    if "clearly_sharper" in params_cls.model_fields and "clearly_sharper" not in params:
        params["clearly_sharper"] = REGISTERED_CLEARLY_SHARPER
    return params


def pooled_radius(params: DepthParams) -> int:
    """The pooling radius in grid cells: ``depth_radius / pool_step`` rounded, at least 1."""
    k = params.pool_step
    return max(1, (params.depth_radius + k // 2) // k) if params.depth_radius else 0


def depth_reach(params: DepthParams) -> int:
    """How far (px) the depth decision looks: two box passes of ``pooled_radius`` cells, from
    anywhere in a ``pool_step``-px cell (``2R`` at full resolution, 0 without a surface)."""
    k = params.pool_step
    return 2 * pooled_radius(params) * k + (k - 1 if params.depth_radius else 0)


def first_argmax(values: Float32Array) -> tuple[IndexMap, Float32Array]:
    """``argmax`` over axis 0 (first maximum on ties) and the maximum, ``(Z, H, W)`` -> ``(H, W)``.

    A loop over the few planes, on contiguous planes, is several times faster than
    ``np.argmax(axis=0)`` (a strided reduction). The index is found after the maximum, from the
    last plane back, with arithmetic on a byte map: boolean-masked writes (``index[better] = k``)
    took 5x longer (28 vs 6 ms for 5 planes of 1152² px) and were a tenth of the fuser's time.
    """
    z = values.shape[0]
    best = values[0].copy()
    for k in range(1, z):
        np.maximum(best, values[k], out=best)
    index = np.zeros(values.shape[1:], dtype=np.uint8 if z <= 256 else np.intp)
    at_best = np.empty(values.shape[1:], dtype=bool)
    for k in range(z - 1, -1, -1):
        np.equal(values[k], best, out=at_best)
        index *= ~at_best
        index += at_best * index.dtype.type(k)
    return index.astype(np.intp), best


def gradient_energy(lum: Float32Array) -> Float32Array:
    """Squared central differences ``(I(y+1) - I(y-1))² + (I(x+1) - I(x-1))²`` per pixel,
    ``(..., H, W)`` -> same shape: ``4 |grad I|²`` (mirrored borders, reach 1 px).

    This is what the depth surface pools by default (``surface_measure``); only its argmax
    over planes is used, so the constant factor does not matter.

    Why a first derivative for the *surface* while the focus measure (SML) is a second one: in
    brightfield a plane a little off focus shows transparent objects with bright/dark defocus
    fringes and the glass with grain (dust, the coverslip's texture, JPEG noise), all of which
    the Laplacian weighs by frequency squared, so a Laplacian surface settles on that plane
    over large regions. The gradient weighs the crisp object rims that the in-focus plane has
    more than the fringes. Measured with ``workflows/evaluate.py`` (1024² crops, registered
    stacks with ``clearly_sharper`` 2.0, since raised to 2.5: :data:`REGISTERED_CLEARLY_SHARPER`):
    on the blood smear the squared-SML surface put 80 %
    of the area on planes 4-5, while the sharpest plane of most blocks (by the block-fidelity
    reference, RMS Gaussian gradient) is 6; with the gradient surface fidelity p10
    0.931 -> 0.968 (median 0.969 -> 0.987, attainment median 0.96 -> 1.00), above the best
    single plane (0.964) and the best peer (0.952); gacn / acnn / msegnet / fmb_net 0.966 /
    0.968 / 0.968 / 0.957. Pseudoscorpion median 0.35 -> 0.48 (attainment 1.19 -> 1.16),
    algae 0.795 -> 0.791, unstained cells p10 0.962 -> 0.960, skeleton 0.946 -> 0.942,
    synthetic stacks 37.79 dB either way (oracle 38.07); +11 % CPU per 1152² tile. A step-2
    difference or a Gaussian derivative (sigma 1-1.5) does better on the smear and the algae
    but costs the unstained cells (p10 0.86-0.93); Laplacian energies at steps 1-3 as the
    surface measure gave 0.93-0.95 on the smear. A global preferred plane (a stack-level prior
    for thin specimens) picked plane 5 by SML energy (no gain) and, by gradient energy, pinned
    thick specimens to one plane (algae median 0.68, pseudoscorpion attainment p10 0.56).
    Caveat: the fidelity reference picks its sharpest plane by gradient energy too, so part of
    the gain is agreement by definition. By eye planes 5 and 6 of the smear are close (5 shows
    a little more grain on the glass and inside the cells, 6 slightly darker, even rims): the
    change mostly stops the surface from mixing the two near-focus planes and 4.
    """
    out = np.empty(lum.shape, dtype=np.float32)
    if lum.shape[-2] < 2 or lum.shape[-1] < 2:
        out.fill(0.0)
        return out
    d_x = np.empty(lum.shape[-2:], dtype=np.float32)
    # One (H, W) plane at a time (the temporaries stay in cache). With numpy's "symmetric"
    # padding the border difference is the one-sided difference to the neighbour.
    for index in np.ndindex(lum.shape[:-2]):
        plane, d_y = lum[index], out[index]
        np.subtract(plane[2:], plane[:-2], out=d_y[1:-1])
        np.subtract(plane[1], plane[0], out=d_y[0])
        np.subtract(plane[-1], plane[-2], out=d_y[-1])
        np.subtract(plane[:, 2:], plane[:, :-2], out=d_x[:, 1:-1])
        np.subtract(plane[:, 1], plane[:, 0], out=d_x[:, 0])
        np.subtract(plane[:, -1], plane[:, -2], out=d_x[:, -1])
        d_y *= d_y
        d_x *= d_x
        d_y += d_x
    return out


#: Weight of the optical-density term in the ``"gradient_od"`` surface energy, and the transmittance
#: below which a channel counts as black (its optical density is capped at ``-log(OD_FLOOR)``).
OD_WEIGHT = 0.5
OD_FLOOR = 0.25


def od_gradient_energy(stack: Float32Array) -> Float32Array:
    """``OD_WEIGHT`` times the :func:`gradient_energy` of the optical density averaged over the
    channels, ``-mean_c log(max(I_c, OD_FLOOR))``: ``(Z, C, H, W)`` -> ``(Z, H, W)``.

    Why: in brightfield a structure in focus absorbs -- a stained nucleus, a chloroplast, a red
    cell's rim -- while a transparent object out of focus acts as a lens and shows a bright spot
    with sharp bright and dark fringes on the glass. The luminance gradient cannot tell the two
    apart, and on the algae their planes tie in pooled energy, so the depth surface's plane
    boundary cut small cells in two (README, "Real stacks"). The
    gradient of the optical density is the luminance contrast divided by the luminance: an edge in
    a dark, coloured channel counts several times more than the same step on bright glass. Below
    ``OD_FLOOR`` a channel counts as black, so the noise in the dark parts of a thick specimen is
    not magnified more than 4x. The mean over the channels is the log of their product, one log
    per pixel.

    Measured with ``workflows/evaluate.py`` (1024² crops; fidelity p10 / median) against the
    luminance gradient alone: algae 0.399 / 0.818 -> 0.425 / 0.826, and by eye the cut cells are
    whole and on their in-focus plane; blood smear 0.968 / 0.987 -> 0.972 / 0.991; skeleton
    0.781 / 0.965 -> 0.793 / 0.977; pseudoscorpion median 0.497 -> 0.537 (p10 0.126 -> 0.092,
    attainment 1.14 -> 1.13); unstained cells and grey smear unchanged; synthetic stacks 37.79 dB
    either way. The fidelity's reference plane is the block's largest *luminance* gradient, which
    is the lens spot's plane where the two tie: several algae blocks whose cell is now whole score
    lower (0.82 -> 0.27 for the cell at (448, 192)). Tried: the optical density alone (a
    defocused dark blob on the algae then outweighs the small particles in focus; algae p10
    0.36), weight 1 (pseudoscorpion median 0.43), floors 0.004-0.1 (pseudoscorpion median
    0.22-0.43: dark noise), a soft floor ``log(I + c)`` (pseudoscorpion 0.31), and the density of
    the luminance alone (it misses the colour of a chloroplast: a strip of one cut cell stays,
    and the dark blob appears too).
    """
    z, c = stack.shape[:2]
    floor = np.float32(OD_FLOOR)
    log_product = np.empty((z, *stack.shape[2:]), dtype=np.float32)
    for k in range(z):
        channels = np.maximum(stack[k], floor)
        product = log_product[k]
        np.copyto(product, channels[0])
        for channel in channels[1:]:
            product *= channel
        np.log(product, out=product)
    energy = gradient_energy(log_product)
    # The mean density is -log_product / c: its energy is log_product's over c².
    energy *= np.float32(OD_WEIGHT / (c * c))
    return energy


def decide_on_surface(
    coarse: Float32Array,
    fine: Float32Array,
    params: DepthParams,
    blank_threshold: float = 0.0,
    surface_energy: Float32Array | None = None,
) -> tuple[IndexMap, IndexMap | None]:
    """Plane index ``(H, W)`` from a smooth depth surface with clearly-sharper fine picks, and
    the surface itself: the plane of each ``pool_step`` cell, ``(ceil(H/k), ceil(W/k))`` (``None``
    without a surface, ``depth_radius=0``).

    Parameters
    ----------
    coarse
        ``(Z, H, W)`` focus scores pooled into the depth surface (a focus measure).
    fine
        ``(Z, H, W)`` per-pixel scores that may move a pixel off the surface (higher = sharper):
        the same focus measure (may be ``coarse`` itself), or the focus measure weighted by a
        network's votes (:mod:`.surface`).
    params
        Pooling radius and the clearly-sharper factor.
    blank_threshold
        Pixels whose best pooled score (root of the pooled energy of ``coarse``) is not above
        this take the middle plane.
    surface_energy
        ``(Z, H, W)`` per-pixel energy whose pooled argmax is the surface (e.g.
        :func:`gradient_energy`); ``None`` pools ``coarse ** 2``.
    """
    z = coarse.shape[0]
    cells_surface = None
    if params.depth_radius == 0:
        index, best = first_argmax(fine)
    else:
        # Pooling the *energy* (squared scores) lets the strong in-focus edges that define an
        # object's depth (cell rims, nuclei) outvote the weak, widespread texture of defocus
        # haze and noise: blood-smear fidelity p10 0.90 -> 0.91, algae median 0.70 -> 0.73.
        r = pooled_radius(params)
        cells = cell_means(np.square(coarse), params.pool_step)
        surface, best = first_argmax(box_mean(box_mean(cells, r), r))
        if surface_energy is not None:
            cells = cell_means(surface_energy, params.pool_step)
            surface, _ = first_argmax(box_mean(box_mean(cells, r), r))
        np.sqrt(best, out=best)
        cells_surface = surface
        surface = to_pixels(surface, params.pool_step, coarse.shape[1:])
        best = to_pixels(best, params.pool_step, coarse.shape[1:])
        index = _leave_surface(surface, fine, params)
    index[~(best > blank_threshold)] = z // 2
    return index, cells_surface


def cell_means(values: Float32Array, k: int) -> Float32Array:
    """Means of ``k x k`` cells of ``(..., H, W)`` values, ``(..., ceil(H/k), ceil(W/k))``.

    The cells start at the tile's first pixel; a partial last cell is completed by mirroring, as
    the filters treat borders. The ``k`` rows of each cell are summed first (whole rows: one
    pass over the image), then the ``k`` columns of those sums, in a fixed order, so the torch
    port gets the same float32 values.
    """
    if k == 1:
        return values
    h, w = values.shape[-2:]
    pad = [(0, 0)] * (values.ndim - 2) + [(0, -h % k), (0, -w % k)]
    if pad[-2][1] or pad[-1][1]:
        values = np.pad(values, pad, mode="symmetric")
    rows = values[..., ::k, :].copy()
    for dy in range(1, k):
        rows += values[..., dy::k, :]
    out = rows[..., ::k].copy()
    for dx in range(1, k):
        out += rows[..., dx::k]
    out *= np.float32(1.0 / (k * k))
    return out


def to_pixels(cells: npt.NDArray[np.generic], k: int, shape: tuple[int, ...]) -> npt.NDArray:
    """Each pixel of an ``(H, W)`` tile takes the value of its ``k x k`` cell."""
    if k == 1:
        return cells
    return np.repeat(np.repeat(cells, k, axis=0), k, axis=1)[: shape[0], : shape[1]]


def _leave_surface(surface: IndexMap, fine: Float32Array, params: DepthParams) -> IndexMap:
    """Move pixels off ``surface`` to the sharpest plane that beats it by ``clearly_sharper ** n``
    (``n`` planes away); elsewhere they stay on the surface."""
    z = fine.shape[0]
    on_surface = np.take_along_axis(fine, surface[None], axis=0)[0]
    sharpest = fine.max(axis=0)
    # Only where some plane beats the surface by the smallest factor can a pixel move; on real
    # stacks that is a small fraction, so the per-plane test runs on those pixels alone.
    candidates = np.flatnonzero(sharpest > on_surface * np.float32(params.clearly_sharper))
    index = surface.copy()
    if candidates.size == 0:
        return index
    flat = index.reshape(-1)
    at = flat[candidates]
    base = on_surface.reshape(-1)[candidates]
    # need[n] = clearly_sharper ** n, with an unbeatable factor for n = 0 (the surface itself).
    need = np.float32(params.clearly_sharper) ** np.arange(z, dtype=np.float32)
    need[0] = np.float32(1e30)
    moved = at.copy()
    best = np.zeros_like(base)
    for k in range(z):
        score = fine[k].reshape(-1)[candidates]
        better = (score > need[np.abs(at - k)] * base) & (score > best)
        moved[better] = k
        best[better] = score[better]
    flat[candidates] = moved
    return index
