"""Training of GACN (Ma et al. 2021, Sec. 3.2 and 4.2): Dice + λ·(1 − Q_g) on mask pairs.

Loss (Eq. 6): ``L = L_Dice + λ·L_Qg`` with λ = 1.

- ``L_Dice`` (Eq. 7) compares the *initial* DM with the ground-truth mask.
- ``L_Qg = 1 − Q_g`` (Eqs. 8-18) is the differentiable Q^AB/F of the fused image
  ``F = p·A + (1 − p)·B`` built from the *final* (boundary-smoothed) DM: Sobel strength and
  orientation, the relative strength of Eq. 13 with the sigmoid Heaviside (k = 1000, Eq. 12),
  the orientation term of Eq. 11 with the absolute value (the paper notes it is differentiable
  in PyTorch), the sigmoids of Eqs. 15-16 with the constants the GACN paper quotes
  (Γ = 1, κ_g = −10, σ_g = 0.5, κ_α = −20, σ_α = 0.75) and the weights ``w = g`` (γ = 1).
  Sobel with zero padding and ``atan(s_y / s_x)``, as :func:`wsi_fusion.metrics.q_abf`.

Data (Sec. 4.1): :func:`wsi_fusion.training.data.mask_pair_sample` — sources A and B that are
sharp in complementary random regions of real H&E tissue, Gaussian-blurred elsewhere, noise and
JPEG; crops, flips, rotations, colour jitter. Grey inputs, as the paper.

Deviations from the paper and why (also in the model card)
----------------------------------------------------------
- Training images are H&E tissue crops instead of MS-COCO with instance masks (no download
  possible, and the target domain is tissue); masks are random smooth regions.
- Half the samples start from an already blurred copy (σ₀ uniform in ``base_blur``) so the
  "sharp" side is only *sharper*: in a z-stack most pairs compare two blurred planes.
- Sigmoid-projection steepness during training ramps geometrically from 1 to 100
  (``train_steepness``) instead of a fixed 1000: at k = 1000 the projection is saturated at
  initialisation and Dice has no gradient; at a small k the one-sided Dice of Eq. 7
  rewards p above 0.5 on *both* classes (measured: Dice falling while the accuracy of
  ``p > 0.5`` stayed at 50 %), which the antisymmetric decision path
  (``nets.gacn.GACNConfig.antisymmetric``) prevents. The network learns logits whose sign is
  the decision; inference applies the paper's k = 1000.
- Adam with a cosine learning-rate decay over a few hundred steps instead of 50 epochs with
  ×0.8 every two epochs (CPU budget); batch and crop sizes are in the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from wsi_fusion.nets.gacn import GACN, PAPER, SMALL, BoundarySmoothing, smooth_boundary
from wsi_fusion.training.data import augment, mask_pair_sample, random_crop
from wsi_fusion.training.loop import step_rng

Image = npt.NDArray[np.uint8]

#: BT.601 luma, as the fuser's grey conversion.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class GACNTrainConfig(BaseModel):
    """The run config of ``workflows/train_gacn.py`` (``configs/train_gacn.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    #: Network size: "small" (the shipped ``gacn.small``) or "paper" (``GACNConfig()``).
    width: Literal["small", "paper"] = "small"
    seed: int = 0
    steps: int = Field(default=400, ge=1)
    batch: int = Field(default=8, ge=1)
    crop: int = Field(default=80, ge=32)
    sigma: tuple[float, float] = (0.75, 6.0)
    base_blur: tuple[float, float] = (0.0, 2.0)
    base_blur_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    noise: float = Field(default=0.01, ge=0.0)
    #: HED stain jitter of the crops (``training.data.augment``); 0 = the first shipped run.
    stain: float = Field(default=0.0, ge=0.0, lt=1.0)
    lr: float = Field(default=2e-3, gt=0.0)
    qg_weight: float = Field(default=1.0, ge=0.0)
    train_steepness: tuple[float, float] = (1.0, 100.0)
    threads: int = Field(default=1, ge=1)
    max_seconds: float | None = 720.0
    checkpoint: str = "scratch/gacn/checkpoint.pt"
    output: str = "models/gacn/gacn.small.safetensors"
    extra_sources: list[str] = Field(default_factory=list)
    log_every: int = 10
    checkpoint_every: int = 50


# -- losses --------------------------------------------------------------------------------------


def dice_loss(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``1 − (2 Σ p g + 1) / (Σ p² + Σ g² + 1)`` per sample, averaged."""
    dims = tuple(range(1, p.ndim))
    num = 2 * (p * g).sum(dims) + 1
    den = (p * p).sum(dims) + (g * g).sum(dims) + 1
    return (1 - num / den).mean()


@dataclass(frozen=True)
class QgConstants:
    """Sigmoid constants of Eqs. 15-16 as the GACN paper quotes them, and k of Eq. 12."""

    gamma_g: float = 1.0
    kappa_g: float = -10.0
    sigma_g: float = 0.5
    gamma_a: float = 1.0
    kappa_a: float = -20.0
    sigma_a: float = 0.75
    k: float = 1000.0


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge strength and orientation (Eqs. 8-9) of ``(N, 1, H, W)``, zero padding.

    Convolution (not correlation), as Matlab's ``conv2`` in the reference ``Qabf.m``.
    """
    kx = _SOBEL_X.flip(0, 1).to(x)[None, None]
    ky = _SOBEL_Y.flip(0, 1).to(x)[None, None]
    sx = F.conv2d(x, kx, padding=1)
    sy = F.conv2d(x, ky, padding=1)
    g = torch.sqrt(sx * sx + sy * sy + 1e-12)
    # atan(sy / sx), pi/2 where sx == 0 (the reference's convention), with a safe denominator.
    zero = sx.abs() < 1e-12
    safe = torch.where(zero, torch.ones_like(sx), sx)
    alpha = torch.where(zero, torch.full_like(sx, math.pi / 2), torch.atan(sy / safe))
    return g, alpha


def _heaviside(x: torch.Tensor, y: torch.Tensor, k: float) -> torch.Tensor:
    """Eq. 12: smooth step ``1 / (1 + exp(−k (x − y)))``."""
    return torch.sigmoid(k * (x - y))


def _preservation(
    g_s: torch.Tensor, a_s: torch.Tensor, g_f: torch.Tensor, a_f: torch.Tensor, c: QgConstants
) -> torch.Tensor:
    """Q^{SF} per pixel (Eqs. 13, 11, 15-17)."""
    eps = 1e-6
    f = _heaviside(g_f, g_s, c.k)
    # Eq. 13: g_A/g_F where g_F > g_A, g_F/g_A otherwise (the min/max ratio).
    rel = f * (g_s / (g_f + eps)) + (1 - f) * (g_f / (g_s + eps))
    orient = 1 - (a_s - a_f).abs() / (math.pi / 2)
    q_g = c.gamma_g / (1 + torch.exp(c.kappa_g * (rel - c.sigma_g)))
    q_a = c.gamma_a / (1 + torch.exp(c.kappa_a * (orient - c.sigma_a)))
    return q_g * q_a


def qg_loss(
    a: torch.Tensor, b: torch.Tensor, fused: torch.Tensor, c: QgConstants | None = None
) -> torch.Tensor:
    """``1 − Q_g`` (Eq. 18) per sample, averaged; images ``(N, 1, H, W)`` on the 0-255 scale."""
    c = c or QgConstants()
    g_a, a_a = sobel(a)
    g_b, a_b = sobel(b)
    g_f, a_f = sobel(fused)
    num = _preservation(g_a, a_a, g_f, a_f, c) * g_a + _preservation(g_b, a_b, g_f, a_f, c) * g_b
    dims = (1, 2, 3)
    q = num.sum(dims) / (g_a.sum(dims) + g_b.sum(dims) + 1e-6)
    return (1 - q).mean()


# -- data ----------------------------------------------------------------------------------------


def grey(rgb: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(H, W, 3) float -> (H, W) BT.601 luma."""
    return (rgb @ _LUMA.numpy()).astype(np.float32)


def sample_batch(
    sources: Sequence[Image], rng: np.random.Generator, cfg: GACNTrainConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grey A, B and the mask, each ``(batch, 1, crop, crop)``."""
    from wsi_fusion.training.data import gaussian_blur, to_float

    a_list, b_list, m_list = [], [], []
    for _ in range(cfg.batch):
        source = sources[int(rng.integers(len(sources)))]
        crop = augment(random_crop(source, cfg.crop, rng), rng, stain=cfg.stain)
        if rng.random() < cfg.base_blur_probability:
            s0 = float(rng.uniform(*cfg.base_blur))
            crop = np.rint(gaussian_blur(to_float(crop), s0) * 255).astype(np.uint8)
        a, b, mask = mask_pair_sample(crop, rng, sigma=cfg.sigma, noise=cfg.noise)
        if rng.random() < 0.5:  # symmetric roles: A is sharp where the mask is 0 just as often
            a, b, mask = b, a, 1.0 - mask
        a_list.append(grey(a))
        b_list.append(grey(b))
        m_list.append(mask)

    def stack(xs: list[npt.NDArray[np.float32]]) -> torch.Tensor:
        return torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))

    return stack(a_list), stack(b_list), stack(m_list)


# -- one training step ---------------------------------------------------------------------------


def steepness_at(step: int, cfg: GACNTrainConfig) -> float:
    """Sigmoid-projection steepness of a training step: geometric ramp over the run."""
    start, end = cfg.train_steepness
    return float(start * (end / start) ** (step / max(cfg.steps - 1, 1)))


def make_step(
    net: GACN,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sources: Sequence[Image],
    cfg: GACNTrainConfig,
    smoothing: BoundarySmoothing | None = None,
) -> Callable[[int], Mapping[str, float]]:
    """The ``step_fn`` of :func:`wsi_fusion.training.loop.train_loop` for GACN."""
    smoothing = smoothing or BoundarySmoothing()

    def step(i: int) -> Mapping[str, float]:
        a, b, mask = sample_batch(sources, step_rng(cfg.seed, i), cfg)
        dm = net(a, b, steepness=steepness_at(i, cfg))
        final = smooth_boundary(dm, a, b, smoothing)
        fused = final * a + (1 - final) * b
        l_dice = dice_loss(dm, mask)
        l_qg = qg_loss(a * 255, b * 255, fused * 255)
        loss = l_dice + cfg.qg_weight * l_qg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            accuracy = ((dm > 0.5).float() == mask).float().mean()
        return {
            "loss": loss.item(),
            "dice": l_dice.item(),
            "qg": l_qg.item(),
            "acc": float(accuracy),
        }

    return step


def build_training(
    cfg: GACNTrainConfig, sources: Sequence[Image], net: GACN
) -> tuple[
    Callable[[int], Mapping[str, float]],
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
]:
    """Optimiser (Adam, Sec. 4.2), cosine schedule and the step function."""
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    return make_step(net, optimizer, scheduler, sources, cfg), optimizer, scheduler


# -- the run ------------------------------------------------------------------------------------


def train(
    cfg: GACNTrainConfig, root: Path, progress: bool = True
) -> tuple[list[dict[str, float]], str, float]:
    """Run (or resume) the training; return the history, the weights' sha256 and the seconds.

    The sha256 is empty when the time budget stopped the run before ``cfg.steps``.
    """
    from wsi_fusion.training.data import sharp_sources
    from wsi_fusion.training.run import Built, train_and_save

    def build() -> Built:
        net = GACN(SMALL if cfg.width == "small" else PAPER)
        sources = sharp_sources([root / d for d in cfg.extra_sources])
        step, optimizer, scheduler = build_training(cfg, sources, net)
        return net, step, optimizer, scheduler

    return train_and_save(cfg, root, build, progress=progress)
