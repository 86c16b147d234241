"""``benchmarks/bench_peers.py --scale`` on a tiny stack: stack building, options, the ratios.

The benchmark itself (8192², the peers) is never run here; the peers' commands are only
assembled, and our own row runs for real on a 128² stack with a stand-in for GNU time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH / "peers"))

import scale_bench  # noqa: E402


def test_tiny_stack_and_commands(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_peers.py"),
            "--scale",
            "--scale-side",
            "128",
            "--workdir",
            str(tmp_path),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    case = scale_bench.StackCase.load(tmp_path / "scale_ihc_128" / "case.json")
    assert (case.height, case.width, len(case.planes)) == (128, 128, 5)
    planes = [scale_bench._load(p) for p in case.planes]
    assert all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p in planes)
    assert scale_bench._load(case.ground_truth or "").shape == (128, 128, 3)
    assert not (tmp_path / "scale_ihc_128" / "synth").exists(), "TIFF copies are removed"
    # The planes differ (defocus), and the oracle is a finite PSNR against the truth.
    assert not np.array_equal(planes[0], planes[4])
    assert 25 < float(case.notes["oracle_psnr"]) < 60  # type: ignore[arg-type]
    lines = dict(line.split(": ", 1) for line in out.splitlines()[1:])
    assert lines["wsi-fusion fuse (OME-Zarr)"].split()[1] == "fuse"
    assert ".ome.zarr" in lines["wsi-fusion fuse (OME-Zarr)"]
    assert lines["focusweave --no-align"].endswith("--keep-size --no-align")
    assert lines["openfocus -m dct"].endswith("-m dct")
    # Built once: a second call reuses the files.
    before = Path(case.planes[0]).stat().st_mtime_ns
    scale_bench.build_stack(tmp_path, 128)
    assert Path(case.planes[0]).stat().st_mtime_ns == before


def test_options() -> None:
    args = scale_bench.parse(["--repeats", "3", "--only", "dct"])
    assert args.repeats == 3 and args.only == ["dct"] and args.scale_side == 8192
    with pytest.raises(SystemExit):
        scale_bench.parse(["--scale-side", "10"])
    with pytest.raises(SystemExit):
        scale_bench.parse(["--unknown"])


def test_ratios_and_targets() -> None:
    rows = [
        {
            "row": "wsi-fusion fuse (OME-Zarr)",
            "wall_s": 20.0,
            "cpu_s": 30.0,
            "peak_rss_mb": 1800.0,
            "psnr": 42.0,
        },
        {
            "row": scale_bench.REFERENCE,
            "wall_s": 30.0,
            "cpu_s": 31.0,
            "peak_rss_mb": 8000.0,
            "psnr": 40.5,
        },
        {"row": "openfocus -m dct", "error": "exit 1: boom"},
    ]
    ours, ref, failed = scale_bench.ratios(rows, oracle=42.02)
    assert ours["wall_x_ref"] == pytest.approx(0.667, abs=1e-3)
    assert ours["cpu_x_ref"] == pytest.approx(0.968, abs=1e-3)
    assert ours["psnr_minus_ref_db"] == 1.5
    assert all(ours["targets"].values())
    assert ref["wall_x_ref"] == 1.0 and "targets" not in ref and "wall_x_ref" not in failed
    text = scale_bench.markdown(
        {"case": "c", "date": "d", "machine": "m", "oracle_psnr": 42.02, "rows": rows}
    )
    assert "| wsi-fusion fuse (OME-Zarr) | 0.667 | 0.968 |" in text and "error: exit 1" in text


def test_our_row_runs_and_is_scored(tmp_path: Path) -> None:
    """Our CLI on a 128² stack, timed by a stand-in for GNU time; PSNR read from the OME-Zarr."""

    def run_timed(command: list[str], timeout: float, log: Path) -> tuple[float, float, float, int]:
        started = time.perf_counter()
        code = subprocess.run(command, capture_output=True, timeout=timeout).returncode
        return time.perf_counter() - started, 1.0, 100.0, code

    json_path = tmp_path / "scale.json"
    argv = ["--scale-side", "128", "--workdir", str(tmp_path), "--only", "wsi-fusion"]
    argv += ["--json", str(json_path), "--markdown", str(tmp_path / "scale.md")]
    assert scale_bench.main(argv, run_timed, time_binary=sys.executable) == 0
    report = scale_bench.json.loads(json_path.read_text())
    (row,) = report["rows"]
    assert row["row"] == "wsi-fusion fuse (OME-Zarr)" and row["runs"] == 1
    # The fused slide beats every single plane and sits near the oracle.
    assert row["psnr"] > report["oracle_psnr"] - 2.0
