"""Training recipe of the ``fmb_net`` fuser (focus-measure block + fusion network).

X. Zhou et al., "A novel multi-focus fusion network for retinal microsurgery"
(``../shared/papers/fmb_fn_retinal_microsurgery.txt``, §2.3, §3.2):
``L = L_aif + L_perceptual + L_edge + L_identity``, Adam.

- ``L_aif``: L1 between the fused output and the ground truth.
- ``L_perceptual``: mean squared difference of feature maps of a frozen CNN. The paper uses a
  pretrained (ImageNet) network; nothing can be downloaded here, so the features are those of
  the **blur-mask network BM trained in this project** (:mod:`wsi_fusion.nets.deeplab`, lite
  backbone, stages 1-3: strides 2, 4, 8), a network trained on H&E tissue to tell sharp from
  blurred structure, which is the property the perceptual term should reward.
- ``L_edge``: the paper takes Canny edge maps of ground truth and prediction and their L1
  difference. Canny is not differentiable, so here the ground truth's Canny edges
  (scikit-image, sigma 1, its default hysteresis thresholds instead of the paper's zero
  thresholds, which mark every noise maximum on tissue) select the pixels where the Sobel
  gradient magnitudes of prediction and ground truth are compared (L1, averaged over edge
  pixels).
- ``L_identity``: the network fed with the ground truth itself (every plane equal to it; the
  element-wise maximum makes Z copies equivalent to one) must return it (L1), the CycleGAN
  identity term the paper cites for colour fidelity.

Ground truth: the sharp image behind synthetic focal stacks (:func:`focal_stack_sample`); the
paper, without a true all-in-focus image, used a classical fusion as pseudo ground truth.
Each step draws stacks of a random number of planes (``planes``), so the shipped model is
trained for "any number of planes".

Deviations forced by the CPU budget: 96-px crops, batch 2, learning rate 3e-4 (paper 1e-4 for
1000 epochs; here ~10³ steps), reduced width (:mod:`wsi_fusion.nets.fmb_net`).

Round 2 (issue 13, ``configs/train_fmb_net_focus.yaml``): ``prior: focus`` (the output is a
correction of the focus-weighted plane average, see :mod:`wsi_fusion.nets.fmb_net`), sharp
sources ``shared`` (the H&E region's training rows plus the licensed H&E tiles of other slides,
source-level split: ``training.data.training_images``) and ``restain`` (probability of a
colour-deconvolution re-staining onto H&E / IHC / Giemsa / Pap / grey palettes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from wsi_fusion.training.cgan_blurmask import CLASSICAL
from wsi_fusion.training.data import (
    Image,
    augment,
    focal_stack_sample,
    random_crop,
    source_images,
    stain_augment,
)
from wsi_fusion.training.heldout import planes_to_tile, to_image
from wsi_fusion.training.loop import step_rng, train_loop

if TYPE_CHECKING:
    import torch

    from wsi_fusion.nets.deeplab import DeepLabV3
    from wsi_fusion.nets.fmb_net import FmbNet

log = logging.getLogger(__name__)


class FmbTrainConfig(BaseModel):
    """Run config of ``workflows/train_fmb_net.py`` (``configs/train_fmb_net.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: Literal["lite", "paper"] = "lite"
    step: int = Field(default=1, ge=1, le=4)
    seed: int = 0
    steps: int = Field(default=800, ge=1)
    batch: int = Field(default=2, ge=1)
    crop: int = Field(default=96, ge=32)
    #: Plane counts drawn per step (uniformly).
    planes: tuple[int, ...] = (3, 4, 5)
    lr: float = Field(default=3e-4, gt=0)
    w_l1: float = Field(default=1.0, ge=0)
    w_perceptual: float = Field(default=1.0, ge=0)
    w_edge: float = Field(default=1.0, ge=0)
    w_identity: float = Field(default=1.0, ge=0)
    max_seconds: float | None = None
    threads: int = Field(default=1, ge=1)
    extra_dirs: tuple[str, ...] = ()
    #: Skip inside the output sigmoid (``nets.fmb_net``): plane ``mean`` (first shipped run) or
    #: the ``focus``-weighted plane average.
    prior: Literal["mean", "focus"] = "mean"
    #: Sharp sources: ``cmu1`` (the training rows of the bundled region) or ``shared``
    #: (``training.data.training_images("train")``: plus the licensed H&E tiles, source split).
    sources: Literal["cmu1", "shared"] = "cmu1"
    #: Probability that a crop is re-stained (``training.data.stain_augment``); 0 = never.
    restain: float = Field(default=0.0, ge=0.0, le=1.0)
    #: BM weights for the perceptual loss (its own file or the shipped cgan_blurmask file).
    feature_net: str = "models/cgan_blurmask/cgan_blurmask.lite.safetensors"
    checkpoint: str = "scratch/train/fmb_net.ckpt"
    output: str = "models/fmb_net/fmb_net.lite.safetensors"


def fmb_batch(
    sources: Sequence[Image], rng: np.random.Generator, cfg: FmbTrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacks ``(B, Z, 3, H, W)``, ground truth ``(B, 3, H, W)``, GT Canny edges ``(B, H, W)``."""
    from skimage.feature import canny

    z = int(cfg.planes[int(rng.integers(len(cfg.planes)))])
    stacks, truths, edges = [], [], []
    for _ in range(cfg.batch):
        src = sources[int(rng.integers(len(sources)))]
        crop = random_crop(src, cfg.crop, rng)
        # Drawn only when re-staining is on, so older runs keep their sample sequence.
        if cfg.restain > 0 and rng.random() < cfg.restain:
            crop = stain_augment(crop, rng)
        sharp = augment(crop, rng)
        synth = focal_stack_sample(sharp, rng, n_planes=z)
        stacks.append(np.moveaxis(synth.planes, -1, 1).astype(np.float32) / 255.0)
        gt = synth.ground_truth.astype(np.float32) / 255.0
        truths.append(np.moveaxis(gt, -1, 0))
        lum = gt @ np.array([0.299, 0.587, 0.114], np.float32)
        edges.append(canny(lum, sigma=1.0).astype(np.float32))
    return np.stack(stacks), np.stack(truths), np.stack(edges)


def sobel_magnitude(rgb: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luminance of ``(N, 3, H, W)``, shape ``(N, 1, H, W)``."""
    import torch
    import torch.nn.functional as F

    w = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)
    lum = (rgb * w[None, :, None, None]).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=rgb.dtype)
    k = torch.stack([kx, kx.T])[:, None].to(rgb.device)
    g = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt((g * g).sum(1, keepdim=True) + 1e-8)


def perceptual_features(bm: DeepLabV3, rgb: torch.Tensor) -> list[torch.Tensor]:
    """BM backbone features at strides 2, 4 and 8 (stages 1-3) of ``(N, 3, H, W)`` in [0, 1]."""
    feats = bm.backbone.features(rgb - 0.5)  # type: ignore[operator]
    return list(feats[1:4])


def fmb_losses(
    net: FmbNet,
    bm: DeepLabV3,
    stacks: torch.Tensor,
    truth: torch.Tensor,
    edges: torch.Tensor,
    cfg: FmbTrainConfig,
) -> dict[str, torch.Tensor]:
    """The four loss terms and their weighted total (``"total"``)."""
    import torch.nn.functional as F

    pred = net(stacks)
    l1 = F.l1_loss(pred, truth)
    perceptual = sum(
        (
            F.mse_loss(a, b)
            for a, b in zip(
                perceptual_features(bm, pred), perceptual_features(bm, truth), strict=True
            )
        ),
        start=pred.new_zeros(()),
    )
    diff = (sobel_magnitude(pred) - sobel_magnitude(truth)).abs()[:, 0]
    edge = (diff * edges).sum() / (edges.sum() + 1.0)
    identity = F.l1_loss(net(truth[:, None]), truth)
    total = (
        cfg.w_l1 * l1 + cfg.w_perceptual * perceptual + cfg.w_edge * edge
    ) + cfg.w_identity * identity
    return {"total": total, "l1": l1, "perceptual": perceptual, "edge": edge, "identity": identity}


def train_fmb_net(cfg: FmbTrainConfig, bm: DeepLabV3, progress: bool = True) -> tuple[FmbNet, list]:
    """Train the fusion network with a frozen BM as feature extractor; return it and the history."""
    import torch

    from wsi_fusion.nets.fmb_net import FmbNet

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net = FmbNet(cfg.width, step=cfg.step, prior=cfg.prior)
    bm = bm.eval()
    for p in bm.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sources = source_images(cfg.sources, cfg.extra_dirs)

    def step(i: int) -> dict[str, float]:
        x, y, e = fmb_batch(sources, step_rng(cfg.seed, i), cfg)
        losses = fmb_losses(
            net, bm, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(e), cfg
        )
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return {k: v.item() for k, v in losses.items()}

    history = train_loop(
        step,
        cfg.steps,
        cfg.checkpoint,
        {"fmb_net": net},
        {"adam": opt},
        seed=cfg.seed,
        max_seconds=cfg.max_seconds,
        progress=progress,
    )
    return net.eval(), history


def load_feature_net(path: str | Path) -> DeepLabV3:
    """The frozen BM used as perceptual feature extractor."""
    from wsi_fusion.training.cgan_blurmask import load_blurmask

    return load_blurmask(path)


def evaluate_fmb_net(
    weights: str | Path, n: int = 6, size: int = 512, n_planes: int = 5, noise: float = 0.005
) -> dict[str, Any]:
    """Held-out metrics of ``fmb_net`` and the classical fusers, measured side by side.

    ``heldout_stacks`` (full stacks), luminance PSNR/SSIM against the ground truth, seconds per
    512-px tile on CPU for every fuser, and the tiled-vs-whole difference beyond the margin.
    """
    import time

    import torch

    from wsi_fusion.fusers import Fuser, create_fuser
    from wsi_fusion.fusers.fmb_net import FmbNetFuser
    from wsi_fusion.metrics.full_reference import psnr, ssim
    from wsi_fusion.training.data import heldout_stacks

    fusers: dict[str, Fuser] = {"fmb_net": FmbNetFuser(weights=str(weights), device="cpu")}
    fusers.update({name: create_fuser(name) for name in CLASSICAL})
    rows: list[dict[str, Any]] = []
    seconds = dict.fromkeys(fusers, 0.0)
    stacks = heldout_stacks(n=n, size=size, n_planes=n_planes, noise=noise)
    for name, synth in stacks:
        stack, gt = planes_to_tile(synth.planes), synth.ground_truth
        row: dict[str, Any] = {"stack": name}
        for key, fuser in fusers.items():
            began = time.perf_counter()
            out = fuser.fuse(stack).fused
            seconds[key] += time.perf_counter() - began
            img = to_image(out)
            row[key] = {"psnr": round(psnr(img, gt), 3), "ssim": round(ssim(img, gt), 4)}
        # Fewer planes: the first three only (the network was trained on 3-6).
        img = to_image(fusers["fmb_net"].fuse(stack[:3]).fused)
        row["fmb_net@3"] = {"psnr": round(psnr(img, gt), 3), "ssim": round(ssim(img, gt), 4)}
        img = to_image(fusers["focus_measure"].fuse(stack[:3]).fused)
        row["focus_measure@3"] = {"psnr": round(psnr(img, gt), 3), "ssim": round(ssim(img, gt), 4)}
        rows.append(row)
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    mean = {
        k: {m: round(float(np.mean([r[k][m] for r in rows])), 3) for m in ("psnr", "ssim")}
        for k in keys
    }
    stack = planes_to_tile(stacks[0][1].planes)
    whole = fusers["fmb_net"].fuse(stack).fused
    half = fusers["fmb_net"].fuse(np.ascontiguousarray(stack[:, :, : size // 2])).fused
    cut = size // 2 - fusers["fmb_net"].margin
    return {
        "heldout": {"n": n, "size": size, "n_planes": n_planes, "noise": noise},
        "mean": mean,
        "per_stack": rows,
        "cpu_tiles_per_second": {k: round(n / v, 3) for k, v in seconds.items()},
        "torch_threads": torch.get_num_threads(),
        "tiled_vs_whole": {
            "max_abs_beyond_margin": round(float(np.abs(whole[:, :cut] - half[:, :cut]).max()), 6),
            "max_abs_at_edge": round(float(np.abs(whole[:, : size // 2] - half).max()), 5),
        },
    }
