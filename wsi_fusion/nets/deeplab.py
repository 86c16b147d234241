"""DeepLab-v3 blur-mask network (BM) of the cytology cGAN fuser.

L.-C. Chen, G. Papandreou, F. Schroff and H. Adam, "Rethinking Atrous Convolution for Semantic
Image Segmentation", arXiv:1706.05587, 2017 (DeepLab-v3), as used for the blur-recognition model
"BM" of the cytology cGAN paper (``../shared/papers/cgan_blurmask_cytology_wsi.txt``, §3.2.3):
a ResNet-50 prefix cut at its 40th activation (the end of ``layer3``, output stride 16, 1024
channels) followed by the ASPP head, mapping an RGB tile to a 2-class blurred/sharp mask.

Two variants, one factory (:func:`build_deeplab`):

``deeplab_v3_resnet50`` (the paper's network, *defined here but not shipped*)
    Bottleneck ResNet-50 ``conv1 … layer3`` (40 ReLUs), ASPP (1×1 + three 3×3 atrous convs at
    rates 6/12/18 + image pooling, 256 channels), 1×1 classifier, bilinear upsampling. Without
    ImageNet initialisation and a GPU it cannot be trained in this project's CPU budget; no
    weights for it exist in ``models/``.

``deeplab_v3_lite`` (shipped, trained on CPU)
    The same layout at CPU scale: a 4-stage ResNet of basic blocks (widths 16/32/64/96, one block
    per stage, output stride 8), ASPP with 64 channels at rates 2/4/6, no image-pooling branch.

Deviations of the lite variant and why
--------------------------------------
- Backbone: basic-block ResNet, ~0.5 M parameters instead of ResNet-50's 8.5 M up to ``layer3``
  — it is trained from scratch on 2 CPU threads for minutes, not initialised from ImageNet.
- Output stride 8 and atrous rates 2/4/6 instead of 16 and 6/12/18: training crops are 128 px
  (16×16 features at stride 8); rates 6/12/18 on such maps would sample mostly padding.
- No image-pooling ASPP branch: a global average over the tile makes every output pixel depend
  on the whole tile, so tiled and whole-slide masks would differ at every seam. Without it the
  network is margin-bounded (``receptive_halo``), which is what the tiled pipeline needs.
- BatchNorm as in ResNet (not GroupNorm): in inference it is a fixed per-channel affine map,
  so the mask of a pixel depends only on its neighbourhood, not on the statistics of the tile it
  happens to be in. Batch statistics over 4 crops of 128² px are plenty for dense prediction.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DeepLabVariant = Literal["deeplab_v3_lite", "deeplab_v3_resnet50"]


def _norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm (see the module docstring for why not GroupNorm)."""
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18 style)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad, dilation, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, pad, dilation, bias=False)
        self.norm2 = _norm(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.skip(x))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1×1 reduce, 3×3, 1×1 expand (×4), residual; three ReLUs."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.norm1 = _norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.norm2 = _norm(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.norm3 = _norm(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + self.skip(x))


class ResNet50Prefix(nn.Module):
    """ResNet-50 ``conv1 … layer3``: 1 + 3·3 + 4·3 + 6·3 = 40 ReLUs, stride 16, 1024 channels."""

    out_channels = 1024

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), _norm(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers: list[nn.Module] = []
        cin = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class LiteBackbone(nn.Module):
    """CPU-scale ResNet of basic blocks, output stride 8 (the last stage dilated, not strided)."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96)) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.out_channels = w3
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), _norm(w0), nn.ReLU())
        self.stage1 = BasicBlock(w0, w1, stride=2)
        self.stage2 = BasicBlock(w1, w2, stride=2)
        self.stage3 = BasicBlock(w2, w2, stride=2)
        self.stage4 = BasicBlock(w2, w3, stride=1, dilation=2)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage (strides 1, 2, 4, 8, 8), for perceptual losses."""
        f0 = self.stem(x)
        f1 = self.stage1(f0)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        return [f0, f1, f2, f3, f4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1×1 and atrous 3×3 branches, fused by 1×1."""

    def __init__(
        self, cin: int, cout: int, rates: tuple[int, ...], image_pooling: bool = True
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False))]
        branches += [nn.Conv2d(cin, cout, 3, 1, r, r, bias=False) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.norms = nn.ModuleList(_norm(cout) for _ in branches)
        self.pool: nn.Module | None = None
        n = len(branches)
        if image_pooling:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU())
            n += 1
        self.project = nn.Sequential(nn.Conv2d(n * cout, cout, 1, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [F.relu(norm(b(x))) for b, norm in zip(self.branches, self.norms, strict=True)]
        if self.pool is not None:
            outs.append(self.pool(x).expand(-1, -1, x.shape[2], x.shape[3]))
        return F.relu(self.project(torch.cat(outs, dim=1)))


class DeepLabV3(nn.Module):
    """Backbone + ASPP + 1×1 classifier → 2-class logits (sharp, blurred) at input size.

    Parameters
    ----------
    variant
        ``"deeplab_v3_lite"`` (shipped) or ``"deeplab_v3_resnet50"`` (the paper's; not shipped).
    """

    def __init__(self, variant: DeepLabVariant = "deeplab_v3_lite") -> None:
        super().__init__()
        self.variant = variant
        self.backbone: nn.Module
        if variant == "deeplab_v3_resnet50":
            self.backbone = ResNet50Prefix()
            self.aspp = ASPP(ResNet50Prefix.out_channels, 256, (6, 12, 18), image_pooling=True)
            head = 256
        elif variant == "deeplab_v3_lite":
            self.backbone = LiteBackbone()
            self.aspp = ASPP(self.backbone.out_channels, 64, (2, 4, 6), image_pooling=False)
            head = 64
        else:  # pragma: no cover - Literal guards this for typed callers
            raise ValueError(f"unknown DeepLab variant {variant!r}")
        self.classifier = nn.Conv2d(head, 2, 1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2, H, W)`` of an ``(N, 3, H, W)`` image in [0, 1]; class 1 = blurred."""
        h, w = rgb.shape[-2:]
        # Centre the input: no ImageNet statistics apply, 0.5 keeps H&E near zero mean.
        logits = self.classifier(self.aspp(self.backbone(rgb - 0.5)))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)

    def blur_probability(self, rgb: torch.Tensor) -> torch.Tensor:
        """Probability ``(N, 1, H, W)`` that each pixel is blurred."""
        return torch.softmax(self.forward(rgb), dim=1)[:, 1:2]


def build_deeplab(variant: DeepLabVariant = "deeplab_v3_lite") -> DeepLabV3:
    """The DeepLab-v3 blur-mask network of the given variant (random initialisation)."""
    return DeepLabV3(variant)
