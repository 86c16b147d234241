"""The fusion pipeline: plane stack -> tiles -> fused tile cache -> blended pyramid -> output.

``fuse_slide`` is the one entry point; the CLI, the demo, batch conversion and the benchmarks all
call it. Phase 1 fuses tiles into an on-disk cache, phase 2 blends output blocks from the cache;
both skip work a previous, interrupted run already finished, so a rerun resumes and gives the same
result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from wsi_fusion import __version__
from wsi_fusion._types import PlaneStack, RGBRegion
from wsi_fusion.config import RunConfig
from wsi_fusion.errors import ConfigError, OutputExists, UnsupportedInput
from wsi_fusion.fusers import Fuser, create_fuser, fuser_class
from wsi_fusion.fusers._registry import has_device_variant
from wsi_fusion.io import ownership
from wsi_fusion.io.destination import Destination, resolve_destination
from wsi_fusion.io.input_guard import refuse_overlap
from wsi_fusion.io.output_lock import output_lock
from wsi_fusion.io.privacy import (
    redact_config,
    redact_fuser,
    redact_stack_info,
    shown_path,
)
from wsi_fusion.io.publication import publish_run, trusted_record
from wsi_fusion.io.run_cleanup import remove_on_failure
from wsi_fusion.registration import DriftField, estimate_drift, should_apply
from wsi_fusion.scheduling.gpu import runs_on_device
from wsi_fusion.scheduling.graph import TaskRunner, open_runner, phase1_resources
from wsi_fusion.scheduling.tasks import FusionJob, blend_blocks, fuse_tiles
from wsi_fusion.scheduling.tile_cache import TileCache
from wsi_fusion.tiling.plan import TilePlan, fusion_plan
from wsi_fusion.tiling.tissue import tile_fractions, tissue_mask

if TYPE_CHECKING:
    from wsi_fusion.io.readers._base import BaseStack

logger = logging.getLogger(__name__)


class ProgressReporter(Protocol):
    """How the pipeline reports progress; the CLI implements it with progress bars."""

    def phase(
        self, name: str, total: int
    ) -> contextlib.AbstractContextManager[Callable[[int], None]]: ...


class _Silent:
    @contextlib.contextmanager
    def phase(self, name: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None


@dataclass
class RunReport:
    """What a run did: paths, counts and timings (also written to ``run.json``)."""

    output: Path
    run_json: Path
    format: str
    shape: tuple[int, int]
    planes: int
    tiles: int
    tiles_fused: int
    tiles_resumed: int
    blocks_resumed: int
    #: Tiles and blocks this run computed (a resumed run skips the ones already done).
    tiles_computed: int = 0
    blocks_computed: int = 0
    #: sha256 of the inputs' identity and every output-affecting setting (batch skips on it).
    digest: str = ""
    #: What ran the job: scheduler, workers, dashboard link.
    scheduler: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    extra_outputs: list[Path] = field(default_factory=list)


def fuse_slide(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    config: RunConfig | None = None,
    *,
    overwrite: bool = False,
    keep_cache: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressReporter | None = None,
    runner: TaskRunner | None = None,
) -> RunReport:
    """Fuse the focal planes of ``inputs`` into one all-in-focus pyramid at ``output``.

    Parameters
    ----------
    inputs
        One multi-plane file/store, or one file per focal plane (in focal order).
    output
        Output path; its suffix picks the format (``.ome.zarr``, ``.ome.tif``, ``.tif``) unless
        ``config.format`` says otherwise.
    config
        Run settings (fuser, tiling, output options, scheduler); defaults when ``None``.
    overwrite
        Replace an existing output (it is replaced only once the new one is complete).
    keep_cache
        Keep the tile cache after success (it is kept after an interruption or crash, for
        resuming; a reported error removes the cache that run created).
    cache_dir
        Where the tile cache lives; default ``OUTPUT.cache`` beside the output.
    progress
        Progress sink (the CLI's bars); silent when ``None``.
    runner
        An open scheduler to run on (batch conversion shares one across slides); default: open
        ``config.scheduler`` for this run.
    """
    config = config or RunConfig()
    dest = _destination(output, config, overwrite, cache_dir)
    refuse_overlap(inputs, _guarded_paths(dest, config))
    # --overwrite replaces an output file, but never a folder this tool did not write.
    ownership.check_replaceable(dest.output, "output", "choose another -o or move it away yourself")
    # A run that fails removes the partial output and cache it created (never those of an
    # earlier, interrupted run), and an OS error becomes one message naming the path and the fix.
    with _locked(dest), remove_on_failure(_run_paths(dest, config), str(dest.output)):
        # Checked again under the lock: a run that finished meanwhile may have created it.
        _destination(output, config, overwrite, cache_dir)
        return _fuse(
            inputs,
            dest,
            config,
            keep_cache=keep_cache,
            progress=progress or _Silent(),
            runner=runner,
        )


def _destination(
    output: str | os.PathLike[str],
    config: RunConfig,
    overwrite: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> Destination:
    """:func:`resolve_destination`, saying when an existing output is an unfinished one, and
    refusing to replace an existing sidecar (``x.ome.focus.tif``) without ``--overwrite``."""
    try:
        dest = resolve_destination(output, config.format, overwrite=overwrite, cache_dir=cache_dir)
    except OutputExists as err:
        path = Path(output).absolute()
        if trusted_record(path) is not None:
            raise
        raise OutputExists(
            f"output {path} exists but has no matching run.json (a run that was interrupted "
            "while publishing it, or not an output of this tool); pass --overwrite to redo it"
        ) from err
    if dest.format != "ome-zarr" and not overwrite:
        for kind in _sidecar_kinds(config):
            if os.path.lexists(dest.sidecar(kind)):
                raise OutputExists(
                    f"{dest.sidecar(kind)} (the {kind} sidecar of {dest.output.name}) already "
                    "exists; pass --overwrite to replace it, or move it away"
                )
    return dest


@contextlib.contextmanager
def _locked(dest: Destination) -> Iterator[None]:
    """One writer per output, and per tile cache when ``--cache-dir`` puts it elsewhere."""
    with contextlib.ExitStack() as locks:
        locks.enter_context(output_lock(dest.lock, dest.output))
        if dest.cache_dir != dest.default_cache_dir:
            if os.access(dest.cache_lock.parent, os.W_OK | os.X_OK):
                locks.enter_context(output_lock(dest.cache_lock, dest.cache_dir))
            else:
                # A scratch folder under a parent the user cannot write (/scratch/$USER): the
                # cache is still this run's alone unless another output shares it on purpose.
                logger.info(
                    "not locking the tile cache %s: %s is not writable",
                    dest.cache_dir,
                    dest.cache_lock.parent,
                )
        yield


def _guarded_paths(dest: Destination, config: RunConfig) -> list[tuple[Path, str, str]]:
    """Every path a run writes or removes, with what it is and the fix (for the input check)."""
    fix_output = "write the output elsewhere (-o)"
    fix_cache = "pass --cache-dir a new or empty folder away from the inputs"
    paths = [
        (dest.output, "output", fix_output),
        *((p, "output file", fix_output) for p in _run_paths(dest, config) if p != dest.cache_dir),
        (dest.old, "output file", fix_output),
        (dest.lock, "lock file", fix_output),
        (dest.cache_dir, "tile cache folder", fix_cache),
        (dest.cache_lock, "lock file", fix_cache),
    ]
    if dest.format != "ome-zarr":
        paths += [(dest.sidecar(k), "sidecar output", fix_output) for k in _sidecar_kinds(config)]
    return paths


def _sidecar_kinds(config: RunConfig) -> list[str]:
    return (["focus"] if config.focus_map else []) + list(config.extras)


def _run_paths(dest: Destination, config: RunConfig) -> list[Path]:
    """Every path a run creates besides its final outputs (removed again if it fails)."""
    finals = [dest.focus_map_tiff] if config.focus_map and dest.format != "ome-zarr" else []
    if dest.format != "ome-zarr":
        finals += [extra_tiff_path(dest, name) for name in config.extras]
    partials = [p.with_name(p.name + ".partial") for p in finals]
    return [dest.partial, dest.cache_dir, dest.run_json, dest.run_json_partial, *partials]


def _fuse(
    inputs: Sequence[str | os.PathLike[str]],
    dest: Destination,
    config: RunConfig,
    *,
    keep_cache: bool,
    progress: ProgressReporter,
    runner: TaskRunner | None,
) -> RunReport:
    """:func:`fuse_slide` once the destination is known and checked."""
    from wsi_fusion.io.readers import describe_stack

    timings: dict[str, float] = {}
    started = time.perf_counter()
    stack, input_paths, plane_order_info, thumbnails = _open_in_focal_order(
        tuple(str(Path(p)) for p in inputs), config
    )
    try:
        fuser_params = config.effective_fuser_params(fuser_class(config.fuser).needs_weights)
        fuser = create_fuser(config.fuser, **fuser_params)
        # Refuse an extra output the fuser cannot produce before any work is done.
        fuser.request_extras(config.extras)
        if stack.n_planes < fuser.min_planes:
            raise UnsupportedInput(
                f"fuser {config.fuser!r} needs at least {fuser.min_planes} focal planes but "
                f"{', '.join(stack.sources)} has {stack.n_planes}; give more planes or use "
                "--fuser plane"
            )
        if dest.format == "dicom" and stack.mpp is None:
            raise UnsupportedInput(
                f"{', '.join(stack.sources)} records no pixel size (mpp), which a DICOM WSI "
                "requires; write OME-Zarr or TIFF instead (-o NAME.ome.zarr)"
            )
        reference = _reference_plane(config, stack.n_planes)
        plan = fusion_plan(
            stack.shape,
            config.tile,
            config.overlap,
            fuser.margin,
            fuser.needs_weights,
            config.chunk,
            fuser.cell_grid,
        )
        fuse_mask = _fuse_mask(
            config, plan, stack.thumbnail(reference, config.tissue.thumbnail_side)
        )
        stack_info = describe_stack(stack)
        mpp = stack.mpp
        t0 = time.perf_counter()
        drift, registration_info = _registration(stack, config, reference, thumbnails)
        if drift is not None:
            fuser_params, fuser = _for_registered_planes(config, fuser_params, fuser)
        timings["register"] = time.perf_counter() - t0
    finally:
        stack.close()
    timings["plan"] = time.perf_counter() - started
    logger.info(
        "%d planes of %d x %d px, %d tiles (%d with tissue), fuser %s",
        stack.n_planes,
        *stack.shape,
        len(plan),
        sum(fuse_mask),
        config.fuser,
    )

    described = fuser.describe()
    provenance = _provenance(input_paths, stack_info, config, described)
    weights_sha256 = (described.get("weights") or {}).get("sha256")
    if weights_sha256:
        # Every worker then loads exactly the weights whose hash run.json records.
        fuser_params = {**fuser_params, "weights_sha256": weights_sha256}
    provenance["registration"] = registration_info
    provenance["plane_order"] = plane_order_info
    provenance["referenced_files"] = [
        shown_path(p, config.record_paths) for p in _referenced(input_paths)
    ]
    # Where each extra output is: a label of the OME-Zarr, or a TIFF beside a TIFF output.
    provenance["extra_outputs"] = {
        name: {
            **EXTRA_OUTPUTS.get(name, {}),
            "path": f"labels/{name}"
            if dest.format == "ome-zarr"
            else shown_path(extra_tiff_path(dest, name), config.record_paths),
        }
        for name in config.extras
    }
    cache = TileCache.prepare(
        dest.cache_dir,
        _fingerprint(input_paths, config),
        # A block plan writes its tiles straight into the output: the cache keeps only which
        # blocks are done, no tile arrays.
        n_tiles=0 if plan.block else len(plan),
        channels=3,
        planes=stack.n_planes,
        tile=plan.tile,
        with_weights=config.focus_map,
        extras=config.extras,
    )
    job = FusionJob(
        inputs=input_paths,
        fuser=config.fuser,
        fuser_params=fuser_params,
        plan=plan,
        planes=stack.n_planes,
        reference_plane=reference,
        fuse_mask=tuple(bool(f) for f in fuse_mask),
        cache_root=str(dest.cache_dir),
        image_path=str(dest.image_zarr),
        chunk=config.chunk,
        focus_map=config.focus_map,
        drift=drift,
        extras=config.extras,
    )
    _prepare_image(dest, job, cache, mpp, config, provenance)
    # A block plan's tile i is output block i, done when the block is.
    done_tiles = cache.done_blocks() if plan.block else cache.done_tiles()
    tiles_resumed = len(done_tiles)
    blocks_resumed = len(cache.done_blocks())
    _report_cache(dest, cache_bound_bytes(plan, job.planes, config, dest.format))
    logger.info(
        "%d/%d tiles and %d/%d blocks already done in the tile cache",
        tiles_resumed,
        len(plan),
        blocks_resumed,
        job.n_blocks,
    )

    with contextlib.ExitStack() as scope:
        if runner is None:
            runner = scope.enter_context(
                open_runner(config.scheduler, config.workers, use_gpus=runs_on_device(fuser))
            )
        job, fuser = _on_gpu_workers(job, fuser, runner)
        t0 = time.perf_counter()
        todo_tiles = sorted(set(range(len(plan))) - done_tiles)
        with progress.phase("fuse tiles", len(todo_tiles)) as advance:
            tiles_computed = runner.run(
                fuse_tiles,
                [
                    (job, group)
                    for group in _groups(
                        todo_tiles, _task_size(len(todo_tiles), config.tiles_per_task, runner)
                    )
                ],
                progress=advance,
                resources=phase1_resources(runs_on_device(fuser), runner.gpu_workers),
            )
        timings["fuse"] = time.perf_counter() - t0

        if plan.block:
            blocks_computed = tiles_computed  # written by phase 1: nothing to blend
        else:
            t0 = time.perf_counter()
            todo_blocks = sorted(set(range(job.n_blocks)) - cache.done_blocks())
            with progress.phase("blend blocks", len(todo_blocks)) as advance:
                blocks_computed = runner.run(
                    blend_blocks,
                    [(job, group) for group in _groups(todo_blocks, 4)],
                    progress=advance,
                )
            timings["blend"] = time.perf_counter() - t0
        scheduler_info = dict(runner.description)
        if "device" in job.fuser_params:
            # Where the fuser ran (set by the user, or ``auto`` on GPU workers).
            scheduler_info["fuser_device"] = job.fuser_params["device"]

    t0 = time.perf_counter()
    _finish_pyramid(dest, config)
    timings["pyramid"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sidecars = _write_final(dest, config, mpp, provenance, inputs=input_paths)
    extra = [final for _, final in sidecars]
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started

    report = RunReport(
        output=dest.output,
        run_json=dest.run_json,
        format=dest.format,
        shape=plan.shape,
        planes=job.planes,
        tiles=len(plan),
        tiles_fused=int(sum(fuse_mask)),
        tiles_resumed=tiles_resumed,
        blocks_resumed=blocks_resumed,
        tiles_computed=int(sum(tiles_computed)),
        blocks_computed=int(sum(blocks_computed)),
        digest=run_digest(input_paths, config),
        scheduler=scheduler_info,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        extra_outputs=extra,
    )
    publish_run(dest, {**provenance, "report": _jsonable(report, config.record_paths)}, sidecars)
    if not keep_cache:
        cache.remove()
    return report


def _open_in_focal_order(
    input_paths: tuple[str, ...], config: RunConfig
) -> tuple[BaseStack, tuple[str, ...], dict[str, Any], list[RGBRegion] | None]:
    """The open stack and its inputs, per-plane files reordered by similarity when
    ``plane_order`` asks for it, the record of the estimate for run.json, and the planes'
    thumbnails it read (in the stack's order; registration reuses them).

    In the default ``given`` order, files listed against the numbers in their names
    (:mod:`wsi_fusion.io.readers.plane_order`) and a stack that looks out of focal order
    (:mod:`wsi_fusion.registration.focal_order`) get a warning; the planes are fused as given.
    """
    from wsi_fusion.io.readers import open_stack
    from wsi_fusion.io.readers.plane_order import warn_if_out_of_order
    from wsi_fusion.registration.drift import THUMBNAIL_SIDE
    from wsi_fusion.registration.focal_order import estimate_focal_order

    if config.plane_order == "given":
        warn_if_out_of_order(input_paths)
    stack = open_stack(list(input_paths))
    if stack.n_planes < 3:
        return stack, input_paths, {"mode": config.plane_order}, None
    try:
        if config.plane_order == "similarity" and stack.form != "layers":
            raise ConfigError(
                f"plane_order 'similarity' reorders per-plane files, but {input_paths[0]} holds "
                f"its {stack.n_planes} planes in one {stack.form} in the order it records; drop "
                "--plane-order similarity"
            )
        thumbnails = [stack.thumbnail(z, THUMBNAIL_SIDE) for z in range(stack.n_planes)]
        focal = estimate_focal_order(stack, thumbnails=thumbnails)
    except BaseException:
        stack.close()
        raise
    record = {"mode": config.plane_order, **focal.to_json()}
    if config.plane_order == "given":
        if focal.looks_out_of_order:
            logger.warning(
                "the planes look out of focal order: consecutive planes differ %.2fx more than "
                "in the order %s (planes numbered as given, from 0; neighbours in focus look "
                "most alike), as in a focus sweep saved through focus and back. If so, pass "
                "--plane-order similarity (plane_order: similarity) to fuse them in that order.",
                focal.ratio,
                ", ".join(map(str, focal.order)),
            )
        return stack, input_paths, record, thumbnails
    if focal.order == tuple(range(stack.n_planes)):
        return stack, input_paths, record, thumbnails
    stack.close()
    reordered = tuple(input_paths[k] for k in focal.order)
    logger.info("planes reordered by similarity: %s", ", ".join(map(str, focal.order)))
    return open_stack(list(reordered)), reordered, record, [thumbnails[k] for k in focal.order]


def _reference_plane(config: RunConfig, n_planes: int) -> int:
    if config.reference_plane is None:
        return n_planes // 2
    if not -n_planes <= config.reference_plane < n_planes:
        raise UnsupportedInput(
            f"reference_plane {config.reference_plane} is outside the {n_planes} planes; "
            f"use 0..{n_planes - 1}"
        )
    return config.reference_plane % n_planes


def _registration(
    stack: PlaneStack,
    config: RunConfig,
    reference: int,
    thumbnails: Sequence[RGBRegion] | None = None,
) -> tuple[DriftField | None, dict[str, Any]]:
    """Measure the planes' lateral drift; return the field to correct (or None) and its record.

    ``thumbnails``: the planes' 1024-px thumbnails when the focal-order check read them already.
    """
    settings = config.registration
    if settings.mode == "off" or stack.n_planes < 2:
        return None, {"mode": settings.mode, "applied": False}
    # In auto mode a stack whose drift stays below half the threshold on a 2 x 2 grid is taken
    # as still and not registered: the full grid is not measured (its record has a 2 x 2 grid).
    early_stop = settings.threshold_px / 2 if settings.mode == "auto" else None
    field = estimate_drift(
        stack,
        reference=reference,
        grid=settings.grid,
        early_stop_px=early_stop,
        thumbnails=thumbnails,
    )
    applied = should_apply(field, settings.mode, settings.threshold_px)
    logger.info(
        "plane drift vs plane %d, max |shift| px per plane: %s; %s",
        reference,
        ", ".join(f"{field.max_abs(z):.2f}" for z in range(field.n_planes)),
        "registering" if applied else f"below {settings.threshold_px} px, not registering",
    )
    record = {"mode": settings.mode, "threshold_px": settings.threshold_px, "applied": applied}
    return (field if applied else None), {**record, "drift": field.to_json()}


def _for_registered_planes(
    config: RunConfig, fuser_params: dict[str, Any], fuser: Fuser
) -> tuple[dict[str, Any], Fuser]:
    """The fuser for planes that registration moved: a depth-surface fuser asks for stronger
    evidence before it leaves the surface (``_depth.REGISTERED_CLEARLY_SHARPER``), unless the
    configuration sets ``clearly_sharper``."""
    from wsi_fusion.fusers._depth import registered_params

    params = registered_params(type(fuser).Params, fuser_params)
    if params == fuser_params:
        return fuser_params, fuser
    logger.info(
        "planes registered: %s leaves the depth surface only for a plane %.1fx sharper",
        config.fuser,
        params["clearly_sharper"],
    )
    return params, create_fuser(config.fuser, **params)


def _fuse_mask(config: RunConfig, plan: TilePlan, thumbnail: np.ndarray) -> np.ndarray:
    """Per tile: whether it holds enough tissue to be fused."""
    if not config.tissue.enabled:
        return np.ones(len(plan), dtype=bool)
    fractions = tile_fractions(tissue_mask(thumbnail), plan.shape, list(plan.boxes))
    return fractions >= config.tissue.min_fraction


def _task_size(n_items: int, largest: int, runner: TaskRunner) -> int:
    """Tiles per task: at most ``largest``, and small enough for ~4 tasks per worker slot.

    Small slides would otherwise give fewer tasks than workers (121 tiles / 32 = 4 tasks).
    """
    return max(1, min(largest, -(-n_items // (4 * runner.slots))))


def _groups(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


#: Settings that change how a run is executed but never its output.
_EXECUTION_ONLY = {"scheduler", "workers"}
#: Output switches added after digests were first recorded: left out of the digest while off, so
#: runs that do not use them keep the digest they had (batch conversion skips on it).
_LATER_SWITCHES = ("blur_mask", "record_paths", "no_label")


def _on_gpu_workers(job: FusionJob, fuser: Fuser, runner: TaskRunner) -> tuple[FusionJob, Fuser]:
    """The default fuser runs in torch on clusters whose workers offer the ``GPU`` resource.

    When no ``device`` was chosen and the fuser has a torch implementation (``focus_measure``),
    the tasks get ``device: auto``: each worker with a CUDA device runs the torch
    implementation there (same algorithm, within 1 grey level of numpy), a worker without one
    the numpy reference. Local schedulers keep the numpy reference (bit-identical outputs).
    """
    if runner.gpu_workers == 0 or "device" in job.fuser_params:
        return job, fuser
    if not has_device_variant(job.fuser) or fuser.needs_weights:
        return job, fuser
    from dataclasses import replace

    params = {**job.fuser_params, "device": "auto"}
    logger.info("fuser %s: torch implementation on the GPU workers (device auto)", job.fuser)
    placed = create_fuser(job.fuser, **{**params, "device": "cuda"})
    return replace(job, fuser_params=params), placed


#: What each fuser extra output holds, for ``run.json`` and the label metadata.
EXTRA_OUTPUTS: dict[str, dict[str, str]] = {
    "blur_mask": {
        "meaning": (
            "blur probability of the reference plane from the fuser's blur-mask network, x 255: "
            "high where the output was synthesised by the generator; 0 where tiles were copied"
        ),
    },
}


def run_digest(inputs: Sequence[str | os.PathLike[str]], config: RunConfig) -> str:
    """sha256 of what a finished output depends on: the inputs' identity and the settings.

    Inputs are identified by absolute path, size and modification time (hashing the content of
    multi-GB slides would cost as much as fusing them); the scheduler and worker count are left
    out because they do not change the output.
    """
    record = {
        "version": __version__,
        "inputs": _input_identity(tuple(str(p) for p in inputs)),
        "config": config.model_dump(exclude=_EXECUTION_ONLY | _switches_off(config)),
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _switches_off(config: RunConfig) -> set[str]:
    return {name for name in _LATER_SWITCHES if not getattr(config, name)}


def cache_bound_bytes(plan: TilePlan, planes: int, config: RunConfig, fmt: str) -> int:
    """Most disk the tile cache of a run can use (uncompressed; compression only lowers it).

    Fused tiles take ``tiles x C x T²`` bytes, plane weights (with a focus map) ``tiles x Z x
    T²``, each extra output (blur mask) ``tiles x T²``; a TIFF output also keeps its OME-Zarr
    pyramid (``4/3 x H x W x C`` bytes, plus one channel per label pyramid) in the cache until it
    is streamed into the TIFF. Done markers are empty files. A block plan caches no tiles.
    """
    extras = len(config.extras)
    per_tile = 0 if plan.block else 3 + (planes if config.focus_map else 0) + extras
    total = len(plan) * per_tile * plan.tile * plan.tile
    if fmt != "ome-zarr":
        h, w = plan.shape
        total += (h * w * (3 + (1 if config.focus_map else 0) + extras) * 4) // 3
    return total


def _report_cache(dest: Destination, bound: int) -> None:
    """Log the cache's disk bound; warn when the disk holding it has less free space."""
    free = shutil.disk_usage(dest.cache_dir.parent).free
    logger.info(
        "tile cache %s needs at most %.2f GB (%.1f GB free)",
        dest.cache_dir,
        bound / 1e9,
        free / 1e9,
    )
    if free < bound:
        logger.warning(
            "the tile cache %s may need up to %.2f GB but only %.2f GB are free there; pass "
            "--cache-dir on a larger disk if the run fails with 'No space left on device'",
            dest.cache_dir,
            bound / 1e9,
            free / 1e9,
        )


def _referenced(inputs: Sequence[str]) -> list[str]:
    """Files beside the inputs that their metadata names (multi-file OME-TIFF): read too, so
    they are identified and recorded like inputs."""
    from wsi_fusion.io.readers.ome_files import referenced_files

    return [ref for path in inputs for ref in referenced_files(path)]


def _input_identity(inputs: tuple[str, ...]) -> list[dict[str, Any]]:
    files = []
    for path in (*inputs, *_referenced(inputs)):
        st = Path(path).stat()
        files.append(
            {"path": str(Path(path).absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        )
    return files


def _fingerprint(inputs: tuple[str, ...], config: RunConfig) -> dict[str, Any]:
    """What the cached tiles depend on: the inputs' identity and every output-affecting setting."""
    files = _input_identity(inputs)
    settings = config.model_dump(
        exclude={
            "scheduler",
            "workers",
            "format",
            "compression",
            "jpeg_quality",
            "ngff_version",
            "record_paths",
        }
    )
    return {"version": __version__, "inputs": files, "config": settings}


def _prepare_image(
    dest: Destination,
    job: FusionJob,
    cache: TileCache,
    mpp: float | None,
    config: RunConfig,
    provenance: dict[str, Any],
) -> None:
    """Create the OME-Zarr to blend into, unless a resumable one exists."""
    from wsi_fusion.io.writers.ome_zarr import add_label, create_image

    # The store's ``wsi_fusion`` attribute (create_image's metadata) marks it as this tool's:
    # only then is it resumed into or removed.
    if ownership.is_ours(dest.image_zarr) and cache.done_blocks():
        return
    cache.forget_blocks()
    ownership.remove_ours(
        dest.image_zarr, "partial output", "move it away yourself or choose another -o"
    )
    group = create_image(
        dest.image_zarr,
        (job.channels, *job.plan.shape),
        chunk=config.chunk,
        mpp=mpp,
        ngff_version=config.ngff_version,
        name=dest.output.name,
        metadata=provenance,
    )
    if config.focus_map:
        add_label(group, "focus_map", job.plan.shape, chunk=config.chunk)
    for name in job.extras:
        # A continuous 0..255 map, not classes: levels are 2x2 means, and the colour table
        # fades from transparent (0) to opaque orange (255) for viewers that honour it.
        add_label(
            group,
            name,
            job.plan.shape,
            chunk=config.chunk,
            colors=_RAMP_COLOURS,
            downsample="mean",
            description=EXTRA_OUTPUTS.get(name, {}).get("meaning", name),
        )


def _finish_pyramid(dest: Destination, config: RunConfig) -> None:
    import zarr

    from wsi_fusion.io.writers.ome_zarr import build_label_pyramid, build_pyramid

    # As for level 0 (scheduling.tasks._OutputLevels): no all-fill-value check per chunk.
    with zarr.config.set({"array.write_empty_chunks": True}):
        group = zarr.open_group(dest.image_zarr, mode="r+")
        build_pyramid(group, compute=True)
        if config.focus_map:
            build_label_pyramid(group, "focus_map", compute=True)
        for name in config.extras:
            build_label_pyramid(group, name, compute=True)


def _write_final(
    dest: Destination,
    config: RunConfig,
    mpp: float | None,
    provenance: dict[str, Any],
    inputs: tuple[str, ...] = (),
) -> list[tuple[Path, Path]]:
    """Write the associated images and the TIFF outputs (as partials); return the sidecars'
    (partial, final) paths (published with the image by
    :func:`~wsi_fusion.io.publication.publish_run`)."""
    import zarr

    from wsi_fusion.io.source_metadata import associated_images
    from wsi_fusion.io.writers.ome_tiff import write_generic_tiff, write_label_tiff, write_ome_tiff
    from wsi_fusion.io.writers.ome_zarr import add_associated, label_levels

    # The slide's label/macro/thumbnail images (no label with --no-label): image groups beside
    # the OME-Zarr's image, further OME images, the SVS-compatible TIFF's associated pages or
    # DICOM LABEL/OVERVIEW instances.
    form = provenance.get("stack", {}).get("form", "")
    associated = associated_images(form, inputs, label=not config.no_label)
    sidecars: list[tuple[Path, Path]] = []
    if dest.format == "ome-zarr":
        add_associated(dest.image_zarr, associated)
        return sidecars
    group = zarr.open_group(dest.image_zarr, mode="r")
    options: dict[str, Any] = {
        "mpp": mpp,
        "compression": config.compression,
        "jpeg_quality": config.jpeg_quality,
        "description": provenance,
    }
    if dest.format == "ome-tiff":
        # The final name, not the .partial one it is written under, goes into the OME-XML.
        write_ome_tiff(group, dest.partial, name=dest.output.name, associated=associated, **options)
    elif dest.format == "dicom":
        _write_dicom(dest, group, mpp, config, provenance, associated)
    else:
        write_generic_tiff(group, dest.partial, associated=associated, **options)
    if config.focus_map:
        partial_map = dest.focus_map_tiff.with_name(dest.focus_map_tiff.name + ".partial")
        write_label_tiff(label_levels(group, "focus_map"), partial_map, mpp=mpp)
        sidecars.append((partial_map, dest.focus_map_tiff))
    for name in config.extras:
        final = extra_tiff_path(dest, name)
        partial = final.with_name(final.name + ".partial")
        meaning = EXTRA_OUTPUTS.get(name, {}).get("meaning", name)
        write_label_tiff(
            label_levels(group, name), partial, mpp=mpp, description=f"wsi_fusion {name}: {meaning}"
        )
        sidecars.append((partial, final))
    return sidecars


def _write_dicom(
    dest: Destination,
    group: Any,
    mpp: float | None,
    config: RunConfig,
    provenance: dict[str, Any],
    associated: dict[str, Any],
) -> None:
    """The DICOM WSI output: a folder of instances, marked as this tool's (its publication record
    goes into that marker, :func:`~wsi_fusion.io.publication.publish_run`)."""
    from wsi_fusion.io.writers.dicom import write_dicom

    ownership.remove_ours(
        dest.partial, "partial output", "move it away yourself or choose another -o"
    )
    dest.partial.mkdir()
    ownership.mark(dest.partial, "dicom output")
    stack = provenance.get("stack", {})
    z = [float(v) for v in stack.get("z_positions_um") or [] if v is not None]
    known = len(z) == int(stack.get("planes") or 0) and len(z) > 1
    write_dicom(
        group,
        dest.partial,
        mpp=mpp,
        compression=config.compression,
        jpeg_quality=config.jpeg_quality,
        focal_planes=int(stack.get("planes") or 1),
        focal_plane_distance_um=abs(z[-1] - z[0]) / (len(z) - 1) if known else None,
        name=dest.output.name,
        description=provenance,
        associated=associated,
    )


def extra_tiff_path(dest: Destination, name: str) -> Path:
    """``x.ome.<extra>.tif`` beside a TIFF output ``x.ome.tif`` (like its focus map)."""
    return dest.sidecar(name)


#: Display colours of a continuous 0..255 label: transparent at 0, opaque orange at 255.
_RAMP_COLOURS = {v: (255, 120, 0, v) for v in range(256)}


def _provenance(
    inputs: tuple[str, ...], stack_info: dict[str, Any], config: RunConfig, fuser: dict[str, Any]
) -> dict[str, Any]:
    import dask
    import tifffile
    import zarr

    # File names only unless --record-paths: outputs travel, and paths may identify patients.
    shown = config.record_paths
    return {
        "tool": "wsi_fusion",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [shown_path(p, shown) for p in inputs],
        "stack": redact_stack_info(stack_info, shown),
        "fuser": redact_fuser(fuser, shown),
        "config": redact_config(config.model_dump(), shown),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "dask": dask.__version__,
            "zarr": zarr.__version__,
            "tifffile": tifffile.__version__,
        },
    }


def _jsonable(report: RunReport, record_paths: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in report.__dict__.items():
        if isinstance(value, Path):
            value = shown_path(value, record_paths)
        elif isinstance(value, list):
            value = [shown_path(v, record_paths) if isinstance(v, Path) else str(v) for v in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out
