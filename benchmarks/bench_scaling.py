"""Scaling benchmark: throughput vs workers, and time + peak memory vs slide size.

1. Throughput vs number of workers: one 5-plane synthetic slide fused with the default fuser
   under ``threads`` and ``local-cluster`` with 1 and 2 workers. "fuse+blend Mpx/s" counts the two
   pipeline phases only (cluster start-up, drift estimate and pyramid excluded); "wall s" is the
   whole run including start-up.
2. Memory vs size: 5-plane synthetic slides of growing side fused with the default fuser
   (threads scheduler, 2 workers) into OME-Zarr; peak RSS stays nearly flat while the area grows.

Each fusion runs in its own process, so peak RSS is that run's alone (the driving process: for
``local-cluster`` the tiles are fused in the worker processes, not counted). Not a test: run on
demand, e.g. ``python benchmarks/bench_scaling.py --side 4096 --sizes 2048,4096,8192``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUSE = """
import json, resource, sys, time
from wsi_fusion.config import RunConfig
from wsi_fusion.pipeline import fuse_slide
scheduler, workers = sys.argv[3], int(sys.argv[4])
config = RunConfig(scheduler=scheduler, workers=workers)
t = time.perf_counter()
report = fuse_slide([sys.argv[1]], sys.argv[2], config, overwrite=True)
wall = time.perf_counter() - t
print(json.dumps({
    "wall_s": wall,
    "timings": report.timings_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def make_stack(workdir: Path, side: int) -> tuple[Path, float]:
    """A 5-plane synthetic OME-TIFF of ``side`` x ``side`` px (reused when present)."""
    from wsi_fusion.synth.demo import demo_source_path
    from wsi_fusion.synth.write import synthesize

    stack_dir = workdir / f"stack_{side}"
    t = time.perf_counter()
    if not (stack_dir / "stack.ome.tif").exists():
        synthesize(
            demo_source_path(), stack_dir, size=(side, side), n_planes=5, forms=("ome-tiff",)
        )
    return stack_dir / "stack.ome.tif", time.perf_counter() - t


def fuse(stack: Path, output: Path, scheduler: str, workers: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", FUSE, str(stack), str(output), scheduler, str(workers)],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def workers_table(workdir: Path, side: int, worker_counts: list[int]) -> None:
    stack, synth_s = make_stack(workdir, side)
    mpx = side * side / 1e6
    print(f"\n## Throughput vs workers: {side} x {side} px, 5 planes (synth {synth_s:.0f} s)")
    print("| scheduler | workers | wall s | fuse s | blend s | fuse+blend Mpx/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for scheduler in ("threads", "local-cluster"):
        for n in worker_counts:
            r = fuse(stack, workdir / f"w_{scheduler}_{n}.ome.zarr", scheduler, n)
            timings = r["timings"]
            assert isinstance(timings, dict)
            # A block plan (the default fuser's) writes its blocks while fusing: no blend phase.
            blend = float(timings.get("blend", 0.0))
            phases = float(timings["fuse"]) + blend
            rss = f"{float(r['peak_rss_mb']):.0f}"  # type: ignore[arg-type]
            print(
                f"| {scheduler} | {n} | {float(r['wall_s']):.1f} | {float(timings['fuse']):.1f} "  # type: ignore[arg-type]
                f"| {blend:.1f} | {mpx / phases:.2f} | {rss} |",
                flush=True,
            )


def sizes_table(workdir: Path, sides: list[int]) -> None:
    print("\n## Time and memory vs slide size: 5 planes, default fuser, threads x 2, OME-Zarr")
    print("| slide | Mpx | synth s | wall s | Mpx/s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for side in sides:
        stack, synth_s = make_stack(workdir, side)
        r = fuse(stack, workdir / f"s_{side}.ome.zarr", "threads", 2)
        mpx = side * side / 1e6
        wall = float(r["wall_s"])  # type: ignore[arg-type]
        print(
            f"| {side} x {side} | {mpx:.0f} | {synth_s:.0f} | {wall:.1f} | {mpx / wall:.2f} "
            f"| {float(r['peak_rss_mb']):.0f} |",  # type: ignore[arg-type]
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=4096, help="slide side for the workers table")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare ('': skip)")
    parser.add_argument(
        "--sizes", default="1024,2048,4096", help="slide sides for the memory table ('': skip)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wsi_fusion_scaling_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}; {os.cpu_count()} CPUs; default fuser (focus_measure)")
    if args.workers:  # "" skips the table
        workers_table(workdir, args.side, [int(n) for n in args.workers.split(",")])
    if args.sizes:
        sizes_table(workdir, [int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
