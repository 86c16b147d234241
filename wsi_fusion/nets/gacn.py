"""GACN: gradient-aware cascade network for two-source multi-focus fusion.

B. Ma, X. Yin, D. Wu, H. Shen, X. Ban and Y. Wang, "End-to-end learning for simultaneously
generating decision map and multi-focus image fusion result", Neurocomputing 470:204-216, 2022
(online 2021), doi:10.1016/j.neucom.2021.10.115. Section 3.1, Fig. 1.

Architecture (as built here)
----------------------------
- Feature extraction path (Sec. 3.1.1): a siamese (shared-weight) stack of four 3x3
  convolutions on the grey source, densely connected (layer ``k`` sees the concatenation of the
  outputs of every earlier layer), ReLU, no pooling, each followed by a channel squeeze-and-
  excitation module (CSE: global average pool -> FC -> ReLU -> FC -> sigmoid -> rescale).
- Activity (Eqs. 1-3): pixel-wise spatial frequency of each layer's features, radius r = 5;
  the activity level of a scale is ``SF^A - SF^B``. The four scales are concatenated.
- Decision path (Sec. 3.1.2): four 3x3 convolutions (ReLU between them), each followed by a
  spatial squeeze-and-excitation module (SSE: one 7x7 convolution to one channel -> sigmoid ->
  rescale), then the sigmoid projection ``p = 1 / (1 + exp(-k·x))`` (Eq. 4) giving the initial
  decision map (DM), the probability that A is sharper.
- Boundary smoothing (Sec. 3.1.2, :func:`smooth_boundary`): the initial DM is Gaussian-filtered,
  pixels whose filtered value lies in [0.1, 0.8] form the boundary region, the initial DM is
  guided-filtered (guide: the grey initial fusion result) and the final DM takes the smoothed
  value in the boundary region and the initial DM elsewhere. Differentiable, used in training.

Deviations from the paper and why
---------------------------------
- Widths are not stated in the text (Fig. 1 is not reproduced); features use 16 channels per
  layer as SESF-Fuse, which the paper builds on, and the decision path 16 (``GACNConfig``).
  The shipped variant is ``gacn.small`` (growth 8, decision width 8), to train in the CPU
  budget.
- The decision is antisymmetric by construction (``GACNConfig.antisymmetric``): the decision
  path runs on ``a_A − a_B`` and on ``a_B − a_A`` and the logit is half their difference, so
  ``p(B, A) = 1 − p(A, B)``. Trained as in the paper (one-sided Dice, Eq. 7) the plain path
  learned to put both classes above p = 0.5 (measured: Dice falling, accuracy of the sign 50 %);
  antisymmetry removes that bias and makes pairwise decisions consistent for the N-plane
  strategies. It doubles the cost of the decision path (on a CPU about that of the feature
  path), not of the feature path.
- The steepness of the sigmoid projection is an argument: the paper uses k = 1000 throughout.
  With k = 1000 almost every pixel is saturated at initialisation and Dice gets no gradient, so
  training ramps k (see ``training/gacn.py``); inference uses the paper's k unless told otherwise.
- Gaussian sigma of the boundary test (2 px), guided-filter radius (4 px) and eps (1e-2) are
  not given in the paper; they are parameters here.
- Inputs are grey in [0, 1] shifted to [-0.5, 0.5] (paper: grey, normalisation unstated).
- Borders: convolutions zero-pad, the spatial-frequency differences replicate the edge (zero
  difference) and the windows mirror it (the paper: "the same padding strategy").

The CSE modules pool globally, so a pixel's output depends weakly on the whole tile (one scalar
per channel); :func:`receptive_halo` is the halo of everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

#: Steepness of the sigmoid projection (Eq. 4) and of the Heaviside approximation (Eq. 12).
PAPER_STEEPNESS = 1000.0


@dataclass(frozen=True)
class GACNConfig:
    """Hyper-parameters that fix the parameter shapes of :class:`GACN`.

    Attributes
    ----------
    growth : int
        Channels of each densely connected feature layer.
    layers : int
        Feature layers (= scales of the activity level); the paper uses 4.
    decision_width : int
        Channels of the decision-path convolutions (the last one has 1).
    decision_layers : int
        Decision-path convolutions; the paper uses 4.
    se_reduction : int
        Channel reduction of the CSE bottleneck.
    sse_kernel : int
        Kernel of the SSE projection (paper: 7).
    sf_radius : int
        Window radius r of the spatial frequency (paper: 5).
    antisymmetric : bool
        Make the decision antisymmetric: ``logit(A, B) = (D(a_A − a_B) − D(a_B − a_A)) / 2``,
        so swapping the sources gives ``1 − p`` exactly (not in the paper; see the deviations).
    """

    growth: int = 16
    layers: int = 4
    decision_width: int = 16
    decision_layers: int = 4
    se_reduction: int = 2
    sse_kernel: int = 7
    sf_radius: int = 5
    antisymmetric: bool = True


#: The shipped reduced-width variant.
SMALL = GACNConfig(growth=8, decision_width=8)
#: The paper's width (growth 16, decision width 16): what the ``h100-8min`` preset trains
#: (``training.gacn``, ``width: paper``) and the fuser builds with ``width: paper``.
PAPER = GACNConfig()


class ChannelSE(nn.Module):
    """Channel squeeze & excitation (cSE, Hu et al. 2018 / Roy et al. 2018)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)[:, :, None, None]

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel excitation ``(N, C)`` of ``(N, C, H, W)`` features."""
        s = x.mean(dim=(2, 3))
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SpatialSE(nn.Module):
    """Spatial squeeze & channel excitation (sSE, Roy et al. 2018): one k x k projection."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.projection(x))
        if x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
            # Broadcasting one channel over a channels-last tensor is ~5x slower on CPU than
            # the same product written on the (N, H, W, C) view (measured, 512², 8 channels).
            return (x.permute(0, 2, 3, 1) * gate.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x * gate

    def projection(self, x: torch.Tensor) -> torch.Tensor:
        """The k x k projection to one channel, ``(N, C, H, W)`` -> ``(N, 1, H, W)``.

        Computed as one ``k x 1`` convolution with one output channel per kernel column, whose
        columns are then summed at their horizontal offsets (a ``1 x k`` convolution with an
        identity kernel): the same sum of products, regrouped. oneDNN handles a convolution to
        a single output channel poorly; this form was measured 3x faster on one CPU thread
        (512², 8 channels: 15.7 -> 5.2 ms), equal up to float rounding (both are differentiable).
        """
        weight = self.proj.weight
        channels, k = weight.shape[1], weight.shape[-1]
        r = k // 2
        if channels == 1:
            if torch.is_grad_enabled():
                return self.proj(x)
            # Inference: k² shifted multiply-adds beat oneDNN's one-to-one-channel convolution
            # ~5x on one CPU thread (measured, 512², 7 x 7); no gradient flows to the weight.
            padded = F.pad(x, (r, r, r, r))
            h, w = x.shape[2:]
            out = torch.empty_like(x).fill_(float(self.proj.bias[0]))  # type: ignore[index]
            taps = weight[0, 0].tolist()
            for dy in range(k):
                for dx in range(k):
                    out.add_(padded[:, :, dy : dy + h, dx : dx + w], alpha=taps[dy][dx])
            return out
        columns = F.conv2d(x, weight[0].permute(2, 0, 1).unsqueeze(-1), padding=(r, 0))
        shift = torch.eye(k, dtype=weight.dtype, device=weight.device).view(1, k, 1, k)
        return F.conv2d(columns, shift, self.proj.bias, padding=(0, r))


def _sf_energy(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``Σ_c weight_c (RF_c² + CF_c²)`` of one ``(1, C, H, W)`` image, as in
    :func:`spatial_frequency` (zero difference on the first row/column), ``(1, 1, H, W)``."""
    _, c, h, w = u.shape
    flat = u.permute(0, 2, 3, 1).reshape(-1)  # a view when ``u`` is channels-last
    energy = torch.empty_like(flat)
    torch.sub(flat[c:], flat[:-c], out=energy[c:]).square_()
    energy.view(h, w, c)[:, 0].zero_()  # first column: no left neighbour
    energy[w * c :] += (flat[w * c :] - flat[: -w * c]).square_()
    return torch.mv(energy.view(h * w, c), weight).view(1, 1, h, w)


def spatial_frequency(features: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixel-wise spatial frequency of ``(N, C, H, W)`` features, ``(N, 1, H, W)`` (Eqs. 1-3).

    Row and column differences are squared and summed over channels (the feature *vector*),
    then averaged over a ``(2r + 1)²`` window; ``SF = sqrt(mean(RF²) + mean(CF²))``.
    """
    # Replicate-pad by one so the first row/column has a zero difference.
    padded = F.pad(features, (1, 0, 1, 0), mode="replicate")
    row = padded[:, :, 1:, 1:] - padded[:, :, 1:, :-1]
    col = padded[:, :, 1:, 1:] - padded[:, :, :-1, 1:]
    energy = (row.square() + col.square()).sum(dim=1, keepdim=True)
    return torch.sqrt(box_mean(energy, radius) + 1e-12)


class GACNFeatures(nn.Module):
    """Siamese feature-extraction path: densely connected 3x3 convolutions + CSE, no pooling."""

    def __init__(self, cfg: GACNConfig) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.ses = nn.ModuleList()
        for k in range(cfg.layers):
            c_in = 1 + k * cfg.growth
            self.convs.append(nn.Conv2d(c_in, cfg.growth, 3, padding=1))
            self.ses.append(ChannelSE(cfg.growth, cfg.se_reduction))

    def forward(self, grey: torch.Tensor) -> list[torch.Tensor]:
        """Per-scale features of ``(N, 1, H, W)`` grey images in [0, 1]."""
        inputs = [grey - 0.5]
        outputs = []
        for conv, se in zip(self.convs, self.ses, strict=True):
            y = se(F.relu(conv(torch.cat(inputs, dim=1))))
            inputs.append(y)
            outputs.append(y)
        return outputs


class GACNDecision(nn.Module):
    """Decision path: 3x3 convolutions each followed by SSE, ending in one channel."""

    def __init__(self, cfg: GACNConfig) -> None:
        super().__init__()
        widths = [cfg.layers] + [cfg.decision_width] * (cfg.decision_layers - 1) + [1]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.sses = nn.ModuleList(SpatialSE(b, cfg.sse_kernel) for b in widths[1:])

    def forward(self, activity: torch.Tensor) -> torch.Tensor:
        return self.after_first(self.convs[0](activity))

    @property
    def first_conv(self) -> nn.Conv2d:
        """The first decision convolution (typed: a ``ModuleList`` item is a ``Module``)."""
        conv = self.convs[0]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def first_linear(self, activity: torch.Tensor) -> torch.Tensor:
        """The first convolution without its bias: linear, so ``first_linear(a − b)`` equals
        ``first_linear(a) − first_linear(b)`` and it can run once per image, not per pair."""
        conv = self.first_conv
        return F.conv2d(activity, conv.weight, None, padding=conv.padding)

    def after_first(self, x: torch.Tensor) -> torch.Tensor:
        """The path from the first convolution's output (bias included) to the logit."""
        last = len(self.convs) - 1
        for i, (conv, sse) in enumerate(zip(self.convs, self.sses, strict=True)):
            if i > 0:
                x = conv(x)
            if i < last:
                x = F.relu(x)
            x = sse(x)
        return x


class GACN(nn.Module):
    """Two-source decision network: grey A, B ``(N, 1, H, W)`` -> initial DM ``(N, 1, H, W)``.

    Use :meth:`features` once per image and :meth:`decide` per pair to reuse the features of
    one source across several pairs (the decision calibration).
    """

    def __init__(self, cfg: GACNConfig = SMALL) -> None:
        super().__init__()
        self.cfg = cfg
        self.extract = GACNFeatures(cfg)
        self.decision = GACNDecision(cfg)

    def activity(self, grey: torch.Tensor) -> torch.Tensor:
        """Per-scale spatial frequency ``(N, layers, H, W)`` of grey images.

        Inference on a CPU takes :meth:`activity_cpu` (the same function, regrouped).
        """
        if not torch.is_grad_enabled() and grey.device.type == "cpu":
            return torch.cat([self.activity_cpu(g[None]) for g in grey])
        feats = self.extract(grey)
        return torch.cat([spatial_frequency(f, self.cfg.sf_radius) for f in feats], dim=1)

    def activity_cpu(self, grey: torch.Tensor) -> torch.Tensor:
        """:meth:`activity` of one ``(1, 1, H, W)`` grey image, regrouped for one CPU thread.

        Equal up to float rounding (tested), ~2x faster on one thread (measured, 512²: 110 ->
        53 ms), without gradients to the weights:

        - No concatenation of the dense inputs: a channels-last ``torch.cat`` interleaves every
          pixel (25 channels at 512²: 22 ms, as much as the convolution reading it). A layer's
          convolution of the concatenated inputs is the sum of convolutions of each input group,
          so each group is convolved once, when it is produced, into its share of every later
          layer (one convolution of 8 -> 24, 16, 8 channels, widths oneDNN runs fast) and the
          shares are accumulated.
        - The channel SE scale ``s`` is not applied to the features: it is folded into the
          input channels of the later convolutions' weights and, as ``s²``, into the spatial
          frequency's channel sum (the differences scale with ``s``).
        - The spatial frequency's row and column differences are taken on the flat
          channels-last buffer (shifts of ``C`` and ``W·C`` elements), and its channel sum is
          one matrix-vector product.
        """
        convs = [c for c in self.extract.convs if isinstance(c, nn.Conv2d)]
        ses = [s for s in self.extract.ses if isinstance(s, ChannelSE)]
        g, layers = self.cfg.growth, self.cfg.layers
        cl = torch.channels_last
        x = (grey - 0.5).contiguous()
        # Each layer's share of the input image (bias included) starts its accumulator.
        acc = [
            F.conv2d(x, conv.weight[:, :1].contiguous(memory_format=cl), conv.bias, padding=1)
            for conv in convs
        ]
        acts = []
        for j in range(layers):
            u = F.relu_(acc[j])  # the layer's features before the channel SE
            scale = ses[j].scale(u)[0]
            energy = _sf_energy(u, scale.square())
            acts.append(torch.sqrt(box_mean(energy, self.cfg.sf_radius) + 1e-12))
            if j + 1 == layers:
                break
            lo = 1 + j * g  # the input channels of group j in every later layer
            weight = torch.cat([convs[k].weight[:, lo : lo + g] for k in range(j + 1, layers)])
            weight = (weight * scale.view(1, -1, 1, 1)).contiguous(memory_format=cl)
            shares = F.conv2d(u, weight, None, padding=1)
            for k in range(j + 1, layers):
                acc[k] += shares[:, (k - j - 1) * g : (k - j) * g]
        return torch.cat(acts, dim=1)

    def logit(self, act_a: torch.Tensor, act_b: torch.Tensor) -> torch.Tensor:
        """Decision-path output before the sigmoid projection."""
        diff = act_a - act_b
        if not self.cfg.antisymmetric:
            return self.decision(diff)
        both = self.decision(torch.cat([diff, -diff], dim=0))
        n = diff.shape[0]
        return 0.5 * (both[:n] - both[n:])

    def project(self, act: torch.Tensor) -> torch.Tensor:
        """Per-image share of the decision path's first convolution (no bias), for
        :meth:`logit_projected`: computed once per plane instead of twice per pair."""
        return self.decision.first_linear(act)

    def logit_projected(self, proj_a: torch.Tensor, proj_b: torch.Tensor) -> torch.Tensor:
        """:meth:`logit` from :meth:`project` of both activities (equal up to float rounding).

        The first decision convolution is linear and zero-padded, so its response to
        ``a_A − a_B`` is ``project(a_A) − project(a_B)``, and to ``a_B − a_A`` the negative.
        """
        diff = proj_a - proj_b
        bias = self.decision.first_conv.bias
        assert bias is not None
        bias = bias.view(1, -1, 1, 1)
        if not self.cfg.antisymmetric:
            return self.decision.after_first(diff + bias)
        both = self.decision.after_first(torch.cat([diff + bias, bias - diff], dim=0))
        n = diff.shape[0]
        return 0.5 * (both[:n] - both[n:])

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, steepness: float = PAPER_STEEPNESS
    ) -> torch.Tensor:
        """Initial decision map: probability that ``a`` is sharper, ``(N, 1, H, W)``."""
        return torch.sigmoid(steepness * self.logit(self.activity(a), self.activity(b)))


def _gaussian_kernel(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 1, H, W)``, radius ``ceil(2 sigma)``, mirrored edges."""
    radius = max(int(round(2 * sigma)), 1)
    k = _gaussian_kernel(sigma, radius, x.device)
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1))


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over ``(2r + 1)²`` windows with mirrored edges, ``(N, C, H, W)``."""
    size = 2 * radius + 1
    # Separable, and each pass as a sum of shifted slices: on one CPU thread ~10x faster than
    # avg_pool2d with a (1, size) window (measured, 512², r = 4), equal up to float rounding.
    y = _window_sum(F.pad(x, (radius, radius, 0, 0), mode="reflect"), size, -1)
    y = _window_sum(F.pad(y, (0, 0, radius, radius), mode="reflect"), size, -2)
    return y * (1.0 / (size * size))


def _window_sum(padded: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sums of ``size`` consecutive samples along ``dim`` of an already padded tensor."""
    n = padded.shape[dim] - size + 1
    out = padded.narrow(dim, 0, n).clone()
    for shift in range(1, size):
        out += padded.narrow(dim, shift, n)  # in place on the clone: autograd allows it
    return out


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He et al.'s guided filter (grey guide), ``(N, 1, H, W)``; reach ``2 * radius``."""
    mean_i = box_mean(guide, radius)
    var_i = (box_mean(guide * guide, radius) - mean_i * mean_i).clamp_min(0.0)
    mean_p = box_mean(src, radius)
    cov = box_mean(guide * src, radius) - mean_i * mean_p
    a = cov / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius) * guide + box_mean(b, radius)


@dataclass(frozen=True)
class BoundarySmoothing:
    """Parameters of the paper's boundary smoothing of the decision map."""

    sigma: float = 2.0
    low: float = 0.1
    high: float = 0.8
    radius: int = 4
    eps: float = 1e-2

    @property
    def halo(self) -> int:
        """How far the smoothing reaches beyond the initial DM."""
        return max(max(int(round(2 * self.sigma)), 1), 2 * self.radius)


def smooth_boundary(
    dm: torch.Tensor, a: torch.Tensor, b: torch.Tensor, cfg: BoundarySmoothing
) -> torch.Tensor:
    """Final DM: guided-filtered initial DM in the boundary region, the initial DM elsewhere.

    ``dm``, ``a``, ``b`` are ``(N, 1, H, W)``; the guide is the grey initial fusion result. The
    region test is a threshold (no gradient through it); the values keep theirs.
    """
    region = gaussian_blur(dm.detach(), cfg.sigma)
    boundary = (region >= cfg.low) & (region <= cfg.high)
    guide = dm * a + (1 - dm) * b
    smooth = guided_filter(guide, dm, cfg.radius, cfg.eps).clamp(0.0, 1.0)
    return torch.where(boundary, smooth, dm)


def pool_half(x: torch.Tensor) -> torch.Tensor:
    """2x2 mean of ``(N, C, H, W)``, an odd last row/column replicated: ``ceil(H/2)``."""
    h, w = x.shape[2:]
    if h % 2 or w % 2:
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
    return F.avg_pool2d(x, 2)


def upsample_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear 2x upsampling of a :func:`pool_half` map back to ``size`` = ``(H, W)``."""
    h, w = size
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return up[:, :, :h, :w]


def receptive_halo(cfg: GACNConfig, half: bool = False) -> int:
    """Reach of the initial DM (CSE's global pooling aside): convs, SF window, SSE kernels.

    ``half``: the decision path on :func:`pool_half` activities, its logit upsampled back
    (:func:`upsample_to`): the decision path's reach counts twice, the pooling and the
    interpolation add one pixel each.
    """
    features = cfg.layers  # one 3x3 conv per layer
    sf = cfg.sf_radius + 1  # window + the one-pixel difference
    decision = cfg.decision_layers * (1 + cfg.sse_kernel // 2)
    if half:
        return features + sf + 2 * decision + 2
    return features + sf + decision
