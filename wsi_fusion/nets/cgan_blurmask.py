"""Generator and discriminator of the single-/few-plane conditional GAN fuser (``cgan_blurmask``).

The cytology cGAN paper ("generating fused images from single-focus or few-focus
cytopathological images", ``../shared/papers/cgan_blurmask_cytology_wsi.txt``, §3.2; code
github.com/GengXieBo/fusion):

Generator ``G`` (a U-Net whose plain convolutions are DenseBlocks)
    9×9 convolution → 64 channels + PReLU; three encoder levels of *DenseBlocks* (one plain
    convolution and two DenseBlocks of three convolutions) each followed by 2× average pooling;
    a bottom of three convolutions with PReLU; three decoder levels of bilinear 2× upsampling,
    concatenation with the encoder output of the same scale and DenseBlocks; a 9×9 output
    convolution to 3 channels and tanh scaled to [0, 1]. Input: the plane(s) stacked with their
    blur masks from the frozen BM network (:mod:`wsi_fusion.nets.deeplab`), ``4·P`` channels for
    ``P`` planes.

Discriminator ``D`` (PatchGAN, VGG-like)
    Eight convolutions with LeakyReLU, one 4×4/4 max pooling and a sigmoid map; the output stride
    is 64 px, so a 512-px tile gives the paper's 8×8 map, one value per 64×64 cell.

Deviations and why
------------------
- Width: the shipped ``lite`` generator uses 24 channels after the input convolution (paper: 64),
  level widths 24/32/48, growth 12 in the DenseBlocks (~0.3 M parameters); it is trained on
  one shared CPU thread for minutes. ``width="paper"`` builds 64/64/128/256 (not shipped).
- DenseBlock: the paper gives three convolutions per block and no more; each block here is
  three densely connected 3×3 convolutions with PReLU, a 1×1 fusion back to the block width and
  a residual connection (the residual dense block of ESRGAN), so widths stay constant.
- Identity prior: the output is ``(tanh(z + atanh(2·x_ref − 1)) + 1) / 2`` where ``z`` is the
  output convolution and ``x_ref`` the reference plane (plane 0). It is still tanh scaled to
  [0, 1], but a zero ``z`` returns the input plane exactly, and the output convolution starts at
  zero. With minutes of CPU training a generator that starts from the identity reaches a useful
  deblurring; one that has to learn to copy colours first does not.
- Discriminator receptive field: each map value summarises one 64×64 cell (stride 64, as the
  paper's 8×8 map at 512 px); because 3×3 convolutions overlap, its theoretical receptive field
  is 94 px (:func:`discriminator_receptive_field`). It sees the RGB image only, as the paper's
  ``D(I)`` (not conditioned on the input planes). ``D`` returns logits; the sigmoid is applied in
  :meth:`PatchDiscriminator.probability` and inside ``BCEWithLogits`` for numerical stability.
- Mask gate (``gated=True``, round-2 models): the output is ``x_ref + m·(G − x_ref)`` with ``m``
  BM's blur probability of the reference plane, i.e. a residual that can only be added where BM
  says "blurred". The paper lets G rewrite every pixel; here a region BM calls sharp is returned
  as the input plane, so the model cannot make in-focus tissue worse (the first shipped,
  ungated model lost up to 7 dB on an unseen IHC stain by rewriting sharp regions).
- Inputs whose sides are not multiples of 8 are reflect-padded and cropped back.

The lite generator's theoretical receptive field is ±139 px (measured by back-propagation from
one output pixel), but its influence decays fast; the fuser's ``margin`` and the measured
tiled-versus-whole difference are discussed in :mod:`wsi_fusion.fusers.cgan_blurmask`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from wsi_fusion.nets.deeplab import DeepLabVariant

GeneratorWidth = Literal["lite", "paper"]

#: (input conv, level 1, level 2, level 3 / bottom, DenseBlock growth) per width.
_WIDTHS: dict[str, tuple[int, int, int, int, int]] = {
    "lite": (24, 24, 32, 48, 12),
    "paper": (64, 64, 128, 256, 32),
}


class DenseBlock(nn.Module):
    """Three densely connected 3×3 conv + PReLU layers, 1×1 fusion, residual connection."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels + i * growth, growth, 3, 1, 1) for i in range(3)
        )
        self.acts = nn.ModuleList(nn.PReLU(growth) for _ in range(3))
        self.fuse = nn.Conv2d(channels + 3 * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv, act in zip(self.convs, self.acts, strict=True):
            feats.append(act(conv(torch.cat(feats, dim=1))))
        return x + self.fuse(torch.cat(feats, dim=1))


class DenseBlocks(nn.Module):
    """The paper's "DenseBlocks": one plain 3×3 conv + PReLU, then two DenseBlocks."""

    def __init__(self, cin: int, cout: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.PReLU(cout))
        self.blocks = nn.Sequential(DenseBlock(cout, growth), DenseBlock(cout, growth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv(x))


class DenseUNetGenerator(nn.Module):
    """U-Net with DenseBlocks mapping ``P`` planes + ``P`` blur masks to one RGB image.

    Parameters
    ----------
    n_planes
        Planes in the input (1 for the single-plane model, 3 for the few-plane model).
    width
        ``"lite"`` (shipped) or ``"paper"``.
    gated
        Blend the output with the reference plane by its blur mask (see the module docstring).
    """

    def __init__(
        self, n_planes: int = 1, width: GeneratorWidth = "lite", gated: bool = False
    ) -> None:
        super().__init__()
        c0, c1, c2, c3, growth = _WIDTHS[width]
        self.n_planes = n_planes
        self.gated = gated
        #: Gate calibration: the blend weight is ``clamp((m - t) / (1 - t), 0, 1)``, so a blur
        #: probability at or below ``t`` keeps the input plane exactly (0 = BM's mask as is).
        self.gate_threshold = 0.0
        self.head = nn.Sequential(nn.Conv2d(4 * n_planes, c0, 9, 1, 4), nn.PReLU(c0))
        self.enc1 = DenseBlocks(c0, c1, growth)
        self.enc2 = DenseBlocks(c1, c2, growth)
        self.enc3 = DenseBlocks(c2, c3, growth)
        self.bottom = nn.Sequential(
            *(m for _ in range(3) for m in (nn.Conv2d(c3, c3, 3, 1, 1), nn.PReLU(c3)))
        )
        self.dec3 = DenseBlocks(c3 + c3, c3, growth)
        self.dec2 = DenseBlocks(c3 + c2, c2, growth)
        self.dec1 = DenseBlocks(c2 + c1, c1, growth)
        self.tail = nn.Conv2d(c1, 3, 9, 1, 4)
        # Start from the identity (see the module docstring): z = 0 returns the reference plane.
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)  # type: ignore[arg-type]

    def forward(self, planes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Fuse ``planes (N, P, 3, H, W)`` with ``masks (N, P, 1, H, W)`` into ``(N, 3, H, W)``.

        The reference plane (the identity prior) is the middle input plane.
        """
        n, p, _, h, w = planes.shape
        x = torch.cat([planes, masks], dim=2).reshape(n, 4 * p, h, w)
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        ref = x[:, 4 * (p // 2) : 4 * (p // 2) + 3]  # channels per plane: R, G, B, mask
        e1 = self.enc1(self.head(x - 0.5))
        e2 = self.enc2(F.avg_pool2d(e1, 2))
        e3 = self.enc3(F.avg_pool2d(e2, 2))
        b = self.bottom(F.avg_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([_up(b, e3), e3], dim=1))
        d2 = self.dec2(torch.cat([_up(d3, e2), e2], dim=1))
        d1 = self.dec1(torch.cat([_up(d2, e1), e1], dim=1))
        z = self.tail(d1)
        prior = torch.atanh(ref.clamp(0.0, 1.0).mul(2.0).sub(1.0).clamp(-0.999, 0.999))
        out = (torch.tanh(z + prior) + 1.0) * 0.5
        if self.gated:
            gate = calibrated_gate(x[:, 4 * (p // 2) + 3 : 4 * (p // 2) + 4], self.gate_threshold)
            out = ref + gate * (out - ref)
        return out[..., :h, :w]


def calibrated_gate(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """BM's blur probability as an output gate: 0 at or below ``threshold``, rising linearly to 1
    (the raw probability when ``threshold`` is 0)."""
    if threshold <= 0:
        return mask
    return ((mask - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear 2× upsampling to the size of ``like``."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


#: (kernel, stride, out-channel multiplier) of the discriminator's eight convolutions.
_D_LAYERS = ((3, 1, 1), (2, 2, 1), (3, 1, 2), (2, 2, 2), (3, 1, 4), (2, 2, 4), (3, 1, 8), (2, 2, 0))


class PatchDiscriminator(nn.Module):
    """VGG-like PatchGAN: 8 convolutions with LeakyReLU, 4×4/4 max pooling, one logit per cell.

    The eighth convolution produces the single logit channel; the map has stride 64.
    """

    def __init__(self, base: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, (k, s, mult) in enumerate(_D_LAYERS):
            cout = base * mult if mult else 1
            layers.append(nn.Conv2d(cin, cout, k, s, (k - 1) // 2 if s == 1 else 0))
            if i < len(_D_LAYERS) - 1:
                layers.append(nn.LeakyReLU(0.2))
            cin = cout
        layers.append(nn.MaxPool2d(4, 4))
        self.net = nn.Sequential(*layers)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, H/64, W/64)`` of ``(N, 3, H, W)`` images in [0, 1]."""
        return self.net(rgb * 2.0 - 1.0)

    def probability(self, rgb: torch.Tensor) -> torch.Tensor:
        """Sigmoid map: probability that each 64×64 cell is a real all-in-focus image."""
        return torch.sigmoid(self.forward(rgb))


def discriminator_receptive_field() -> tuple[int, int]:
    """(receptive field, stride) in input pixels of one discriminator output value."""
    rf, jump = 1, 1
    for k, s, _ in _D_LAYERS:
        rf += (k - 1) * jump
        jump *= s
    rf += (4 - 1) * jump  # the 4×4/4 max pooling
    return rf, jump * 4


#: Whether the shipped single-/few-plane generators were trained with the mask gate (the gate
#: has no parameters, so the weights file cannot say; these must match how they were trained).
GATED_SINGLE = True
GATED_FEW = True
#: Gate calibration of the shipped single-plane generator (``DenseUNetGenerator.gate_threshold``):
#: BM blur probabilities at or below it keep the input plane exactly. Chosen by
#: ``training.cgan_blurmask.calibrate_gate(stacks=("pseudoscorpion",))`` (smallest threshold whose
#: worst plane loses <= 0.1 dB): 0.98 for the licence-clean round-3 weights (BM and G trained on
#: the algae stack as their only real stack; the withdrawn first round-3 weights had 0.7).
GATE_THRESHOLD_SINGLE = 0.98


class CganBlurMask(nn.Module):
    """The shipped model: frozen BM plus the single-plane and the few-plane generators.

    One module (and one weights file: keys ``bm.``, ``single.``, ``few.``) so a single sha256
    record pins everything the fuser runs.

    ``bm_variant``: BM's architecture; default ``deeplab_v3_lite`` for the lite width and the
    paper's ResNet-50 for the paper width. The ``h100-8min`` preset trains the paper-width
    generators against the lite BM, so the fuser's ``width: paper`` builds
    ``CganBlurMask("paper", bm_variant="deeplab_v3_lite")``.
    """

    def __init__(
        self,
        width: GeneratorWidth = "lite",
        gated_single: bool = GATED_SINGLE,
        gated_few: bool = GATED_FEW,
        bm_variant: DeepLabVariant | None = None,
    ) -> None:
        super().__init__()
        from wsi_fusion.nets.deeplab import build_deeplab

        if bm_variant is None:
            bm_variant = "deeplab_v3_lite" if width == "lite" else "deeplab_v3_resnet50"
        self.bm = build_deeplab(bm_variant)
        self.single = DenseUNetGenerator(1, width, gated=gated_single)
        self.single.gate_threshold = GATE_THRESHOLD_SINGLE
        self.few = DenseUNetGenerator(3, width, gated=gated_few)

    def masks(self, planes: torch.Tensor) -> torch.Tensor:
        """BM blur probability of each plane: ``(N, P, 3, H, W)`` → ``(N, P, 1, H, W)``."""
        n, p, c, h, w = planes.shape
        prob = self.bm.blur_probability(planes.reshape(n * p, c, h, w))
        return prob.reshape(n, p, 1, h, w).to(planes.dtype)

    def forward(
        self, planes: torch.Tensor, mode: Literal["single", "few"] = "single"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All-in-focus ``(N, 3, H, W)`` and blur masks ``(N, P, 1, H, W)`` of the input planes."""
        masks = self.masks(planes)
        gen = self.single if mode == "single" else self.few
        if planes.shape[1] != gen.n_planes:
            raise ValueError(f"mode {mode!r} needs {gen.n_planes} planes, got {planes.shape[1]}")
        return gen(planes, masks), masks
