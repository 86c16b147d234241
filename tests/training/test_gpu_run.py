"""``workflows/gpu_run.sh``: its runs have presets, its options, and (slow) a CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "workflows" / "gpu_run.sh"
PRESET = "h100-8min"


def bash(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
    )


def runs() -> list[tuple[str, str]]:
    """The script's RUNS table as (name, command)."""
    table = bash(
        "-c", f'source <(sed -n "/^RUNS=(/,/^)/p" {SCRIPT}); printf "%s\\n" "${{RUNS[@]}}"'
    )
    assert table.returncode == 0, table.stderr
    return [tuple(line.split("|", 1)) for line in table.stdout.splitlines()]  # type: ignore[misc]


def test_every_run_has_its_config_and_preset_overlay() -> None:
    entries = runs()
    assert {name for name, _ in entries} == {
        "cgan_single", "cgan_few", "msegnet", "fmb_net", "gacn", "acnn", "blurmask"
    }  # fmt: skip
    for name, command in entries:
        script = command.split()[0]
        assert (ROOT / script).is_file(), name
        parts = command.split()
        config = (
            parts[parts.index("--config") + 1]
            if "--config" in parts
            else (f"configs/{Path(script).stem}.yaml")
        )
        assert (ROOT / config).is_file(), name
        assert (ROOT / "configs" / "presets" / PRESET / Path(config).name).is_file(), name


def test_options() -> None:
    assert bash("-n", str(SCRIPT)).returncode == 0
    assert bash(str(SCRIPT), "--help").returncode == 0
    bad = bash(str(SCRIPT), "--frobnicate")
    assert bad.returncode == 2 and "unknown option --frobnicate" in bad.stderr


@pytest.mark.slow
def test_dry_run_trains_packs_and_summarises(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = bash(
        str(SCRIPT), "--dry-run", "--skip", "tests,bench", "--only", "gacn", env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["setup", "tests", "bench", "train_gacn"]
    assert all(s["rc"] == 0 for s in summary["steps"])
    run = summary["runs"]["gacn"]
    assert run["steps_done"] == 3 and run["session"]["preset"] == PRESET and run["sha256"]
    weights = f"scratch/dry_run/{PRESET}/train_gacn/weights.safetensors"
    assert weights in summary["packed"]
    parts = sorted(tmp_path.glob("results.tgz.part-*"))
    assert parts and (tmp_path / "gpu_run.log").is_file()
    joined = tmp_path / "results.tgz"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert weights in tar.getnames()
