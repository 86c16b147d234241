"""Side-by-side benchmark of wsi_fusion against peer focus-stacking tools (not a test).

Runs every configuration in :data:`peers.runners.RUNNERS` on the same stacks, each run in its own
process, and reports wall time, output Mpx/s, peak RSS and quality, with ratios to the fastest /
best *peer*. Needs the benchmark environment (``bash benchmarks/peers/setup_env.sh``: the peers in
``.bench-venv``, enfuse from Debian) beside the project's ``.venv``. Tools that are missing are
reported as such, not silently dropped.

Stacks (see :mod:`peers.stacks`): synthetic 5-plane H&E stacks with ground truth at 1 and 4 Mpx;
the real blood-smear stack (10 planes, 2.3 Mpx) and the real algae stack (5 planes, 19.8 Mpx)
from ``../shared/data`` when present, and the other real stacks there (grey smear, unstained
cells, pseudoscorpion, Zeiss skeleton), whole or as central ``--crop`` px crops. On real stacks
the block checks of issue 9 are reported on the whole output: block fidelity p10 / median
against the raw planes and focus attainment median / p10 (a window: 0.95-1.15 is healthy), with
a "best single plane" baseline row.

    .venv/bin/python benchmarks/bench_peers.py            # full run, ~15-20 min on 2 cores
    .venv/bin/python benchmarks/bench_peers.py --quick    # the 1-Mpx synthetic stack only
    .venv/bin/python benchmarks/bench_peers.py --real --crop 1024 --repeats 1 --timeout 240 \
        --json benchmarks/results/peers_real.json --markdown benchmarks/results/peers_real.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from quality import (  # noqa: E402
    BLOCK_COLUMNS,
    SEARCH,
    Reference,
    measure,
    read_output,
    reference_for,
)
from run_best_plane import best_plane  # noqa: E402
from runners import BENCH_ENV, ROOT, RUNNERS, Runner  # noqa: E402
from stacks import (  # noqa: E402
    ORIGINAL_FILES,
    REAL,
    StackCase,
    raw_planes,
    real_case,
    registered_planes,
    synthetic_case,
)

#: GNU time (Debian package ``time``), for each run's peak RSS.
TIME = "/usr/bin/time"
#: Cases at most this big are run ``--repeats`` times (median reported); larger ones once.
REPEAT_MAX_MPX = 1.1
#: Quality metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = {"frac_focus_lost", "halo", "attainment_outside"}
#: Block checks (fidelity, attainment on the whole output) only up to this size: on the whole
#: 20-Mpx algae stack they would cost about a minute per row here; use ``--crop`` for those.
BLOCK_MAX_MPX = 6.0
#: Quality columns of the real stacks (the block checks only when measured).
REAL_COLUMNS = ["q_abf", "focus_attainment", "frac_focus_lost", "halo"]
#: The headline quality metric per case kind (the ratio column).
HEADLINE = {"synthetic": "psnr", "real": "q_abf"}


@dataclass
class RunResult:
    case: str
    label: str
    tool: str
    ours: bool
    mpx: float
    status: str = "ok"
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = math.nan
    quality: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s) if self.wall_s else math.nan

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_s) if self.cpu_s else math.nan

    @property
    def mpx_per_s(self) -> float:
        return self.mpx / self.median_s if self.wall_s else math.nan


def run_timed(command: list[str], timeout: float, log: Path) -> tuple[float, float, float, int]:
    """Run ``command``; wall seconds, CPU seconds, peak RSS in MB and exit code (-9: timeout).

    CPU seconds (user + system) are less sensitive than wall time to other jobs on a busy machine;
    their ratio to wall time shows how many cores a tool kept busy.

    Peak RSS is taken by GNU ``/usr/bin/time`` (``%M``), which forks the tool from its own small
    process: a child forked straight from this process would count this process's memory (the
    reference images, hundreds of MB) in its ``ru_maxrss`` until it execs. For a tool that starts
    worker processes it is the largest single process, as ``time -v`` reports it.
    """
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    rss_file = log.with_suffix(".rss")
    wrapped = [TIME, "-f", "%M %U %S", "-o", str(rss_file), *command]
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -9
        wall = time.perf_counter() - started
    try:
        # GNU time puts "Command exited with non-zero status N" before the format line.
        peak_kb, user, system = (float(v) for v in rss_file.read_text().split()[-3:])
    except (OSError, ValueError):
        peak_kb = user = system = math.nan
    return wall, user + system, peak_kb / 1024, code


def jpeg_planes(case: StackCase, workdir: Path) -> list[str]:
    """JPEG copies (quality 100, no chroma subsampling) for tools that read nothing else."""
    if all(p.lower().endswith((".jpg", ".jpeg")) for p in case.planes):
        return case.planes
    from PIL import Image

    folder = workdir / "jpeg" / Path(case.planes[0]).parent.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in case.planes:
        target = folder / (Path(path).stem + ".jpg")
        if not target.exists():
            Image.open(path).convert("RGB").save(target, quality=100, subsampling=0)
        out.append(str(target))
    return out


def applies(runner: Runner, case: StackCase, everything: bool) -> str | None:
    """Why ``runner`` is skipped on ``case`` (None: it runs)."""
    limit = runner.max_mpx_all if everything else runner.max_mpx
    if case.mpx > limit:
        return f"skipped above {limit:g} Mpx (time budget)"
    if runner.label.startswith("wsi-fusion fuse") and case.kind != "real":
        return "CLI row runs on the real stacks only"
    return None


def installed(runner: Runner) -> str | None:
    """Why ``runner``'s tool cannot run here (None: it can)."""
    tool_bin = {
        "openfocus": BENCH_ENV / "openfocus",
        "focusweave": BENCH_ENV / "focusweave",
        "rawhdr": BENCH_ENV / "rawhdr",
        "focusstacker": BENCH_ENV / "python",
    }
    if runner.tool == "enfuse":
        return None if shutil.which("enfuse") else "enfuse not on PATH (apt-get install enfuse)"
    path = tool_bin.get(runner.tool)
    if path is not None and not path.exists():
        return f"{path} missing: run benchmarks/peers/setup_env.sh"
    return None


def tool_versions() -> dict[str, str]:
    versions = {}
    pip = BENCH_ENV / "pip"
    if pip.exists():
        listing = subprocess.run(
            [str(pip), "list", "--format=json"], capture_output=True, text=True, check=False
        )
        if listing.returncode == 0:
            for item in json.loads(listing.stdout):
                if item["name"].lower() in {"openfocus", "focusweave", "rawhdr", "focusstacker"}:
                    versions[item["name"].lower()] = item["version"]
    if shutil.which("enfuse"):
        first = subprocess.run(["enfuse", "--version"], capture_output=True, text=True).stdout
        versions["enfuse"] = first.splitlines()[0].split()[-1] if first else "?"
    from wsi_fusion import __version__

    versions["wsi_fusion"] = __version__
    return versions


def run_case(
    case: StackCase, ref: Reference, workdir: Path, args: argparse.Namespace
) -> list[RunResult]:
    results = []
    for runner in RUNNERS:
        repeats = min(args.repeats, runner.max_repeats) if case.mpx <= REPEAT_MAX_MPX else 1
        if args.only and not any(key in runner.label for key in args.only):
            continue
        res = RunResult(case.name, runner.label, runner.tool, runner.ours, round(case.mpx, 3))
        reason = installed(runner) or applies(runner, case, args.all)
        if reason:
            res.status, res.error = "skipped", reason
            results.append(res)
            print(f"  {runner.label:32s} {reason}", flush=True)
            continue
        planes = jpeg_planes(case, workdir) if runner.input_kind == "jpeg" else case.planes
        output = workdir / "out" / (runner.label.replace(":", "").replace(" ", "_") + runner.suffix)
        output.parent.mkdir(parents=True, exist_ok=True)
        log = output.with_suffix(".log")
        rss = []
        for _ in range(repeats):
            if output.exists():
                output.unlink()
            wall, cpu, peak, code = run_timed(
                runner.command(case, planes, output), args.timeout, log
            )
            if code != 0 or not output.exists():
                res.status = "timeout" if code == -9 else "failed"
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                res.error = f"exit {code}: " + " | ".join(tail)
                break
            res.wall_s.append(round(wall, 3))
            res.cpu_s.append(round(cpu, 2))
            rss.append(peak)
        if res.status == "ok":
            res.peak_rss_mb = round(max(rss), 1)
            try:
                res.quality = {
                    k: round(v, 4) for k, v in measure(read_output(str(output)), ref).items()
                }
            except ValueError as err:
                res.status, res.error = "wrong geometry", str(err)
        shutil.rmtree(output, ignore_errors=True) if output.is_dir() else output.unlink(
            missing_ok=True
        )
        results.append(res)
        q = ", ".join(f"{k} {v:.4g}" for k, v in res.quality.items())
        print(
            f"  {runner.label:32s} {res.status:8s} {res.median_s:7.2f} s "
            f"{res.median_cpu_s:7.1f} cpu-s "
            f"{res.mpx_per_s:6.3f} Mpx/s {res.peak_rss_mb:8.0f} MB  {q} {res.error}",
            flush=True,
        )
    return results


def add_ratios(results: list[RunResult], kind: str) -> dict[str, dict[str, Any]]:
    """Per result label: speed and headline-quality ratios to the fastest / best peer."""
    ok = [r for r in results if r.status == "ok"]
    peers = [r for r in ok if not r.ours]
    metric = HEADLINE[kind]
    out: dict[str, dict[str, Any]] = {}
    if not peers:
        return out
    fastest = max(peers, key=lambda r: r.mpx_per_s)
    # On a shared machine CPU seconds are the steadier measure of a tool's own cost.
    leanest = min(peers, key=lambda r: r.median_cpu_s)
    best = max(peers, key=lambda r: r.quality.get(metric, -math.inf))
    for r in ok:
        out[r.label] = {
            "speed_vs_fastest_peer": round(r.mpx_per_s / fastest.mpx_per_s, 3),
            "fastest_peer": fastest.label,
            "cpu_speed_vs_leanest_peer": round(leanest.median_cpu_s / r.median_cpu_s, 3),
            "leanest_peer": leanest.label,
            f"{metric}_vs_best_peer": round(r.quality[metric] / best.quality[metric], 4),
            f"{metric}_minus_best_peer": round(r.quality[metric] - best.quality[metric], 4),
            "best_peer": best.label,
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    """The side-by-side tables, one per stack."""
    lines = []
    for case in report["cases"]:
        kind = case["kind"]
        metric = HEADLINE[kind]
        cols = ["psnr", "ssim"] if kind == "synthetic" else list(case["quality_columns"])
        lines += [
            f"### {case['name']} ({case['mpx']:.1f} Mpx, {case['planes']} planes"
            + (
                f", measured drift {case['max_drift_px']:.1f} px"
                if case.get("max_drift_px")
                else ""
            )
            + ")",
            "",
            "| tool: method | wall s | CPU s | Mpx/s | speed × best peer (wall / CPU) "
            "| peak RSS MB | " + " | ".join(cols) + f" | {metric} vs best peer |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * len(cols) + "---:|",
        ]
        for r in case["results"]:
            name = f"**{r['label']}**" if r["ours"] else r["label"]
            if r["status"] != "ok":
                lines.append(f"| {name} | {r['status']}: {r['error'][:90]} |")
                continue
            ratio = case["ratios"].get(r["label"], {})
            wall = statistics.median(r["wall_s"])
            reps = f" (×{len(r['wall_s'])})" if len(r["wall_s"]) > 1 else ""
            q = " | ".join(_fmt(r["quality"].get(c)) for c in cols)
            diff = ratio.get(f"{metric}_minus_best_peer")
            rel = (
                f"{diff:+.2f} dB"
                if metric == "psnr" and diff is not None
                else f"{ratio.get(f'{metric}_vs_best_peer', math.nan):.3f}×"
            )
            lines.append(
                f"| {name} | {wall:.2f}{reps} | {_median(r.get('cpu_s', [])):.1f} | "
                f"{r['mpx'] / wall:.3f} | "
                f"{ratio.get('speed_vs_fastest_peer', math.nan):.2f} / "
                f"{ratio.get('cpu_speed_vs_leanest_peer', math.nan):.2f} | "
                f"{r['peak_rss_mb']:.0f} | "
                f"{q} | {rel} |"
            )
        lines.append("")
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def rerate(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with its ratios recomputed from the raw results (as this version defines them)."""
    for case in report["cases"]:
        results = [
            RunResult(**{**r, "peak_rss_mb": r["peak_rss_mb"] or math.nan}) for r in case["results"]
        ]
        case["ratios"] = add_ratios(results, case["kind"])
    return report


def _no_nan(value: Any) -> Any:
    """``value`` with NaN floats as None (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def build_cases(
    workdir: Path,
    quick: bool,
    real_only: bool = False,
    crop: int = 0,
    names: list[str] | None = None,
) -> list[StackCase]:
    """The stacks to run; ``names`` (substrings) filters them before any file is written.

    Real stacks: ``crop`` > 0 gives central ``crop`` px crops (lossless PNG); 0 runs the blood
    smear and algae as their original JPEG files and the other stacks whole as PNG copies.
    """

    def wanted(name: str) -> bool:
        return not names or any(key in name for key in names)

    cases = []
    if not real_only:
        for side in (1024,) if quick else (1024, 2048):
            if wanted(f"synthetic H&E {side}²"):
                cases.append(synthetic_case(workdir, side))
    if quick:
        return cases
    for name in REAL:
        if not wanted(name):
            continue
        side = crop or (None if name in ORIGINAL_FILES else 1 << 30)
        case = real_case(workdir, name, side)
        if case is None:
            print(f"{name}: ../shared/data not found, skipped")
        else:
            cases.append(case)
    return cases


def block_summary(report: dict[str, Any]) -> str:
    """Stack x tool table of the block checks (issue 9): fidelity and attainment."""
    cases = [c for c in report["cases"] if "fidelity_median" in c.get("quality_columns", [])]
    if not cases:
        return ""
    lines = [
        "### Block checks: fidelity (higher is better) and focus attainment (window 0.95–1.15)",
        "",
        "| stack | tool: method | fidelity p10 | fidelity median | fidelity median − best peer "
        "| attainment median | attainment p10 | attainment outside 0.95–1.15 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        ok = [r for r in case["results"] if r["status"] == "ok"]
        peers = [r["quality"]["fidelity_median"] for r in ok if not r["ours"]]
        peers = [v for v in peers if v is not None and not math.isnan(v)]
        best = max(peers) if peers else math.nan
        for r in case["results"]:
            name = f"**{r['label']}**" if r["ours"] else r["label"]
            if r["status"] != "ok":
                lines.append(f"| {case['name']} | {name} | {r['status']} | | | | | |")
                continue
            q = r["quality"]
            fm = q.get("fidelity_median")
            diff = fm - best if fm is not None and not math.isnan(best) else math.nan
            lines.append(
                f"| {case['name']} | {name} | {_fmt(q.get('fidelity_p10'))} | {_fmt(fm)} | "
                f"{diff:+.3f} | {_fmt(q.get('attainment_median'))} | "
                f"{_fmt(q.get('attainment_p10'))} | {_fmt(q.get('attainment_outside'))} |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    if "--scale" in sys.argv[1:]:
        # Issue 11's 67-Mpx stack, us vs the two fastest peers, as ratios: peers/scale_bench.py.
        from scale_bench import main as scale_main

        argv = [a for a in sys.argv[1:] if a != "--scale"]
        raise SystemExit(scale_main(argv, run_timed, TIME))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "scratch" / "bench_peers")
    parser.add_argument("--quick", action="store_true", help="only the 1-Mpx synthetic stack")
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool on stacks <= 1 Mpx")
    parser.add_argument(
        "--all", action="store_true", help="every configuration on every stack (~40 min)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--only", nargs="*", help="run only labels containing one of these")
    parser.add_argument("--cases", nargs="*", help="run only stacks whose name contains one")
    parser.add_argument("--real", action="store_true", help="only the real stacks")
    parser.add_argument(
        "--crop",
        type=int,
        default=0,
        help="central crop side (px) of the real stacks; 0: whole stacks (the default)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/peers.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks/results/peers.md")
    parser.add_argument(
        "--render", type=Path, help="only re-render the markdown tables from this JSON report"
    )
    args = parser.parse_args()
    if args.render:
        report = rerate(json.loads(args.render.read_text()))
        print(markdown(report) + "\n" + block_summary(report))
        return
    if not Path(TIME).exists():
        raise SystemExit(f"{TIME} not found: apt-get install time (GNU time measures peak RSS)")

    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "versions": tool_versions(),
        "cases": [],
    }
    for case in build_cases(args.workdir, args.quick, args.real, args.crop, args.cases):
        if args.cases and not any(key in case.name for key in args.cases):
            continue
        print(f"{case.name}: {case.mpx:.1f} Mpx, {len(case.planes)} planes", flush=True)
        registered = None
        raw = None
        drift = None
        columns = list(REAL_COLUMNS)
        if case.kind == "real":
            t = time.perf_counter()
            registered = registered_planes(case)
            drift = registered[1]
            print(f"  registered reference planes in {time.perf_counter() - t:.0f} s", flush=True)
            if case.mpx <= BLOCK_MAX_MPX:
                raw = raw_planes(case, SEARCH)
                columns += BLOCK_COLUMNS
            else:
                print(f"  block checks skipped above {BLOCK_MAX_MPX:g} Mpx: use --crop", flush=True)
            z = best_plane(case.planes)
            case.notes["best_single_plane"] = f"{z} ({Path(case.planes[z]).name})"
            case.notes["registered"] = not math.isnan(drift)
        ref = reference_for(case, registered, raw)
        del registered, raw
        results = run_case(case, ref, args.workdir, args)
        report["cases"].append(
            {
                "name": case.name,
                "kind": case.kind,
                "mpx": case.mpx,
                "planes": len(case.planes),
                "max_drift_px": None if drift is None or math.isnan(drift) else drift,
                "notes": case.notes,
                "crop_box": case.box,
                "quality_columns": columns,
                "results": [asdict(r) for r in results],
                "ratios": add_ratios(results, case.kind),
            }
        )
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = round(os.getloadavg()[0], 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_no_nan(report), indent=1, default=str))
    table = markdown(report) + "\n" + block_summary(report)
    args.markdown.write_text(table)
    print(table)
    print(f"total {report['total_s']:.0f} s; wrote {args.json} and {args.markdown}")


if __name__ == "__main__":
    main()
