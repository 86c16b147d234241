"""The SLURM job script rendered from configs/slurm.yaml (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsi_fusion.errors import ConfigError
from wsi_fusion.scheduling.slurm import load_slurm_settings, slurm_cluster

SHIPPED = Path(__file__).parents[2] / "configs" / "slurm.yaml"


def test_job_script_requests_a_gpu_and_advertises_it() -> None:
    settings = load_slurm_settings(SHIPPED, dashboard_address=":0")
    cluster = slurm_cluster(settings)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for directive in ("-p gpu", "-n 1", "--cpus-per-task=8", "-t 04:00:00", "--gres=gpu:1"):
        assert f"#SBATCH {directive}" in lines, directive
    assert "#SBATCH --mem=60G" in lines
    assert 'source "$SLURM_SUBMIT_DIR/.venv/bin/activate"' in lines
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nthreads 8" in worker and "--resources GPU=1" in worker
    assert "--memory-limit 59.60GiB" in worker and settings.jobs == 4  # 64 GB


def test_cpu_only_workers_have_no_gres(tmp_path: Path) -> None:
    config = tmp_path / "cpu.yaml"
    config.write_text("queue: batch\ngpus_per_job: 0\ncores: 4\n")
    kwargs = load_slurm_settings(config).cluster_kwargs()
    assert kwargs["job_extra_directives"] == [] and kwargs["worker_extra_args"] == []
    assert kwargs["processes"] == 1 and kwargs["cores"] == 4


def test_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("partition: gpu\n")
    with pytest.raises(ConfigError, match="partition: unknown key"):
        load_slurm_settings(config)
