"""ACNN: all-convolutional patch-pair focus classifier (max pooling replaced by stride-2 conv).

C. Du and S. Gao, "Multi-focus image fusion with the all convolutional neural network",
Optoelectronics Letters 14(1):71-75, 2018, doi:10.1007/s11801-018-7207-x.

The letter fixes the principle, not the layer list: a CNN-Fuse style classifier of a pair of
patches (Liu et al., Inf. Fusion 36, 2017, the letter's ref. [35] and its baseline) whose
max-pooling layers are replaced "by a normal convolution with stride larger than 1 ... and the
number of output channels is equal to the number of input channels" (Springenberg et al.'s
all-convolutional net); output in [0, 1], close to 1 when patch A is focused.

Architecture (as built here)
----------------------------
- Siamese branch (shared weights) on a grey patch: conv3x3(c1) -> conv3x3(c2) -> **conv3x3
  stride 2 (c2 -> c2)** -> conv3x3(c3) -> **conv3x3 stride 2 (c3 -> c3)**, ReLU after each,
  zero padding. A 16 x 16 patch becomes 4 x 4 x c3.
- Head on the two branches' concatenated features: the fully connected layer as a 4 x 4
  convolution to ``hidden`` units + ReLU, then a 1 x 1 convolution to 2 classes; softmax, class 1
  = "A focused". Being convolutional, the same weights run densely over a whole tile
  (:meth:`ACNN.score_map`): one score per 16 x 16 patch at stride 4.
- The head is linear in the concatenation, so ``W·[f_A; f_B] = W_A·f_A + W_B·f_B``:
  :meth:`ACNN.head_terms` computes each plane's two terms once and pairs add them, which makes N
  planes cost N branch passes instead of 2 (N − 1) (exact, not an approximation).

Deviations from the paper and why
---------------------------------
- Layer sizes are not in the letter; CNN-Fuse's are (64, 128, 256, FC 256, one 2x2 pooling).
  The shipped ``acnn.small`` uses (16, 32, 48, hidden 64) and *two* stride-2 layers (CNN-Fuse
  has one pooling): the dense head costs ``4²·2·c3·hidden`` per score, and at stride 2 with the
  paper's widths one 512² tile of 5 planes would take minutes on a CPU.
- Patches are 16 x 16 (CNN-Fuse's size); grey inputs shifted to [-0.5, 0.5].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ACNNConfig:
    """Hyper-parameters that fix the parameter shapes of :class:`ACNN`."""

    c1: int = 16
    c2: int = 32
    c3: int = 48
    hidden: int = 64
    patch: int = 16

    @property
    def stride(self) -> int:
        """Input pixels per score (two stride-2 layers)."""
        return 4

    @property
    def head_kernel(self) -> int:
        """Side of the branch output of one patch."""
        return self.patch // self.stride


#: The shipped reduced-width variant.
SMALL = ACNNConfig()
#: CNN-Fuse's widths (64, 128, 256, FC 256): what the ``h100-8min`` preset trains
#: (``training.acnn``, ``width: paper``) and the fuser builds with ``width: paper``.
PAPER = ACNNConfig(c1=64, c2=128, c3=256, hidden=256)


class ACNNBranch(nn.Module):
    """One siamese branch: convolutions only, stride 2 where CNN-Fuse pools."""

    def __init__(self, cfg: ACNNConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Conv2d(1, cfg.c1, 3, padding=1),
                nn.Conv2d(cfg.c1, cfg.c2, 3, padding=1),
                nn.Conv2d(cfg.c2, cfg.c2, 3, stride=2, padding=1),  # replaces max pooling
                nn.Conv2d(cfg.c2, cfg.c3, 3, padding=1),
                nn.Conv2d(cfg.c3, cfg.c3, 3, stride=2, padding=1),  # replaces max pooling
            ]
        )

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        x = grey - 0.5
        for layer in self.layers:
            x = F.relu(layer(x))
        return x


class ACNN(nn.Module):
    """Patch-pair classifier: grey ``(N, 1, 16, 16)`` A and B -> logits ``(N, 2)``."""

    def __init__(self, cfg: ACNNConfig = SMALL) -> None:
        super().__init__()
        self.cfg = cfg
        self.branch = ACNNBranch(cfg)
        self.fc = nn.Conv2d(2 * cfg.c3, cfg.hidden, cfg.head_kernel)
        self.classify = nn.Conv2d(cfg.hidden, 2, 1)

    def head_terms(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The FC layer's contributions of ``feats`` as source A and as source B."""
        c3 = self.cfg.c3
        w_a, w_b = self.fc.weight[:, :c3], self.fc.weight[:, c3:]
        return F.conv2d(feats, w_a), F.conv2d(feats, w_b)

    def pair_logits(self, term_a: torch.Tensor, term_b: torch.Tensor) -> torch.Tensor:
        """Two-class logits from the head terms of A and B, ``(N, 2, h, w)``."""
        bias = self.fc.bias
        assert bias is not None  # built with bias=True
        hidden = F.relu(term_a + term_b + bias[None, :, None, None])
        return self.classify(hidden)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)`` of patch pairs (patch-sized inputs) or ``(N, 2, h, w)`` densely."""
        fa, fb = self.branch(a), self.branch(b)
        logits = self.classify(F.relu(self.fc(torch.cat([fa, fb], dim=1))))
        if logits.shape[-2:] == (1, 1):
            return logits[:, :, 0, 0]
        return logits

    def score_map(self, term_a: torch.Tensor, term_b: torch.Tensor) -> torch.Tensor:
        """Probability that A is focused per patch position, ``(N, 1, h, w)`` at stride 4."""
        return torch.softmax(self.pair_logits(term_a, term_b), dim=1)[:, 1:2]


def focus_map(scores: torch.Tensor, cfg: ACNNConfig, shape: tuple[int, int]) -> torch.Tensor:
    """Per-pixel focus map ``(N, 1, H, W)``: the mean score of every patch covering a pixel.

    Score ``(i, j)`` belongs to the patch whose top-left corner is at ``(4i, 4j)`` (minus the
    padding offset); overlapping patches are averaged, as in the letter ("averaging the
    overlapping patches").
    """
    ones = torch.ones(1, 1, cfg.patch, cfg.patch, device=scores.device, dtype=scores.dtype)
    # Score (i, j) is computed from the same inputs as a training patch whose top-left corner
    # is (4i, 4j), so it is spread over rows 4i .. 4i + 15 (and likewise columns).
    total = F.conv_transpose2d(scores, ones, stride=cfg.stride)
    count = F.conv_transpose2d(torch.ones_like(scores), ones, stride=cfg.stride)
    h, w = shape
    return (total / count.clamp_min(1.0))[:, :, :h, :w]


def receptive_halo(cfg: ACNNConfig) -> int:
    """Reach of the focus map at a pixel: the patches covering it and the branch's halo.

    A pixel is covered by patches starting up to ``patch - 1`` pixels before it; the branch
    output at the first of their positions sees 7 pixels further (3x3, 3x3, 3x3/2 and two
    3x3 at stride 2: radius 1 + 1 + 1 + 2 + 2). Downstream the last patch's features reach
    ``patch - 1 + 7 - (patch - 1)`` beyond its end, which is smaller.
    """
    return cfg.patch - 1 + 7
