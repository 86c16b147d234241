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

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAME = "acnn"

#: Fusers compared side by side in the model card: ACNN's strategies + the classical ones.
COMPARED: dict[str, tuple[str, dict[str, Any]]] = {
    "acnn (round robin on focus maps, default)": ("acnn", {}),
    "acnn (calibration on focus maps, middle baseline)": ("acnn", {"strategy": "calibration"}),
    "acnn (serial, as the letter: threshold 0.9 + morphology)": ("acnn", {"strategy": "serial"}),
}


def main(argv: list[str] | None = None) -> int:
    from wsi_fusion.training.acnn import ACNNTrainConfig, train
    from wsi_fusion.training.run import train_workflow

    return train_workflow(
        argv,
        doc=__doc__,
        root=ROOT,
        name=NAME,
        model_cls=ACNNTrainConfig,
        train=train,
        compared=COMPARED,
    )


if __name__ == "__main__":
    sys.exit(main())
