"""Train ACNN and write its fp16 safetensors weights: one command, resumable, seeded.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_acnn.py \
        --config configs/train_acnn.yaml

    .venv/bin/python workflows/train_acnn.py --evaluate   # held-out table for the model card

Rerunning the same command resumes from the checkpoint named in the config. When the run
completes, the weights file and its sha256 are written and a JSON summary (steps, wall time,
final losses, sha256) goes next to the checkpoint; copy the sha256 into
``ACNNFuser.weights_record``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAME = "acnn"
log = logging.getLogger("train_acnn")

#: Fusers compared side by side in the model card: ACNN's strategies + the classical ones.
COMPARED: dict[str, tuple[str, dict[str, Any]]] = {
    "acnn (round robin on focus maps, default)": ("acnn", {}),
    "acnn (calibration on focus maps, middle baseline)": ("acnn", {"strategy": "calibration"}),
    "acnn (serial, as the letter: threshold 0.9 + morphology)": ("acnn", {"strategy": "serial"}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_acnn.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--max-seconds", type=float, default=None, help="override the budget")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="instead of training: held-out PSNR/SSIM and tiles/s of the acnn strategies and "
        "the classical fusers in one run, written to models/acnn/metrics.json",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="instead of training: the same comparison on validation stacks cut from the "
        f"training rows (used to choose defaults), written to models/{NAME}/validation.json",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.validate:
        return validate(ROOT / "models" / NAME / "validation.json")
    if args.evaluate:
        return evaluate(ROOT / "models" / "acnn" / "metrics.json")

    from wsi_fusion.training.acnn import load_config, train

    cfg = load_config(args.config, steps=args.steps, max_seconds=args.max_seconds)
    history, sha, seconds = train(cfg, ROOT, progress=not args.no_progress)
    summary = {
        "config": cfg.model_dump(),
        "steps_done": history[-1]["step"] if history else 0,
        "train_seconds_total": history[-1]["seconds"] if history else 0.0,
        "this_invocation_seconds": round(seconds, 1),
        "final": history[-1] if history else None,
        "sha256": sha,
        "hardware": f"{platform.processor() or platform.machine()}, {cfg.threads} thread(s), CPU",
    }
    out = (ROOT / cfg.checkpoint).with_suffix(".summary.json")
    out.write_text(json.dumps(summary, indent=1))
    log.info("summary: %s", out)
    if not sha:
        log.warning("not finished; rerun to resume")
        return 1
    log.info("weights %s sha256 %s", cfg.output, sha)
    return 0


def evaluate(out: Path) -> int:
    """Held-out comparison (same stacks for every fuser) written to ``out`` and logged."""
    import torch

    from wsi_fusion.training.heldout import (
        CLASSICAL,
        compare_on_heldout,
        markdown_table,
        time_interleaved,
    )

    torch.set_num_threads(1)
    result = compare_on_heldout({**COMPARED, **CLASSICAL})
    result["torch_threads"] = 1
    # The strategies timed against each other: interleaved, best of 3, one 512² 5-plane tile.
    result["seconds_per_tile_interleaved"] = time_interleaved(COMPARED)
    log.info(
        "seconds per tile (interleaved, best of 3): %s", result["seconds_per_tile_interleaved"]
    )
    out.write_text(json.dumps(result, indent=1))
    log.info("held-out comparison:\n%s", markdown_table(result))
    return 0


def validate(out: Path) -> int:
    """Strategies and classical fusers on stacks from the training rows (default selection)."""
    import torch

    from wsi_fusion.training.heldout import (
        CLASSICAL,
        compare_on_stacks,
        markdown_table,
        validation_stacks,
    )

    torch.set_num_threads(1)
    result = compare_on_stacks({**COMPARED, **CLASSICAL}, validation_stacks())
    result["validation"] = {"n": 6, "side": 384, "planes": 5, "seed": 777, "noise": 0.005}
    out.write_text(json.dumps(result, indent=1))
    log.info("validation comparison:\n%s", markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
