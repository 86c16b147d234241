"""``focus_measure`` in torch: the default fuser on GPU workers, batched over tiles.

The same algorithm as :mod:`.focus_measure` (the numpy reference), step for step: BT.601 luma,
sum-modified-Laplacian (or Laplacian energy) with mirrored borders, the depth surface of
:mod:`._depth` (luminance and optical-density gradient energy averaged over 4-px cells, two box
passes, first argmax, pixels leave the surface only for a plane ``clearly_sharper ** n``
sharper, blank glass to the middle plane), the guided-filter refinement with ``hard_above``
snapping, and the two-band composition (:mod:`._low_band`: detail by the weights, low band along
the surface) or, with ``low_band_radius=0``, the weighted sum. It is reached through the default
fuser's ``device`` parameter (:func:`select_class`):

- ``numpy`` -- the numpy reference (:class:`.focus_measure.FocusMeasureFuser`, what
  ``focus_measure`` without ``device`` is);
- ``cpu``, ``cuda``, ``cuda:N`` -- this implementation on that device;
- ``auto`` -- this implementation on CUDA when a CUDA device is visible, else the numpy reference.
  The pipeline uses ``auto`` for the default fuser on clusters whose workers offer the ``GPU``
  resource.

``fuse_on_surface`` (the decision-map fusers' network votes, :mod:`.surface`) is inherited
and runs the numpy reference: those fusers create their own numpy ``focus_measure``.

Equality with the reference
---------------------------
Every operation is float32 and in the reference's order (shifted-slice window sums, plane by
plane sums and argmaxes with the first maximum on ties, the same constants rounded to float32),
so on the CPU the result is bit-identical to numpy wherever the reference uses numpy arithmetic.
The exceptions: the optical density's log (numpy's and torch's float32 ``log`` may differ in the
last bit, which moves a depth-surface boundary only where two planes tie to that bit), and a
wide depth-surface box (more than 8 cells: only with ``pool_step``
below the default 4), where the reference runs
``scipy.ndimage.uniform_filter1d`` (a running sum in float64, rounded to float32 per pass); here
each pass is a float64 prefix sum, rounded to float32 per pass, which agrees to the last float32
bit except in rare rounding ties. Measured on the test stacks: identical plane decisions on
>= 99.9 % of the pixels (in practice all of them) and fused values within 1 grey level (tests in
``tests/fusers/test_focus_measure_torch.py``).

No autocast, no reduced precision
---------------------------------
The decision is a chain of argmaxes (depth surface, leaving the surface, ``hard_above``) over
values that differ by a few per cent between neighbouring planes in smooth regions, and the
guided filter subtracts nearly equal window means (``E[I p] - E[I] E[p]``). In fp16/bf16 (8-11
bit mantissas) those differences drown in rounding, decisions flip in patches and the
convex-combination guarantee of the weights is lost. The whole fuser is memory-bound
elementwise work (no matmuls for tensor cores to speed up), so half precision would gain at most
the halved memory traffic. It therefore always runs float32 (float64 for the prefix sums).

Borders
-------
Every filter mirrors the tile border as numpy's ``"symmetric"`` pad (``d c b a | a b c d``,
scipy's ``"reflect"``), by index gathering, which also covers pads wider than the tile exactly
as numpy and scipy do (periodic mirroring). ``torch.nn.functional.pad(mode="reflect")`` is
numpy's ``"reflect"`` (``d c b | a b c d``) and would not match.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from wsi_fusion._types import TileStack
from wsi_fusion.fusers import _low_band
from wsi_fusion.fusers import focus_measure as _reference
from wsi_fusion.fusers._depth import OD_FLOOR, OD_WEIGHT, pooled_radius
from wsi_fusion.fusers._filters import _LUMA
from wsi_fusion.fusers.base import Fuser, FusionResult
from wsi_fusion.fusers.focus_measure import FocusMeasureFuser, FocusMeasureParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|numpy|cpu|cuda(:\d+)?)$")


class FocusMeasureTorchParams(FocusMeasureParams):
    """:class:`FocusMeasureParams` plus where the fuser runs and how many tiles per call."""

    #: ``numpy`` (reference), ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (CUDA when visible,
    #: else numpy).
    device: str = "auto"
    #: Tiles per device call in :meth:`Fuser.fuse_batch`.
    batch_size: int = Field(default=16, ge=1, le=1024)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"unknown device {value!r}; use numpy, cpu, cuda, cuda:N or auto")
        return value


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def select_class(params: dict[str, Any]) -> tuple[type[Fuser], dict[str, Any]]:
    """The ``focus_measure`` class for ``params['device']`` and the parameters it takes.

    ``numpy``, and ``auto`` where no CUDA device is visible, give the numpy reference (without
    the device settings); anything else gives :class:`FocusMeasureTorchFuser`. Raises pydantic's
    ``ValidationError`` for invalid parameters, as constructing the fuser would.
    """
    checked = FocusMeasureTorchParams(**params)
    if checked.device == "numpy" or (checked.device == "auto" and not _cuda_available()):
        return FocusMeasureFuser, {
            k: v for k, v in params.items() if k not in ("device", "batch_size")
        }
    return FocusMeasureTorchFuser, params


class FocusMeasureTorchFuser(FocusMeasureFuser):
    """``focus_measure`` on a torch device, many tiles per call; same output as the numpy one."""

    Params = FocusMeasureTorchParams
    params: FocusMeasureTorchParams  # type: ignore[assignment]
    #: Runs on a torch device: the scheduler treats it like a learned fuser (GPU resource,
    #: per-worker instance with a device lock, automatic batch size), without weights.
    on_device: ClassVar[bool] = True

    @property
    def device(self) -> torch.device:
        """Where the fuser runs (``auto``: CUDA when visible, else the CPU)."""
        import torch

        wanted = self.params.device
        if wanted in ("auto", "numpy"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(wanted)

    @property
    def batch_size(self) -> int:
        return self.params.batch_size

    def fuse(self, stack: TileStack) -> FusionResult:
        stack = np.asarray(stack, dtype=np.float32)
        z, c, h, w = stack.shape
        if h * w <= _reference._BLOCK**2 * 2:
            return self.fuse_batch([stack])[0]
        # As the reference: blocks with a margin halo (exactly margin-bounded), so device
        # memory stays bounded; interior blocks share one shape and go through in batches.
        m, block = self.block_halo, self.block_side
        fused = np.empty((c, h, w), dtype=np.float32)
        weights = np.empty((z, h, w), dtype=np.float32)
        parts: list[TileStack] = []
        where = []
        for y0 in range(0, h, block):
            for x0 in range(0, w, block):
                y1, x1 = min(y0 + block, h), min(x0 + block, w)
                gy0, gx0 = max(0, y0 - m), max(0, x0 - m)
                gy1, gx1 = min(h, y1 + m), min(w, x1 + m)
                parts.append(stack[:, :, gy0:gy1, gx0:gx1])
                where.append((y0, y1, x0, x1, gy0, gx0))
        for done, (y0, y1, x0, x1, gy0, gx0) in zip(self.fuse_batch(parts), where, strict=True):
            inner = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
            fused[:, y0:y1, x0:x1] = done.fused[(slice(None), *inner)]
            assert done.weights is not None
            weights[:, y0:y1, x0:x1] = done.weights[(slice(None), *inner)]
        return FusionResult(fused=fused, weights=weights)

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Fuse ``stacks`` in device calls of up to ``batch_size`` equally shaped stacks."""
        import torch

        results: list[FusionResult | None] = [None] * len(stacks)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(stacks):
            groups.setdefault(tuple(np.shape(s)), []).append(i)
        device = self.device
        # On the CPU a batch gains nothing (no launch overhead to amortise) and its temporaries
        # fall out of the caches: measured 2x slower per tile with 4 tiles per call.
        step = self.batch_size if device.type == "cuda" else 1
        with torch.inference_mode():
            for members in groups.values():
                for start in range(0, len(members), step):
                    chunk = members[start : start + step]
                    host = np.stack([np.asarray(stacks[i], dtype=np.float32) for i in chunk])
                    x = torch.from_numpy(host).to(device, non_blocking=True)
                    fused, weights = self._fuse_tensor(x)
                    fused_np, weights_np = fused.cpu().numpy(), weights.cpu().numpy()
                    for k, i in enumerate(chunk):
                        results[i] = FusionResult(fused=fused_np[k], weights=weights_np[k])
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ the algorithm

    def _fuse_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``(B, C, H, W)`` and weights ``(B, Z, H, W)`` of ``x`` ``(B, Z, C, H, W)``."""
        import torch

        p = self.params
        z = x.shape[1]
        lum = _luma(x)
        focus = _focus_map(lum, p.measure, p.radius, p.step)
        energy = None
        if p.depth_radius and p.surface_measure != "focus":
            energy = _gradient_energy(lum)
            if p.surface_measure == "gradient_od":
                energy += _od_gradient_energy(x)
        index, surface = _depth_decision(focus, focus, p, p.blank_threshold, energy)
        one_hot = _one_hot(index, z)
        if p.refine:
            weights = self._refine_tensor(lum, one_hot)
        else:
            weights = one_hot
        cells = _low_band.low_band_cells(p)
        if surface is None or not cells:
            return _weighted_sum(x, weights), weights.to(torch.float32)
        fused = _two_band_sum(x, weights, surface, p.pool_step, cells)
        # As the reference: a tile whose weights and surface use one and the same plane keeps
        # its pixels (the weighted sum only for the batches that have such a tile).
        used = weights.flatten(2).amax(dim=2) > 0  # (B, Z)
        one = used.sum(dim=1) == 1
        same = (surface == used.to(torch.int64).argmax(dim=1)[:, None, None]).flatten(1).all(1)
        picked = one & same
        if bool(picked.any()):
            fused = torch.where(picked[:, None, None, None], _weighted_sum(x, weights), fused)
        return fused, weights.to(torch.float32)

    def _refine_tensor(self, lum: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """Guided-filter refinement of the one-hot maps, as ``FocusMeasureFuser._refine``.

        The maps of every plane picked somewhere in the batch are filtered; a plane absent
        from one tile has an all-zero map there, which the (linear) filter keeps exactly zero,
        so each tile gets the numbers the reference computes for its own planes.
        """
        import torch

        p = self.params
        b, z = one_hot.shape[:2]
        used = one_hot.flatten(2).amax(dim=2) > 0  # (B, Z)
        planes = torch.nonzero(used.any(dim=0)).flatten()
        if planes.numel() < 2:
            return one_hot
        # The reference's _mean_guide, in its order: planes summed one by one, then divided.
        guide = lum[:, :1].clone()  # (B, 1, H, W)
        for k in range(1, z):
            guide += lum[:, k : k + 1]
        guide /= _f32(z)
        maps = one_hot.index_select(1, planes)
        soft = _guided_filter(guide, maps, p.guided_radius, p.guided_eps)
        del maps
        soft.clamp_(0.0, 1.0)
        total = soft[:, 0].clone()
        for k in range(1, soft.shape[1]):
            total += soft[:, k]
        soft /= torch.clamp_min(total, _f32(1e-6))[:, None]
        top, strongest = _first_argmax(soft)
        hard = strongest >= _f32(p.hard_above)
        for k in range(soft.shape[1]):
            soft[:, k] = torch.where(hard, (top == k).to(soft.dtype), soft[:, k])
        out = torch.zeros_like(one_hot)
        out[:, planes] = soft
        # The reference does not filter a tile whose decision uses a single plane.
        single = used.sum(dim=1) < 2
        if bool(single.any()):
            out[single] = one_hot[single]
        return out


def _f32(value: float) -> float:
    """``value`` rounded to float32 (the reference's constants are float32)."""
    return float(np.float32(value))


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``(B, Z, C, H, W)`` -> luma ``(B, Z, H, W)``, as ``focus_measure._luma``."""
    c = x.shape[2]
    if c == 3:
        out = x[:, :, 0] * float(_LUMA[0])
        out += x[:, :, 1] * float(_LUMA[1])
        out += x[:, :, 2] * float(_LUMA[2])
        return out
    if c == 1:
        return x[:, :, 0].clone()
    return x.mean(dim=2)


def _mirror_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of numpy's ``"symmetric"`` pad of ``n`` samples (any pad width)."""
    import torch

    i = torch.arange(-before, n + after, device=device)
    j = torch.remainder(i, 2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def _pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Mirror-pad ``r`` samples on both sides of ``dim`` (numpy ``"symmetric"``)."""
    import torch

    n = x.shape[dim]
    if r > n:  # wider than the data: periodic mirroring, by gathering
        return x.index_select(dim, _mirror_index(n, r, r, x.device))
    # Flipped edge slices: a gather along the last axis is several times slower on the CPU.
    before = x.narrow(dim, 0, r).flip(dim)
    after = x.narrow(dim, n - r, r).flip(dim)
    return torch.cat([before, x, after], dim=dim)


def _window_sum(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum of ``2r + 1`` samples along ``dim``, summed in the reference's order."""
    n = x.shape[dim]
    padded = _pad(x, r, dim)
    out = padded.narrow(dim, 0, n).clone()
    for shift in range(1, 2 * r + 1):
        out += padded.narrow(dim, shift, n)
    return out


def _running_mean(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Mean of ``2r + 1`` samples along ``dim`` in float64, rounded to float32.

    Stands in for ``scipy.ndimage.uniform_filter1d(mode="reflect")`` (a float64 running sum).
    """
    import torch

    size = 2 * r + 1
    n = x.shape[dim]
    padded = _pad(x.to(torch.float64), r, dim)
    sums = torch.cumsum(padded, dim=dim)
    upper = sums.narrow(dim, size - 1, n)
    lower = torch.cat(
        [torch.zeros_like(sums.narrow(dim, 0, 1)), sums.narrow(dim, 0, n - 1)], dim=dim
    )
    return ((upper - lower) / size).to(torch.float32)


def _box_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a ``(2r + 1)²`` window of the last two axes, as ``_filters.box_mean``."""
    if r <= 0:
        return x.clone()
    if r <= 8:
        size = 2 * r + 1
        out = _window_sum(_window_sum(x, r, -2), r, -1)
        out *= _f32(1.0 / (size * size))
        return out
    return _running_mean(_running_mean(x, r, -1), r, -2)


def _focus_map(lum: torch.Tensor, measure: str, radius: int, step: int) -> torch.Tensor:
    """``focus_measure.focus_map`` on ``(B, Z, H, W)`` luma."""
    import torch

    s = step
    p = _pad(_pad(lum, s, -2), s, -1)
    centre = p[..., s:-s, s:-s]
    two = 2.0 * centre
    d_yy = two - p[..., : -2 * s, s:-s] - p[..., 2 * s :, s:-s]
    d_xx = two - p[..., s:-s, : -2 * s] - p[..., s:-s, 2 * s :]
    if measure == "sml":
        ml = d_yy.abs_()
        ml += d_xx.abs_()
        return _box_mean(ml, radius)
    lap = d_yy
    lap += d_xx
    lap *= lap
    return torch.sqrt(torch.clamp_min(_box_mean(lap, radius), 0.0))


def _first_argmax(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax over dim 1 (first maximum on ties) and the maximum, (B, Z, H, W) -> (B, H, W)."""
    import torch

    index = torch.zeros(values[:, 0].shape, dtype=torch.int64, device=values.device)
    best = values[:, 0].clone()
    for k in range(1, values.shape[1]):
        better = values[:, k] > best
        index.masked_fill_(better, k)
        torch.maximum(best, values[:, k], out=best)
    return index, best


def _gradient_energy(lum: torch.Tensor) -> torch.Tensor:
    """``_depth.gradient_energy`` on ``(B, Z, H, W)`` luma (same float32 operations)."""
    import torch

    if lum.shape[-2] < 2 or lum.shape[-1] < 2:
        return torch.zeros_like(lum)
    p = _pad(_pad(lum, 1, -2), 1, -1)
    d_y = p[..., 2:, 1:-1] - p[..., :-2, 1:-1]
    d_x = p[..., 1:-1, 2:] - p[..., 1:-1, :-2]
    d_y *= d_y
    d_x *= d_x
    d_y += d_x
    return d_y


def _od_gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """``_depth.od_gradient_energy`` of ``(B, Z, C, H, W)`` planes (same float32 operations; the
    log is the device's, which may differ from numpy's in the last bit)."""
    c = x.shape[2]
    channels = x.clamp_min(_f32(OD_FLOOR))
    product = channels[:, :, 0].clone()
    for k in range(1, c):
        product *= channels[:, :, k]
    energy = _gradient_energy(product.log_())
    energy *= _f32(OD_WEIGHT / (c * c))
    return energy


def _depth_decision(
    coarse: torch.Tensor,
    fine: torch.Tensor,
    params: FocusMeasureParams,
    blank: float,
    surface_energy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``_depth.decide_on_surface`` on ``(B, Z, H, W)`` scores: plane index ``(B, H, W)`` and
    the surface's plane per cell ``(B, h', w')`` (``None`` without a surface)."""
    import torch

    z = coarse.shape[1]
    surface = None
    if params.depth_radius == 0:
        index, best = _first_argmax(fine)
    else:
        k = params.pool_step
        r = pooled_radius(params)
        cells = _cell_means(coarse * coarse, k)
        index, best = _first_argmax(_box_mean(_box_mean(cells, r), r))
        if surface_energy is not None:
            cells = _cell_means(surface_energy, k)
            index, _ = _first_argmax(_box_mean(_box_mean(cells, r), r))
        best = torch.sqrt(best)
        h, w = coarse.shape[-2:]
        surface = index
        index = _to_pixels(index, k, h, w)
        best = _to_pixels(best, k, h, w)
        index = _leave_surface(index, fine, params)
    index.masked_fill_(~(best > _f32(blank)), z // 2)
    return index, surface


def _cell_means(x: torch.Tensor, k: int) -> torch.Tensor:
    """``_depth.cell_means`` on ``(..., H, W)``: means of ``k x k`` cells, same summing order."""
    if k == 1:
        return x
    h, w = x.shape[-2:]
    if h % k:
        x = x.index_select(-2, _mirror_index(h, 0, -h % k, x.device))
    if w % k:
        x = x.index_select(-1, _mirror_index(w, 0, -w % k, x.device))
    rows = x[..., ::k, :].clone()
    for dy in range(1, k):
        rows += x[..., dy::k, :]
    out = rows[..., ::k].clone()
    for dx in range(1, k):
        out += rows[..., dx::k]
    out *= _f32(1.0 / (k * k))
    return out


def _to_pixels(cells: torch.Tensor, k: int, h: int, w: int) -> torch.Tensor:
    """Each pixel takes its ``k x k`` cell's value: ``(B, h/k, w/k)`` -> ``(B, h, w)``."""
    if k == 1:
        return cells
    full = cells.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    return full[..., :h, :w].contiguous()


def _leave_surface(
    surface: torch.Tensor, fine: torch.Tensor, params: FocusMeasureParams
) -> torch.Tensor:
    """``_depth._leave_surface`` on a batch: ``(B, H, W)`` surface, ``(B, Z, H, W)`` scores."""
    import torch

    z = fine.shape[1]
    on_surface = torch.gather(fine, 1, surface[:, None])[:, 0]
    # The factor table exactly as the reference computes it (numpy float32 powers).
    need_np = np.float32(params.clearly_sharper) ** np.arange(z, dtype=np.float32)
    need_np[0] = np.float32(1e30)
    need = torch.from_numpy(need_np).to(fine.device)
    index = surface.clone()
    best = torch.zeros_like(on_surface)
    for k in range(z):
        threshold = need[(surface - k).abs_()]
        threshold *= on_surface
        torch.maximum(threshold, best, out=threshold)
        better = fine[:, k] > threshold
        index.masked_fill_(better, k)
        best = torch.where(better, fine[:, k], best)
    return index


def _one_hot(index: torch.Tensor, z: int) -> torch.Tensor:
    """``(B, H, W)`` plane index -> one-hot ``(B, Z, H, W)`` float32."""
    import torch

    planes = torch.arange(z, device=index.device)[None, :, None, None]
    return (index[:, None] == planes).to(torch.float32)


def _guided_filter(guide: torch.Tensor, source: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """``_filters.guided_filter`` with a ``(B, 1, H, W)`` guide and ``(B, P, H, W)`` sources."""
    import torch

    mean_i = _box_mean(guide, r)
    var_i = torch.clamp_min(_box_mean(guide * guide, r) - mean_i * mean_i, 0.0)
    var_i += _f32(eps)
    mean_p = _box_mean(source, r)
    a = _box_mean(source * guide, r)
    a -= mean_i * mean_p
    a /= var_i
    b = mean_p
    b -= a * mean_i
    out = _box_mean(a, r)
    out *= guide
    out += _box_mean(b, r)
    return out


def _two_band_sum(
    x: torch.Tensor, weights: torch.Tensor, surface: torch.Tensor, cell: int, radius: int
) -> torch.Tensor:
    """``_low_band.two_band_sum`` on a batch, ``(B, Z, C, H, W)`` by ``(B, Z, H, W)`` and the
    surface ``(B, h', w')``: the same float32 operations in the same order, over the planes in
    use somewhere in the batch (a plane unused in a tile adds exact zeros there), on whole
    images instead of strips."""
    import torch

    used = (weights != 0).flatten(2).any(dim=2).any(dim=0)
    used[torch.unique(surface)] = True
    planes = torch.nonzero(used).flatten().tolist()
    h, w = x.shape[-2:]
    # Cell means of every plane, then the planes in use: no full-size copy of the planes.
    low = _cell_means(x, cell)[:, planes]
    low = _box_mean(_box_mean(low, radius), radius)
    shares = torch.stack([(surface == k).to(torch.float32) for k in planes], dim=1)
    smooth = _box_mean(_box_mean(shares, radius), radius)
    blend = smooth[:, 0, None] * low[:, 0]
    for j in range(1, len(planes)):
        blend += smooth[:, j, None] * low[:, j]
    taps = [
        [torch.from_numpy(t).to(x.device) for t in _low_band.interpolation_taps(size, cell, n)]
        for size, n in ((low.shape[-2], h), (low.shape[-1], w))
    ]
    fused = _upsample(blend, taps)
    for j, k in enumerate(planes):
        detail = x[:, k] - _upsample(low[:, j], taps)
        detail *= weights[:, k, None]
        fused += detail
    return torch.clamp_(fused, 0.0, 1.0)


def _upsample(cells: torch.Tensor, taps: list[list[torch.Tensor]]) -> torch.Tensor:
    """``_low_band``'s bilinear interpolation of the last two axes, ``a0 + (a1 - a0) * f`` along
    x, then along y, with the reference's taps ``[[rows, row weights], [columns, weights]]``."""
    (rows, row_frac), (columns, column_frac) = taps
    along_x = _differences(cells, -1).index_select(-1, columns)
    along_x *= column_frac
    along_x += cells.index_select(-1, columns)
    out = _differences(along_x, -2).index_select(-2, rows)
    out *= row_frac[:, None]
    out += along_x.index_select(-2, rows)
    return out


def _differences(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``a[i + 1] - a[i]`` along ``dim``, 0 at the last index (``_low_band._differences``)."""
    import torch

    n = x.shape[dim]
    after = torch.clamp_max(torch.arange(1, n + 1, device=x.device), n - 1)
    return x.index_select(dim, after) - x


def _weighted_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_z weights[z] * x[z]`` over planes with weight somewhere in the batch, clipped.

    Plane by plane in stack order, as ``focus_measure._weighted_sum``: planes without weight in
    a tile add exact zeros there, so the sums are the reference's.
    """
    import torch

    planes = [k for k in range(weights.shape[1]) if bool((weights[:, k] != 0).any())] or [0]
    first, *rest = planes
    fused = x[:, first] * weights[:, first, None]
    for k in rest:
        fused += x[:, k] * weights[:, k, None]
    return torch.clamp_(fused, 0.0, 1.0)
