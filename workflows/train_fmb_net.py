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

import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from wsi_fusion.training.run import save_and_finish, start_logging, train_parser

    parser = train_parser(__doc__, ROOT / "configs" / "train_fmb_net.yaml")
    parser.add_argument(
        "--evaluate", action="store_true", help="held-out metrics of the trained model"
    )
    args = parser.parse_args(argv)
    start_logging()
    os.chdir(ROOT)  # config paths are relative to the repository

    from wsi_fusion.training.cgan_blurmask import checkpoint_step
    from wsi_fusion.training.config import load_train_config
    from wsi_fusion.training.fmb_net import FmbTrainConfig, load_feature_net, train_fmb_net

    cfg = load_train_config(
        args.config, FmbTrainConfig, steps=args.steps, max_seconds=args.max_seconds
    )
    if args.evaluate:
        from wsi_fusion.training.fmb_net import evaluate_fmb_net

        metrics = evaluate_fmb_net(cfg.output)
        out = Path(cfg.output).parent / "metrics.json"
        out.write_text(json.dumps(metrics, indent=1))
        logging.getLogger("train_fmb_net").info("held-out metrics: %s", out)
        return 0
    began = time.perf_counter()
    net, history = train_fmb_net(cfg, load_feature_net(cfg.feature_net), not args.no_progress)
    seconds = time.perf_counter() - began
    status, sha = save_and_finish(cfg, net, history, seconds, checkpoint_step(cfg.checkpoint))
    if sha:
        sys.stdout.write(f"{sha}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
