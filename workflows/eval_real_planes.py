"""Evaluate the ``cgan_blurmask`` single-plane generator on real defocused planes (issue 13).

    # the shipped model: real planes (blood smear 002/003/007/008 vs 005, CC0 smear defocus
    # +-1..+-3 vs defocus+0), registered, PSNR/SSIM of input and output vs the best plane:
    OMP_NUM_THREADS=1 .venv/bin/python workflows/eval_real_planes.py --out /tmp/real.json \
        --sheets /tmp/sheets
    # a training run's generator (snapshot or output) in the shipped BM, gate calibrated:
    .venv/bin/python workflows/eval_real_planes.py --generator scratch/train/X.safetensors \
        --gate-threshold 0.5
    # learning curve of a run: every snapshot, real planes + synthetic held-out per stain,
    # plotted with the run's training losses:
    .venv/bin/python workflows/eval_real_planes.py --curve configs/train_cgan_single_r3_mixed.yaml \
        --plot models/cgan_blurmask/learning_curve.png

Contact sheets (input | output | best plane at 100 %) of the blood smear must not be committed
(``zstack_wbc_0054`` has no licence); those of the CC0 smear may be. The library side is
:func:`wsi_fusion.training.cgan_blurmask.evaluate_real_planes` and
:func:`~wsi_fusion.training.cgan_blurmask.evaluate_single_heldout`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("eval_real_planes")


def curve(config: str, crop: int, every: int, done: list[dict] | None = None) -> list[dict]:
    """Held-out metrics of every ``every``-th snapshot of the run ``config`` (step 0 = init);
    steps already in ``done`` (an earlier ``--out`` of this run) are not measured again."""
    from wsi_fusion.training.cgan_blurmask import (
        CganTrainConfig,
        evaluate_real_planes,
        evaluate_single_heldout,
    )
    from wsi_fusion.training.config import load_train_config

    cfg = load_train_config(config, CganTrainConfig)
    snapshots = sorted(Path(cfg.checkpoint).with_suffix(".snapshots").glob("step_*.safetensors"))
    points: list[tuple[int, str | None]] = [(0, cfg.init)]
    points += [(int(p.stem.split("_")[1]), str(p)) for p in snapshots]
    points = [p for p in points if p[0] % every == 0]
    known = {r["step"]: r for r in done or []}
    rows = []
    for step, gen in points:
        if step in known:
            rows.append(known[step])
            continue
        # Raw gate (threshold 0): what the generator learnt, before any calibration.
        real = evaluate_real_planes(
            cfg.init, crop=crop, generator=gen, blurmask=cfg.blurmask, mask_threshold=0.0
        )
        synth = evaluate_single_heldout(cfg.init, gen, 0.0, blurmask=cfg.blurmask)
        rows.append({"step": step, "real": real["by_stack"], "synthetic": synth})
        log.info("step %d: real %s synthetic %s", step, real["by_stack"], synth)
    return rows


def plot(config: str, rows: list[dict], out: Path) -> None:
    """Training losses (from the run's log) and held-out gains vs step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsi_fusion.training.cgan_blurmask import CganTrainConfig
    from wsi_fusion.training.config import load_train_config

    cfg = load_train_config(config, CganTrainConfig)
    history = json.loads(Path(cfg.checkpoint).with_suffix(".log.json").read_text())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    import numpy as np

    steps = np.array([h["step"] for h in history])
    ratio = np.array([h["l1"] / h["l1_input"] for h in history])
    k = 4  # 4 log records = 100 steps: batches differ a lot, the ratio to the input is steadier
    smooth = np.convolve(ratio, np.ones(k) / k, mode="valid")
    ax1.plot(steps, ratio, color="0.75", label="25-step means")
    ax1.plot(steps[k - 1 :], smooth, label="100-step means")
    ax1.set_xlabel("step (3 crops of 96 px)")
    ax1.set_ylabel("L1(G, target) / L1(input plane, target)")
    ax1.set_title("training loss relative to the input plane")
    ax1.legend(fontsize=8)
    xs = [r["step"] for r in rows]
    for stain in rows[0]["synthetic"]["gain_db_by_stain"]:
        ax2.plot(xs, [r["synthetic"]["gain_db_by_stain"][stain] for r in rows], "o-", label=stain)
    for stack in rows[0]["real"]:
        ax2.plot(xs, [r["real"][stack]["gain_psnr_db"] for r in rows], "s--", label=f"real {stack}")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xlabel("step")
    ax2.set_ylabel("PSNR gain over input plane (dB)")
    ax2.set_title("held-out, raw gate (synthetic 256 px per stain; real)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--weights", default=None, help="packed model (default: the shipped one)")
    parser.add_argument("--generator", default=None, help="single-plane generator to swap in")
    parser.add_argument("--blurmask", default=None, help="BM weights to swap in")
    parser.add_argument("--gate-threshold", type=float, default=None)
    parser.add_argument("--crop", type=int, default=768)
    parser.add_argument("--sheets", default=None, help="folder for contact sheets")
    parser.add_argument("--synthetic", action="store_true", help="also synthetic held-out")
    parser.add_argument("--out", default=None, help="JSON file (default: print)")
    parser.add_argument("--curve", default=None, help="training config: learning curve")
    parser.add_argument("--every", type=int, default=200, help="--curve: snapshot spacing")
    parser.add_argument("--plot", default=None, help="--curve: PNG to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.chdir(ROOT)
    import torch

    torch.set_num_threads(1)
    if args.curve:
        done = None
        if args.out and Path(args.out).exists():
            done = json.loads(Path(args.out).read_text()).get("curve")
        rows = curve(args.curve, min(args.crop, 512), args.every, done)
        result: dict = {"config": args.curve, "curve": rows}
        if args.plot:
            plot(args.curve, rows, Path(args.plot))
    else:
        from wsi_fusion.training.cgan_blurmask import evaluate_real_planes, evaluate_single_heldout

        result = evaluate_real_planes(
            args.weights,
            args.crop,
            sheet_dir=args.sheets,
            mask_threshold=args.gate_threshold,
            generator=args.generator,
            blurmask=args.blurmask,
        )
        if args.synthetic:
            result["synthetic"] = evaluate_single_heldout(
                args.weights, args.generator, args.gate_threshold, blurmask=args.blurmask
            )
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
