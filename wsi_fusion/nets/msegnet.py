"""m-SegNet: MobileNet-style depthwise-separable encoder + SegNet decoder (pooling indices).

R. Pei, W. Fu, K. Yao, T. Zheng, S. Ding, H. Zhang and Y. Zhang, "Real-Time Multi-Focus
Biomedical Microscopic Image Fusion Based on m-SegNet", IEEE Photonics Journal 13(3), 2021,
doi:10.1109/JPHOT.2021.3073022 (CC BY 4.0). Section 2.1.2, Figs. 3-4.

Architecture (as built here)
----------------------------
- Basic unit (Fig. 3): depthwise 3x3 convolution -> BatchNorm -> ReLU -> pointwise 1x1
  convolution -> BatchNorm -> ReLU (MobileNet's depthwise-separable block).
- Stem: one standard 3x3 convolution (as MobileNet's first layer), then an encoder of
  ``len(widths)`` levels (the paper: "the first four layers of MobileNet"); each level is
  ``blocks`` separable units followed by 2x2 max pooling that *records its indices*.
- Decoder (SegNet): per level, max-unpooling with the indices of the mirrored encoder level,
  then separable units; a 1x1 classifier to two classes (focused, defocused) per pixel at the
  end. Every decoder level also has a 1x1 side classifier (deep supervision, Section 2.1.4);
  :meth:`MSegNet.forward` returns the full-resolution logits and, in training, the side logits.

Deviations from the paper and why
---------------------------------
- Widths and depth are not given in the paper (Fig. 4 is not reproduced in the text). Defaults
  follow MobileNet v1's first stages (32, 64, 128, 256) with one unit per level; the shipped
  model is the reduced-width variant ``msegnet.small`` (16, 32, 64, 128), trained on CPU.
- Input is one RGB plane shifted to [-0.5, 0.5]; the paper does not state its normalisation.
- The class order is (focused, defocused), channel 1 is the paper's "fuzzy" class.

The receptive field, and hence the fuser's margin, is :func:`receptive_halo` (46 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

#: Encoder widths of the paper-sized and the reduced variant.
WIDTHS_FULL: tuple[int, ...] = (32, 64, 128, 256)
WIDTHS_SMALL: tuple[int, ...] = (16, 32, 64, 128)

#: Index of the "defocused" (fuzzy) class in the two-class output.
DEFOCUSED = 1


@dataclass(frozen=True)
class MSegNetConfig:
    """Hyper-parameters that fix the parameter shapes of :class:`MSegNet`.

    Attributes
    ----------
    widths : tuple of int
        Channels of each encoder level (the decoder mirrors them).
    blocks : int
        Depthwise-separable units per encoder and decoder level.
    """

    widths: tuple[int, ...] = WIDTHS_SMALL
    blocks: int = 1

    @property
    def downsample(self) -> int:
        """Input sides must be multiples of this (one 2x2 pooling per level)."""
        return 2 ** len(self.widths)


def separable(c_in: int, c_out: int) -> nn.Sequential:
    """MobileNet unit (Fig. 3): depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    """``blocks`` separable units, the first changing the width."""
    return nn.Sequential(*[separable(c_in if i == 0 else c_out, c_out) for i in range(blocks)])


class MSegNet(nn.Module):
    """Two-class (focused / defocused) per-pixel segmentation of one focal plane.

    Parameters
    ----------
    config : MSegNetConfig
        Widths and units per level.
    """

    def __init__(self, config: MSegNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or MSegNetConfig()
        widths = self.config.widths
        blocks = self.config.blocks
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.encoder = nn.ModuleList(
            _stage(widths[max(i - 1, 0)], w, blocks) for i, w in enumerate(widths)
        )
        # Decoder level j undoes encoder level L-1-j: unpool at that level's width, then go down
        # to the next-shallower width (the last level stays at widths[0]).
        rev = list(reversed(widths))
        outs = rev[1:] + [widths[0]]
        self.decoder = nn.ModuleList(_stage(c, o, blocks) for c, o in zip(rev, outs, strict=True))
        self.side = nn.ModuleList(nn.Conv2d(o, 2, 1) for o in outs[:-1])
        self.head = nn.Conv2d(widths[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (N, 2, H, W) for RGB planes (N, 3, H, W) in [0, 1].

        H and W must be multiples of ``config.downsample``. In training mode the side logits of
        the deeper decoder levels (coarse to fine, each at its own resolution) come too.
        """
        h = self.stem(x - 0.5)
        indices: list[torch.Tensor] = []
        for stage in self.encoder:
            h = stage(h)
            h, idx = F.max_pool2d(h, 2, return_indices=True)
            indices.append(idx)
        sides: list[torch.Tensor] = []
        for j, stage in enumerate(self.decoder):
            h = F.max_unpool2d(h, indices[-1 - j], (2, 2))
            h = stage(h)
            if j < len(self.side) and self.training:
                sides.append(self.side[j](h))
        logits = self.head(h)
        if self.training:
            return logits, sides
        return logits


def receptive_halo(config: MSegNetConfig) -> int:
    """Pixels on each side of an output pixel that can influence it (the receptive-field halo).

    Exact interval propagation along one axis: the input span ``[s*i + lo, s*i + hi]`` that
    feature ``i`` of a map at stride ``s`` depends on. A 3x3 convolution widens it by ``s`` on
    both sides; a 2x2 max pool (stride doubles) adds ``s`` on the far side (its window's second
    pixel); max-unpooling (stride halves) puts a value in either pixel of its 2x2 cell, which
    depends on the whole cell, so it adds the new stride on the near side. 46 px for four
    levels of one unit each.
    """
    lo, hi, stride = -1, 1, 1  # stem 3x3 convolution
    for _ in config.widths:
        lo, hi = lo - config.blocks * stride, hi + config.blocks * stride
        hi += stride
        stride *= 2
    for _ in config.widths:
        stride //= 2
        lo -= stride
        lo, hi = lo - config.blocks * stride, hi + config.blocks * stride
    return max(-lo, hi)


def build_msegnet(widths: Sequence[int] = WIDTHS_SMALL, blocks: int = 1) -> MSegNet:
    """The factory used by the fuser and the training workflow."""
    return MSegNet(MSegNetConfig(widths=tuple(widths), blocks=blocks))
