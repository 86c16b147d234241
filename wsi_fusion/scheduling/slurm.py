"""GPU workers on a SLURM cluster through ``dask_jobqueue.SLURMCluster``.

Each SLURM job runs one Dask worker with one GPU (``--gres=gpu:1``) that advertises the ``GPU``
resource (``--resources GPU=1``), so learned-fuser tasks land one per GPU; the pipeline runs on
the cluster through its scheduler address (``--scheduler tcp://...``). Settings come from a YAML
file (``configs/slurm.yaml``) validated like the run config: an unknown key is an error that
names it. ``dask_jobqueue`` is imported only when a cluster is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wsi_fusion.errors import ConfigError
from wsi_fusion.scheduling.graph import GPU_RESOURCE


class SlurmSettings(BaseModel):
    """One SLURM job = one Dask worker process (with ``gpus_per_job`` GPUs, normally 1)."""

    model_config = ConfigDict(extra="forbid")

    #: Partition (``#SBATCH -p``).
    queue: str | None = None
    #: Account to charge (``#SBATCH -A``).
    account: str | None = None
    #: CPU cores per job; the worker runs this many threads (reading, blending, writing).
    cores: int = Field(8, ge=1)
    #: Memory per job, e.g. ``64GB``.
    memory: str = "64GB"
    #: Wall-clock limit per job, ``HH:MM:SS``.
    walltime: str = "04:00:00"
    #: GPUs per job (``--gres=gpu:N``, advertised as the ``GPU`` resource); 0 for CPU workers.
    gpus_per_job: int = Field(1, ge=0)
    #: Worker jobs to start (``cluster.scale(jobs=...)``).
    jobs: int = Field(2, ge=1)
    #: Extra ``#SBATCH`` lines (e.g. ``--constraint=a100``, ``--qos=...``).
    job_extra_directives: list[str] = Field(default_factory=list)
    #: Extra arguments of ``dask worker``.
    worker_extra_args: list[str] = Field(default_factory=list)
    #: Shell lines run before the worker starts (activate the environment, load modules).
    job_script_prologue: list[str] = Field(default_factory=list)
    #: Python of the workers (default: the one running this process).
    python: str | None = None
    #: Worker scratch space on the compute node (spilled data, not the tile cache).
    local_directory: str | None = None
    #: Where SLURM writes the jobs' stdout/stderr.
    log_directory: str | None = "slurm-logs"
    #: Network interface the workers and scheduler talk over (e.g. ``ib0``); default: any.
    interface: str | None = None
    #: Scheduler dashboard address (``:0`` for any free port).
    dashboard_address: str = ":8787"

    def cluster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``SLURMCluster`` (GPU gres and resources added)."""
        directives = list(self.job_extra_directives)
        worker_args = list(self.worker_extra_args)
        if self.gpus_per_job:
            directives.insert(0, f"--gres=gpu:{self.gpus_per_job}")
            worker_args = ["--resources", f"{GPU_RESOURCE}={self.gpus_per_job}", *worker_args]
        kwargs: dict[str, Any] = {
            "queue": self.queue,
            "account": self.account,
            "cores": self.cores,
            # One worker process per job: with one GPU per job that is one worker per GPU.
            "processes": 1,
            "memory": self.memory,
            "walltime": self.walltime,
            "job_extra_directives": directives,
            "worker_extra_args": worker_args,
            "job_script_prologue": list(self.job_script_prologue),
            "local_directory": self.local_directory,
            "log_directory": self.log_directory,
            "interface": self.interface,
            "scheduler_options": {"dashboard_address": self.dashboard_address},
        }
        if self.python is not None:
            kwargs["python"] = self.python
        return kwargs


def load_slurm_settings(path: str | Path, **overrides: Any) -> SlurmSettings:
    """Read SLURM cluster settings from YAML; non-``None`` ``overrides`` win."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"SLURM config {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"SLURM config {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"SLURM config {path} must hold a mapping of keys to values")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SlurmSettings(**data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()
        )
        raise ConfigError(f"invalid SLURM config {path}: {problems}") from err


def slurm_cluster(settings: SlurmSettings) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` from ``settings`` (no jobs submitted until scaled)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**settings.cluster_kwargs())
