"""GPU benchmark: every fuser's tiles/s, Mpx/s and peak GPU memory, plus an end-to-end run.

One command, ready the moment a CUDA device is present; without one it prints
``no CUDA device: skipped`` and exits 0. Not a test.

    .venv/bin/python benchmarks/bench_gpu.py --quick     # <= 5 min on one H100/H200
    .venv/bin/python benchmarks/bench_gpu.py             # more tiles, 8192² end to end

What it measures
----------------
- **Fusers** on 512² tiles of 5 planes rendered by ``wsi_fusion.synth`` from the bundled H&E
  region (read noise, JPEG artefacts): the classical numpy fusers on one CPU core (reference
  rows), ``focus_measure`` in torch on CUDA (several batch sizes, float32 always), and every
  learned fuser on CUDA in fp32 and bf16 autocast with the automatic batch size the pipeline
  would choose (:func:`wsi_fusion.scheduling.gpu.configure_learned_fuser`). Tiles/s, output
  Mpx/s, Mpx-planes/s (input pixels x planes) and ``torch.cuda.max_memory_allocated`` per row;
  the times include the host <-> device copies, as in the pipeline. The torch ``focus_measure``
  is also checked against the numpy reference on the benchmark tiles (grey levels, decisions).
- **End to end**: a tiled OME-TIFF (512-px JPEG q90 tiles, SubIFD pyramid, 5 planes; 4096² with
  ``--quick``, else 8192² = 67 Mpx) fused by ``wsi_fusion.pipeline.fuse_slide`` into an OME-Zarr
  with the default settings (registration ``auto``, tissue detection, threads scheduler), once
  with ``focus_measure`` on CUDA (``fuser_params: {device: cuda}``) and once with the numpy
  reference. Reports Mpx-planes/s of the whole run (issue 11's target: >= 200 on one H100-class
  GPU) and of the fuse phase, with the run's own phase timings.

Prints a markdown table and writes JSON to ``benchmarks/results/gpu-<host>-<time>.json``
(``--json`` to choose), also after each row with ``"partial": true`` in its meta, so a run
stopped by a time limit (``workflows/gpu_run.sh``) keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TILE = 512
PLANES = 5
#: Where the torch rows run; ``--cpu-dry-run`` (hidden: checks this script without a GPU, tiny
#: sizes, numbers meaningless) sets ``cpu``.
DEVICE = "cuda"


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# ----------------------------------------------------------------------------- inputs


def real_like_block(side: int, seed: int = 7) -> np.ndarray:
    """``(Z, side, side, 3)`` uint8 planes rendered from the bundled H&E region."""
    import tifffile

    from wsi_fusion._types import Box
    from wsi_fusion.synth.defocus import array_reader, render_box, resolve_params
    from wsi_fusion.synth.demo import demo_source_path

    image = np.ascontiguousarray(tifffile.imread(demo_source_path(), key=0))
    tile = render_box(
        array_reader(image),
        Box(0, 0, side, side),
        PLANES,
        seed=seed,
        params=resolve_params(),
        drift=np.zeros((PLANES, 2)),
    )
    return np.ascontiguousarray(tile.planes)


def bench_tiles(block: np.ndarray) -> list[np.ndarray]:
    """The distinct 512² ``(Z, C, H, W)`` float32 tiles of ``block``."""
    z, h, w, _ = block.shape
    tiles = []
    for y in range(0, h - TILE + 1, TILE):
        for x in range(0, w - TILE + 1, TILE):
            t = block[:, y : y + TILE, x : x + TILE].transpose(0, 3, 1, 2).astype(np.float32)
            tiles.append(t / np.float32(255.0))
    return tiles


def write_tiled_stack(block: np.ndarray, side: int, path: Path) -> None:
    """Mirror-tile ``block`` to ``side``² and write a ZYXS OME-TIFF: 512-px JPEG q90 tiles and
    a SubIFD pyramid, like a scanner's z-stack export."""
    import tifffile

    reps = -(-side // block.shape[1])
    tiles = [block, block[:, ::-1]]
    rows = np.concatenate([tiles[i % 2] for i in range(reps)], axis=1)[:, :side]
    cols = [rows, rows[:, :, ::-1]]
    planes = np.ascontiguousarray(
        np.concatenate([cols[i % 2] for i in range(reps)], axis=2)[:, :, :side]
    )
    levels = [planes]
    while max(levels[-1].shape[1:3]) > 1024:
        levels.append(np.ascontiguousarray(levels[-1][:, ::2, ::2]))
    common = {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": 90},
        "maxworkers": os.cpu_count(),
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            metadata={"axes": "ZYXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
            resolution=(1e4 / 0.5, 1e4 / 0.5),
            resolutionunit="CENTIMETER",
            **common,
        )
        for level in levels[1:]:
            tw.write(level, subfiletype=1, metadata=None, **common)


# ----------------------------------------------------------------------------- fusers


def time_fuser(fuser: Any, tiles: list[np.ndarray], n_tiles: int, batch: int, cuda: bool) -> dict:
    """Warm up, then fuse ``n_tiles`` tiles in ``fuse_batch`` calls of ``batch``."""
    import torch

    work = [tiles[i % len(tiles)] for i in range(n_tiles)]
    fuser.fuse_batch(work[:batch])  # warm-up: kernels, allocator, cuDNN autotuning
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(0, n_tiles, batch):
        fuser.fuse_batch(work[i : i + batch])  # returns host arrays: synchronised
    seconds = time.perf_counter() - start
    mpx = n_tiles * TILE * TILE / 1e6
    return {
        "tiles": n_tiles,
        "batch": batch,
        "seconds": round(seconds, 4),
        "tiles_per_s": round(n_tiles / seconds, 2),
        "mpx_per_s": round(mpx / seconds, 2),
        "mpx_planes_per_s": round(mpx * PLANES / seconds, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def agreement(ours: Any, ref: Any) -> dict[str, float]:
    grey = float(np.abs(ours.fused.astype(np.float64) - ref.fused).max() * 255)
    same = float(np.mean(ours.weights.argmax(0) == ref.weights.argmax(0)))
    return {"max_grey_diff": round(grey, 3), "same_decisions": round(same, 6)}


def fuser_rows(
    tiles: list[np.ndarray], quick: bool, only: list[str], on_row: Any = None
) -> list[dict]:
    """One row per fuser (and precision); ``on_row(rows)`` after each (partial results)."""
    import torch

    from wsi_fusion.fusers import create_fuser, fuser_class, list_fusers
    from wsi_fusion.scheduling.gpu import configure_learned_fuser

    n_gpu = 64 if quick else 256
    n_cpu = 4 if quick else 16
    if DEVICE == "cpu":
        n_gpu = n_cpu = 2
    on_gpu = DEVICE == "cuda"
    rows: list[dict] = []

    def run(label: str, make: Any, n: int, batch: int | None, cuda: bool, **extra: Any) -> None:
        if only and not any(o in label for o in only):
            return
        row: dict[str, Any] = {"row": label, **extra}
        try:
            fuser = make()
            if batch is None:  # the pipeline's automatic choice on a GPU worker
                batch = configure_learned_fuser(
                    fuser, planes=PLANES, channels=3, tile=TILE, batch_given=False
                )
            row.update(time_fuser(fuser, tiles, n, batch, cuda))
            if getattr(fuser, "on_device", False):
                ref = create_fuser(
                    fuser.name,
                    **{
                        k: v
                        for k, v in fuser.params.model_dump().items()
                        if k not in ("device", "batch_size")
                    },
                )
                checks = [
                    agreement(o, ref.fuse(t))
                    for o, t in zip(fuser.fuse_batch(tiles), tiles, strict=True)
                ]
                row["max_grey_diff"] = max(c["max_grey_diff"] for c in checks)
                row["same_decisions"] = min(c["same_decisions"] for c in checks)
            del fuser
        except Exception as err:  # noqa: BLE001 -- one failing row must not hide the others
            row["error"] = f"{type(err).__name__}: {err}"
        if on_gpu:
            torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {label}: {row.get('tiles_per_s', row.get('error'))} tiles/s", flush=True)
        if on_row is not None:
            on_row(rows)

    torch.set_num_threads(1)
    for name in list_fusers():
        cls = fuser_class(name)
        if not cls.needs_weights:
            run(
                f"{name} (numpy, 1 CPU core)",
                lambda n=name: create_fuser(n),
                n_cpu,
                1,
                False,
                fuser=name,
                device="cpu-numpy",
            )
        if name == "focus_measure":
            for b in (8, 32) if quick else (4, 8, 16, 32, 64):
                run(
                    f"focus_measure (torch, {DEVICE}, batch {b})",
                    lambda b=b: create_fuser("focus_measure", device=DEVICE, batch_size=b),
                    n_gpu,
                    b,
                    on_gpu,
                    fuser=name,
                    device=DEVICE,
                    precision="fp32",
                )
            run(
                f"focus_measure (torch, {DEVICE}, auto batch)",
                lambda: create_fuser("focus_measure", device=DEVICE),
                n_gpu,
                None,
                on_gpu,
                fuser=name,
                device=DEVICE,
                precision="fp32",
            )
        if cls.needs_weights:
            for precision in ("fp32", "bf16"):

                def make(n: str = name, p: str = precision) -> Any:
                    return create_fuser(n, device=DEVICE, precision=p)

                run(
                    f"{name} ({DEVICE}, {precision}, auto batch)",
                    make,
                    n_gpu,
                    None,
                    on_gpu,
                    fuser=name,
                    device=DEVICE,
                    precision=precision,
                )
    return rows


# ----------------------------------------------------------------------------- end to end

E2E = """
import json, resource, sys, time
from wsi_fusion.config import RunConfig
from wsi_fusion.pipeline import fuse_slide
params = json.loads(sys.argv[3])
t = time.perf_counter()
report = fuse_slide([sys.argv[1]], sys.argv[2], RunConfig(fuser_params=params), overwrite=True)
wall = time.perf_counter() - t
peak = None
if params.get("device", "").startswith("cuda"):
    import torch
    peak = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps({"wall_s": wall, "timings": report.timings_s, "tiles": report.tiles,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_gpu_mib": peak}))
"""


def end_to_end(stack: Path, side: int, workdir: Path, label: str, params: dict) -> dict:
    out = workdir / f"e2e_{label}.ome.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", E2E, str(stack), str(out), json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    row: dict[str, Any] = {"row": f"end to end, {label}", "side": side, "fuser_params": params}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return row
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    mpx_planes = side * side * PLANES / 1e6
    fuse_s = result["timings"].get("fuse") or float("nan")
    row.update(
        wall_s=round(result["wall_s"], 2),
        mpx_planes_per_s=round(mpx_planes / result["wall_s"], 1),
        fuse_phase_mpx_planes_per_s=round(mpx_planes / fuse_s, 1),
        timings_s={k: round(v, 2) for k, v in result["timings"].items()},
        peak_rss_mb=round(result["peak_rss_mb"]),
        peak_gpu_mib=None if result["peak_gpu_mib"] is None else round(result["peak_gpu_mib"], 1),
        meets_200=mpx_planes / result["wall_s"] >= 200,
    )
    return row


# ----------------------------------------------------------------------------- report


def markdown(rows: list[dict], e2e: list[dict], meta: dict) -> str:
    lines = [
        f"GPU benchmark, {meta['gpu']}, torch {meta['torch']}, {meta['when']}, "
        f"commit {meta['commit']}; 512² tiles x {PLANES} planes",
        "",
        "| row | batch | tiles/s | Mpx/s | Mpx-planes/s | peak GPU MiB | vs numpy |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | | error: {r['error']} | | | | |")
            continue
        check = (
            f"max {r['max_grey_diff']} grey, {100 * r['same_decisions']:.3f} % same decisions"
            if "max_grey_diff" in r
            else ""
        )
        lines.append(
            f"| {r['row']} | {r['batch']} | {r['tiles_per_s']} | {r['mpx_per_s']} | "
            f"{r['mpx_planes_per_s']} | {r['peak_gpu_mib'] or ''} | {check} |"
        )
    if e2e:
        lines += [
            "",
            "| end to end (OME-TIFF in, OME-Zarr out) | side | wall s | Mpx-planes/s | "
            "fuse phase Mpx-planes/s | phases s | peak RSS MB | peak GPU MiB |",
            "|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in e2e:
            if "error" in r:
                lines.append(f"| {r['row']} | {r['side']} | error: {r['error']} | | | | | |")
                continue
            phases = ", ".join(f"{k} {v}" for k, v in r["timings_s"].items())
            lines.append(
                f"| {r['row']} | {r['side']} | {r['wall_s']} | {r['mpx_planes_per_s']} | "
                f"{r['fuse_phase_mpx_planes_per_s']} | {phases} | {r['peak_rss_mb']} | "
                f"{r['peak_gpu_mib'] or ''} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tiles, 4096² end to end")
    parser.add_argument("--only", nargs="*", default=[], help="rows whose label contains one")
    parser.add_argument("--e2e-side", type=int, default=None, help="end-to-end slide side")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    global DEVICE
    if args.cpu_dry_run:
        DEVICE = "cpu"
    elif not cuda_available():
        print("no CUDA device: skipped")
        return 0
    import torch

    started = time.perf_counter()
    meta = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU dry run",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": _commit(),
        "quick": args.quick,
    }
    print(f"{meta['gpu']}, torch {meta['torch']} (CUDA {meta['cuda']}), {meta['cpus']} CPUs")
    write = args.json is not None or DEVICE == "cuda"
    path = args.json or RESULTS / f"gpu-{meta['host']}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    e2e: list[dict] = []

    def save_partial(rows: list[dict]) -> None:
        """The results so far (``"partial": true``): a run stopped by a time limit keeps them."""
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            seconds = round(time.perf_counter() - started, 1)
            partial = {**meta, "partial": True, "seconds": seconds}
            path.write_text(json.dumps({"meta": partial, "fusers": rows, "end_to_end": e2e}))

    block = real_like_block(1024 if DEVICE == "cuda" else 512)
    tiles = bench_tiles(block)
    print(f"fusers on {len(tiles)} distinct 512² tiles ({time.perf_counter() - started:.0f} s)")
    rows = fuser_rows(tiles, args.quick, args.only, on_row=save_partial)

    if not args.no_e2e:
        side = args.e2e_side or (4096 if args.quick else 8192)
        if DEVICE == "cpu":
            side = min(side, 1024)
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wsi_fusion_bench_gpu_"))
        stack = workdir / f"stack_{side}.ome.tif"
        t = time.perf_counter()
        write_tiled_stack(block, side, stack)
        print(f"end to end: {side}² x {PLANES} planes written in {time.perf_counter() - t:.0f} s")
        for label, params in (
            (f"focus_measure on {DEVICE}", {"device": DEVICE}),
            ("focus_measure numpy (CPU threads)", {}),
        ):
            e2e.append(end_to_end(stack, side, workdir, label, params))
            save_partial(rows)
            print(
                f"  {e2e[-1]['row']}: {e2e[-1].get('mpx_planes_per_s', e2e[-1].get('error'))}"
                " Mpx-planes/s",
                flush=True,
            )
    meta["seconds"] = round(time.perf_counter() - started, 1)
    table = markdown(rows, e2e, meta)
    print()
    print(table)
    if not write:
        return 1 if any("error" in r for r in rows + e2e) else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "fusers": rows, "end_to_end": e2e}, indent=1))
    print(f"\nwrote {path} ({meta['seconds']} s)")
    return 1 if any("error" in r for r in rows + e2e) else 0


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
