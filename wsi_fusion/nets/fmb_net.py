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
- ``prior="focus"`` (issue 13, round 2): the skip inside the output sigmoid is the planes'
  average weighted by the FMB's own focus measure instead of their plain mean: per pixel,
  weights ``softmax_z(tau · log(SML_z))`` with ``SML_z`` the (unthresholded, step ``s``)
  sum-modified-Laplacian of plane ``z``'s luminance averaged over a ``(2 prior_radius + 1)²``
  window (9×9 in training; the fuser uses 25×25, see its parameters) and ``tau`` a
  learned scalar (initially 8). It is symmetric in the planes and any number of them, like the
  maximum. Untrained it is a soft per-pixel focus-measure pick (39.4 dB on the extended held-out
  stacks, where the plane mean scores far lower), so the network learns a correction of a good
  fusion rather than the whole selection; the mean prior stays available for the old weights.
- All convolutions are 3×3 at full resolution, so the network is exactly margin-bounded:
  ``receptive_halo`` pixels (FMB 2 + encoder 3 + refinement 18 + output 1 = 24 with step 1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FmbWidth = Literal["lite", "paper"]
#: The skip inside the output sigmoid: the plane mean, or the focus-weighted plane average.
FmbPrior = Literal["mean", "focus"]
#: Window radius of the focus prior's SML average (9 x 9, as the default fuser's measure).
PRIOR_RADIUS = 4
#: Initial sharpness ``tau`` of the focus prior's softmax over planes.
PRIOR_TAU = 8.0

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

    def __init__(
        self,
        width: FmbWidth = "lite",
        step: int = 1,
        prior: FmbPrior = "mean",
        prior_radius: int = PRIOR_RADIUS,
    ) -> None:
        super().__init__()
        c = _WIDTHS[width]
        self.prior = prior
        self.prior_radius = prior_radius
        if prior == "focus":
            self.prior_log_tau = nn.Parameter(torch.tensor(math.log(PRIOR_TAU)))
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
        self.receptive_halo = max((step + 1) + 3 + 2 * self.n_refine + 1, step + prior_radius)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        """Fuse ``(N, Z, 3, H, W)`` planes in [0, 1] into ``(N, 3, H, W)`` in [0, 1]."""
        n, z, c, h, w = planes.shape
        flat = planes.reshape(n * z, c, h, w)
        feats = self.encoder(self.fmb(flat) - 0.5)
        fused = feats.reshape(n, z, -1, h, w).amax(dim=1)
        base = planes.mean(dim=1) if self.prior == "mean" else self.focus_prior(planes)
        prior = torch.logit(base.clamp(1e-3, 1.0 - 1e-3))
        return torch.sigmoid(self.out(self.refine(fused)) + prior)

    def focus_prior(self, planes: torch.Tensor) -> torch.Tensor:
        """Focus-weighted average ``(N, 3, H, W)`` of planes ``(N, Z, 3, H, W)`` (``"focus"``)."""
        n, z, c, h, w = planes.shape
        luma = planes.new_tensor([0.299, 0.587, 0.114]) if c == 3 else planes.new_ones(c) / c
        lum = (planes * luma.view(1, 1, c, 1, 1)).sum(dim=2).reshape(n * z, 1, h, w)
        sml = sum_modified_laplacian(lum, self.fmb.step, threshold=0.0, window=1)
        r = self.prior_radius
        mode = "reflect" if min(h, w) > r else "replicate"
        sml = F.avg_pool2d(F.pad(sml, (r, r, r, r), mode=mode), 2 * r + 1, stride=1)
        score = self.prior_log_tau.exp() * torch.log(sml.reshape(n, z, 1, h, w) + 1e-4)
        return (torch.softmax(score, dim=1) * planes).sum(dim=1)

    def encode_max(self, planes: torch.Tensor) -> torch.Tensor:
        """Max-fused encoder features ``(N, C, H, W)`` (for inspection and tests)."""
        n, z, c, h, w = planes.shape
        feats = self.encoder(self.fmb(planes.reshape(n * z, c, h, w)) - 0.5)
        return feats.reshape(n, z, -1, h, w).amax(dim=1)
