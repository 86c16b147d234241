"""Cluster-friendly console output: progress lines (no carriage returns) when stderr is not a
terminal, bars when it is; ``-v`` and ``-q`` on either side of the subcommand."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import run_cli

from wsi_fusion.cli import _progress
from wsi_fusion.cli._progress import BarProgress, LineProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def planes(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    (tmp_path / "planes").mkdir()
    paths = []
    for k in range(3):
        paths.append(tmp_path / "planes" / f"p_z{k}.tif")
        tifffile.imwrite(paths[-1], rng.integers(0, 256, (200, 260, 3), np.uint8), tile=(128, 128))
    return paths


def test_line_progress_every_tenth_and_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    with LineProgress(1000, "fuse tiles", clock=clock) as bar:
        for _ in range(1000):
            bar.update(1)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err
    assert len(lines) == 10
    assert lines[0].startswith("fuse tiles: 100/1000 (10%)")
    assert lines[-1].startswith("fuse tiles: 1000/1000 (100%)")


def test_line_progress_every_30_s_when_slow(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    bar = LineProgress(10_000, "blend blocks", clock=clock)
    for _ in range(5):  # 5 items, 20 s apart: < 10 %, so only time makes lines
        clock.t += 20
        bar.update(1)
    bar.set_postfix_str("slide_a")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    # after 40 s (2 done), after 80 s (4 done; 40 s since the last), and the final count
    assert [ln.split(":")[1].split(" (")[0].strip() for ln in lines] == [
        "2/10000",
        "4/10000",
        "5/10000",
    ]
    assert lines[-1].endswith("[slide_a]") and "s left" in lines[0]


def test_disabled_line_progress_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    with LineProgress(10, "x", disable=True) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal_lines_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "stderr_is_terminal", lambda: False)
    assert isinstance(progress_bar(5, "x"), LineProgress)
    monkeypatch.setattr(_progress, "stderr_is_terminal", lambda: True)
    bar = progress_bar(5, "x", disable=True)
    assert type(bar).__name__ == "tqdm"
    bar.close()


def test_phase_progress_writes_lines_not_bars(capsys: pytest.CaptureFixture[str]) -> None:
    with BarProgress().phase("fuse tiles", 20) as advance:
        for _ in range(20):
            advance(1)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 10


def test_fuse_and_batch_logs_have_no_carriage_return(planes: list[Path], tmp_path: Path) -> None:
    """Run the real console script with stderr to a file, as SLURM does."""
    exe = str(Path(sys.executable).with_name("wsi-fusion"))
    log = tmp_path / "job.log"
    # The plane fuser (margin 0): progress does not depend on the method.
    opts = ["--tile", "128", "--overlap", "64", "--no-tissue", "--fuser", "plane"]
    with log.open("w") as fh:
        codes = [
            subprocess.run(
                [exe, "fuse", *map(str, planes), "-o", str(tmp_path / "fused.ome.zarr"), *opts],
                stdout=fh, stderr=subprocess.STDOUT,
            ).returncode,
            subprocess.run(
                [exe, "batch", str(planes[0].parent), "-o", str(tmp_path / "out"), *opts],
                stdout=fh, stderr=subprocess.STDOUT,
            ).returncode,
        ]  # fmt: skip
    text = log.read_text()
    assert codes == [0, 0], text
    assert "\r" not in text and "Traceback" not in text
    assert re.search(r"^fuse tiles: (\d+)/\1 \(100%\), \d+ s$", text, re.MULTILINE)
    assert re.search(r"^  fuse tiles: (\d+)/\1 \(100%\)", text, re.MULTILINE)  # batch phase
    assert "slides: 1/1 (100%)" in text


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_on_either_side_of_the_subcommand(
    where: str, planes: list[Path], tmp_path: Path
) -> None:
    args = ["fuse", *map(str, planes), "-o", str(tmp_path / "a.ome.zarr"), "--tile", "128"]
    args += ["--overlap", "64", "--fuser", "plane", "-q"]
    args = ["-v", *args] if where == "before" else [*args, "-v"]
    run = subprocess.run(
        [sys.executable, "-c", "from wsi_fusion.cli import main; main()", *args],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "INFO wsi_fusion.pipeline" in run.stderr
    assert "DEBUG" not in run.stderr


def test_verbose_counts_add_up(monkeypatch, capsys) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # restored after the test
    code, out, _ = run_cli(monkeypatch, capsys, "-v", "fusers", "-v")
    assert code == 0 and "focus_measure" in out
    assert root.level == logging.DEBUG


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_on_either_side_of_the_subcommand(
    where: str, monkeypatch, capsys, planes: list[Path], tmp_path: Path
) -> None:
    args = ["fuse", *map(str, planes), "-o", str(tmp_path / "a.ome.zarr"), "--tile", "128"]
    args += ["--overlap", "64", "--fuser", "plane"]
    args = ["-q", *args] if where == "before" else [*args, "-q"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert out == "" and "fuse tiles" not in err
    code, out, err = run_cli(monkeypatch, capsys, *args[:1], *args[1:], "--overwrite")
    assert code == 0


@pytest.mark.parametrize("command", ["info", "fusers"])
def test_quiet_is_accepted_by_every_subcommand(
    command: str, monkeypatch, capsys, planes: list[Path]
) -> None:
    extra = [str(planes[0])] if command == "info" else []
    for args in (["-q", command, *extra], [command, *extra, "-q"]):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 0, err
        assert out  # -q silences progress, never the command's result


def test_without_global_quiet_progress_is_shown(monkeypatch, capsys, planes, tmp_path) -> None:
    args = ["fuse", *map(str, planes), "-o", str(tmp_path / "a.ome.zarr"), "--tile", "128"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--overlap", "64", "--fuser", "plane")
    assert code == 0 and "fuse tiles:" in err and "wrote" in out


def test_learned_fuser_without_torch_is_one_error_line(planes: list[Path], tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None; "
        "from wsi_fusion.cli import main; main()"
    )
    from wsi_fusion.fusers import create_fuser

    margin = create_fuser("gacn").margin  # a property of the method; loads no torch
    args = ["fuse", *map(str, planes), "-o", str(tmp_path / "a.ome.zarr"), "--fuser", "gacn"]
    args += ["--tile", str(2 * margin + 64), "--overlap", str(2 * margin)]
    run = subprocess.run(
        [sys.executable, "-c", code, *args, "-q"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "error: torch is not installed" in run.stderr and "wsi-fusion[learned]" in run.stderr


def test_log_file_and_json_lines(planes: list[Path], tmp_path: Path) -> None:
    """--log-file gets INFO records without -v; --log-format json makes every stderr line (log
    records and progress) and every log-file line one JSON object."""
    exe = str(Path(sys.executable).with_name("wsi-fusion"))
    args = ["fuse", *map(str, planes), "--tile", "128", "--overlap", "64", "--fuser", "plane"]
    text_log = tmp_path / "text.log"
    run = subprocess.run(
        [exe, "--log-file", str(text_log), *args, "-o", str(tmp_path / "a.ome.zarr")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "INFO" not in run.stderr  # the console stays at WARNING
    first = text_log.read_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO wsi_fusion\.", first)

    json_log = tmp_path / "json.log"
    run = subprocess.run(
        [exe, "--log-file", str(json_log), "--log-format", "json", *args, "-v"]
        + ["-o", str(tmp_path / "b.ome.zarr")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stderr = [json.loads(line) for line in run.stderr.splitlines()]
    assert any(r.get("level") == "INFO" for r in stderr)  # -v after the subcommand
    assert any(r.get("progress") == "fuse tiles" and r["done"] == r["total"] for r in stderr)
    records = [json.loads(line) for line in json_log.read_text().splitlines()]
    assert records and {"time", "level", "logger", "message"} <= set(records[0])
