"""Train m-SegNet and write its fp16 safetensors weights: one command, resumable, seeded.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python workflows/train_msegnet.py \
        --config configs/train_msegnet.yaml

    .venv/bin/python workflows/train_msegnet.py --evaluate   # held-out table for the card

Rerunning the same command resumes from the checkpoint named in the config. When the run
completes, the weights file and its sha256 are written and a JSON summary (steps, wall time,
final losses, sha256) goes next to the checkpoint; copy the sha256 into
``MSegNetFuser.weights_record``.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from wsi_fusion.training.run import (
        add_comparison_options,
        finish_run,
        start_logging,
        train_parser,
        training_summary,
    )

    parser = train_parser(__doc__, ROOT / "configs" / "train_msegnet.yaml")
    add_comparison_options(parser, "msegnet")
    parser.add_argument(
        "--write-reference",
        action="store_true",
        help="instead of training: write the tiny reference output of the shipped weights used "
        "by tests/fusers/test_msegnet.py",
    )
    args = parser.parse_args(argv)
    start_logging()
    if args.evaluate:
        return evaluate(ROOT / "models" / "msegnet" / "metrics.json")
    if args.validate:
        return evaluate(ROOT / "models" / "msegnet" / "validation.json", validation=True)
    if args.write_reference:
        return write_reference(ROOT / "tests" / "fusers" / "data" / "msegnet_reference.npz")

    from wsi_fusion.training.config import load_train_config
    from wsi_fusion.training.msegnet import MSegNetTrainConfig, train

    cfg = load_train_config(
        args.config, MSegNetTrainConfig, steps=args.steps, max_seconds=args.max_seconds
    )
    history, sha, seconds = train(cfg, ROOT, progress=not args.no_progress)
    return finish_run(ROOT / cfg.checkpoint, training_summary(cfg, history, seconds, sha))


def write_reference(out: Path) -> int:
    """Fixed 3-plane 48 x 64 stack (held-out IHC crop, synthetic defocus), its focused
    probabilities (float16) and plane index from the shipped weights, as a compressed npz."""
    import numpy as np

    from wsi_fusion.fusers.msegnet import MSegNetFuser
    from wsi_fusion.synth import make_stack
    from wsi_fusion.training.data import heldout_sources

    crop = heldout_sources()["ihc"][200:248, 300:364]
    planes = make_stack(crop, 3, seed=0, sigma_per_plane=2.0).planes
    stack_u8 = np.ascontiguousarray(planes.transpose(0, 3, 1, 2))
    stack = stack_u8.astype(np.float32) / 255.0
    fuser = MSegNetFuser(device="cpu")
    p = fuser.focused_probability([stack])[0]
    weights = fuser.fuse(stack).weights
    if weights is None:  # msegnet always returns one-hot weights
        raise RuntimeError("msegnet returned no weights")
    index = weights.argmax(0).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, stack=stack_u8, p_focused=p.astype(np.float16), index=index)
    logging.getLogger("train_msegnet").info("wrote %s (%d bytes)", out, out.stat().st_size)
    return 0


#: Fusers compared side by side in the model card (msegnet variants + the classical ones).
COMPARED: dict[str, tuple[str, dict[str, object]]] = {
    "msegnet (default: most likely plane)": ("msegnet", {}),
    "msegnet, paper rule (base + region blur metric)": (
        "msegnet",
        {"unclaimed": "base", "arbitration": "region"},
    ),
    "msegnet, base + window blur metric": (
        "msegnet",
        {"unclaimed": "base", "arbitration": "window"},
    ),
    "msegnet, base + probability": ("msegnet", {"unclaimed": "base", "arbitration": "probability"}),
    "focus_measure": ("focus_measure", {}),
    "laplacian_pyramid": ("laplacian_pyramid", {}),
    "wavelet": ("wavelet", {}),
}


def evaluate(
    out: Path, n: int = 6, side: int = 512, planes: int = 5, validation: bool = False
) -> int:
    """PSNR/SSIM against ground truth on the held-out stacks, segmentation accuracy, tiles/s.

    With ``validation`` the stacks come from the training rows instead
    (:func:`wsi_fusion.training.heldout.validation_stacks`).

    Also fuses with the *ground-truth* segmentation (a pixel focused where its focus index is the
    plane) through the same fusion rule: the ceiling of the rule with a perfect network.
    """
    import time

    import numpy as np
    import torch

    from wsi_fusion.fusers import create_fuser
    from wsi_fusion.fusers.msegnet import MSegNetFuser, fuse_decisions
    from wsi_fusion.metrics import psnr, ssim
    from wsi_fusion.training.data import heldout_stacks
    from wsi_fusion.training.heldout import to_image, to_tile, validation_stacks

    torch.set_num_threads(1)
    if validation:
        stacks = validation_stacks(n=n, n_planes=planes, prefix="train_rows")
    else:
        stacks = heldout_stacks(n=n, size=side, n_planes=planes, noise=0.005)
    tiles = {name: to_tile(s) for name, s in stacks}
    truth = {name: s.ground_truth for name, s in stacks}

    rows: dict[str, dict[str, object]] = {}
    for label, (name, params) in COMPARED.items():
        fuser = create_fuser(name, **params)
        fuser.fuse(next(iter(tiles.values())))  # warm-up (model load, caches)
        per: dict[str, dict[str, float]] = {}
        started = time.perf_counter()
        for key, tile in tiles.items():
            fused = to_image(fuser.fuse(tile).fused)
            per[key] = {"psnr": psnr(fused, truth[key]), "ssim": ssim(fused, truth[key])}
        seconds = time.perf_counter() - started
        rows[label] = {
            "psnr": float(np.mean([v["psnr"] for v in per.values()])),
            "ssim": float(np.mean([v["ssim"] for v in per.values()])),
            "tiles_per_s_cpu_1thread": len(tiles) / seconds,
            "per_stack": per,
        }
    # Segmentation accuracy of the network and the rule's ceiling with a perfect segmentation.
    seg = MSegNetFuser()
    accuracy, ceiling = [], []
    for (key, s), p in zip(stacks, seg.focused_probability(list(tiles.values())), strict=True):
        gt_focused = s.focus_index[None] == np.arange(planes)[:, None, None]
        accuracy.append(float(((p > 0.5) == gt_focused).mean()))
        index = fuse_decisions(tiles[key], gt_focused.astype(np.float32))
        fused = np.take_along_axis(tiles[key], index[None, None].repeat(3, 1), 0)[0]
        ceiling.append(psnr(to_image(fused), truth[key]))
    result = {
        "stacks": {
            "set": "validation (training rows)" if validation else "held-out",
            "names": [name for name, _ in stacks],
            "side": stacks[0][1].ground_truth.shape[0],
            "planes": planes,
            "noise": 0.005,
        },
        "fusers": rows,
        "msegnet_pixel_accuracy": float(np.mean(accuracy)),
        "rule_with_true_segmentation_psnr": float(np.mean(ceiling)),
        "hardware": f"{platform.processor() or platform.machine()}, 1 torch thread, CPU",
    }
    out.write_text(json.dumps(result, indent=1))
    for label, row in rows.items():
        logging.getLogger("train_msegnet").info(
            "%-40s PSNR %.2f dB  SSIM %.4f  %.2f tiles/s",
            label,
            row["psnr"],
            row["ssim"],
            row["tiles_per_s_cpu_1thread"],
        )
    logging.getLogger("train_msegnet").info(
        "pixel accuracy %.4f; rule ceiling %.2f dB",
        result["msegnet_pixel_accuracy"],
        result["rule_with_true_segmentation_psnr"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
