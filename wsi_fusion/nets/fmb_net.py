"""Focus-measure block + fusion network (``fmb_net``).

X. Zhou, L. Hao, Q. Nie, Y. Zhou, L. Wang, Y. Hu and J. Liu, "A novel multi-focus fusion network
for retinal microsurgery" (``../shared/papers/fmb_fn_retinal_microsurgery.txt``):

Focus-measure block (FMB, §2.1)
    Per colour channel, the sum-modified-Laplacian of Nayar & Nakagawa:
    ``ML = |2I − I(x−s, y) − I(x+s, y)| + |2I − I(x, y−s) − I(x, y+s)|`` with step ``s``
    (the "variable spacing"), summed over a 3×3 window over the pixels whose ML is at least the
    threshold ``T = 7`` (grey levels of 0-255). Concatenated with the RGB plane: 6 channels.
Fusion network (FN, §2.2)
    An encoder with shared weights applied to every plane at full resolution, an element-wise
    maximum across planes, nine refinement blocks and an output convolution to RGB. Any number of
    planes, in any order (the maximum is symmetric in the planes).

Deviations and why
------------------
- The paper gives no layer widths. Here: encoder of three 3×3 conv + ReLU layers
  (6 → C → C → C), nine residual refinement blocks (3×3 conv, ReLU, 3×3 conv, skip) of C
  channels, a 3×3 output convolution. The shipped ``lite`` model has C = 24 (trained on one
  shared CPU thread); ``"paper"`` builds C = 64 (not shipped).
- FMB thresholding follows Nayar & Nakagawa: a pixel's ML enters the window sum only where it is
  at least ``T``; inputs are in [0, 1], so ``T = 7/255``. The window sum is divided by 9 and
  multiplied by 4 so that its typical range on tissue matches the RGB channels.
- Output: ``sigmoid(conv(x) + logit(mean of the planes))`` with the output convolution
  initialised to zero. The paper does not say how the output is bounded; the sigmoid bounds it,
  and the plane mean inside it (a global skip, symmetric in the planes, so order and count
  independence are kept) makes the untrained network return the plane mean. Without it, a run of
  ~400 CPU steps was still learning to reproduce colours (L1 0.053 against the ground truth,
  worse than any single plane); with it the network only has to learn the sharpening/selection.
- All convolutions are 3×3 at full resolution, so the network is exactly margin-bounded:
  ``receptive_halo`` pixels (FMB 2 + encoder 3 + refinement 18 + output 1 = 24 with step 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FmbWidth = Literal["lite", "paper"]

_WIDTHS: dict[str, int] = {"lite": 24, "paper": 64}


def sum_modified_laplacian(
    rgb: torch.Tensor, step: int = 1, threshold: float = 7.0 / 255.0, window: int = 3
) -> torch.Tensor:
    """Per-channel thresholded SML of ``(N, C, H, W)`` images in [0, 1], same shape.

    Borders are reflect-padded (replicate when the image is smaller than the step).
    """
    s = step
    mode = "reflect" if min(rgb.shape[-2:]) > s else "replicate"
    p = F.pad(rgb, (s, s, s, s), mode=mode)
    centre = p[..., s:-s, s:-s]
    two = 2.0 * centre
    ml = (two - p[..., : -2 * s, s:-s] - p[..., 2 * s :, s:-s]).abs()
    ml = ml + (two - p[..., s:-s, : -2 * s] - p[..., s:-s, 2 * s :]).abs()
    ml = ml * (ml >= threshold).to(ml.dtype)
    r = window // 2
    mode = "reflect" if min(rgb.shape[-2:]) > r else "replicate"
    return F.avg_pool2d(F.pad(ml, (r, r, r, r), mode=mode), window, stride=1)


class FocusMeasureBlock(nn.Module):
    """RGB → RGB + per-channel SML focus measure (6 channels)."""

    def __init__(self, step: int = 1, threshold: float = 7.0 / 255.0, window: int = 3) -> None:
        super().__init__()
        self.step, self.threshold, self.window = step, threshold, window

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        fm = sum_modified_laplacian(rgb, self.step, self.threshold, self.window)
        return torch.cat([rgb, 4.0 * fm], dim=1)


class RefineBlock(nn.Module):
    """3×3 conv, ReLU, 3×3 conv, residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class FmbNet(nn.Module):
    """FMB + shared per-plane encoder + max over planes + 9 refinement blocks + RGB output.

    Parameters
    ----------
    width
        ``"lite"`` (24 channels, shipped) or ``"paper"`` (64).
    step
        Step ``s`` of the modified Laplacian in the FMB.
    """

    n_refine = 9

    def __init__(self, width: FmbWidth = "lite", step: int = 1) -> None:
        super().__init__()
        c = _WIDTHS[width]
        self.fmb = FocusMeasureBlock(step=step)
        self.encoder = nn.Sequential(
            nn.Conv2d(6, c, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.ReLU(),
        )
        self.refine = nn.Sequential(*(RefineBlock(c) for _ in range(self.n_refine)))
        self.out = nn.Conv2d(c, 3, 3, 1, 1)
        # Start from the plane mean (see the module docstring).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]
        self.receptive_halo = (step + 1) + 3 + 2 * self.n_refine + 1

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        """Fuse ``(N, Z, 3, H, W)`` planes in [0, 1] into ``(N, 3, H, W)`` in [0, 1]."""
        n, z, c, h, w = planes.shape
        flat = planes.reshape(n * z, c, h, w)
        feats = self.encoder(self.fmb(flat) - 0.5)
        fused = feats.reshape(n, z, -1, h, w).amax(dim=1)
        prior = torch.logit(planes.mean(dim=1).clamp(1e-3, 1.0 - 1e-3))
        return torch.sigmoid(self.out(self.refine(fused)) + prior)

    def encode_max(self, planes: torch.Tensor) -> torch.Tensor:
        """Max-fused encoder features ``(N, C, H, W)`` (for inspection and tests)."""
        n, z, c, h, w = planes.shape
        feats = self.encoder(self.fmb(planes.reshape(n * z, c, h, w)) - 0.5)
        return feats.reshape(n, z, -1, h, w).amax(dim=1)
