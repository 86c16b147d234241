"""Train the blur-mask network BM of ``cgan_blurmask`` (DeepLab-v3 lite): one command, resumable.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_blurmask.py \
        --config configs/train_blurmask.yaml

Rerunning the same command resumes from the checkpoint named in the config. When the run
completes, BM's fp16 safetensors file (``output``) and a JSON summary next to the checkpoint are
written; ``workflows/train_cgan.py`` reads that file as its frozen BM.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from wsi_fusion.training.run import save_and_finish, start_logging, train_parser

    args = train_parser(__doc__, ROOT / "configs" / "train_blurmask.yaml").parse_args(argv)
    start_logging()
    os.chdir(ROOT)  # config paths are relative to the repository

    from wsi_fusion.training.cgan_blurmask import (
        BlurMaskTrainConfig,
        checkpoint_step,
        train_blurmask,
    )
    from wsi_fusion.training.config import load_train_config

    cfg = load_train_config(
        args.config, BlurMaskTrainConfig, steps=args.steps, max_seconds=args.max_seconds
    )
    began = time.perf_counter()
    model, history = train_blurmask(cfg, progress=not args.no_progress)
    seconds = time.perf_counter() - began
    status, _ = save_and_finish(cfg, model, history, seconds, checkpoint_step(cfg.checkpoint))
    return status


if __name__ == "__main__":
    sys.exit(main())
