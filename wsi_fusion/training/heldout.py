"""Side-by-side comparison of fusers on the held-out synthetic stacks, for the model cards.

Every fuser of one call sees the same stacks (:func:`wsi_fusion.training.data.heldout_stacks`)
in the same process, so PSNR/SSIM against ground truth and CPU tiles/s are comparable.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from wsi_fusion.fusers import create_fuser
from wsi_fusion.metrics import psnr, ssim
from wsi_fusion.synth import SynthStack, make_stack
from wsi_fusion.training.data import heldout_stacks, random_crop, sharp_sources

#: The classical baselines every model card compares against.
CLASSICAL: dict[str, tuple[str, dict[str, Any]]] = {
    "focus_measure": ("focus_measure", {}),
    "laplacian_pyramid": ("laplacian_pyramid", {}),
    "wavelet": ("wavelet", {}),
}


def planes_to_tile(planes: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """uint8 ``(Z, H, W, C)`` planes as a float32 ``(Z, C, H, W)`` tile in [0, 1]."""
    return np.ascontiguousarray(planes.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def to_tile(stack: SynthStack) -> npt.NDArray[np.float32]:
    """A synthetic stack's planes as a fuser's ``(Z, C, H, W)`` input tile."""
    return planes_to_tile(stack.planes)


def to_image(fused: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """A fused ``(C, H, W)`` float image in [0, 1] as ``(H, W, C)`` uint8 (the metrics' input)."""
    return np.clip(np.rint(fused.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def validation_stacks(
    n: int = 6, size: int = 384, n_planes: int = 5, seed: int = 777, prefix: str = "val"
) -> list[tuple[str, SynthStack]]:
    """Stacks from the *training* rows of the H&E region, for choosing defaults.

    Same defocus model as the held-out set; never used to report results. Named
    ``<prefix>_<seed + i>``.
    """
    rng = np.random.default_rng(seed)
    source = sharp_sources()[0]
    out = []
    for i in range(n):
        crop = random_crop(source, size, rng, min_tissue=0.6, tries=30)
        out.append(
            (f"{prefix}_{seed + i}", make_stack(crop, n_planes, seed=seed + i, noise_sigma=0.005))
        )
    return out


def compare_on_heldout(
    compared: Mapping[str, tuple[str, dict[str, Any]]],
    n: int = 6,
    side: int = 512,
    planes: int = 5,
) -> dict[str, Any]:
    """PSNR/SSIM against ground truth and tiles/s of each ``label: (fuser, params)``.

    Returns a JSON-able dict: the held-out set's description, one row per label (means and
    per-stack values) and the hardware. Timing is single-process, after one warm-up tile.
    """
    stacks = heldout_stacks(n=n, size=side, n_planes=planes, noise=0.005)
    result = compare_on_stacks(compared, stacks)
    result["heldout"] = {"n": n, "side": side, "planes": planes, "noise": 0.005}
    return result


def compare_on_stacks(
    compared: Mapping[str, tuple[str, dict[str, Any]]], stacks: list[tuple[str, SynthStack]]
) -> dict[str, Any]:
    """PSNR/SSIM against ground truth and tiles/s of each fuser on ``stacks``."""
    tiles = {name: to_tile(s) for name, s in stacks}
    truth = {name: s.ground_truth for name, s in stacks}
    rows: dict[str, dict[str, Any]] = {}
    for label, (name, params) in compared.items():
        fuser = create_fuser(name, **params)
        fuser.fuse(next(iter(tiles.values()))[:, :, :64, :64])  # warm-up (model load)
        per: dict[str, dict[str, float]] = {}
        started = time.perf_counter()
        fused = {key: to_image(fuser.fuse(tile).fused) for key, tile in tiles.items()}
        seconds = time.perf_counter() - started
        for key, image in fused.items():
            per[key] = {"psnr": psnr(image, truth[key]), "ssim": ssim(image, truth[key])}
        rows[label] = {
            "fuser": name,
            "params": params,
            "psnr": float(np.mean([v["psnr"] for v in per.values()])),
            "ssim": float(np.mean([v["ssim"] for v in per.values()])),
            "tiles_per_s": len(tiles) / seconds,
            "per_stack": per,
        }
    return {
        "fusers": rows,
        "hardware": f"{platform.processor() or platform.machine()} CPU",
    }


def markdown_table(result: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table (best PSNR first)."""
    rows = sorted(result["fusers"].items(), key=lambda kv: -kv[1]["psnr"])
    lines = ["| fuser | PSNR (dB) | SSIM | tiles/s (512², 5 planes, CPU) |", "|---|---|---|---|"]
    for label, row in rows:
        lines.append(
            f"| {label} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['tiles_per_s']:.3f} |"
        )
    return "\n".join(lines)


def time_interleaved(
    compared: Mapping[str, tuple[str, dict[str, Any]]],
    repeats: int = 3,
    side: int = 512,
    planes: int = 5,
) -> dict[str, float]:
    """Seconds per ``side``² tile of ``planes`` planes for each fuser: the best of ``repeats``.

    The fusers take turns on the same tile (round ``r`` runs every fuser once), so a change in
    the machine's load during the measurement hits all of them alike; the minimum is the least
    disturbed run.
    """
    _, stack = heldout_stacks(n=1, size=side, n_planes=planes, noise=0.005)[0]
    tile = to_tile(stack)
    fusers = {label: create_fuser(name, **params) for label, (name, params) in compared.items()}
    for fuser in fusers.values():
        fuser.fuse(tile[:, :, :64, :64])  # warm-up (model load)
    best = {label: float("inf") for label in fusers}
    for _ in range(repeats):
        for label, fuser in fusers.items():
            started = time.perf_counter()
            fuser.fuse(tile)
            best[label] = min(best[label], time.perf_counter() - started)
    return best
