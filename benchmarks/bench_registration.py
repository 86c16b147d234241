"""Registration time with and without the 2 x 2 early stop, side by side in one run.

Synthesises two 4096² 5-plane tiled OME-TIFF stacks (JPEG q95, pyramid, as ``wsi-fusion synth``)
from the bundled H&E region: one without drift, one drifting by up to 3 px per plane. For each,
measures ``estimate_drift`` as the pipeline calls it (reference = middle plane, 4 x 4 grid) three
times without ``early_stop_px`` (today's full grid) and three times with ``early_stop_px=0.25``
(half the default ``auto`` threshold), alternating, each on a freshly opened stack (no decoded
tile reused between runs), and prints the medians and whether the two fields are identical.

    .venv/bin/python benchmarks/bench_registration.py [--workdir DIR] [--side 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from wsi_fusion.io.readers import open_stack
from wsi_fusion.registration import estimate_drift, should_apply
from wsi_fusion.synth import synthesize
from wsi_fusion.synth.demo import demo_source_path


def _time(path: Path, early_stop_px: float | None) -> tuple[float, str, float, int]:
    """(seconds, field digest, max |shift|, grid side) of one drift estimation."""
    with open_stack([path]) as stack:
        t = time.perf_counter()
        field = estimate_drift(stack, reference=stack.n_planes // 2, early_stop_px=early_stop_px)
        seconds = time.perf_counter() - t
    return seconds, field.digest(), field.max_abs(), len(field.centres_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_registration_"))
    print(
        "| stack | full grid s | early stop s | speed-up | grid (early stop) | "
        "same field as full grid | max shift px | registered (auto 0.5) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---|")
    for name, drift_px in (("no drift", 0.0), ("drift up to 3 px", 3.0)):
        folder = workdir / f"stack_{args.side}_{drift_px:g}"
        if not (folder / "stack.ome.tif").exists():
            synthesize(
                demo_source_path(),
                folder,
                size=(args.side, args.side),
                n_planes=5,
                forms=("ome-tiff",),
                seed=0,
                drift_px=drift_px,
            )
        path = folder / "stack.ome.tif"
        _time(path, None)  # warm the page cache and imports
        full, fast = [], []
        for _ in range(args.repeats):
            full.append(_time(path, None))
            fast.append(_time(path, 0.25))
        full_s = statistics.median(r[0] for r in full)
        fast_s = statistics.median(r[0] for r in fast)
        same = fast[0][1] == full[0][1]
        with open_stack([path]) as stack:
            field = estimate_drift(stack, reference=stack.n_planes // 2, early_stop_px=0.25)
            applied = should_apply(field, "auto", 0.5)
        print(
            f"| {name} | {full_s:.2f} | {fast_s:.2f} | {full_s / fast_s:.2f}× | "
            f"{fast[0][3]} × {fast[0][3]} | {'yes' if same else 'no'} | {full[0][2]:.2f} | "
            f"{'yes' if applied else 'no'} |"
        )


if __name__ == "__main__":
    main()
