"""CPU speed of the learned fusers per core, old code against new, side by side in one run.

Not a test: run on demand. Each fuser runs in its own worker process with ONE torch thread
(``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``); with ``--baseline REV`` a second worker
runs the same fuser from the package as it was at git revision ``REV`` (``git archive``), and
the two are timed alternately on the same tiles, so both see the same machine load.

    .venv/bin/python benchmarks/bench_fusers_cpu.py --baseline 1c32eee --fusers gacn,acnn
    .venv/bin/python benchmarks/bench_fusers_cpu.py --real '../shared/data/zstack_wbc_0054/*.jpg'

What it reports per fuser and code version
------------------------------------------
- **CPU seconds per tile** (median over tiles x repeats) of ``fuser.fuse`` on 512² tiles of 5
  planes: the held-out synthetic stacks of the model cards
  (:func:`wsi_fusion.training.data.heldout_stacks`, H&E and IHC), and optionally the central
  512² crop of a real stack (``--real``, any number of planes). Process CPU time, not wall
  time: on a shared machine the wall time of one thread swings with the other jobs, its CPU
  time much less. **tiles/s per core** = 1 / that median. Wall seconds are reported too.
- **Output agreement** of new against old on every tile: PSNR of the fused images against
  each other, and the share of pixels whose decision (argmax of the weights) differs.
- **PSNR against the ground truth** (RGB, [0, 1]) of the synthetic tiles, old and new.

Prints a markdown table and writes JSON (``--json``; default
``benchmarks/results/fusers_cpu-<host>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_FUSERS = "focus_measure,gacn,acnn,msegnet,fmb_net"


# ----------------------------------------------------------------------------- worker side


def worker(fuser_name: str, params: str) -> None:
    """Serve ``run PATH`` (fuse the npz tile, answer its CPU/wall seconds and write the result
    next to it) and ``quit`` on stdin; one torch thread."""
    import torch

    torch.set_num_threads(1)
    from wsi_fusion.fusers import create_fuser

    fuser = create_fuser(fuser_name, **json.loads(params))
    warm = True
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "quit":
            break
        tile = np.load(arg)["tile"]
        if warm:  # first call: weights, lazy imports, oneDNN kernel selection
            fuser.fuse(tile)
            warm = False
        c0, w0 = time.process_time(), time.perf_counter()
        result = fuser.fuse(tile)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        weights = result.weights
        decision = (
            np.argmax(weights, axis=0).astype(np.int16) if weights is not None else np.zeros(1)
        )
        out = arg.replace(".npz", f".{os.getpid()}.npz")
        np.savez(out, fused=result.fused, decision=decision)
        print(json.dumps({"cpu": cpu, "wall": wall, "out": out}), flush=True)


# ----------------------------------------------------------------------------- driver side


class Worker:
    """A worker process running the package found at ``tree``."""

    def __init__(self, tree: Path, fuser: str, params: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(tree),
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            WSI_FUSION_WEIGHTS=str(ROOT / "models"),
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", fuser, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )

    def run(self, tile_path: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"run {tile_path}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.args} died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def baseline_tree(rev: str, into: Path) -> Path:
    """The ``wsi_fusion`` package as it was at ``rev``, extracted under ``into``."""
    archive = into / "baseline.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "wsi_fusion"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline"


def synthetic_tiles(n: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """``n`` held-out synthetic 512² 5-plane tiles with their ground truth ``(C, H, W)``."""
    from wsi_fusion.training.data import heldout_stacks
    from wsi_fusion.training.heldout import to_tile

    out: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for name, stack in heldout_stacks(n=n):
        truth = np.asarray(stack.ground_truth, dtype=np.float32).transpose(2, 0, 1) / 255.0
        out.append((name, to_tile(stack), truth))
    return out


def real_tile(pattern: str, side: int = 512) -> tuple[str, np.ndarray, None]:
    """The central ``side``² crop (at most the image) of the planes matching ``pattern`` (sorted),
    no ground truth."""
    import glob

    from PIL import Image

    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"--real {pattern!r} matches no file")
    planes = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        h, w = min(side, a.shape[0]), min(side, a.shape[1])
        y0, x0 = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        planes.append(a[y0 : y0 + h, x0 : x0 + w].transpose(2, 0, 1))
    name = f"real:{Path(paths[0]).parent.name}({len(paths)} planes)"
    return name, np.ascontiguousarray(np.stack(planes)), None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def bench_fuser(
    name: str,
    params: dict[str, dict[str, Any]],
    trees: dict[str, Path],
    tiles: list[tuple[str, Path, np.ndarray | None]],
    repeats: int,
) -> dict[str, Any]:
    """Time ``name`` from every code tree on every tile, alternating trees per call.

    ``params`` holds the fuser parameters per code version (``old`` may lack a new option).
    """
    workers = {label: Worker(tree, name, params[label]) for label, tree in trees.items()}
    per_tile: list[dict[str, Any]] = []
    try:
        for tile_name, path, truth in tiles:
            times: dict[str, dict[str, list[float]]] = {
                label: {"cpu": [], "wall": []} for label in trees
            }
            outputs: dict[str, Any] = {}
            for r in range(repeats):
                order = list(workers) if r % 2 == 0 else list(workers)[::-1]
                for label in order:
                    answer = workers[label].run(path)
                    times[label]["cpu"].append(answer["cpu"])
                    times[label]["wall"].append(answer["wall"])
                    outputs[label] = np.load(answer["out"])
            row: dict[str, Any] = {"tile": tile_name}
            for label, t in times.items():
                cpu = float(np.median(t["cpu"]))
                row[label] = {
                    "cpu_s": cpu,
                    "wall_s": float(np.median(t["wall"])),
                    "tiles_per_s_per_core": 1.0 / cpu,
                    "cpu_runs": t["cpu"],
                }
                if truth is not None:
                    row[label]["psnr_gt"] = psnr(outputs[label]["fused"], truth)
            if "old" in outputs and "new" in outputs:
                row["psnr_new_vs_old"] = psnr(outputs["new"]["fused"], outputs["old"]["fused"])
                row["decision_changed"] = float(
                    np.mean(outputs["new"]["decision"] != outputs["old"]["decision"])
                )
            per_tile.append(row)
    finally:
        for w in workers.values():
            w.close()
    return {"fuser": name, "params": params, "tiles": per_tile}


def markdown(results: list[dict[str, Any]], labels: list[str]) -> str:
    """One row per fuser and tile: CPU s per tile (tiles/s per core) per version, agreement."""
    head = " | ".join(f"{lb}: CPU s/tile (tiles/s/core)" for lb in labels)
    gt = "/".join(labels)
    lines = [
        f"| fuser | tile | {head} | PSNR vs GT {gt} (dB) | new vs old: PSNR, decisions changed |"
    ]
    lines.append("|" + "---|" * (len(labels) + 4))
    for res in results:
        for i, row in enumerate(res["tiles"]):
            speed = " | ".join(
                f"{row[lb]['cpu_s']:.2f} ({row[lb]['tiles_per_s_per_core']:.2f})" for lb in labels
            )
            truth = "/".join(f"{row[lb]['psnr_gt']:.2f}" for lb in labels if "psnr_gt" in row[lb])
            agree = (
                f"{row['psnr_new_vs_old']:.1f} dB, {100 * row['decision_changed']:.2f} %"
                if "psnr_new_vs_old" in row
                else "–"
            )
            fuser = res["fuser"] if i == 0 else ""
            lines.append(f"| {fuser} | {row['tile']} | {speed} | {truth or '–'} | {agree} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fusers", default=DEFAULT_FUSERS, help="comma-separated registry names")
    parser.add_argument(
        "--params",
        default="{}",
        help='JSON object of fuser parameters for every fuser, e.g. {"depth_radius": 0}',
    )
    parser.add_argument(
        "--new-params",
        default=None,
        help="JSON parameters for the new code only (default --params)",
    )
    parser.add_argument("--baseline", default=None, help="git revision to compare against")
    parser.add_argument(
        "--stacks", type=int, default=2, help="held-out synthetic tiles (default 2)"
    )
    parser.add_argument("--real", action="append", default=[], help="glob of a real stack's planes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per tile and version")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_fusers_cpu_") as tmp:
        tmpdir = Path(tmp)
        trees = {"new": ROOT}
        if args.baseline:
            trees = {"old": baseline_tree(args.baseline, tmpdir), "new": ROOT}
        tiles: list[tuple[str, Path, np.ndarray | None]] = []
        sources = synthetic_tiles(args.stacks) + [real_tile(p) for p in args.real]
        for i, (name, tile, truth) in enumerate(sources):
            path = tmpdir / f"tile{i}.npz"
            np.savez(path, tile=tile)
            tiles.append((name, path, truth))
        results = []
        params = {label: json.loads(args.params) for label in trees}
        if args.new_params is not None:
            params["new"] = json.loads(args.new_params)
        for name in args.fusers.split(","):
            print(f"{name} ...", file=sys.stderr, flush=True)
            results.append(bench_fuser(name, params, trees, tiles, args.repeats))
    labels = list(trees)
    meta = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "baseline": args.baseline,
        "threads": 1,
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    table = markdown(results, labels)
    print(table)
    out = args.json or RESULTS / f"fusers_cpu-{platform.node()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, "table": table}, indent=1))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
