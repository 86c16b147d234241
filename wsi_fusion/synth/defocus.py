"""Defocus model: a sharp image plus a known depth field gives a focal stack with ground truth.

The model, per pixel ``(y, x)`` in level-0 coordinates of the output:

* ``depth(y, x)`` (in plane units; plane ``k`` sits at ``z_k = k``) is the sum of a *smooth*
  part, a few random sinusoids, and a *step* part, piecewise-constant Voronoi cells around
  jittered grid points. Both are defined analytically from the seed and the global pixel
  position, so any box of the field is computed on its own; that is what lets
  :mod:`wsi_fusion.synth.write` stream a slide of any size tile by tile and still get the same
  pixels as a whole-image run. The sum is clipped to ``[0, Z - 1]`` so every pixel has a plane
  within half a plane step.
* Plane ``k`` is the sharp image blurred by a Gaussian of standard deviation
  ``sigma_k = sqrt(sigma_min**2 + (sigma_per_plane * |depth - z_k|)**2)`` (``sigma_min`` is
  added in quadrature because two Gaussian blurs compose that way).
* The spatially varying blur is approximated by blurring the tile with a small set of
  ``blur levels`` and interpolating linearly, per pixel, between the two levels that bracket
  ``sigma_k``. Each level is computed directly from the sharp tile with a kernel truncated at
  3 sigma, so a halo of ``ceil(3 * max_sigma)`` pixels read from the source is all a tile needs.
* Optional lateral drift moves plane ``k``'s content by ``drift[k] = (dy, dx)`` pixels:
  ``plane_k(y, x) = defocused_k(y - dy, x - dx)`` (bilinear for sub-pixel drift, exact copy for
  integer drift). Depth, focus index and ground truth stay in the undrifted reference frame.
* Optional noise (read noise plus signal-dependent shot noise, the Poisson-Gaussian model with
  the Poisson part in its Gaussian approximation) is drawn from a generator seeded per
  ``NOISE_BLOCK``-pixel block of a fixed global grid, so it does not depend on the tiling.
* Optional JPEG round trip per plane (4:4:4, so each 8x8 block is coded on its own and tiles
  aligned to 8 pixels give the same bytes as the whole image).

The ground-truth all-in-focus image is the sharp source itself; the ground-truth focus index is
``argmin_k |depth - z_k|``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wsi_fusion._types import Box, RGBRegion
from wsi_fusion.errors import ConfigError, UnsupportedInput

log = logging.getLogger(__name__)

#: Side of the fixed global grid on which noise generators are seeded (pixels).
NOISE_BLOCK = 256
#: Rows rendered at once inside a box (a multiple of 8, JPEG's block); bounds memory.
BAND = 256
#: Gaussian kernels are truncated at this many standard deviations (the halo is sized from it).
TRUNCATE = 3.0

# Salts keep the random streams of the different model parts independent for one seed.
_SALT_SMOOTH = 0x5E00
_SALT_STEP = 0x5E01
_SALT_DRIFT = 0x5E02
_SALT_NOISE = 0x5E03

#: Reads a box of the (mirror-extended) sharp source in global coordinates: (h, w, 3) uint8.
SharpReader = Callable[[Box], RGBRegion]


class SynthParams(BaseModel):
    """Parameters of the defocus model, shared by :func:`make_stack` and ``synthesize``.

    Lengths are in level-0 pixels, depths in plane units (plane ``k`` at depth ``k``),
    intensities in [0, 1]. Unknown keys are errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Standard deviation of the smooth depth part over a large area (planes).
    smooth_amplitude: float = Field(default=1.0, ge=0.0)
    #: Mean wavelength of the smooth part's sinusoids (pixels); each is drawn in [0.5, 1.5]x.
    smooth_scale: float = Field(default=800.0, gt=0.0)
    #: Number of random sinusoids in the smooth part.
    n_waves: int = Field(default=4, ge=1, le=64)
    #: Step part: each Voronoi cell gets a constant offset uniform in [-a, a] (planes).
    step_amplitude: float = Field(default=0.75, ge=0.0)
    #: Spacing of the jittered grid of Voronoi seed points (pixels).
    step_scale: float = Field(default=400.0, gt=0.0)
    #: Depth of the field's centre (planes); ``None`` puts it on the middle plane.
    depth_center: float | None = None
    #: Blur growth: sigma = sigma_per_plane * |depth - z_k| (pixels per plane).
    sigma_per_plane: float = Field(default=1.5, ge=0.0)
    #: Blur of a plane exactly in focus (pixels), added in quadrature.
    sigma_min: float = Field(default=0.0, ge=0.0)
    #: Spacing of the precomputed blur levels (pixels); above 4 * step they grow by 25 %.
    blur_level_step: float = Field(default=0.5, gt=0.0, le=4.0)
    #: Read-noise standard deviation (intensity units, 0 = none).
    noise_sigma: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Photons at full scale for shot noise (variance = value / photons); ``None`` = none.
    photons: float | None = Field(default=None, gt=0.0)
    #: Random lateral drift per plane, uniform in [-drift_px, drift_px] on each axis; the
    #: middle plane is the reference (drift 0).
    drift_px: float = Field(default=0.0, ge=0.0, le=256.0)
    #: Round the random drift to whole pixels.
    drift_integer: bool = False
    #: Explicit drift per plane as (dy, dx) pixels; overrides ``drift_px``; length = planes.
    drift: tuple[tuple[float, float], ...] | None = None
    #: JPEG quality of a round trip applied to each plane (``None`` = no JPEG artefacts).
    jpeg_artifacts: int | None = Field(default=None, ge=1, le=100)


def resolve_params(
    params: SynthParams | Mapping[str, Any] | None = None, **overrides: Any
) -> SynthParams:
    """Build a validated :class:`SynthParams` from a model or mapping plus keyword overrides.

    Raises
    ------
    ConfigError
        A key is unknown or a value is out of range; the message names it.
    """
    data: dict[str, Any] = {}
    if isinstance(params, SynthParams):
        data.update(params.model_dump())
    elif params is not None:
        data.update(params)
    data.update(overrides)
    try:
        return SynthParams(**data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<params>'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid synthesis parameters: {problems}") from err


@dataclass(frozen=True)
class SynthStack:
    """An in-memory synthetic focal stack with its ground truth.

    Attributes
    ----------
    planes : ndarray
        (Z, H, W, 3) uint8, the defocused (drifted, noisy) planes.
    ground_truth : ndarray
        (H, W, 3) uint8, the sharp image in the reference (undrifted) frame.
    focus_index : ndarray
        (H, W) uint8, ``argmin_k |depth - k|``.
    depth : ndarray
        (H, W) float32, depth in plane units.
    drift : ndarray
        (Z, 2) float64, the ``(dy, dx)`` shift applied to each plane's content.
    """

    planes: npt.NDArray[np.uint8]
    ground_truth: npt.NDArray[np.uint8]
    focus_index: npt.NDArray[np.uint8]
    depth: npt.NDArray[np.float32]
    drift: npt.NDArray[np.float64]


# --------------------------------------------------------------------------- depth field


def _splitmix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser: a fast, well-mixed integer hash (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_uniform(
    seed: int, salt: int, gy: npt.NDArray[np.int64], gx: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Uniform [0, 1) values that depend only on (seed, salt, gy, gx)."""
    key = _splitmix(np.array([(seed & 0xFFFFFFFF) << 16 | (salt & 0xFFFF)], dtype=np.uint64))
    h = _splitmix(key ^ gy.astype(np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    h = _splitmix(h ^ gx.astype(np.int64).view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _smooth_part(box: Box, seed: int, p: SynthParams) -> npt.NDArray[np.float64]:
    """Sum of random sinusoids, unit standard deviation, evaluated at the box's pixels."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SALT_SMOOTH]))
    theta = rng.uniform(0.0, np.pi, p.n_waves)
    wavelength = p.smooth_scale * rng.uniform(0.5, 1.5, p.n_waves)
    phase = rng.uniform(0.0, 2 * np.pi, p.n_waves)
    y = np.arange(box.y, box.y1, dtype=np.float64)[:, None]
    x = np.arange(box.x, box.x1, dtype=np.float64)[None, :]
    out = np.zeros((box.h, box.w), np.float64)
    for t, lam, ph in zip(theta, wavelength, phase, strict=True):
        k = 2 * np.pi / lam
        out += np.sin((k * np.sin(t)) * y + ((k * np.cos(t)) * x + ph))
    # A sum of n unit sinusoids with random phases has variance n / 2.
    return out / math.sqrt(p.n_waves / 2)


def _step_part(box: Box, seed: int, p: SynthParams) -> npt.NDArray[np.float64]:
    """Voronoi cells of one jittered point per grid cell, each with a constant offset."""
    s = p.step_scale
    cy0 = math.floor(box.y / s) - 1
    cy1 = math.floor((box.y1 - 1) / s) + 1
    cx0 = math.floor(box.x / s) - 1
    cx1 = math.floor((box.x1 - 1) / s) + 1
    gy, gx = np.meshgrid(
        np.arange(cy0, cy1 + 1, dtype=np.int64),
        np.arange(cx0, cx1 + 1, dtype=np.int64),
        indexing="ij",
    )
    py = (gy + _hash_uniform(seed, _SALT_STEP, gy, gx)) * s
    px = (gx + _hash_uniform(seed, _SALT_STEP + 1, gy, gx)) * s
    value = p.step_amplitude * (2.0 * _hash_uniform(seed, _SALT_STEP + 2, gy, gx) - 1.0)

    y = np.arange(box.y, box.y1, dtype=np.float64)
    x = np.arange(box.x, box.x1, dtype=np.float64)
    iy = (np.floor(y / s).astype(np.int64) - cy0)[:, None]
    ix = (np.floor(x / s).astype(np.int64) - cx0)[None, :]
    best = np.full((box.h, box.w), np.inf)
    out = np.zeros((box.h, box.w), np.float64)
    # A jittered grid point lies in its own cell, so the nearest one is in the 3x3 neighbourhood.
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            jy, jx = iy + dy, ix + dx
            d2 = (y[:, None] - py[jy, jx]) ** 2 + (x[None, :] - px[jy, jx]) ** 2
            closer = d2 < best
            best = np.where(closer, d2, best)
            out = np.where(closer, value[jy, jx], out)
    return out


def depth_field(
    box: Box, n_planes: int, *, seed: int = 0, params: SynthParams | None = None
) -> npt.NDArray[np.float32]:
    """The depth (in plane units) at every pixel of ``box``.

    Parameters
    ----------
    box : Box
        Region in global level-0 pixels; any box of the same seed agrees with any other on
        their overlap.
    n_planes : int
        Number of focal planes Z; depth is clipped to ``[0, Z - 1]``.
    seed : int
        Seed of the random field.
    params : SynthParams, optional
        Model parameters (defaults when omitted).

    Returns
    -------
    ndarray
        (h, w) float32.
    """
    p = params or SynthParams()
    centre = (n_planes - 1) / 2 if p.depth_center is None else p.depth_center
    d = np.full((box.h, box.w), centre, np.float64)
    if p.smooth_amplitude > 0:
        d += p.smooth_amplitude * _smooth_part(box, seed, p)
    if p.step_amplitude > 0:
        d += _step_part(box, seed, p)
    return np.clip(d, 0.0, n_planes - 1).astype(np.float32)


def focus_index_from_depth(depth: npt.NDArray[np.float32], n_planes: int) -> npt.NDArray[np.uint8]:
    """``argmin_k |depth - k|`` as (H, W) uint8 (ties go to the lower plane)."""
    z = np.arange(n_planes, dtype=np.float32)[:, None, None]
    return np.argmin(np.abs(depth[None] - z), axis=0).astype(np.uint8)


def defocus_sigma(
    depth: npt.NDArray[np.float32], plane: int, params: SynthParams
) -> npt.NDArray[np.float32]:
    """Gaussian blur sigma (pixels) of ``plane`` at each pixel of ``depth``."""
    spp = np.float32(params.sigma_per_plane)
    dz = spp * np.abs(depth - np.float32(plane))
    if params.sigma_min == 0:
        return dz.astype(np.float32)
    return np.sqrt(np.float32(params.sigma_min) ** 2 + dz * dz).astype(np.float32)


def blur_levels(n_planes: int, params: SynthParams) -> npt.NDArray[np.float64]:
    """The sigmas of the precomputed blur levels, from the smallest to the largest possible."""
    lo = params.sigma_min
    hi = math.hypot(params.sigma_min, params.sigma_per_plane * (n_planes - 1))
    levels = [lo]
    step = params.blur_level_step
    while levels[-1] < hi - 1e-9:
        # Linear steps where blur changes the image most, then geometric: the interpolation
        # error of a blur between two levels scales with their ratio, not their difference.
        levels.append(levels[-1] + max(step, 0.25 * levels[-1]))
    levels[-1] = min(levels[-1], hi)
    if len(levels) > 2 and levels[-1] - levels[-2] < 0.25 * step:
        levels.pop(-2)
    return np.asarray(levels, np.float64)


def halo(n_planes: int, params: SynthParams) -> int:
    """Pixels of sharp source needed around a box to blur it (``ceil(3 * max_sigma)``)."""
    return math.ceil(TRUNCATE * float(blur_levels(n_planes, params)[-1]))


def plane_drift(n_planes: int, *, seed: int, params: SynthParams) -> npt.NDArray[np.float64]:
    """The (Z, 2) ``(dy, dx)`` drift of each plane's content, from the seed or given explicitly.

    Raises
    ------
    ConfigError
        An explicit ``drift`` does not have one entry per plane.
    """
    if params.drift is not None:
        if len(params.drift) != n_planes:
            raise ConfigError(
                f"drift has {len(params.drift)} entries but there are {n_planes} planes; "
                "give one (dy, dx) pair per plane"
            )
        return np.asarray(params.drift, np.float64).reshape(n_planes, 2)
    if params.drift_px == 0:
        return np.zeros((n_planes, 2), np.float64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SALT_DRIFT]))
    d = rng.uniform(-params.drift_px, params.drift_px, (n_planes, 2))
    d[(n_planes - 1) // 2] = 0.0
    return np.rint(d) if params.drift_integer else d


# --------------------------------------------------------------------------- rendering


def _blur(image: npt.NDArray[np.float32], sigma: float) -> npt.NDArray[np.float32]:
    """Separable Gaussian over the two spatial axes of an (H, W, 3) image."""
    if sigma <= 0:
        return image
    # Imported here so `import wsi_fusion.synth` (and the CLI that wires it) stays fast.
    from scipy.ndimage import gaussian_filter1d

    out = gaussian_filter1d(image, sigma, axis=0, truncate=TRUNCATE, mode="nearest")
    return gaussian_filter1d(out, sigma, axis=1, truncate=TRUNCATE, mode="nearest")


def _shift(
    a: npt.NDArray[np.float32], margin: int, box: Box, d: Sequence[float]
) -> npt.NDArray[np.float32]:
    """Sample ``a`` (the box grown by ``margin``) at ``(y - dy, x - dx)`` for the box's pixels."""
    oy_f, ox_f = margin - d[0], margin - d[1]
    oy, ox = math.floor(oy_f), math.floor(ox_f)
    fy, fx = np.float32(oy_f - oy), np.float32(ox_f - ox)
    h, w = box.h, box.w
    if fy == 0 and fx == 0:
        return a[oy : oy + h, ox : ox + w]
    top = (1 - fx) * a[oy : oy + h, ox : ox + w] + fx * a[oy : oy + h, ox + 1 : ox + w + 1]
    bot = (1 - fx) * a[oy + 1 : oy + h + 1, ox : ox + w] + fx * a[
        oy + 1 : oy + h + 1, ox + 1 : ox + w + 1
    ]
    return ((1 - fy) * top + fy * bot).astype(np.float32)


def _block_normal(seed: int, plane: int, box: Box) -> npt.NDArray[np.float32]:
    """Standard normal (h, w, 3) noise seeded per block of a fixed global grid."""
    b = NOISE_BLOCK
    out = np.empty((box.h, box.w, 3), np.float32)
    for by in range(box.y // b, (box.y1 - 1) // b + 1):
        for bx in range(box.x // b, (box.x1 - 1) // b + 1):
            ss = np.random.SeedSequence([seed, _SALT_NOISE, plane, by, bx])
            block = np.random.Generator(np.random.PCG64(ss)).standard_normal(
                (b, b, 3), dtype=np.float32
            )
            part = box.intersect(Box(by * b, bx * b, b, b))
            if part is not None:
                out[part.slices(box)] = block[part.slices(Box(by * b, bx * b, b, b))]
    return out


def jpeg_roundtrip(image: npt.NDArray[np.uint8], quality: int) -> npt.NDArray[np.uint8]:
    """Encode and decode (H, W, 3) uint8 as baseline 4:4:4 JPEG (8x8 blocks coded alone)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class RenderedTile:
    """One box of a synthetic stack; see :class:`SynthStack` for the arrays' meaning."""

    planes: npt.NDArray[np.uint8]
    ground_truth: npt.NDArray[np.uint8]
    focus_index: npt.NDArray[np.uint8]
    depth: npt.NDArray[np.float32]


def render_box(
    read_sharp: SharpReader,
    box: Box,
    n_planes: int,
    *,
    seed: int,
    params: SynthParams,
    drift: npt.NDArray[np.float64],
) -> RenderedTile:
    """Render one box of the synthetic stack.

    The result at a pixel depends only on the global source, the seed and the parameters, never
    on ``box`` (given JPEG's 8-pixel grid: boxes must start on multiples of 8 when
    ``jpeg_artifacts`` is set).

    Parameters
    ----------
    read_sharp : callable
        ``read_sharp(Box) -> (h, w, 3) uint8`` for any box, including pixels outside the
        output (the halo); typically a mirror-extended source.
    box : Box
        The region to render, in global level-0 pixels.
    n_planes : int
        Number of focal planes Z.
    seed : int
        Seed of the depth field and the noise.
    params : SynthParams
        Model parameters.
    drift : ndarray
        (Z, 2) ``(dy, dx)`` per plane, from :func:`plane_drift`.

    Returns
    -------
    RenderedTile
        planes (Z, h, w, 3) uint8, ground_truth (h, w, 3) uint8, focus_index (h, w) uint8 and
        depth (h, w) float32.
    """
    if box.h <= BAND:
        return _render_band(read_sharp, box, n_planes, seed=seed, params=params, drift=drift)
    # Bands of BAND rows bound the memory of the blur levels; the pixels do not change, since a
    # pixel never depends on the box it is rendered in.
    parts = [
        _render_band(
            read_sharp,
            Box(y, box.x, min(BAND, box.y1 - y), box.w),
            n_planes,
            seed=seed,
            params=params,
            drift=drift,
        )
        for y in range(box.y, box.y1, BAND)
    ]
    return RenderedTile(
        planes=np.concatenate([t.planes for t in parts], axis=1),
        ground_truth=np.concatenate([t.ground_truth for t in parts], axis=0),
        focus_index=np.concatenate([t.focus_index for t in parts], axis=0),
        depth=np.concatenate([t.depth for t in parts], axis=0),
    )


def _render_band(
    read_sharp: SharpReader,
    box: Box,
    n_planes: int,
    *,
    seed: int,
    params: SynthParams,
    drift: npt.NDArray[np.float64],
) -> RenderedTile:
    """:func:`render_box` for one band of rows."""
    margin = math.ceil(float(np.abs(drift).max())) + 1 if np.any(drift != 0) else 0
    ext = Box(box.y - margin, box.x - margin, box.h + 2 * margin, box.w + 2 * margin)
    levels = blur_levels(n_planes, params)
    hal = halo(n_planes, params)
    src = read_sharp(Box(ext.y - hal, ext.x - hal, ext.h + 2 * hal, ext.w + 2 * hal))
    sharp = src.astype(np.float32) * np.float32(1 / 255)

    depth_ext = depth_field(ext, n_planes, seed=seed, params=params)
    # Per plane and pixel: the lower of the two blur levels bracketing its sigma, and the
    # linear-interpolation weight of the upper one.
    lower: list[npt.NDArray[np.uint8]] = []
    frac: list[npt.NDArray[np.float32]] = []
    top = max(len(levels) - 2, 0)
    lv32 = levels.astype(np.float32)
    for k in range(n_planes):
        sig = defocus_sigma(depth_ext, k, params)
        i = np.clip(np.searchsorted(lv32, sig, side="right") - 1, 0, top)
        if len(levels) > 1:
            lo, hi = lv32[i], lv32[i + 1]
            t = np.clip((sig - lo) / (hi - lo), 0, 1).astype(np.float32)
        else:
            t = np.zeros(sig.shape, np.float32)
        lower.append(i.astype(np.uint8))  # few levels: uint8 keeps Z index maps small
        frac.append(t)
    used = np.zeros(len(levels), bool)
    for idx in lower:
        present = np.bincount(idx.ravel(), minlength=len(levels)) > 0
        used |= present
        used[1:] |= present[:-1]  # the upper level of each bracket
    blurred = np.zeros((len(levels), ext.h, ext.w, 3), np.float32)
    core = (slice(hal, hal + ext.h), slice(hal, hal + ext.w))
    for j in np.flatnonzero(used):
        blurred[j] = _blur(sharp, float(levels[j]))[core]  # unused levels are never read
    del sharp

    planes = np.empty((n_planes, box.h, box.w, 3), np.uint8)
    for k in range(n_planes):
        i, t = lower[k][None, ..., None].astype(np.intp), frac[k][..., None]
        a = np.take_along_axis(blurred, i, axis=0)[0]
        b = np.take_along_axis(blurred, np.minimum(i + 1, len(levels) - 1), axis=0)[0]
        b -= a
        b *= t
        a += b
        del b
        v = _shift(a, margin, box, drift[k])
        if params.noise_sigma > 0 or params.photons is not None:
            var = np.full(v.shape, np.float32(params.noise_sigma) ** 2, np.float32)
            if params.photons is not None:
                var += np.maximum(v, 0) / np.float32(params.photons)
            v = (v + np.sqrt(var) * _block_normal(seed, k, box)).astype(np.float32)
        plane = np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)
        if params.jpeg_artifacts is not None:
            plane = jpeg_roundtrip(plane, params.jpeg_artifacts)
        planes[k] = plane

    inner = (slice(hal + margin, hal + margin + box.h), slice(hal + margin, hal + margin + box.w))
    depth = depth_ext[margin : margin + box.h, margin : margin + box.w]
    return RenderedTile(
        planes=planes,
        ground_truth=np.ascontiguousarray(src[inner]),
        focus_index=focus_index_from_depth(depth, n_planes),
        depth=np.ascontiguousarray(depth),
    )


# --------------------------------------------------------------------------- sources


def mirror_index(idx: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
    """Map any integer positions onto ``[0, n)`` by mirror-repeat (``abc`` -> ``abccbaabc``)."""
    m = np.mod(idx, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def array_reader(image: npt.NDArray[np.uint8]) -> SharpReader:
    """A :data:`SharpReader` over an in-memory image, mirror-repeated beyond its edges."""
    h, w = image.shape[:2]

    def read(box: Box) -> RGBRegion:
        if box.y >= 0 and box.x >= 0 and box.y1 <= h and box.x1 <= w:
            return image[box.y : box.y1, box.x : box.x1]
        ry = mirror_index(np.arange(box.y, box.y1, dtype=np.int64), h)
        rx = mirror_index(np.arange(box.x, box.x1, dtype=np.int64), w)
        return image[ry[:, None], rx[None, :]]

    return read


def check_rgb(image: Any, name: str = "sharp image") -> npt.NDArray[np.uint8]:
    """Validate an (H, W, 3) uint8 array (greyscale is replicated, RGBA composited on white).

    Raises
    ------
    UnsupportedInput
        Wrong dtype or shape; the message says what was given.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise UnsupportedInput(f"{name} must be uint8, got {a.dtype}; convert it to 8-bit RGB")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise UnsupportedInput(f"{name} must have shape (H, W, 3), got {a.shape}")
    if a.shape[2] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255
        a = np.rint(a[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def make_stack(
    sharp: npt.NDArray[np.uint8],
    n_planes: int = 5,
    *,
    seed: int = 0,
    params: SynthParams | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> SynthStack:
    """Make a synthetic focal stack from a sharp image, in memory (tests, training).

    Parameters
    ----------
    sharp : ndarray
        (H, W, 3) uint8 sharp image (the ground truth); greyscale (H, W) and RGBA accepted.
    n_planes : int
        Number of focal planes Z (at least 1).
    seed : int
        Seed of the depth field, drift and noise; the same seed gives the same stack.
    params : SynthParams or mapping, optional
        Model parameters; see :class:`SynthParams`.
    **overrides
        Individual :class:`SynthParams` fields, applied on top of ``params``.

    Returns
    -------
    SynthStack
        planes (Z, H, W, 3) uint8, ground_truth (H, W, 3) uint8, focus_index (H, W) uint8,
        depth (H, W) float32, drift (Z, 2).

    Raises
    ------
    ConfigError
        Unknown or out-of-range parameter, or a drift list of the wrong length.
    UnsupportedInput
        ``sharp`` is not 8-bit RGB.
    """
    if n_planes < 1:
        raise ConfigError(f"n_planes must be at least 1, got {n_planes}")
    image = check_rgb(sharp)
    p = resolve_params(params, **overrides)
    drift = plane_drift(n_planes, seed=seed, params=p)
    h, w = image.shape[:2]
    tile = render_box(
        array_reader(image), Box(0, 0, h, w), n_planes, seed=seed, params=p, drift=drift
    )
    return SynthStack(
        planes=tile.planes,
        ground_truth=tile.ground_truth,
        focus_index=tile.focus_index,
        depth=tile.depth,
        drift=drift,
    )
