"""Train GACN and write its fp16 safetensors weights: one command, resumable, seeded.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_gacn.py \
        --config configs/train_gacn.yaml

    .venv/bin/python workflows/train_gacn.py --evaluate   # held-out table for the model card

Rerunning the same command resumes from the checkpoint named in the config. When the run
completes, the weights file and its sha256 are written and a JSON summary (steps, wall time,
final losses, sha256) goes next to the checkpoint; copy the sha256 into
``GACNFuser.weights_record``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAME = "gacn"

#: Fusers compared side by side in the model card: GACN's strategies + the classical ones.
COMPARED: dict[str, tuple[str, dict[str, Any]]] = {
    "gacn (round robin, default)": ("gacn", {}),
    "gacn (calibration, middle baseline, k=1)": ("gacn", {"strategy": "calibration"}),
    "gacn (calibration as the paper: first baseline, k=1000)": (
        "gacn",
        {"strategy": "calibration", "baseline": 0, "calibration_steepness": 1000.0},
    ),
    "gacn (serial, as the paper)": ("gacn", {"strategy": "serial"}),
}


def main(argv: list[str] | None = None) -> int:
    from wsi_fusion.training.gacn import GACNTrainConfig, train
    from wsi_fusion.training.run import train_workflow

    return train_workflow(
        argv,
        doc=__doc__,
        root=ROOT,
        name=NAME,
        model_cls=GACNTrainConfig,
        train=train,
        compared=COMPARED,
    )


if __name__ == "__main__":
    sys.exit(main())
