"""``bench_peers.py --scale``: us and the two fastest peers on issue 11's 67-Mpx stack, as ratios.

The stack: scikit-image's IHC image (512², never used in training) mirror-tiled to 8192² and
made into 5 focal planes by :func:`wsi_fusion.synth.write.synthesize` (seed 7, read noise
sigma 0.005, no drift), planes and ground truth as lossless PNG -- 67 Mpx x 5 planes. Built
once under ``--workdir`` and reused.

The runs, one process each, in one session (so that the machine's load affects all alike):

- ``wsi-fusion fuse PLANES -o x.ome.zarr`` (all defaults: OME-Zarr output, registration auto,
  tissue detection);
- ``focusweave FOLDER --output x.png --keep-size --no-align``;
- ``openfocus -i PLANES -o x.png -m dct``.

Reported per row: wall s, CPU s (user + system) and peak RSS (GNU time), PSNR against the
ground truth and against the oracle (each pixel from the plane the generator focused it on);
then **ratios** to focusweave (wall, CPU, RSS) and the PSNR difference, with issue 11's targets
(wall <= 0.8x focusweave, CPU <= focusweave's, peak RSS <= 2 GB, PSNR at the oracle). Absolute
seconds depend on the machine; the ratios in one run are what to compare.

    .venv/bin/python benchmarks/bench_peers.py --scale       # ~5-10 min on 2 cores
    .venv/bin/python benchmarks/bench_peers.py --scale --repeats 3 --order-shuffle
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners import BENCH_ENV, OUR_ENV, ROOT  # noqa: E402
from stacks import StackCase  # noqa: E402

RGB = npt.NDArray[np.uint8]
#: ``bench_peers.run_timed``: (command, timeout, log) -> (wall s, CPU s, peak RSS MB, exit code).
RunTimed = Callable[[list[str], float, Path], tuple[float, float, float, int]]

#: The issue's stack: 8192² x 5 planes.
SIDE = 8192
PLANES = 5
SEED = 7
NOISE = 0.005
#: The peer every ratio is taken against (the fastest in issue 11's measurement).
REFERENCE = "focusweave --no-align"
#: Rows of output height processed at once for PSNR (bounded memory on 67 Mpx).
BAND = 1024


def build_stack(workdir: Path, side: int = SIDE) -> StackCase:
    """The mirror-tiled IHC stack of ``side``² x 5 planes as PNG files (built once)."""
    import tifffile
    from PIL import Image
    from skimage import data

    from wsi_fusion.synth.write import synthesize

    folder = workdir / f"scale_ihc_{side}"
    meta = folder / "case.json"
    if meta.exists():
        return StackCase.load(meta)
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted build
    (folder / "planes").mkdir(parents=True)
    started = time.perf_counter()
    synth = synthesize(
        np.asarray(data.immunohistochemistry(), dtype=np.uint8),
        folder / "synth",
        size=(side, side),
        n_planes=PLANES,
        forms=("planes",),
        compression="none",
        seed=SEED,
        noise_sigma=NOISE,
        pyramid=False,
    )
    planes = []
    for z in range(PLANES):
        # A folder of its own: focusweave stacks every image of the folder it is given.
        png = folder / "planes" / f"plane_{z}.png"
        Image.fromarray(tifffile.imread(synth / "planes" / f"plane_z{z}.tif")).save(
            png, compress_level=1
        )
        planes.append(str(png))
    truth = folder / "ground_truth.png"
    Image.fromarray(tifffile.imread(synth / "ground_truth.tif")).save(truth, compress_level=1)
    oracle = _oracle_psnr(planes, tifffile.imread(synth / "focus_index.tif"), str(truth))
    shutil.rmtree(synth)  # the TIFF copies (~1 GB at 8192²)
    case = StackCase(
        name=f"IHC mirror-tiled {side}² (issue 11 scale stack)",
        kind="synthetic",
        planes=planes,
        height=side,
        width=side,
        ground_truth=str(truth),
        source="skimage.data.immunohistochemistry (512², mirror-tiled)",
        notes={
            "seed": SEED,
            "noise_sigma": NOISE,
            "planes": PLANES,
            "oracle_psnr": oracle,
            "build_s": round(time.perf_counter() - started, 1),
        },
    )
    case.save(meta)
    return case


def _load(path: str) -> RGB:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # 67 Mpx is legitimate here
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _oracle_psnr(planes: list[str], focus_index: npt.NDArray[Any], truth: str) -> float:
    """PSNR of the per-pixel pick of the plane the generator focused each pixel on."""
    gt = _load(truth)
    oracle = np.empty_like(gt)
    for z, path in enumerate(planes):
        where = focus_index == z
        oracle[where] = _load(path)[where]
    return psnr(oracle, gt)


def psnr(a: RGB, b: RGB) -> float:
    """PSNR in dB of two uint8 images, in bands of rows (bounded float memory)."""
    if a.shape != b.shape:
        raise ValueError(f"output is {a.shape}, the truth {b.shape}: geometry changed")
    total = 0.0
    for y in range(0, a.shape[0], BAND):
        d = a[y : y + BAND].astype(np.float64) - b[y : y + BAND]
        total += float(np.sum(d * d))
    mse = total / a.size
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def read_output(path: Path) -> RGB:
    """A run's output as (H, W, 3) uint8: level 0 of our OME-Zarr, or the peers' PNG."""
    if path.suffix == ".zarr":
        import zarr

        level0 = zarr.open_group(str(path), mode="r")["0"]
        return np.moveaxis(np.asarray(level0), 0, -1)
    return _load(str(path))


def commands(case: StackCase, outdir: Path) -> dict[str, tuple[list[str], Path]]:
    """Row label -> (command, output path)."""
    ours = outdir / "wsi_fusion.ome.zarr"
    weave = outdir / "focusweave.png"
    dct = outdir / "openfocus_dct.png"
    folder = str(Path(case.planes[0]).parent)
    return {
        "wsi-fusion fuse (OME-Zarr)": (
            [
                str(OUR_ENV / "wsi-fusion"),
                "fuse",
                *case.planes,
                "-o",
                str(ours),
                "--overwrite",
                "--quiet",
            ],
            ours,
        ),
        REFERENCE: (
            [
                str(BENCH_ENV / "focusweave"),
                folder,
                "--output",
                str(weave),
                "--keep-size",
                "--no-align",
            ],
            weave,
        ),
        "openfocus -m dct": (
            [str(BENCH_ENV / "openfocus"), "-i", *case.planes, "-o", str(dct), "-m", "dct"],
            dct,
        ),
    }


def ratios(rows: list[dict[str, Any]], oracle: float) -> list[dict[str, Any]]:
    """Each row's ratios to the reference peer (medians over repeats) and the targets."""
    ref = next((r for r in rows if r["row"] == REFERENCE and "error" not in r), None)
    for r in rows:
        if "error" in r or ref is None:
            continue
        r["wall_x_ref"] = round(r["wall_s"] / ref["wall_s"], 3)
        r["cpu_x_ref"] = round(r["cpu_s"] / ref["cpu_s"], 3)
        r["rss_x_ref"] = round(r["peak_rss_mb"] / ref["peak_rss_mb"], 3)
        r["psnr_minus_ref_db"] = round(r["psnr"] - ref["psnr"], 2)
        r["psnr_minus_oracle_db"] = round(r["psnr"] - oracle, 2)
        if r["row"].startswith("wsi-fusion"):
            r["targets"] = {
                "wall <= 0.8x focusweave": r["wall_x_ref"] <= 0.8,
                "CPU <= focusweave": r["cpu_x_ref"] <= 1.0,
                "peak RSS <= 2 GB": r["peak_rss_mb"] <= 2000,
                "PSNR at the oracle (within 0.05 dB)": r["psnr"] >= oracle - 0.05,
            }
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['case']} -- {report['date']}, {report['machine']}; oracle PSNR "
        f"{report['oracle_psnr']:.2f} dB; ratios to `{REFERENCE}` in this run",
        "",
        "| run | wall × fw | CPU × fw | peak RSS × fw | PSNR − fw dB | PSNR − oracle dB | "
        "wall s | CPU s | peak RSS MB | PSNR dB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | error: {r['error']} |||||||||")
            continue
        lines.append(
            f"| {r['row']} | {r.get('wall_x_ref', '')} | {r.get('cpu_x_ref', '')} | "
            f"{r.get('rss_x_ref', '')} | {r.get('psnr_minus_ref_db', '')} | "
            f"{r.get('psnr_minus_oracle_db', '')} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['psnr']:.2f} |"
        )
    for r in report["rows"]:
        if "targets" in r:
            met = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["targets"].items())
            lines += ["", f"Issue 11 targets for {r['row']}: {met}"]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_peers.py --scale", description="issue 11's 67-Mpx stack: us vs two peers"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "scratch" / "bench_peers")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool (median reported)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--only", nargs="*", help="run only rows whose label contains one")
    parser.add_argument(
        "--order-shuffle", action="store_true", help="shuffle the run order in each repeat"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/peers_scale.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks/results/peers_scale.md")
    parser.add_argument("--dry-run", action="store_true", help="build the stack, print commands")
    # Tests build a tiny stack; the benchmark itself is defined at 8192².
    parser.add_argument("--scale-side", type=int, default=SIDE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_side < 64 or args.repeats < 1:
        parser.error("--scale-side must be >= 64 and --repeats >= 1")
    return args


def main(argv: list[str], run_timed: RunTimed, time_binary: str = "/usr/bin/time") -> int:
    """Run the scale benchmark; ``run_timed`` is ``bench_peers.run_timed`` (GNU time wrapper)."""
    args = parse(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    case = build_stack(args.workdir, args.scale_side)
    oracle = float(case.notes["oracle_psnr"])  # type: ignore[arg-type]
    print(
        f"{case.name}: {case.mpx:.1f} Mpx x {len(case.planes)} planes, oracle PSNR "
        f"{oracle:.2f} dB ({time.perf_counter() - t:.0f} s)",
        flush=True,
    )
    outdir = args.workdir / f"scale_runs_{args.scale_side}"
    outdir.mkdir(exist_ok=True)
    todo = {
        label: spec
        for label, spec in commands(case, outdir).items()
        if not args.only or any(o in label for o in args.only)
    }
    if args.dry_run:
        for label, (command, _) in todo.items():
            print(f"{label}: {' '.join(command)}")
        return 0
    if not Path(time_binary).exists():
        raise SystemExit(
            f"{time_binary} not found: apt-get install time (GNU time measures peak RSS)"
        )
    missing = [c[0] for c, _ in todo.values() if not Path(c[0]).exists()]
    if missing:
        raise SystemExit(
            f"not installed: {', '.join(missing)}; run `bash benchmarks/peers/setup_env.sh` "
            "(peers) and `make .venv/bin/wsi-fusion` (us)"
        )
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in todo}
    for repeat in range(args.repeats):
        order = list(todo)
        if args.order_shuffle:
            random.Random(repeat).shuffle(order)
        for label in order:
            command, output = todo[label]
            if output.exists():
                shutil.rmtree(output) if output.is_dir() else output.unlink()
            log = outdir / f"{label.split()[0]}_{repeat}.log"
            wall, cpu, rss, code = run_timed(command, args.timeout, log)
            run: dict[str, Any] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss}
            if code != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                run["error"] = f"exit {code}: {tail[0][:200]}"
            else:
                run["psnr"] = psnr(read_output(output), _load(case.ground_truth or ""))
            runs[label].append(run)
            print(
                f"  {label}: {wall:.1f} s wall, {cpu:.1f} s CPU, {rss:.0f} MB, "
                f"{run.get('psnr', run.get('error'))}",
                flush=True,
            )
    rows = []
    for label, done in runs.items():
        good = [r for r in done if "error" not in r]
        if not good:
            rows.append({"row": label, "command": todo[label][0], "error": done[-1]["error"]})
            continue
        row: dict[str, Any] = {"row": label, "command": todo[label][0], "runs": len(good)}
        for key in ("wall_s", "cpu_s", "peak_rss_mb", "psnr"):
            row[key] = float(np.median([r[key] for r in good]))
        rows.append(row)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average at end "
        f"{os.getloadavg()[0]:.1f}",
        "case": case.name,
        "mpx": case.mpx,
        "planes": len(case.planes),
        "oracle_psnr": oracle,
        "rows": ratios(rows, oracle),
    }
    text = markdown(report)
    print("\n" + text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    args.markdown.write_text(text + "\n")
    return 1 if any("error" in r for r in rows) else 0
