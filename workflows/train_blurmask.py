"""Train the blur-mask network BM of ``cgan_blurmask`` (DeepLab-v3 lite): one command, resumable.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_blurmask.py \
        --config configs/train_blurmask.yaml

Rerunning the same command resumes from the checkpoint named in the config. When the run
completes, BM's fp16 safetensors file (``output``) and a JSON summary next to the checkpoint are
written; ``workflows/train_cgan.py`` reads that file as its frozen BM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_blurmask.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--max-seconds", type=float, default=None, help="override the budget")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)  # config paths are relative to the repository

    from wsi_fusion.fusers._weights import save_weights
    from wsi_fusion.training.cgan_blurmask import (
        BlurMaskTrainConfig,
        checkpoint_step,
        load_config,
        train_blurmask,
    )

    cfg = load_config(
        args.config, BlurMaskTrainConfig, steps=args.steps, max_seconds=args.max_seconds
    )
    began = time.perf_counter()
    model, history = train_blurmask(cfg, progress=not args.no_progress)
    steps_done = checkpoint_step(cfg.checkpoint)
    done = steps_done >= cfg.steps
    sha = save_weights(model, Path(cfg.output)) if done else None
    summary = {
        "config": cfg.model_dump(),
        "steps_done": steps_done,
        "train_seconds_total": history[-1]["seconds"] if history else 0.0,
        "this_invocation_seconds": round(time.perf_counter() - began, 1),
        "final": history[-1] if history else None,
        "output": cfg.output if done else None,
        "sha256": sha,
        "hardware": f"{platform.processor() or platform.machine()}, {cfg.threads} thread(s), CPU",
    }
    out = Path(cfg.checkpoint).with_suffix(".summary.json")
    out.write_text(json.dumps(summary, indent=1))
    logging.getLogger("train_blurmask").info("summary: %s", out)
    if not done:
        logging.getLogger("train_blurmask").warning("not finished; rerun to resume")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
