"""Candidate weights or settings of a learned fuser against the shipped ones and the classical
fusers, per held-out stain and per real stack, in one run (for the model cards, issue 13).

    .venv/bin/python workflows/eval_decision_fusers.py --fuser msegnet \\
        --variant 'new={"weights": "scratch/msegnet_shared/msegnet.small.safetensors"}' \\
        --real wbc,smear --crop 1024 --json scratch/msegnet_shared/eval.json

- **Synthetic**: ``training.data.heldout_stacks(extended=True)``: held-out H&E rows (``he``),
  scikit-image's IHC image (``ihc``), the held-out H&E tiles of other slides (``he-tiles``)
  and the frozen-section slide (``he-frozen``); luminance PSNR / SSIM against the ground truth,
  mean per stain. The classical fusers run on the same stacks.
- **Real**: central ``--crop`` px crops of the real stacks of ``workflows/evaluate.py``
  (registered the same way), block fidelity p10 / median and focus-attainment median
  (``wsi_fusion.evaluation.block_checks``), next to the best single plane.

Every variant is ``LABEL=JSON`` (fuser parameters); ``shipped`` (no parameters) is included
unless ``--no-shipped``. Weights given by path are read without a pinned sha256 (candidates).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSICAL = ["focus_measure", "laplacian_pyramid", "wavelet"]


def per_stain(rows: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean PSNR/SSIM per stain (stack names are ``<stain>_<seed>``) of each row."""
    out: dict[str, dict[str, float]] = {}
    for label, row in rows.items():
        groups: dict[str, list[tuple[float, float]]] = {}
        for stack, v in row["per_stack"].items():
            groups.setdefault(stack.rsplit("_", 1)[0], []).append((v["psnr"], v["ssim"]))
        out[label] = {
            f"{stain} {m}": float(np.mean([x[i] for x in vals]))
            for stain, vals in groups.items()
            for i, m in enumerate(("psnr", "ssim"))
        }
        out[label]["mean psnr"] = row["psnr"]
    return out


def _evaluate_module() -> Any:
    """``workflows/evaluate.py`` (the same crops, registration and block checks); its committed
    version when the working copy does not import (being edited)."""
    import importlib.util
    import subprocess
    import tempfile

    sys.path.insert(0, str(ROOT / "workflows"))
    try:
        import evaluate

        return evaluate
    except ImportError as err:
        print(f"workflows/evaluate.py does not import ({err}); using its committed version")
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", "HEAD:workflows/evaluate.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "evaluate_head.py"
    path.write_text(source.replace("Path(__file__).resolve().parents[1]", repr(str(ROOT))))
    spec = importlib.util.spec_from_file_location("evaluate_head", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_rows(
    variants: dict[str, tuple[str, dict[str, Any]]], names: list[str], crop: int
) -> dict[str, dict[str, Any]]:
    """Block fidelity / attainment of each variant and the best single plane per real stack."""
    ev = _evaluate_module()
    from wsi_fusion.fusers import create_fuser

    stacks = ev.real_stacks(crop, names)
    out: dict[str, dict[str, Any]] = {}
    for stack_name, info in stacks.items():
        info.setdefault("sheets", {})
        planes = info["planes"]
        rows: dict[str, Any] = {}
        best, index = ev.best_single_plane(planes)
        rows[f"best single plane ({index})"] = ev.real_metrics(
            best, info, planes, None, stack_name, 0
        )
        for label, (name, params) in variants.items():
            fuser = create_fuser(name, **params)
            started = time.process_time()
            fused, _ = ev.fuse(fuser, planes)
            metrics = ev.real_metrics(fused, info, planes, None, stack_name, 0)
            metrics["cpu_s"] = time.process_time() - started
            rows[label] = metrics
            print(f"  {stack_name} {label}: fidelity p10 {metrics.get('fidelity_p10'):.3f}")
        out[stack_name] = {"planes": int(planes.shape[0]), "rows": rows}
    return out


def markdown(result: dict[str, Any]) -> str:
    stains = sorted({k for v in result["per_stain"].values() for k in v if k.endswith("psnr")})
    lines = ["| fuser | " + " | ".join(stains) + " |", "|---|" + "---:|" * len(stains)]
    for label, v in result["per_stain"].items():
        lines.append(f"| {label} | " + " | ".join(f"{v.get(s, float('nan')):.2f}" for s in stains))
    for stack, r in result.get("real", {}).items():
        lines += ["", f"**{stack}** ({r['planes']} planes)", ""]
        lines += ["| fuser | fidelity p10 | fidelity median | attainment median | CPU s |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for label, m in r["rows"].items():
            cpu = f"{m['cpu_s']:.1f}" if "cpu_s" in m else "–"
            lines.append(
                f"| {label} | {m.get('fidelity_p10', float('nan')):.3f} | "
                f"{m.get('fidelity', float('nan')):.3f} | "
                f"{m.get('focus_attainment', float('nan')):.3f} | {cpu} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fuser", required=True)
    parser.add_argument("--variant", action="append", default=[], help="LABEL=JSON parameters")
    parser.add_argument("--n", type=int, default=8, help="held-out synthetic stacks (4 stains)")
    parser.add_argument("--no-classical", action="store_true")
    parser.add_argument("--no-shipped", action="store_true", help="only the --variant rows")
    parser.add_argument("--real", default="", help="real stacks, e.g. wbc,smear ('' = none)")
    parser.add_argument("--crop", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from wsi_fusion.training.data import heldout_stacks
    from wsi_fusion.training.heldout import compare_on_stacks

    variants: dict[str, tuple[str, dict[str, Any]]] = {}
    if not args.no_shipped:
        variants[f"{args.fuser} shipped"] = (args.fuser, {})
    for spec in args.variant:
        label, _, params = spec.partition("=")
        variants[f"{args.fuser} {label}"] = (args.fuser, json.loads(params or "{}"))
    compared = dict(variants)
    if not args.no_classical:
        compared.update({name: (name, {}) for name in CLASSICAL})
    result: dict[str, Any] = {
        "fuser": args.fuser,
        "variants": {k: v[1] for k, v in variants.items()},
        "per_stain": {},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.n > 0:
        stacks = heldout_stacks(n=args.n, extended=True)
        synthetic = compare_on_stacks(compared, stacks)
        result.update(
            synthetic=synthetic,
            per_stain=per_stain(synthetic["fusers"]),
            stacks=[name for name, _ in stacks],
        )
        args.json.write_text(json.dumps(result, indent=1, default=float))  # kept if real fails
    if args.real:
        result["real"] = real_rows(variants, args.real.split(","), args.crop)
    table = markdown(result)
    result["table"] = table
    args.json.write_text(json.dumps(result, indent=1, default=float))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
