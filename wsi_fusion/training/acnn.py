"""Training of ACNN (Du & Gao 2018): a two-class classifier of focused/defocused patch pairs.

Data: :func:`wsi_fusion.training.data.patch_pair_sample` — a 16 x 16 patch of real H&E tissue
and a Gaussian-blurred copy (sigma uniform in ``sigma``), noise and JPEG, in random order;
label 1 when patch A is the focused one. Grey inputs, as the letter ("if the image to be fused
is a color image, we first transform it into the gray space").

Loss: two-class cross-entropy of the softmax output (the letter trains a classifier whose output
"is a scalar ranging from 0 to 1"; CNN-Fuse, its baseline, uses the same loss).

Deviations from the paper and why (also in the model card)
----------------------------------------------------------
- The letter gives no training set or schedule; the recipe follows CNN-Fuse (Liu et al. 2017:
  blurred copies of natural-image patches) with H&E tissue instead of ImageNet.
- Half the pairs start from an already blurred crop (sigma₀ uniform in ``base_blur``): the
  "focused" patch is then only *sharper*, which is what a z-stack asks (neighbouring planes).
- Adam with cosine decay for a few thousand steps on CPU instead of an unspecified GPU schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from wsi_fusion.nets.acnn import ACNN, PAPER, SMALL, ACNNConfig
from wsi_fusion.training.data import (
    augment,
    gaussian_blur,
    patch_pair_sample,
    random_crop,
    to_float,
)
from wsi_fusion.training.loop import step_rng

Image = npt.NDArray[np.uint8]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: Network sizes by ``width``: the shipped reduced one and CNN-Fuse's (64, 128, 256, FC 256).
WIDTHS: dict[str, ACNNConfig] = {
    "small": SMALL,
    "paper": PAPER,
}


class ACNNTrainConfig(BaseModel):
    """The run config of ``workflows/train_acnn.py`` (``configs/train_acnn.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    #: Network size (:data:`WIDTHS`); "small" is the shipped ``acnn.small``.
    width: Literal["small", "paper"] = "small"
    seed: int = 0
    steps: int = Field(default=2000, ge=1)
    batch: int = Field(default=128, ge=1)
    sigma: tuple[float, float] = (0.5, 4.0)
    base_blur: tuple[float, float] = (0.0, 2.0)
    base_blur_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    noise: float = Field(default=0.01, ge=0.0)
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    threads: int = Field(default=1, ge=1)
    max_seconds: float | None = 720.0
    checkpoint: str = "scratch/acnn/checkpoint.pt"
    output: str = "models/acnn/acnn.small.safetensors"
    extra_sources: list[str] = Field(default_factory=list)
    log_every: int = 25
    checkpoint_every: int = 100


def sample_batch(
    sources: Sequence[Image], rng: np.random.Generator, cfg: ACNNTrainConfig, patch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey patches A, B ``(batch, 1, patch, patch)`` and labels ``(batch,)`` (1: A focused)."""
    pad = 16  # patch_pair_sample blurs a crop this much larger on each side
    a_list, b_list, labels = [], [], []
    for _ in range(cfg.batch):
        source = sources[int(rng.integers(len(sources)))]
        crop = augment(random_crop(source, patch + 2 * pad, rng), rng)
        if rng.random() < cfg.base_blur_probability:
            s0 = float(rng.uniform(*cfg.base_blur))
            crop = np.rint(gaussian_blur(to_float(crop), s0) * 255).astype(np.uint8)
        a, b, label = patch_pair_sample(crop, rng, size=patch, sigma=cfg.sigma, noise=cfg.noise)
        a_list.append(a @ _LUMA)
        b_list.append(b @ _LUMA)
        labels.append(label)

    def stack(xs: list[npt.NDArray[np.float32]]) -> torch.Tensor:
        return torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))

    return stack(a_list), stack(b_list), torch.tensor(labels, dtype=torch.long)


def build_training(
    cfg: ACNNTrainConfig, sources: Sequence[Image], net: ACNN
) -> tuple[
    Callable[[int], Mapping[str, float]],
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
]:
    """Adam, cosine schedule and the ``step_fn`` of the training loop."""
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)

    def step(i: int) -> Mapping[str, float]:
        a, b, label = sample_batch(sources, step_rng(cfg.seed, i), cfg, net.cfg.patch)
        logits = net(a, b)
        loss = F.cross_entropy(logits, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        accuracy = (logits.detach().argmax(dim=1) == label).float().mean()
        return {"loss": loss.item(), "acc": accuracy.item()}

    return step, optimizer, scheduler


def train(
    cfg: ACNNTrainConfig, root: Path, progress: bool = True
) -> tuple[list[dict[str, float]], str, float]:
    """Run (or resume) the training; return the history, the weights' sha256 and the seconds.

    The sha256 is empty when the time budget stopped the run before ``cfg.steps``.
    """
    from wsi_fusion.training.data import sharp_sources
    from wsi_fusion.training.run import Built, train_and_save

    def build() -> Built:
        net = ACNN(WIDTHS[cfg.width])
        sources = sharp_sources([root / d for d in cfg.extra_sources])
        step, optimizer, scheduler = build_training(cfg, sources, net)
        return net, step, optimizer, scheduler

    return train_and_save(cfg, root, build, progress=progress)
