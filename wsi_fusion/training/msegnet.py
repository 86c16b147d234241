"""Training recipe of m-SegNet (Pei et al. 2021, Sections 2.1.1, 2.1.3, 2.1.4).

Samples (one batch = ``blur_samples`` + ``stacks * planes_per_stack`` planes):

* the paper's locally blurred copies of a sharp image (its G1-G5: regions Gaussian-blurred with
  sigma 2-32, :func:`wsi_fusion.training.data.local_blur_sample`), labelled defocused where
  blurred;
* planes of full synthetic focal stacks (:func:`wsi_fusion.training.data.focal_stack_sample`),
  standing in for the paper's optimum plane and the planes above/below it (B, U1, U2, D1, D2):
  a pixel of plane ``k`` is labelled focused when ``k`` is its ground-truth focus index, i.e. the
  label the paper's annotators drew by hand.

Loss: the binary focal loss of Eqs. 2-4 on the defocused-class probability, applied to the
final output and to every decoder side output (deep supervision), averaged over the levels.

Deviations from the paper and why
---------------------------------
- AdamW with warm-up and cosine decay for a fixed number of steps instead of SGD (lr 1e-3) with
  reduce-on-plateau and early stopping over ~50 epochs: the CPU budget here is minutes, where
  plain SGD at 1e-3 barely moves; there is no epoch/validation structure in an on-the-fly
  sample stream.
- alpha and gamma are not given in the paper; alpha = 0.5 (the classes are roughly balanced in
  these samples) and gamma = 2 (Lin et al.'s default).
- Side outputs are upsampled bilinearly to the label's resolution before the loss.
- Training data are synthetic degradations of sharp tissue, not the paper's 3000 annotated
  images of 30 cancer types (not public): the shipped H&E region's training rows (first run),
  or with ``sources: shared`` those rows plus the licensed H&E tiles of other slides and
  scanners (``training.data.training_images``, source-level split), each crop re-stained with
  probability ``restain`` by colour deconvolution onto H&E / IHC / Giemsa / Pap / grey palettes
  (``training.data.stain_augment``), so unseen stains are covered without training on them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from wsi_fusion.training import data
from wsi_fusion.training.loop import step_rng

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch stays lazy for importers of this module
    import torch


class MSegNetTrainConfig(BaseModel):
    """Everything one training run depends on (``configs/train_msegnet.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    #: Encoder widths; (16, 32, 64, 128) is the shipped ``msegnet.small``.
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = Field(default=1, ge=1, le=4)
    steps: int = Field(default=1200, ge=1)
    crop: int = Field(default=96, ge=32)
    blur_samples: int = Field(default=8, ge=0)
    stacks: int = Field(default=2, ge=0)
    planes_per_stack: int = Field(default=4, ge=1)
    n_planes: int = Field(default=5, ge=2)
    sigma: tuple[float, float] = (2.0, 32.0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    focal_alpha: float = Field(default=0.5, gt=0, lt=1)
    focal_gamma: float = Field(default=2.0, ge=0)
    #: HED stain jitter of the crops (``training.data.augment``); 0 = the first shipped run.
    stain: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: Sharp sources: ``cmu1`` (the training rows of the bundled region, the first shipped
    #: runs) or ``shared`` (``training.data.training_images("train")``: those rows plus the
    #: licensed H&E tiles of ``../shared/data/train_tiles``, source-level split).
    sources: Literal["cmu1", "shared"] = "cmu1"
    #: Probability that a crop is re-stained by colour deconvolution onto a random palette
    #: (``training.data.stain_augment``: H&E, IHC, Giemsa, Pap, grey); 0 = never.
    restain: float = Field(default=0.0, ge=0.0, le=1.0)
    #: Start from these weights (safetensors, repository-relative), e.g. the shipped model;
    #: a checkpoint of the run, when present, still takes precedence (resume).
    init: str | None = None
    threads: int = Field(default=1, ge=1)
    max_seconds: float | None = None
    checkpoint: str = "scratch/msegnet/checkpoint.pt"
    output: str = "models/msegnet/msegnet.small.safetensors"
    extra_sources: tuple[str, ...] = ()
    log_every: int = 25
    checkpoint_every: int = 100


def focal_loss(
    logits: torch.Tensor, defocused: torch.Tensor, alpha: float = 0.5, gamma: float = 2.0
) -> torch.Tensor:
    """Binary focal loss (Eqs. 2-4) on the defocused-class probability.

    Parameters
    ----------
    logits : Tensor
        (N, 2, H, W) class logits (focused, defocused).
    defocused : Tensor
        (N, H, W) float targets, 1 where the pixel is defocused.
    alpha, gamma : float
        Class weight of the defocused class and the focusing exponent.
    """
    import torch
    from torch.nn import functional as F

    # Two-class softmax == sigmoid of the logit difference (Eq. 3).
    x = logits[:, 1] - logits[:, 0]
    log_p = F.logsigmoid(x)
    log_q = F.logsigmoid(-x)
    p = torch.exp(log_p)
    pos = -alpha * (1 - p) ** gamma * log_p
    neg = -(1 - alpha) * p**gamma * log_q
    return (defocused * pos + (1 - defocused) * neg).mean()


def deep_supervision_loss(
    logits: torch.Tensor,
    sides: Sequence[torch.Tensor],
    defocused: torch.Tensor,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """Focal loss of the output and of each decoder side output, averaged over the levels."""
    from torch.nn import functional as F

    size = defocused.shape[-2:]
    losses = [focal_loss(logits, defocused, alpha, gamma)]
    for side in sides:
        up = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
        losses.append(focal_loss(up, defocused, alpha, gamma))
    return sum(losses[1:], losses[0]) / len(losses)


def make_batch(
    sources: Sequence[npt.NDArray[np.uint8]], rng: np.random.Generator, cfg: MSegNetTrainConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """One batch: images (N, 3, S, S) float32 in [0, 1] and defocused labels (N, S, S)."""
    images: list[npt.NDArray[np.float32]] = []
    labels: list[npt.NDArray[np.float32]] = []
    for _ in range(cfg.blur_samples):
        crop = _crop(sources, rng, cfg)
        image, mask = data.local_blur_sample(crop, rng, sigma=cfg.sigma)
        images.append(image)
        labels.append(mask)
    for _ in range(cfg.stacks):
        crop = _crop(sources, rng, cfg)
        stack = data.focal_stack_sample(crop, rng, cfg.n_planes)
        chosen = rng.choice(
            cfg.n_planes, size=min(cfg.planes_per_stack, cfg.n_planes), replace=False
        )
        for k in chosen:
            images.append(data.to_float(stack.planes[k]))
            labels.append((stack.focus_index != k).astype(np.float32))
    x = np.stack(images).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32), np.stack(labels).astype(np.float32)


def _crop(
    sources: Sequence[npt.NDArray[np.uint8]], rng: np.random.Generator, cfg: MSegNetTrainConfig
) -> npt.NDArray[np.uint8]:
    """A random augmented crop of a random source, re-stained with probability ``restain``."""
    src = sources[int(rng.integers(len(sources)))]
    crop = data.random_crop(src, cfg.crop, rng)
    # Drawn only when re-staining is on, so runs without it keep their sample sequence.
    if cfg.restain > 0 and rng.random() < cfg.restain:
        crop = data.stain_augment(crop, rng)
    return data.augment(crop, rng, stain=cfg.stain)


def load_init(model: torch.nn.Module, path: Path) -> None:
    """Load fp16/fp32 safetensors weights into ``model`` (strict), as float32."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state, strict=True)


def train(
    cfg: MSegNetTrainConfig, root: Path, progress: bool = True
) -> tuple[list[dict[str, float]], str, float]:
    """Train (resuming from the checkpoint), write fp16 safetensors; return history, sha256, s.

    Paths in ``cfg`` are relative to ``root`` (the repository).
    """
    import torch

    from wsi_fusion.nets.msegnet import build_msegnet
    from wsi_fusion.training.run import Built, train_and_save

    def build() -> Built:
        model = build_msegnet(cfg.widths, cfg.blocks)
        if cfg.init:
            load_init(model, root / cfg.init)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(cfg.steps))
        sources = data.source_images(cfg.sources, cfg.extra_sources)
        log.info("training m-SegNet on %d sharp sources", len(sources))

        def step_fn(step: int) -> Mapping[str, float]:
            x, y = make_batch(sources, step_rng(cfg.seed, step), cfg)
            logits, sides = model(torch.from_numpy(x))
            loss = deep_supervision_loss(
                logits, sides, torch.from_numpy(y), cfg.focal_alpha, cfg.focal_gamma
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                hit = (logits[:, 1] > logits[:, 0]).float() == torch.from_numpy(y)
                acc = hit.float().mean()
            return {"loss": loss.item(), "acc": acc.item()}

        return model, step_fn, opt, sched

    # Checkpoint keys of this workflow's existing checkpoints.
    return train_and_save(cfg, root, build, progress=progress, names=("model", "opt", "sched"))


def _cosine(steps: int, warmup: int = 20) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 2 % of the base learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return float(0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * t)))

    return factor
