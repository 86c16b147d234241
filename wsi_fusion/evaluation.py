"""Quality of a fused whole slide, measured on a random sample of tissue tiles.

A fused slide is too large for the metrics of :mod:`wsi_fusion.metrics`, which hold whole images
in memory and cost about a second per 512 x 512 tile; :func:`evaluate_slide` therefore samples
``n_tiles`` non-overlapping tissue tiles (seeded, from a tissue mask on a thumbnail of the fused
slide), runs on each tile the registry metrics that the inputs allow plus the block checks
(:func:`~wsi_fusion.metrics.focus_attainment`, :func:`~wsi_fusion.metrics.block_fidelity`,
:func:`~wsi_fusion.metrics.halo_score`), and summarises each metric over the tiles (mean, std,
median, min, max). The block checks are also pooled over the textured 64 px blocks of all
sampled tiles (:attr:`EvaluationReport.blocks`): fidelity p10 / median, focus attainment median /
p10 and the fraction outside its healthy window 0.95-1.15. Tile seams are measured once, by
:func:`~wsi_fusion.metrics.seam_score` on a region that crosses the fusion plan's tile
boundaries. With ``contact_sheet=``, the worst blocks are written as a contact sheet
(:mod:`wsi_fusion.metrics.contact_sheet`).

The no-reference metrics compare the fused slide with the source planes *as the fusion saw them*:
``wsi-fusion fuse`` registers drifting planes onto its reference plane, so the planes are read
through the same drift field (taken from ``FUSED.run.json``, or measured when there is none).
Against unregistered planes every edge of a correctly registered fusion would count as misplaced.
Block fidelity is the exception: it compares with the **raw** planes, read with a ``search`` px
margin, because its search window absorbs drift without trusting any registration.

``wsi-fusion evaluate`` is the command-line front end; :func:`tile_metrics` is the per-region
step, also used by ``workflows/evaluate.py`` on in-memory stacks.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from wsi_fusion._types import Box, PlaneStack, RGBRegion
from wsi_fusion.errors import ConfigError, PlaneMismatch, UnsupportedInput
from wsi_fusion.metrics import (
    METRICS,
    BlockFidelity,
    FocusAttainment,
    block_fidelity,
    evaluate,
    focus_attainment,
    halo_score,
    seam_score,
)
from wsi_fusion.metrics._image import ImageLike
from wsi_fusion.metrics.contact_sheet import SheetRow, sheet_rows, write_contact_sheet
from wsi_fusion.metrics.fidelity import block_sharpness_of_planes, texture_threshold
from wsi_fusion.metrics.focus import HEALTHY_WINDOW
from wsi_fusion.metrics.registry import UnknownMetric
from wsi_fusion.tiling.plan import make_plan
from wsi_fusion.tiling.tissue import tile_fractions, tissue_mask

if TYPE_CHECKING:
    from wsi_fusion.pipeline import ProgressReporter
    from wsi_fusion.registration import DriftField

__all__ = [
    "BLOCK_METRICS",
    "EXTRA_METRICS",
    "SEAM",
    "SEAM_PLANES",
    "FAST_FULL_REFERENCE",
    "FAST_NO_REFERENCE",
    "BlockChecks",
    "EvaluationReport",
    "MetricSummary",
    "block_checks",
    "pool_blocks",
    "default_metrics",
    "evaluate_slide",
    "sample_tiles",
    "source_registration",
    "seam_region",
    "summarise",
    "tile_metrics",
]

log = logging.getLogger(__name__)

#: Full-reference metrics run by default when a ground truth is given (all fast).
FAST_FULL_REFERENCE: tuple[str, ...] = ("psnr", "ssim", "cc", "q_mi")
#: No-reference metrics run by default (about 1.5 s per 512 x 512 tile of 5 planes in all).
#: ``fmi_dct`` (about 5 s per tile) and ``mi_norm`` run only when asked for.
FAST_NO_REFERENCE: tuple[str, ...] = ("q_abf", "q_avg", "mi", "q_y", "q_cb", "q_ncie", "fmi_edge")
#: Block checks per tile (not registry metrics: see metrics.focus and metrics.fidelity):
#: focus attainment median and p10 and the fraction of blocks outside its healthy window
#: 0.95-1.15; block fidelity median and p10.
BLOCK_METRICS: tuple[str, ...] = (
    "focus_attainment",
    "focus_attainment_p10",
    "focus_attainment_outside",
    "fidelity",
    "fidelity_p10",
)
#: Checks added to every tile's metrics.
EXTRA_METRICS: tuple[str, ...] = (*BLOCK_METRICS, "halo")
#: Fidelity search radius in px (see :func:`~wsi_fusion.metrics.block_fidelity`).
SEARCH = 24
#: Names of the slide-level seam scores in reports: the fused slide's, and the same score on the
#: middle source plane over the same region. The planes have no tiling seams, but compression
#: block edges (JPEG's 8 px grid, on which every tile edge of a 512 / 128 plan lies) raise the
#: score of an untiled image above 1 too; a fused score near the planes' means no visible seam.
SEAM = "seam"
SEAM_PLANES = "seam_planes"

Better = Literal["higher", "lower", "one"]
#: Whether to align the source planes before measuring (see :func:`source_registration`).
RegisterMode = Literal["auto", "on", "off"]

#: Which direction is better for the non-registry scores ("one": closest to 1.0).
_EXTRA_BETTER: dict[str, Better] = {
    "focus_attainment": "one",
    "focus_attainment_p10": "one",
    "focus_attainment_outside": "lower",
    "fidelity": "higher",
    "fidelity_p10": "higher",
    "halo": "lower",
    SEAM: "one",
    SEAM_PLANES: "one",
}


def default_metrics(have_ground_truth: bool) -> list[str]:
    """The fast registry metrics: full-reference ones only when a ground truth is given."""
    names = list(FAST_NO_REFERENCE)
    return [*FAST_FULL_REFERENCE, *names] if have_ground_truth else names


def _better(name: str) -> Better:
    """Which direction of ``name``'s value is better."""
    if name in _EXTRA_BETTER:
        return _EXTRA_BETTER[name]
    return "higher" if METRICS[name].higher_is_better else "lower"


def _check_names(names: Sequence[str], have_ground_truth: bool) -> list[str]:
    """Validate metric names (registry or extra) before any pixel is read."""
    out: list[str] = []
    for name in names:
        if name not in METRICS and name not in EXTRA_METRICS:
            known = ", ".join([*METRICS, *EXTRA_METRICS])
            raise UnknownMetric(f"unknown metric {name!r}; known metrics: {known}")
        if name in METRICS and METRICS[name].kind == "full_reference" and not have_ground_truth:
            raise UnsupportedInput(
                f"metric {name!r} compares with a ground truth; pass --ground-truth GT or drop it"
            )
        if name not in out:
            out.append(name)
    return out


@dataclass(frozen=True)
class BlockChecks:
    """Focus attainment and block fidelity of one region (64 px blocks, same grid)."""

    attainment: FocusAttainment
    fidelity: BlockFidelity

    def values(self) -> dict[str, float]:
        """The region's :data:`BLOCK_METRICS`."""
        a, f = self.attainment, self.fidelity
        return {
            "focus_attainment": a["median"],
            "focus_attainment_p10": a["p10"],
            "focus_attainment_outside": a["frac_outside"],
            "fidelity": f["median"],
            "fidelity_p10": f["p10"],
        }


def block_checks(
    fused: ImageLike,
    planes: Sequence[ImageLike],
    raw_planes: Sequence[ImageLike] | None = None,
    *,
    raw_offset: tuple[int, int] = (0, 0),
    search: int = SEARCH,
    threshold: float | None = None,
) -> BlockChecks:
    """Focus attainment against ``planes``, block fidelity against ``raw_planes``.

    ``raw_planes`` are the unregistered planes, possibly read with a margin around the region
    (``raw_offset`` = the region's origin in them); default: ``planes``. ``threshold``:
    the fidelity's textured-block threshold, when one threshold applies to several regions (see
    :func:`~wsi_fusion.metrics.fidelity.texture_threshold`); default: this region's top 60 %.
    """
    raw = planes if raw_planes is None else raw_planes
    return BlockChecks(
        attainment=focus_attainment(fused, planes),
        fidelity=block_fidelity(fused, raw, search=search, offset=raw_offset, threshold=threshold),
    )


def tile_metrics(
    fused: ImageLike,
    planes: Sequence[ImageLike],
    ground_truth: ImageLike | None = None,
    metrics: Iterable[str] | None = None,
    *,
    focus: bool = True,
    raw_planes: Sequence[ImageLike] | None = None,
    raw_offset: tuple[int, int] = (0, 0),
    checks: BlockChecks | None = None,
) -> dict[str, float]:
    """Registry metrics plus the block checks and halo for one region.

    Parameters
    ----------
    fused
        The fused region, (H, W, 3) uint8 or (C, H, W) / (H, W, 3) float in [0, 1].
    planes
        The source planes of the same region (registered), Z images of the same size.
    ground_truth
        The all-in-focus reference of the region, if known.
    metrics
        Registry names to run; default :func:`default_metrics`. The names of
        :data:`EXTRA_METRICS` may be listed too; they are added anyway when ``focus`` is true.
    focus
        Add :data:`BLOCK_METRICS` (:class:`BlockChecks`: ``focus_attainment`` = median over
        textured 64 px blocks of the fused / sharpest-plane sharpness ratio, healthy in
        0.95-1.15, and its p10 and fraction outside that window; ``fidelity`` = median
        block fidelity, and its p10) and ``halo`` (:func:`~wsi_fusion.metrics.halo_score`).
    raw_planes, raw_offset
        The unregistered planes for block fidelity (see :func:`block_checks`); default
        ``planes``.
    checks
        The region's block checks if already computed (they are not computed again).

    Returns
    -------
    dict[str, float]
        Metric name -> value; NaN where a focus check has nothing to measure (no texture, no
        strong edge).
    """
    names = list(metrics) if metrics is not None else default_metrics(ground_truth is not None)
    wanted = _check_names(names, ground_truth is not None)
    registry = [n for n in wanted if n in METRICS]
    extras = [n for n in EXTRA_METRICS if n in wanted or focus]
    source_list = list(planes)
    results = evaluate(fused, source_list, ground_truth, metrics=registry) if registry else {}
    if any(n in BLOCK_METRICS for n in extras):
        if checks is None:
            checks = block_checks(fused, source_list, raw_planes, raw_offset=raw_offset)
        results.update({n: v for n, v in checks.values().items() if n in extras})
    if "halo" in extras:
        results["halo"] = halo_score(fused, source_list)
    return results


@dataclass(frozen=True)
class MetricSummary:
    """One metric summarised over the sampled tiles (NaN, i.e. nothing measured, left out)."""

    name: str
    mean: float
    std: float
    median: float
    min: float
    max: float
    #: Tiles with a value (not NaN).
    n: int
    #: ``"higher"``, ``"lower"`` or ``"one"`` (closest to 1.0 is best).
    better: Better


def summarise(name: str, values: Iterable[float]) -> MetricSummary:
    """Mean, std, median, min and max of ``values``, ignoring NaN.

    Infinite values (PSNR of an exact match) are kept: a mean over them is infinite, and the std
    of identical values is 0 (numpy would give NaN for ``inf - inf``).
    """
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        nan = math.nan
        return MetricSummary(name, nan, nan, nan, nan, nan, 0, _better(name))
    std = 0.0 if bool(np.all(arr == arr[0])) else float(np.std(arr))
    return MetricSummary(
        name=name,
        mean=float(np.mean(arr)),
        std=std,
        median=float(np.median(arr)),
        min=float(arr.min()),
        max=float(arr.max()),
        n=int(arr.size),
        better=_better(name),
    )


def pool_blocks(checks: Iterable[BlockChecks]) -> dict[str, float]:
    """Block checks pooled over the textured blocks of several regions.

    Returns ``fidelity_p10``, ``fidelity_median``, ``fidelity_n``, ``attainment_median``,
    ``attainment_p10``, ``attainment_below`` / ``_above`` / ``_outside`` (fractions of blocks
    below, above and outside the healthy window 0.95-1.15) and ``attainment_n``; NaN (and n = 0)
    when no block is textured.
    """
    checks = list(checks)
    fid = np.concatenate(
        [c.fidelity["scores"][c.fidelity["textured"]] for c in checks] or [np.empty(0)]
    )
    att = np.concatenate(
        [c.attainment["ratios"][c.attainment["textured"]] for c in checks] or [np.empty(0)]
    )
    low, high = HEALTHY_WINDOW
    nan = math.nan
    return {
        "fidelity_p10": float(np.percentile(fid, 10)) if fid.size else nan,
        "fidelity_median": float(np.median(fid)) if fid.size else nan,
        "fidelity_n": float(fid.size),
        "attainment_median": float(np.median(att)) if att.size else nan,
        "attainment_p10": float(np.percentile(att, 10)) if att.size else nan,
        "attainment_below": float((att < low).mean()) if att.size else nan,
        "attainment_above": float((att > high).mean()) if att.size else nan,
        "attainment_outside": float(((att < low) | (att > high)).mean()) if att.size else nan,
        "attainment_n": float(att.size),
    }


def blocks_table(blocks: dict[str, float]) -> str:
    """Two lines: pooled fidelity p10 / median and attainment median / p10 / outside."""
    low, high = HEALTHY_WINDOW
    outside = blocks.get("attainment_outside", math.nan)
    pct = "nan" if math.isnan(outside) else f"{100 * outside:.0f} %"
    return "\n".join(
        [
            "textured 64 px blocks, pooled:",
            f"  fidelity p10 / median          {_fmt(blocks['fidelity_p10'])} / "
            f"{_fmt(blocks['fidelity_median'])}  (n = {int(blocks['fidelity_n'])})",
            f"  focus attainment median / p10  {_fmt(blocks['attainment_median'])} / "
            f"{_fmt(blocks['attainment_p10'])}, outside {low}-{high}: {pct}  "
            f"(n = {int(blocks['attainment_n'])})",
        ]
    )


def _json_number(value: float) -> float | str | None:
    """Strict JSON has no NaN/Infinity: NaN -> null, +-inf -> "inf" / "-inf"."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


@dataclass
class EvaluationReport:
    """What :func:`evaluate_slide` measured.

    ``values[name][i]`` is metric ``name`` on tile ``boxes[i]``; ``summary`` adds the slide-level
    ``seam`` and ``seam_planes`` scores (n = 1) after the per-tile metrics.
    """

    fused: str
    planes: tuple[str, ...]
    ground_truth: str | None
    shape: tuple[int, int]
    tile: int
    seed: int
    boxes: list[Box]
    values: dict[str, list[float]]
    summary: dict[str, MetricSummary]
    #: Region the seam score was measured on, and the fusion plan it assumed.
    seam_box: Box
    plan_tile: int
    plan_overlap: int
    timings_s: dict[str, float] = field(default_factory=dict)
    #: How the source planes were aligned for the metrics (see :func:`evaluate_slide`).
    registration: dict[str, Any] = field(default_factory=dict)
    #: Block checks pooled over the textured blocks of all sampled tiles (:func:`pool_blocks`).
    blocks: dict[str, float] = field(default_factory=dict)
    #: The contact sheet written, if any.
    contact_sheet: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN -> null, infinity -> "inf")."""
        return {
            "fused": self.fused,
            "planes": list(self.planes),
            "ground_truth": self.ground_truth,
            "shape": list(self.shape),
            "tile": self.tile,
            "seed": self.seed,
            "n_tiles": len(self.boxes),
            "plan": {"tile": self.plan_tile, "overlap": self.plan_overlap},
            "seam_box": _box_dict(self.seam_box),
            "registration": self.registration,
            "blocks": {k: _json_number(v) for k, v in self.blocks.items()},
            "contact_sheet": self.contact_sheet,
            "summary": {
                name: {
                    "mean": _json_number(s.mean),
                    "std": _json_number(s.std),
                    "median": _json_number(s.median),
                    "min": _json_number(s.min),
                    "max": _json_number(s.max),
                    "n": s.n,
                    "better": s.better,
                }
                for name, s in self.summary.items()
            },
            "tiles": [
                {
                    **_box_dict(box),
                    **{name: _json_number(vals[i]) for name, vals in self.values.items()},
                }
                for i, box in enumerate(self.boxes)
            ],
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as strict JSON to ``path``."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return out

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the summary, one row per metric: metric, mean, std, median, min, max, n, better."""
        out = Path(path)
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["metric", "mean", "std", "median", "min", "max", "n", "better"])
            for s in self.summary.values():
                writer.writerow(
                    [
                        s.name,
                        *(repr(v) for v in (s.mean, s.std, s.median, s.min, s.max)),
                        s.n,
                        s.better,
                    ]
                )
        return out

    def table(self) -> str:
        """Plain-text table: metric, mean +- std, median, n."""
        rows = [("metric", "mean ± std", "median", "n")]
        for s in self.summary.values():
            rows.append((s.name, f"{_fmt(s.mean)} ± {_fmt(s.std)}", _fmt(s.median), str(s.n)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.blocks:
            lines += ["", blocks_table(self.blocks)]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    """Four significant digits; ``inf`` / ``nan`` spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _box_dict(box: Box) -> dict[str, int]:
    return {"y": box.y, "x": box.x, "h": box.h, "w": box.w}


def _grid(length: int, side: int) -> list[int]:
    """Starts of non-overlapping ``side`` windows along an axis (the remainder is not used)."""
    return list(range(0, length - side + 1, side))


def sample_tiles(
    mask: npt.NDArray[np.bool_],
    shape: tuple[int, int],
    n_tiles: int,
    tile: int,
    *,
    seed: int = 0,
    min_tissue: float = 0.25,
) -> list[Box]:
    """Pick ``n_tiles`` random non-overlapping tissue tiles of a ``shape`` slide.

    Candidates are the tiles of a non-overlapping ``tile`` grid (square, clipped to the slide when
    it is smaller) whose tissue fraction on ``mask`` is at least ``min_tissue``; when none is, the
    ones with the most tissue are used (a faint slide should still be measured). All candidates
    are used when there are fewer than ``n_tiles``.

    Parameters
    ----------
    mask
        Tissue mask of a thumbnail of the slide (:func:`~wsi_fusion.tiling.tissue.tissue_mask`).
    shape
        Slide (height, width) in level-0 pixels.
    n_tiles
        Number of tiles to draw.
    tile
        Tile side in pixels.
    seed
        Seed of the draw; the same seed gives the same tiles.
    min_tissue
        Smallest tissue fraction of a candidate.

    Returns
    -------
    list[Box]
        The tiles in raster order.
    """
    if n_tiles < 1:
        raise UnsupportedInput(f"--tiles {n_tiles}: sample at least 1 tile")
    if tile < 16:
        raise UnsupportedInput(f"--tile {tile} is too small; use at least 16 px (default 512)")
    h, w = shape
    th, tw = min(tile, h), min(tile, w)
    boxes = [Box(y, x, th, tw) for y in _grid(h, th) for x in _grid(w, tw)]
    fractions = tile_fractions(mask, shape, boxes)
    keep = np.flatnonzero(fractions >= min_tissue)
    if keep.size == 0:
        best = float(fractions.max())
        keep = np.flatnonzero(fractions >= best) if best > 0 else np.arange(len(boxes))
        log.warning(
            "no %d px tile is at least %.0f %% tissue; sampling the %d with the most (%.0f %%)",
            tile,
            100 * min_tissue,
            keep.size,
            100 * best,
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(keep, size=min(n_tiles, keep.size), replace=False))
    if keep.size < n_tiles:
        log.info("only %d tissue tiles of %d px; using all of them", keep.size, tile)
    return [boxes[i] for i in chosen]


def seam_region(
    mask: npt.NDArray[np.bool_], shape: tuple[int, int], plan_tile: int, plan_overlap: int
) -> Box:
    """A region that crosses the fusion plan's inner tile edges, for the seam score.

    The region is ``2 * stride + tile`` pixels square (three tiles a side; ``stride = tile -
    overlap``), starts at a regular tile start of the slide's plan and ends inside the slide, so
    the tile plan of the region alone has exactly the slide plan's seams within it. Of the possible
    positions, the one with the most tissue on ``mask`` is taken. A slide smaller than that is used
    whole.
    """
    plan = make_plan(shape, tile=plan_tile, overlap=plan_overlap)
    side = 2 * (plan_tile - plan_overlap) + plan_tile

    def starts(length: int, plan_starts: tuple[int, ...]) -> tuple[list[int], int]:
        if length <= side:
            return [0], length
        return [s for s in plan_starts if s + side <= length], side

    ys, rh = starts(shape[0], plan.ys)
    xs, rw = starts(shape[1], plan.xs)
    boxes = [Box(y, x, rh, rw) for y in ys for x in xs]
    fractions = tile_fractions(mask, shape, boxes)
    return boxes[int(np.argmax(fractions))]


def _read_planes(stack: PlaneStack, box: Box) -> list[RGBRegion]:
    return [stack.read(z, box) for z in range(stack.n_planes)]


def _grow(box: Box, margin: int, shape: tuple[int, int]) -> Box:
    """``box`` grown by ``margin`` px on every side, clipped to a ``shape`` slide."""
    y, x = max(0, box.y - margin), max(0, box.x - margin)
    y1, x1 = min(shape[0], box.y1 + margin), min(shape[1], box.x1 + margin)
    return Box(y, x, y1 - y, x1 - x)


def _check_same_size(fused: PlaneStack, other: PlaneStack, what: str) -> None:
    """Refuse a ``what`` stack whose size differs from the fused slide's."""
    if tuple(other.shape) != tuple(fused.shape):
        (fh, fw), (oh, ow) = fused.shape, other.shape
        raise PlaneMismatch(
            f"the fused slide {fused.sources[0]} is {fw} x {fh} px (w x h) but the {what} "
            f"{', '.join(other.sources)} {'are' if what == 'planes' else 'is'} {ow} x {oh} px; "
            f"give the {what} of the slide that was fused (same size)"
        )


def _plan_from_run_json(fused: str) -> tuple[int, int] | None:
    """Tile and overlap recorded in ``FUSED.run.json`` by ``wsi-fusion fuse``, if present."""
    data = _run_json(fused)
    if data is None:
        return None
    try:
        config = data["config"]
        return int(config["tile"]), int(config["overlap"])
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring %s.run.json (no tile/overlap in it: %s)", fused, err)
        return None


def _run_json(fused: str) -> dict[str, Any] | None:
    """``FUSED.run.json`` written by ``wsi-fusion fuse`` beside its output, if readable."""
    path = Path(fused).with_name(Path(fused).name + ".run.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring %s (%s)", path, err)
        return None
    return data if isinstance(data, dict) else None


def source_registration(
    fused: str, sources: PlaneStack, mode: RegisterMode, threshold_px: float = 0.5
) -> tuple[DriftField | None, dict[str, Any]]:
    """The drift field to read the source planes through, and a record of the decision.

    ``"auto"`` follows the fusion: the field recorded in ``FUSED.run.json`` when the fusion
    applied one (none when it did not); without a ``run.json``, the drift is measured on the
    planes (reference: the middle plane, as ``fuse`` defaults to) and applied when it exceeds
    ``threshold_px``. ``"on"`` always registers (the recorded field, else a measured one);
    ``"off"`` never does.
    """
    from wsi_fusion.registration import DriftField, estimate_drift, should_apply

    if mode == "off" or sources.n_planes < 2:
        return None, {"mode": mode, "applied": False}
    recorded = (_run_json(fused) or {}).get("registration")
    if isinstance(recorded, dict) and isinstance(recorded.get("drift"), dict):
        try:
            drift = DriftField.from_json(recorded["drift"], sources.shape)
        except ConfigError as err:
            log.warning("ignoring the drift in %s.run.json: %s", fused, err)
        else:
            if drift.n_planes == sources.n_planes:
                applied = mode == "on" or bool(recorded.get("applied"))
                record = {"mode": mode, "source": "run.json", "applied": applied}
                return (drift if applied else None), {**record, **_drift_summary(drift)}
            log.warning(
                "%s.run.json records %d planes, --planes has %d; measuring the drift instead",
                fused,
                drift.n_planes,
                sources.n_planes,
            )
    drift = estimate_drift(sources, reference=sources.n_planes // 2)
    applied = should_apply(drift, mode, threshold_px)
    log.info(
        "source planes drift up to %.2f px vs plane %d: %s",
        drift.max_abs(),
        drift.reference,
        "registering them" if applied else "not registering them",
    )
    record = {"mode": mode, "source": "measured", "applied": applied}
    return (drift if applied else None), {**record, **_drift_summary(drift)}


def _drift_summary(drift: DriftField) -> dict[str, Any]:
    return {"reference_plane": drift.reference, "max_abs_px": round(drift.max_abs(), 3)}


class _NoProgress:
    """Progress sink that shows nothing."""

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None


def evaluate_slide(
    fused: str | os.PathLike[str],
    planes: Sequence[str | os.PathLike[str]],
    ground_truth: str | os.PathLike[str] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    n_tiles: int = 16,
    tile: int = 512,
    seed: int = 0,
    plan_tile: int | None = None,
    plan_overlap: int | None = None,
    thumbnail_side: int = 1024,
    min_tissue: float = 0.25,
    register: RegisterMode = "auto",
    progress: ProgressReporter | None = None,
    contact_sheet: str | os.PathLike[str] | None = None,
    n_worst: int = 8,
) -> EvaluationReport:
    """Measure the quality of a fused slide on a random sample of its tissue tiles.

    Parameters
    ----------
    fused
        The fused slide: anything :func:`~wsi_fusion.io.readers.open_stack` opens as one plane
        (OME-Zarr, OME-TIFF, pyramidal TIFF, ...).
    planes
        The source focal planes, in any form ``wsi-fusion fuse`` accepts (one multi-plane file or
        one file per plane). They must be aligned with the fused slide (same size).
    ground_truth
        The all-in-focus reference (synthetic stacks), one plane of the same size; enables the
        full-reference metrics.
    metrics
        Registry metric names; default :func:`default_metrics` (the fast ones). ``fmi_dct`` is
        slow (about 5 s per 512 px tile). The block checks (:data:`BLOCK_METRICS`), ``halo``
        and ``seam`` are always reported.
    n_tiles, tile
        How many tiles of ``tile`` pixels to sample.
    seed
        Seed of the tile draw.
    plan_tile, plan_overlap
        Fusion plan whose tile edges the seam score inspects; default: the ``FUSED.run.json``
        written by ``wsi-fusion fuse`` if present, else 512 / 128.
    thumbnail_side
        Longer side of the thumbnail the tissue mask is computed on.
    min_tissue
        Smallest tissue fraction of a sampled tile.
    register
        Align the source planes as the fusion did before measuring: ``"auto"`` (the drift field
        of ``FUSED.run.json`` if the fusion applied one; without a run.json, the measured drift
        when it exceeds 0.5 px), ``"on"`` or ``"off"``. See :func:`source_registration`.
    progress
        Progress sink (the CLI's bars); silent when ``None``.
    contact_sheet
        Write a contact sheet of the ``n_worst`` worst blocks by fidelity and by focus
        attainment over the sampled tiles to this PNG (plus ``PATH.json``), see
        :func:`~wsi_fusion.metrics.contact_sheet.write_contact_sheet`.
    n_worst
        Rows of each kind on the contact sheet.

    Returns
    -------
    EvaluationReport
        Per-tile values and their summary, plus the seam scores of the fused slide and, for
        comparison, of the middle source plane on the same region (see :data:`SEAM_PLANES`).

    Raises
    ------
    PlaneMismatch
        The planes or the ground truth differ in size from the fused slide.
    UnsupportedInput
        The fused slide or the ground truth has several planes, a full-reference metric was asked
        for without a ground truth, or ``n_tiles`` / ``tile`` is out of range.
    UnknownMetric
        A metric name is not registered.
    """
    from wsi_fusion.io.readers import open_stack

    started = time.perf_counter()
    if n_worst < 1:
        raise UnsupportedInput(f"--worst {n_worst}: show at least 1 block of each kind")
    names = list(metrics) if metrics is not None else default_metrics(ground_truth is not None)
    names = _check_names(names, ground_truth is not None)
    recorded = _plan_from_run_json(os.fspath(fused))
    plan_tile = plan_tile or (recorded[0] if recorded else 512)
    plan_overlap = plan_overlap if plan_overlap is not None else (recorded[1] if recorded else 128)
    progress = progress or _NoProgress()

    fused_stack = open_stack([fused])
    opened: list[PlaneStack] = [fused_stack]
    try:
        if fused_stack.n_planes != 1:
            raise UnsupportedInput(
                f"{fused} has {fused_stack.n_planes} planes; evaluate takes a fused (single-plane) "
                "slide as FUSED and the focal planes with --planes"
            )
        source_stack = open_stack(list(planes))
        opened.append(source_stack)
        _check_same_size(fused_stack, source_stack, "planes")
        drift, registration = source_registration(os.fspath(fused), source_stack, register)
        sources: PlaneStack = source_stack
        if drift is not None:
            from wsi_fusion.registration import RegisteredStack

            sources = RegisteredStack(source_stack, drift)
        gt_stack = None
        if ground_truth is not None:
            gt_stack = open_stack([ground_truth])
            opened.append(gt_stack)
            if gt_stack.n_planes != 1:
                raise UnsupportedInput(
                    f"ground truth {ground_truth} has {gt_stack.n_planes} planes; give one image"
                )
            _check_same_size(fused_stack, gt_stack, "ground truth")

        shape = fused_stack.shape
        mask = tissue_mask(fused_stack.thumbnail(0, thumbnail_side))
        boxes = sample_tiles(mask, shape, n_tiles, tile, seed=seed, min_tissue=min_tissue)
        log.info("evaluating %s on %d tiles of %d px", fused, len(boxes), tile)
        values: dict[str, list[float]] = {}
        all_checks: list[BlockChecks] = []
        rows: list[SheetRow] = []
        # Textured blocks are the top 60 % of the blocks of all sampled tiles, not of each tile
        # (a tile that is half glass would otherwise have glass blocks scored): a first pass
        # ranks the blocks by their sharpest raw plane.
        sharpness = [block_sharpness_of_planes(_read_planes(source_stack, b)) for b in boxes]
        threshold = texture_threshold(sharpness)
        with progress.phase("evaluate", len(boxes)) as advance:
            for box in boxes:
                fused_tile = fused_stack.read(0, box)
                # Fidelity reads the raw planes with a margin: its search absorbs the drift.
                raw_box = _grow(box, SEARCH, shape)
                raw = _read_planes(source_stack, raw_box)
                offset = (box.y - raw_box.y, box.x - raw_box.x)
                if drift is None:
                    planes_here = [np.ascontiguousarray(p[box.slices(raw_box)]) for p in raw]
                else:
                    planes_here = _read_planes(sources, box)
                checks = block_checks(
                    fused_tile, planes_here, raw, raw_offset=offset, threshold=threshold
                )
                all_checks.append(checks)
                result = tile_metrics(
                    fused_tile,
                    planes_here,
                    gt_stack.read(0, box) if gt_stack is not None else None,
                    names,
                    checks=checks,
                )
                if contact_sheet is not None:
                    rows += sheet_rows(
                        fused_tile,
                        raw,
                        checks.fidelity,
                        checks.attainment,
                        n=n_worst,
                        offset=offset,
                        origin=(box.y, box.x),
                    )
                for name, value in result.items():
                    values.setdefault(name, []).append(value)
                log.debug("tile %s: %s", box, result)
                advance(1)
        seam_box = seam_region(mask, shape, plan_tile, plan_overlap)
        seam = seam_score(fused_stack.read(0, seam_box), plan_tile, plan_overlap)
        middle = sources.read(sources.n_planes // 2, seam_box)
        seam_planes = seam_score(middle, plan_tile, plan_overlap)
    finally:
        for stack in opened:
            stack.close()

    summary = {name: summarise(name, vals) for name, vals in values.items()}
    summary[SEAM] = summarise(SEAM, [seam])
    summary[SEAM_PLANES] = summarise(SEAM_PLANES, [seam_planes])
    sheet = None
    if contact_sheet is not None:
        sheet = os.fspath(
            write_contact_sheet(rows, contact_sheet, n_worst, title=f"{os.fspath(fused)}")
        )
        log.info("wrote the contact sheet %s", sheet)
    return EvaluationReport(
        fused=os.fspath(fused),
        planes=tuple(os.fspath(p) for p in planes),
        ground_truth=None if ground_truth is None else os.fspath(ground_truth),
        shape=(int(shape[0]), int(shape[1])),
        tile=tile,
        seed=seed,
        boxes=boxes,
        values=values,
        summary=summary,
        seam_box=seam_box,
        plan_tile=plan_tile,
        plan_overlap=plan_overlap,
        timings_s={"total": time.perf_counter() - started},
        registration=registration,
        blocks=pool_blocks(all_checks),
        contact_sheet=sheet,
    )
