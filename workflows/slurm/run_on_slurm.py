"""Run a ``wsi-fusion`` command (``batch`` or ``fuse``) on GPU workers started as SLURM jobs.

Starts a ``dask_jobqueue.SLURMCluster`` from ``configs/slurm.yaml`` (one worker per job, one GPU
per worker), submits ``jobs`` worker jobs, waits for the first worker, then runs the command with
``--scheduler`` set to the cluster's address; the worker jobs are cancelled when it ends. Inputs,
outputs and tile caches must be on a file system the compute nodes share.

    python workflows/slurm/run_on_slurm.py [--slurm-config configs/slurm.yaml] [--jobs N] \
        -- batch /data/stacks -o /data/fused --fuser msegnet

Usually submitted as a small CPU job itself: ``sbatch workflows/slurm/submit.sh ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wsi_fusion.cli import main as wsi_fusion_main
from wsi_fusion.scheduling.slurm import load_slurm_settings, slurm_cluster

log = logging.getLogger("run_on_slurm")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slurm-config", type=Path, default=Path("configs/slurm.yaml"))
    parser.add_argument("--jobs", type=int, default=None, help="worker jobs (default: config)")
    parser.add_argument(
        "--wait", type=float, default=1800, help="seconds to wait for the first worker"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- batch|fuse ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or command[0] not in ("batch", "fuse"):
        parser.error("give the wsi-fusion command after --, e.g. -- batch IN -o OUT")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    settings = load_slurm_settings(args.slurm_config, jobs=args.jobs)
    cluster = slurm_cluster(settings)
    try:
        log.info("SLURM worker job script:\n%s", cluster.job_script())
        cluster.scale(jobs=settings.jobs)
        from distributed import Client

        with Client(cluster) as client:
            log.info(
                "dashboard %s; waiting for the first of %d jobs",
                client.dashboard_link,
                settings.jobs,
            )
            client.wait_for_workers(1, timeout=args.wait)
        # The command connects its own client to the scheduler (and registers its plugin).
        sys.argv = ["wsi-fusion", *command, "--scheduler", cluster.scheduler_address]
        try:
            wsi_fusion_main()
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
