"""Pipeline benchmark: a tiled 5-plane OME-TIFF slide -> fused OME-TIFF and OME-Zarr.

The input is what scanners write: a synthetic slide (``wsi-fusion synth``: the bundled H&E region
defocused into 5 planes) as an OME-TIFF of 512-px JPEG (q95) tiles with a pyramid. For each
area multiple, output format and worker count it prints wall time, CPU seconds, output Mpx/s,
Mpx per CPU-second (the per-core rate), peak RSS and the pipeline's own phase timings. Each fusion
runs in its own process, so RSS and CPU are that run's alone. With several worker counts it also
prints the speed-up over the first.

Not a test: run on demand with ``make bench`` or e.g.
``python benchmarks/bench_pipeline.py --side 8192 --scales 1 --workers 1,2``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUSE = """
import json, resource, sys, time
from wsi_fusion.config import RunConfig
from wsi_fusion.pipeline import fuse_slide
config = RunConfig(fuser=sys.argv[3], workers=int(sys.argv[4]))
t = time.perf_counter()
report = fuse_slide([sys.argv[1]], sys.argv[2], config, overwrite=True)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": time.perf_counter() - t, "timings": report.timings_s,
                  "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""

PHASES = ("register", "plan", "fuse", "blend", "pyramid", "write")


def run_fusion(stack: Path, output: Path, fuser: str, workers: int) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", FUSE, str(stack), str(output), fuser, str(workers)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    from wsi_fusion.synth.demo import demo_source_path
    from wsi_fusion.synth.write import synthesize

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", type=int, default=8192, help="side of the 1x slide in px")
    parser.add_argument("--scales", default="1,2,4", help="area multiples to run")
    parser.add_argument("--workers", default="2", help="worker (thread) counts to run, e.g. 1,2")
    parser.add_argument("--formats", default="ome-tiff,ome-zarr", help="output formats to run")
    parser.add_argument("--fuser", default="focus_measure")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    suffixes = {"ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wsi_fusion_bench_"))
    print(f"workdir {workdir}; fuser {args.fuser}; 5 planes; input 512-px JPEG-tiled OME-TIFF")
    print(
        "| size | output | workers | wall s | CPU s | Mpx/s | Mpx per CPU-s | speed-up | "
        "peak RSS MB | " + " | ".join(f"{p} s" for p in PHASES) + " |"
    )
    print("|---|---|---:|" + "---:|" * (7 + len(PHASES)))
    for scale in (float(s) for s in args.scales.split(",")):
        side = int(round(args.side * math.sqrt(scale)))
        stack_dir = workdir / f"stack_{side}"
        if not (stack_dir / "stack.ome.tif").exists():
            t = time.perf_counter()
            synthesize(
                demo_source_path(), stack_dir, size=(side, side), n_planes=5, forms=("ome-tiff",)
            )
            print(f"(synthesised {side}² in {time.perf_counter() - t:.0f} s)", flush=True)
        mpx = side * side / 1e6
        for fmt in args.formats.split(","):
            first_wall = None
            for workers in (int(w) for w in args.workers.split(",")):
                output = workdir / f"fused_{side}_{workers}{suffixes[fmt]}"
                r = run_fusion(stack_dir / "stack.ome.tif", output, args.fuser, workers)
                wall, cpu = float(r["wall_s"]), float(r["cpu_s"])  # type: ignore[arg-type]
                first_wall = first_wall or wall
                timings = r["timings"]
                assert isinstance(timings, dict)
                # "–": a phase the run did not have (a block plan has no blend phase).
                phases = " | ".join(
                    f"{float(timings[p]):.1f}" if p in timings else "–" for p in PHASES
                )
                print(
                    f"| {side}² | {fmt} | {workers} | {wall:.1f} | {cpu:.1f} | {mpx / wall:.2f} "
                    f"| {mpx / cpu:.2f} | {first_wall / wall:.2f} "
                    f"| {float(r['peak_rss_mb']):.0f} | {phases} |",  # type: ignore[arg-type]
                    flush=True,
                )
    print(
        f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        " MB)"
    )


if __name__ == "__main__":
    main()
