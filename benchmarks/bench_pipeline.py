"""Pipeline benchmark: a 5-plane synthetic slide (OME-TIFF input) -> fused OME-TIFF and OME-Zarr.

Prints wall time, output Mpx/s and peak RSS for 1x, 2x and 4x the base area, each fusion in its
own process so peak RSS is that run's alone. Not a test: run on demand with
``make bench`` or ``python benchmarks/bench_pipeline.py --side 8192``.
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
t = time.perf_counter()
report = fuse_slide([sys.argv[1]], sys.argv[2], RunConfig(fuser=sys.argv[3]), overwrite=True)
print(json.dumps({"wall_s": time.perf_counter() - t, "timings": report.timings_s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_fusion(stack: Path, output: Path, fuser: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", FUSE, str(stack), str(output), fuser], capture_output=True, text=True
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
    parser.add_argument("--fuser", default="focus_measure")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wsi_fusion_bench_"))
    print(f"workdir {workdir}; fuser {args.fuser}; 5 planes")
    print(
        f"{'size':>13} {'format':>9} {'wall s':>8} {'Mpx/s':>7} {'peak RSS MB':>12} {'synth s':>8}"
    )
    for scale in (float(s) for s in args.scales.split(",")):
        side = int(round(args.side * math.sqrt(scale)))
        stack_dir = workdir / f"stack_{side}"
        t = time.perf_counter()
        if not (stack_dir / "stack.ome.tif").exists():
            synthesize(
                demo_source_path(), stack_dir, size=(side, side), n_planes=5, forms=("ome-tiff",)
            )
        synth_s = time.perf_counter() - t
        for suffix, fmt in ((".ome.tif", "ome-tiff"), (".ome.zarr", "ome-zarr")):
            result = run_fusion(
                stack_dir / "stack.ome.tif", workdir / f"fused_{side}{suffix}", args.fuser
            )
            mpx = side * side / 1e6
            wall = float(result["wall_s"])  # type: ignore[arg-type]
            print(
                f"{side:>6}x{side:<6} {fmt:>9} {wall:8.1f} {mpx / wall:7.2f} "
                f"{float(result['peak_rss_mb']):12.0f} {synth_s:8.1f}",  # type: ignore[arg-type]
                flush=True,
            )
    print(
        f"(this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
        " MB)"
    )


if __name__ == "__main__":
    main()
