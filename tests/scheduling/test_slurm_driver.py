"""The SLURM driver end to end, with ``sbatch``/``scancel`` stand-ins that run jobs locally.

The stand-in ``sbatch`` runs the rendered job script (with its ``dask worker --resources GPU=1``
line) in a new session on this machine, so the whole path runs for real: SLURMCluster, worker
job, driver, ``wsi-fusion batch --scheduler tcp://...``, job cancellation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).parents[2]

SBATCH = """#!/bin/bash
# Stand-in for sbatch: run the job script locally in its own session; job id = its pid.
job="$JOBS/job-$RANDOM.sh"
cp "$1" "$job"
SLURM_SUBMIT_DIR="$PWD" setsid bash "$job" > "$job.out" 2>&1 < /dev/null &
echo $! >> "$JOBS/pids"
echo "Submitted batch job $!"
"""
SCANCEL = """#!/bin/bash
kill -TERM -- "-$1" 2>/dev/null || true
"""


@pytest.mark.slow
def test_driver_runs_a_batch_on_slurm_worker_jobs(tmp_path: Path) -> None:
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    config = tmp_path / "slurm.yaml"
    config.write_text(
        "queue: gpu\ncores: 1\nmemory: 2GB\ngpus_per_job: 1\njobs: 1\n"
        f"log_directory: {tmp_path / 'logs'}\ndashboard_address: ':0'\n"
    )
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    rng = np.random.default_rng(0)
    for z in range(3):
        plane = rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)
        tifffile.imwrite(stacks / f"S1_z{z}.tif", plane, photometric="rgb")

    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "JOBS": str(jobs)}
    command = [
        sys.executable,
        str(REPO / "workflows" / "slurm" / "run_on_slurm.py"),
        "--slurm-config",
        str(config),
        "--wait",
        "120",
        "--",
        "batch",
        str(stacks),
        "-o",
        str(tmp_path / "out"),
        "--tile",
        "128",
        "--overlap",
        "64",
        "--fuser",
        "plane",  # the test is about the driver and the workers, not fusion
        "--no-tissue",
        "-q",
    ]
    try:
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    finally:
        # Whatever happened, stop the worker jobs this test started (by their session ids).
        for pid in (jobs / "pids").read_text().split() if (jobs / "pids").exists() else []:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"#SBATCH --gres=gpu:1" in done.stderr and b"--resources GPU=1" in done.stderr
    summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
    assert summary["counts"]["done"] == 1
    assert summary["scheduler"]["address"].startswith("tcp://")
    assert summary["scheduler"]["gpu_workers"] == 1
    assert (tmp_path / "out" / "S1.ome.zarr").is_dir()
