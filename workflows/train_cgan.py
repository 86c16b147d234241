"""Train a ``cgan_blurmask`` generator (single- or few-plane) against the frozen BM; pack the model.

    # after workflows/train_blurmask.py:
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_cgan.py \
        --config configs/train_cgan_single.yaml
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_cgan.py \
        --config configs/train_cgan_few.yaml
    # round 2 (the shipped generators): fine-tune the round-1 ones, mask-gated, with stain
    # augmentation (init/blurmask: the round-1 packed file, copied to scratch/train/):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_cgan.py \
        --config configs/train_cgan_single_gated.yaml
    OMP_NUM_THREADS=2 nice -n 5 .venv/bin/python workflows/train_cgan.py \
        --config configs/train_cgan_few_gated.yaml
    # round 3 (the shipped BM and single-plane generator, issue 13): BM with detail-aware and
    # real-stack labels, then the single-plane G on shared tiles + re-staining + real-stack pairs
    # of the algae stack only (the one real stack whose licence allows shipping derived weights;
    # others need allow_unshippable: true and must not ship) (the synthetic-only ablation:
    # configs/train_cgan_single_r3_synth.yaml):
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python workflows/train_blurmask.py \
        --config configs/train_blurmask_r3.yaml
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python workflows/train_cgan.py \
        --config configs/train_cgan_single_r3_mixed.yaml
    # then one weights file with BM and both generators (prints its sha256); the single-plane
    # gate threshold (GATE_THRESHOLD_SINGLE) comes from
    # wsi_fusion.training.cgan_blurmask.calibrate_gate(stacks=("pseudoscorpion",)) (0.98):
    .venv/bin/python workflows/train_cgan.py --pack

Rerunning a training command resumes from the checkpoint named in its config. A finished run
writes the generator's fp16 safetensors (``output``) and a JSON summary next to the checkpoint.
``--pack`` writes ``models/cgan_blurmask/cgan_blurmask.lite.safetensors`` (keys ``bm.``,
``single.``, ``few.``); copy its sha256 into ``CganBlurMaskFuser.weights_record``.
``--evaluate`` writes the model card's held-out metrics to ``models/cgan_blurmask/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKED = Path("models/cgan_blurmask/cgan_blurmask.lite.safetensors")
#: The runs whose generators are shipped (``--pack`` defaults).
SINGLE_CONFIG = "configs/train_cgan_single_r3_mixed.yaml"
FEW_CONFIG = "configs/train_cgan_few_gated.yaml"


def pack(single_cfg: str, few_cfg: str, out: Path = PACKED) -> int:
    """Assemble BM + both generators into one weights file (default: the shipped one).

    Prints its sha256. The generators' mask gates come from the configs (``gated``); for the
    shipped file they must match ``GATED_SINGLE`` / ``GATED_FEW`` in
    :mod:`wsi_fusion.nets.cgan_blurmask`.
    """
    from wsi_fusion.fusers._weights import load_into, load_state_dict, save_weights
    from wsi_fusion.nets.cgan_blurmask import CganBlurMask
    from wsi_fusion.training.cgan_blurmask import CganTrainConfig, load_blurmask
    from wsi_fusion.training.config import load_train_config

    single = load_train_config(single_cfg, CganTrainConfig)
    few = load_train_config(few_cfg, CganTrainConfig)
    model = CganBlurMask("lite", gated_single=single.gated, gated_few=few.gated)
    model.bm.load_state_dict(load_blurmask(single.blurmask).state_dict())
    for gen, cfg in ((model.single, single), (model.few, few)):
        load_into(gen, load_state_dict(Path(cfg.output)), source=cfg.output)
    sha = save_weights(model, out)
    size = out.stat().st_size / 1e6
    logging.getLogger("train_cgan").info("packed %s (%.1f MB) sha256 %s", out, size, sha)
    sys.stdout.write(f"{sha}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from wsi_fusion.training.run import save_and_finish, start_logging, train_parser

    parser = train_parser(__doc__, ROOT / "configs" / "train_cgan_single.yaml")
    parser.add_argument("--pack", action="store_true", help="pack BM + both generators")
    parser.add_argument("--single-config", default=SINGLE_CONFIG, help="--pack: single-plane run")
    parser.add_argument("--few-config", default=FEW_CONFIG, help="--pack: few-plane run")
    parser.add_argument("--out", default=str(PACKED), help="--pack: file to write")
    parser.add_argument(
        "--weights", default=str(PACKED), help="--evaluate: packed file to evaluate"
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="held-out metrics of the packed model"
    )
    args = parser.parse_args(argv)
    start_logging()
    os.chdir(ROOT)  # config paths are relative to the repository
    if args.pack:
        return pack(args.single_config, args.few_config, Path(args.out))
    if args.evaluate:
        from wsi_fusion.training.cgan_blurmask import CganTrainConfig, evaluate_cgan
        from wsi_fusion.training.config import load_train_config

        configs = (args.single_config, args.few_config)
        gates = tuple(load_train_config(c, CganTrainConfig).gated for c in configs)
        # Round 3: two stacks of each held-out set (H&E rows, IHC, H&E tiles, frozen section).
        metrics = evaluate_cgan(args.weights, n=8, gated=(gates[0], gates[1]), extended=True)
        out = PACKED.parent / "metrics.json"
        if Path(args.weights).resolve() != (ROOT / PACKED).resolve():
            out = Path(args.weights).with_suffix(".metrics.json")  # a candidate, not the shipped
        out.write_text(json.dumps(metrics, indent=1))
        logging.getLogger("train_cgan").info("held-out metrics: %s", out)
        return 0

    from wsi_fusion.training.cgan_blurmask import (
        CganTrainConfig,
        checkpoint_step,
        load_blurmask,
        train_cgan,
    )
    from wsi_fusion.training.config import load_train_config

    cfg = load_train_config(
        args.config, CganTrainConfig, steps=args.steps, max_seconds=args.max_seconds
    )
    began = time.perf_counter()
    bm = load_blurmask(cfg.blurmask)
    gen, _, history = train_cgan(cfg, bm, progress=not args.no_progress)
    seconds = time.perf_counter() - began
    status, _ = save_and_finish(cfg, gen, history, seconds, checkpoint_step(cfg.checkpoint))
    return status


if __name__ == "__main__":
    sys.exit(main())
