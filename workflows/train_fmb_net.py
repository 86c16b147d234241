"""Train ``fmb_net`` (focus-measure block + fusion network): one command, resumable, seeded.

    # after workflows/train_blurmask.py (its BM is the perceptual-loss feature extractor):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_fmb_net.py \
        --config configs/train_fmb_net.yaml

Rerunning the same command resumes from the checkpoint named in the config. A finished run
writes the fp16 safetensors weights (``output``), prints the sha256 (copy it into
``FmbNetFuser.weights_record``) and writes a JSON summary next to the checkpoint. ``--evaluate``
writes the model card's held-out metrics to ``models/fmb_net/metrics.json``.
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
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_fmb_net.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--max-seconds", type=float, default=None, help="override the budget")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--evaluate", action="store_true", help="held-out metrics of the trained model"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(ROOT)  # config paths are relative to the repository

    from wsi_fusion.fusers._weights import save_weights
    from wsi_fusion.training.cgan_blurmask import checkpoint_step, load_config
    from wsi_fusion.training.fmb_net import FmbTrainConfig, load_feature_net, train_fmb_net

    cfg = load_config(args.config, FmbTrainConfig, steps=args.steps, max_seconds=args.max_seconds)
    if args.evaluate:
        from wsi_fusion.training.fmb_net import evaluate_fmb_net

        metrics = evaluate_fmb_net(cfg.output)
        out = Path(cfg.output).parent / "metrics.json"
        out.write_text(json.dumps(metrics, indent=1))
        logging.getLogger("train_fmb_net").info("held-out metrics: %s", out)
        return 0
    began = time.perf_counter()
    net, history = train_fmb_net(cfg, load_feature_net(cfg.feature_net), not args.no_progress)
    steps_done = checkpoint_step(cfg.checkpoint)
    done = steps_done >= cfg.steps
    sha = save_weights(net, Path(cfg.output)) if done else None
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
    logging.getLogger("train_fmb_net").info("summary: %s", out)
    if not done:
        logging.getLogger("train_fmb_net").warning("not finished; rerun to resume")
        return 1
    if sha:
        sys.stdout.write(f"{sha}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
