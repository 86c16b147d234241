"""Lateral drift between focal planes: measurement and the smooth per-plane shift field.

Scanners move the stage or the objective between focal planes, and real z-stacks are not perfectly
registered (the blood-smear stack drifts by up to ~6 px). :func:`estimate_drift` measures, per
plane, the translation of its content relative to the reference plane:

1. *Coarse, global*: phase correlation of the planes' thumbnails gives an integer offset per plane,
   so that full-resolution crops of neighbouring planes overlap even when the drift is large.
2. *Fine, per region*: the slide is cut into ``grid x grid`` regions; a crop of at most
   ``sample_side`` px at each region's centre (plus one crop at the most textured place of the
   reference thumbnail, for the global estimate) is read at level 0 from every plane and
   neighbouring planes are phase-correlated to 1/``upsample`` px. Textureless crops (glass),
   weak correlation peaks and weak peaks on the JPEG block lattice (:func:`on_compression_grid`)
   are skipped; estimates far from the median of the regions are rejected.
   Skipped and rejected regions take the global estimate (the median of the measured ones).
3. *Chaining*: each plane is compared with its neighbour toward the reference (z vs z-1 above it,
   z vs z+1 below), never with a far plane directly: far planes differ so much in defocus that
   their correlation peak is weak and biased. The steps are summed along the chain.
4. *Early stop* (``early_stop_px``, set by the pipeline in ``auto`` mode): the grid's four corner
   regions are measured first; when every shift there is below half the ``auto`` threshold the
   stack is taken as still (it would not be registered) and that 2 x 2 field is returned without
   measuring the rest of the grid. Otherwise the whole grid is measured, reusing those crops.

The result, :class:`DriftField`, is plain picklable data (numpy arrays and tuples), interpolated
bilinearly between the region centres and held constant beyond the outermost ones.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from wsi_fusion._types import Box, PlaneStack, RGBRegion
from wsi_fusion.errors import ConfigError
from wsi_fusion.registration._correlate import (
    GreyImage,
    correlate,
    correlate_spectra,
    grey,
    spectrum,
    texture,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Crops smaller than this (in either direction) are not correlated.
_MIN_SIDE = 32
#: Longer side of the thumbnails behind the coarse offsets (px); the pipeline reads them once for
#: this and for the focal-order check (:mod:`.focal_order`).
THUMBNAIL_SIDE = 1024

#: JPEG's DCT block side, px: every plane of a scan is compressed on the same block grid.
JPEG_BLOCK = 8
#: A peak on the block lattice is taken as content only above this peak-to-sidelobe ratio. The
#: block-grid peaks measured 11-20 on the algae stack and its sparse crops; neighbouring planes of
#: the blood smear give 11-1300, so a real drift of a whole number of blocks is kept where the
#: tissue is textured and otherwise takes the other regions' estimate.
_GRID_PEAK_PSR = 30.0
#: How close (px, per axis) to a lattice point a step must be to count as on the lattice.
_GRID_TOLERANCE = 0.15


@dataclass(frozen=True, eq=False)
class DriftField:
    """Per-plane content shift relative to the reference plane, on a grid of region centres.

    Convention: plane ``z``'s content is displaced by ``(dy, dx)`` relative to the reference,
    ``plane_z[y + dy, x + dx] ~ reference[y, x]``; registering samples plane ``z`` at
    ``(y + dy, x + dx)``.
    """

    reference: int
    #: Level-0 slide size (height, width) the field was measured on.
    shape: tuple[int, int]
    #: Row / column positions of the grid nodes (region centres), level-0 px, increasing.
    centres_y: FloatArray
    centres_x: FloatArray
    #: (Z, GY, GX, 2) shifts (dy, dx) in level-0 px at the grid nodes.
    shifts: FloatArray
    #: (Z, 2) slide-wide shift per plane (the median of the measured regions, chained).
    global_shifts: FloatArray
    #: (Z, GY, GX) whether the step into plane ``z`` was measured there (else the global step).
    measured: npt.NDArray[np.bool_]

    @classmethod
    def zero(cls, n_planes: int, reference: int, shape: tuple[int, int]) -> DriftField:
        """A field of no drift (one node at the slide centre)."""
        return cls(
            reference=reference,
            shape=shape,
            centres_y=np.array([shape[0] / 2.0]),
            centres_x=np.array([shape[1] / 2.0]),
            shifts=np.zeros((n_planes, 1, 1, 2)),
            global_shifts=np.zeros((n_planes, 2)),
            measured=np.ones((n_planes, 1, 1), dtype=bool),
        )

    @property
    def n_planes(self) -> int:
        return int(self.shifts.shape[0])

    def shift_at(self, plane: int, y: float, x: float) -> tuple[float, float]:
        """The shift ``(dy, dx)`` of ``plane`` at level-0 position ``(y, x)``."""
        dy, dx = self.shift_map(plane, np.array([float(y)]), np.array([float(x)]))
        return float(dy[0, 0]), float(dx[0, 0])

    def shift_map(
        self, plane: int, ys: npt.ArrayLike, xs: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        """Shifts of ``plane`` on the grid ``ys x xs``: two (len(ys), len(xs)) arrays (dy, dx)."""
        iy0, iy1, ty = _bracket(np.asarray(ys, dtype=np.float64), self.centres_y)
        ix0, ix1, tx = _bracket(np.asarray(xs, dtype=np.float64), self.centres_x)
        nodes = self.shifts[plane]  # (GY, GX, 2)
        rows = nodes[iy0] * (1.0 - ty)[:, None, None] + nodes[iy1] * ty[:, None, None]  # (h, GX, 2)
        values = rows[:, ix0] * (1.0 - tx)[None, :, None] + rows[:, ix1] * tx[None, :, None]
        return values[..., 0], values[..., 1]

    def max_abs(self, plane: int | None = None) -> float:
        """Largest |dy| or |dx| of ``plane`` (of any plane when ``None``), px."""
        values = self.shifts if plane is None else self.shifts[plane]
        return float(np.abs(values).max()) if values.size else 0.0

    def digest(self) -> str:
        """A short content hash (per-worker caches key on it)."""
        h = hashlib.sha256()
        h.update(repr((self.reference, self.shape)).encode())
        for array in (self.centres_y, self.centres_x, self.shifts):
            h.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        """The field as plain JSON data, for ``run.json``."""
        return {
            "reference_plane": self.reference,
            "convention": "plane[y + dy, x + dx] ~ reference[y, x]; level-0 px",
            "grid": [len(self.centres_y), len(self.centres_x)],
            "centres_y": [round(float(v), 1) for v in self.centres_y],
            "centres_x": [round(float(v), 1) for v in self.centres_x],
            "max_abs_px": round(self.max_abs(), 3),
            "max_abs_px_per_plane": [round(self.max_abs(z), 3) for z in range(self.n_planes)],
            "global_shift_px": [[round(float(v), 3) for v in row] for row in self.global_shifts],
            "measured_fraction": [round(float(m.mean()), 3) for m in self.measured],
            "shifts_px": np.round(self.shifts, 3).tolist(),
            "measured": self.measured.tolist(),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any], shape: tuple[int, int]) -> DriftField:
        """The field back from :meth:`to_json` (e.g. ``run.json``'s ``registration.drift``).

        Parameters
        ----------
        record
            What :meth:`to_json` wrote. Shifts come back rounded to 1/1000 px.
        shape
            Level-0 size (height, width) of the stack the field was measured on (``run.json``
            does not repeat it: it is the input's size).

        Raises
        ------
        ConfigError
            The record lacks a key or its arrays disagree in size; the message names it.
        """
        try:
            centres_y = np.asarray(record["centres_y"], dtype=np.float64)
            centres_x = np.asarray(record["centres_x"], dtype=np.float64)
            shifts = np.asarray(record["shifts_px"], dtype=np.float64)
            global_shifts = np.asarray(record["global_shift_px"], dtype=np.float64)
            reference = int(record["reference_plane"])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"drift record is incomplete or malformed ({err!r})") from err
        # Records written before "measured" was stored: every node counts as measured.
        measured = np.asarray(record.get("measured", True), dtype=bool)
        expected = (len(global_shifts), len(centres_y), len(centres_x), 2)
        if shifts.shape != expected or not 0 <= reference < expected[0]:
            raise ConfigError(
                f"drift record: shifts_px has shape {shifts.shape}, expected {expected} from "
                f"{expected[0]} planes and a {expected[1]} x {expected[2]} grid "
                f"(reference plane {reference})"
            )
        return cls(
            reference=reference,
            shape=(int(shape[0]), int(shape[1])),
            centres_y=centres_y,
            centres_x=centres_x,
            shifts=shifts,
            global_shifts=global_shifts,
            measured=np.broadcast_to(measured, expected[:3]).copy(),
        )


def _bracket(
    values: FloatArray, nodes: FloatArray
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], FloatArray]:
    """For each value: the two enclosing node indices and the weight of the second (clamped)."""
    if len(nodes) == 1:
        zero = np.zeros(len(values), dtype=np.intp)
        return zero, zero, np.zeros(len(values))
    u = np.interp(values, nodes, np.arange(len(nodes), dtype=np.float64))
    i0 = np.minimum(np.floor(u).astype(np.intp), len(nodes) - 2)
    return i0, i0 + 1, u - i0


def estimate_drift(
    stack: PlaneStack,
    *,
    reference: int,
    grid: int = 4,
    sample_side: int = 1024,
    upsample: int = 20,
    thumbnail_side: int = THUMBNAIL_SIDE,
    min_texture: float = 1.5,
    min_psr: float = 10.0,
    outlier_px: float = 1.0,
    early_stop_px: float | None = None,
    thumbnails: Sequence[RGBRegion] | None = None,
) -> DriftField:
    """Measure each plane's lateral drift relative to ``reference`` (see the module docstring).

    Parameters
    ----------
    stack
        The focal planes.
    reference
        Plane the others are aligned to (its shift is 0).
    grid
        Regions per side; the field has ``grid x grid`` nodes (fewer on slides too small for it).
    sample_side
        Largest side of the level-0 crop correlated per region.
    upsample
        Sub-pixel resolution is ``1 / upsample`` px.
    thumbnail_side
        Longer side of the thumbnails used for the coarse offsets and to place the global crop.
    min_texture
        Crops whose RMS gradient (grey levels per px, :func:`._correlate.texture`) on the reference
        plane is below this are background and not correlated.
    min_psr
        Correlation peaks with a lower peak-to-sidelobe ratio are discarded (noise gives ~6).
    outlier_px
        A region's step is an outlier when it differs from the median of the regions by more than
        this or 3 robust standard deviations, whichever is larger.
    early_stop_px
        When set and ``grid > 2``: measure the four corner regions of the grid first (a 2 x 2
        field on their centres) and return that field when every step of the chain was measured
        in at least one crop and every shift (nodes and global) is below this many px; otherwise
        measure the whole grid as without it, reusing those crops (same result, same cost). The
        pipeline sets it to half the ``auto`` threshold, so a still stack, which would not be
        registered anyway, measures 5 of the 17 crops of the default 4 x 4 grid.
    thumbnails
        The planes' ``thumbnail_side`` thumbnails when the caller has read them already (the
        pipeline reads them once for the focal-order check and this): a thumbnail of a plane
        without a pyramid is a pass over the whole plane.

    Returns
    -------
    DriftField
        Shifts at the region centres, the global shift per plane and which regions were measured.
    """
    n = stack.n_planes
    if not 0 <= reference < n:
        raise ConfigError(f"reference plane {reference} is outside the {n} planes; use 0..{n - 1}")
    if grid < 1 or sample_side < _MIN_SIDE or upsample < 1:
        raise ConfigError(
            f"grid {grid}, sample_side {sample_side}, upsample {upsample}: need grid >= 1, "
            f"sample_side >= {_MIN_SIDE}, upsample >= 1"
        )
    h, w = stack.shape
    if n == 1:
        return DriftField.zero(1, reference, (h, w))
    order = _chain(n, reference)  # (plane, neighbour toward the reference), nearest first
    if thumbnails is not None and len(thumbnails) != n:
        raise ConfigError(f"{len(thumbnails)} thumbnails given for {n} planes")
    if thumbnails is None:
        thumbnails = [stack.thumbnail(z, thumbnail_side) for z in range(n)]
    thumbs = [grey(thumb) for thumb in thumbnails]
    coarse = _coarse_offsets(thumbs, order, (h, w), upsample, min_psr, min_texture)

    textured = _textured_box(thumbs[reference], (h, w), sample_side)
    measured_boxes: dict[Box, FloatArray] = {}

    def measure(box: Box) -> FloatArray:
        if box not in measured_boxes:
            measured_boxes[box] = _measure_box(
                stack, box, reference, order, coarse, upsample, min_texture, min_psr
            )
        return measured_boxes[box]

    regions_y = _regions(h, grid)
    regions_x = _regions(w, grid)

    def field_of(
        rows: list[tuple[int, int]], cols: list[tuple[int, int]], quiet: bool
    ) -> tuple[DriftField, bool]:
        return _field(
            (h, w),
            rows,
            cols,
            sample_side,
            textured,
            measure,
            reference,
            order,
            coarse,
            outlier_px,
            quiet=quiet,
        )

    if early_stop_px is not None and max(len(regions_y), len(regions_x)) > 2:
        # The four corner regions of the full grid: their crops are reused when it is measured.
        first, every_step_measured = field_of(_ends(regions_y), _ends(regions_x), quiet=True)
        largest = max(first.max_abs(), float(np.abs(first.global_shifts).max()))
        if every_step_measured and largest < early_stop_px:
            logger.debug(
                "drift below %.2f px on a 2 x 2 grid (max %.3f px): not measuring the %d x %d grid",
                early_stop_px,
                largest,
                grid,
                grid,
            )
            return first
    return field_of(regions_y, regions_x, quiet=False)[0]


def _field(
    shape: tuple[int, int],
    regions_y: list[tuple[int, int]],
    regions_x: list[tuple[int, int]],
    sample_side: int,
    textured: Box,
    measure: Callable[[Box], FloatArray],
    reference: int,
    order: list[tuple[int, int]],
    coarse: FloatArray,
    outlier_px: float,
    *,
    quiet: bool,
) -> tuple[DriftField, bool]:
    """The field on the regions ``regions_y x regions_x`` (plus the ``textured`` crop for the
    global estimate), and whether every step of the chain was measured in at least one crop."""
    h, w = shape
    n = len(coarse)
    boxes = [_sample_box(ry, rx, sample_side) for ry in regions_y for rx in regions_x]
    boxes.append(textured)
    steps = np.full((len(boxes), n, 2), np.nan)
    for b, box in enumerate(boxes):
        steps[b] = measure(box)

    n_grid = len(regions_y) * len(regions_x)
    grid_steps = np.zeros((n, len(regions_y), len(regions_x), 2))
    measured = np.ones((n, len(regions_y), len(regions_x)), dtype=bool)
    global_steps = np.zeros((n, 2))
    every_step_measured = True
    for z, nb in order:
        values = steps[:, z]
        ok = ~np.isnan(values[:, 0])
        if ok.any():
            centre = np.median(values[ok], axis=0)
            spread = 1.4826 * np.median(np.abs(values[ok] - centre), axis=0)
            tol = np.maximum(outlier_px, 3.0 * spread)
            ok &= np.all(np.abs(np.nan_to_num(values) - centre) <= tol, axis=1)
            global_steps[z] = np.median(values[ok], axis=0)
        else:
            every_step_measured = False
            global_steps[z] = coarse[z] - coarse[nb]
            (logger.debug if quiet else logger.warning)(
                "plane %d vs %d: no textured region correlated; using the thumbnail estimate "
                "(%.2f, %.2f) px",
                z,
                nb,
                *global_steps[z],
            )
        region_ok = ok[:n_grid].reshape(len(regions_y), len(regions_x))
        region_values = values[:n_grid].reshape(len(regions_y), len(regions_x), 2)
        grid_steps[z] = np.where(region_ok[..., None], region_values, global_steps[z])
        measured[z] = region_ok
        logger.debug(
            "plane %d vs %d: step (%.2f, %.2f) px, %d of %d regions measured",
            z,
            nb,
            *global_steps[z],
            int(region_ok.sum()),
            n_grid,
        )

    shifts = np.zeros_like(grid_steps)
    global_shifts = np.zeros((n, 2))
    for z, nb in order:
        shifts[z] = shifts[nb] + grid_steps[z]
        global_shifts[z] = global_shifts[nb] + global_steps[z]
    field = DriftField(
        reference=reference,
        shape=(h, w),
        centres_y=np.array([(a + b) / 2.0 for a, b in regions_y]),
        centres_x=np.array([(a + b) / 2.0 for a, b in regions_x]),
        shifts=shifts,
        global_shifts=global_shifts,
        measured=measured,
    )
    return field, every_step_measured


def _chain(n: int, reference: int) -> list[tuple[int, int]]:
    """(plane, neighbour toward the reference) pairs, each after its neighbour."""
    up = [(z, z - 1) for z in range(reference + 1, n)]
    down = [(z, z + 1) for z in range(reference - 1, -1, -1)]
    return up + down


def _coarse_offsets(
    thumbs: list[GreyImage],
    order: list[tuple[int, int]],
    shape: tuple[int, int],
    upsample: int,
    min_psr: float,
    min_texture: float,
) -> FloatArray:
    """(Z, 2) chained thumbnail shifts scaled to level 0 (0 where the thumbnails do not match)."""
    th, tw = thumbs[0].shape
    scale = np.array([shape[0] / th, shape[1] / tw])
    offsets = np.zeros((len(thumbs), 2))
    for z, nb in order:
        step = np.zeros(2)
        if (
            thumbs[z].shape == thumbs[nb].shape
            and min(th, tw) >= _MIN_SIDE
            and texture(thumbs[nb]) >= min_texture
        ):
            match = correlate(thumbs[nb], thumbs[z], upsample=upsample)
            if match.psr >= min_psr:
                step = np.array([match.dy, match.dx]) * scale
        offsets[z] = offsets[nb] + step
    return offsets


def _regions(length: int, grid: int) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into at most ``grid`` equal parts of at least ``_MIN_SIDE`` px."""
    parts = max(1, min(grid, length // _MIN_SIDE))
    edges = [round(i * length / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _ends(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The first and the last of ``regions`` (the one region when there is one)."""
    return [regions[0], regions[-1]] if len(regions) > 1 else regions


def _sample_box(ry: tuple[int, int], rx: tuple[int, int], side: int) -> Box:
    """The crop of at most ``side`` px centred in a region."""
    h, w = min(side, ry[1] - ry[0]), min(side, rx[1] - rx[0])
    return Box((ry[0] + ry[1] - h) // 2, (rx[0] + rx[1] - w) // 2, h, w)


def _textured_box(thumb: GreyImage, shape: tuple[int, int], side: int) -> Box:
    """A ``side``-px crop (clipped to the slide) at the reference thumbnail's most textured spot."""
    h, w = min(side, shape[0]), min(side, shape[1])
    scale_y, scale_x = shape[0] / thumb.shape[0], shape[1] / thumb.shape[1]
    energy = ndi.gaussian_gradient_magnitude(thumb, 1.0) ** 2
    footprint = (max(1, round(h / scale_y)), max(1, round(w / scale_x)))
    iy, ix = np.unravel_index(int(np.argmax(ndi.uniform_filter(energy, footprint))), energy.shape)
    y = int(np.clip(round((iy + 0.5) * scale_y - h / 2), 0, shape[0] - h))
    x = int(np.clip(round((ix + 0.5) * scale_x - w / 2), 0, shape[1] - w))
    return Box(y, x, h, w)


def _measure_box(
    stack: PlaneStack,
    box: Box,
    reference: int,
    order: list[tuple[int, int]],
    coarse: FloatArray,
    upsample: int,
    min_texture: float,
    min_psr: float,
) -> FloatArray:
    """(Z, 2) steps of each plane relative to its neighbour in ``box``; NaN where not measured."""
    steps = np.full((stack.n_planes, 2), np.nan)
    if min(box.h, box.w) < _MIN_SIDE:
        return steps
    offsets = np.rint(coarse).astype(int)
    spectra: dict[int, npt.NDArray[np.complex64]] = {}

    def read(z: int) -> GreyImage:
        dy, dx = offsets[z]
        return grey(stack.read(z, Box(box.y + int(dy), box.x + int(dx), box.h, box.w)))

    def crop(z: int) -> npt.NDArray[np.complex64]:
        if z not in spectra:
            spectra[z] = spectrum(read(z))
        return spectra[z]

    first = read(reference)
    if texture(first) < min_texture:
        return steps
    spectra[reference] = spectrum(first)
    for z, nb in order:
        match = correlate_spectra(crop(nb), crop(z), upsample=upsample)
        step = np.array([match.dy, match.dx]) + (offsets[z] - offsets[nb])
        confident = match.psr >= min_psr and bool(np.all(np.isfinite(step)))
        if confident and on_compression_grid(step, match.psr):
            logger.debug(
                "plane %d vs %d in %s: step (%.2f, %.2f) px, PSR %.1f, is the JPEG block grid; "
                "not used",
                z,
                nb,
                box,
                *step,
                match.psr,
            )
        elif confident:
            steps[z] = step
        if _last_use(nb, z, order):
            del spectra[nb]
    return steps


def _last_use(plane: int, current: int, order: list[tuple[int, int]]) -> bool:
    """Whether ``plane`` is not needed after the step into ``current`` (frees its crop early)."""
    later = order[[z for z, _ in order].index(current) + 1 :]
    return all(nb != plane for _, nb in later)


def on_compression_grid(step: npt.ArrayLike, psr: float) -> bool:
    """Whether a measured step is the JPEG block grid rather than the content.

    On glass with a few faint particles, the only structure two planes share is the 8-px DCT
    block grid, compressed at the same place in every plane (and quantised alike, as glass looks
    the same in focus and out of it). Phase correlation then peaks on the block lattice: the
    sparse 1024-px algae crop gave steps of (-48, -32), (-16, 16) and (0, -8) px between
    neighbouring planes, where the textured regions move by 0-5 px. A weak peak (PSR below
    ``_GRID_PEAK_PSR``) within ``_GRID_TOLERANCE`` px of a non-zero lattice point is discarded.
    """
    values = np.asarray(step, dtype=np.float64)
    nearest = JPEG_BLOCK * np.round(values / JPEG_BLOCK)
    return bool(
        psr < _GRID_PEAK_PSR
        and np.any(nearest != 0)
        and np.all(np.abs(values - nearest) <= _GRID_TOLERANCE)
    )
