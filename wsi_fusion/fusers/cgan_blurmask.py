"""``cgan_blurmask``: an all-in-focus tile generated from one plane (or three) by a cGAN.

"Generating fused images from single-focus or few-focus cytopathological images based on a
conditional GAN" (the cytology cGAN paper, ``../shared/papers/cgan_blurmask_cytology_wsi.txt``;
code github.com/GengXieBo/fusion). Networks:
:mod:`wsi_fusion.nets.deeplab` (the blur-mask network BM) and :mod:`wsi_fusion.nets.cgan_blurmask`
(generator); training: :mod:`wsi_fusion.training.cgan_blurmask`; model card:
``models/cgan_blurmask/README.md``.

Method
------
1. Pick the input plane(s): ``mode="single"`` uses the reference plane ("plane 0") only,
   ``mode="few"`` the reference plane and its two neighbours (0, ±1).
2. BM maps every input plane to a blur mask (probability that a pixel is defocused).
3. The generator maps the planes stacked with their masks to the all-in-focus tile.

Blank tiles (no plane has any structure: empty glass, the white outside a slide) are returned
as their middle plane: there is nothing to restore, and the generator would only add its small
synthesis error (up to ~3 grey levels measured on flat grey).

The output is *generated*, not copied from a source plane, so ``weights`` is ``None`` (no
per-plane decision exists) and the pipeline refuses ``--focus-map`` for this fuser.
:meth:`CganBlurMaskFuser.blur_mask` returns BM's mask of the reference plane, which shows a
reader which regions the generator had to synthesise. The fuser declares it as the extra output
``blur_mask`` (``wsi-fusion fuse --blur-mask``): after ``request_extras(["blur_mask"])`` every
result carries it, taken from the same BM forward pass that conditions the generator (no second
pass). Blank tiles returned as they are get a zero mask: nothing in them was synthesised.

Which plane is "plane 0"
------------------------
The paper's layer 0 is the scanner's best-focus plane (the depth with most cells in focus),
which is the middle of its 11 layers only because the scanner centred the stack on it. In a
z-stack read here the middle plane is often not the best-focused one (tilted tissue, a stack
started off focus, a drift between planes), so ``reference="sharpest"`` (default) takes the
plane with the highest mean sum-modified-Laplacian of the tile's luminance; blank glass (no
plane has structure) falls back to the middle plane. ``reference="middle"`` reproduces a
stack centred on focus. The single-plane model was trained on the sharpest plane of synthetic
stacks, the same choice. The choice is per tile, so neighbouring tiles may start from different
planes; the stitcher blends their overlaps (both aim at the same all-in-focus image).
Few-plane mode with the reference at an end of the stack shifts the three-plane window inward
(planes 0, 1, 2 for a reference 0); with fewer than three planes the nearest plane is repeated.

Deviations from the paper (see also the network and training modules)
---------------------------------------------------------------------
- Shipped networks are reduced-width CPU variants (``deeplab_v3_lite``, generator ``lite``)
  trained for minutes to an hour of CPU on synthetic focal stacks made from H&E tissue (re-stained
  by colour deconvolution) and, for the round-3 BM and single-plane generator, on crops of one
  real z-stack (algae, MIT: the only real stack whose licence allows shipping derived weights)
  against its classical fusion; not on cervical cytology slides with CaseViewer fusions as
  ground truth.
- Round 3: the single-plane gate is calibrated (``gate_threshold``, default 0.98 =
  ``GATE_THRESHOLD_SINGLE``, chosen on the pseudoscorpion stack): BM blur probabilities at or
  below it keep plane 0 exactly, because BM cannot tell real mild defocus from focus on cytology
  and the generator, let through, makes real planes worse. Measured for the licence-clean weights
  (``models/cgan_blurmask/README.md``): real defocused blood-smear and smear planes come back
  bit-identical, and so do the held-out synthetic stacks (+0.00 dB: at 0.98 the shipped
  single-plane model returns its input; target +3 dB not met; ``gate_threshold=0.7``: +0.19 dB
  synthetic, -0.04 dB on the blood smear; ``gate_threshold=0``: +1.19 dB synthetic but -0.33 dB
  and invented texture on real blood-smear planes); the few-plane generator alone loses 2.9 dB
  to the classical fusers on the same three planes.
- Few-plane output (``few_base="fusion"``, default): the default fuser's fusion of the three
  planes, with the generator faded in only where BM calls all three blurred (the same gate
  calibration). The paper's generator output for the whole tile is ``few_base="plane"``. Why:
  a plane that shows the tissue sharply is the truth the generator can only approximate; on the
  held-out stacks letting the generator in cost 0.2-0.9 dB on H&E (model card).
- One weights file holds BM and both generators (keys ``bm.``, ``single.``, ``few.``), so a
  single sha256 record pins the whole model.

Width (``width``, issue 13): ``lite`` (default) runs the shipped packed file (BM and both
generators). ``paper`` runs the paper-width generator (64/64/128/256, growth 32, mask-gated) of
the chosen ``mode``, as ``workflows/gpu_run.sh`` trains it with the ``h100-8min`` preset, behind
the shipped lite BM that the preset trains it against (frozen; read from the shipped file and
checked against its pinned sha256). The preset writes each generator on its own (a bare
``DenseUNetGenerator`` state dict): ``weights: PATH`` names it, else
``models/cgan_blurmask/cgan_single.paper.safetensors`` (``mode="single"``) or
``cgan_few.paper.safetensors`` (``mode="few"``) is loaded, unpinned and recorded in run.json
by its sha256 (with the BM file beside it); without it the fuser says how to get it. The gate
calibration ``GATE_THRESHOLD_SINGLE`` was chosen for the shipped generator: calibrate a
paper-width one again (``training.cgan_blurmask.calibrate_gate``) and pass ``gate_threshold``.

Margin: the generator is a U-Net with three pooling levels and 9×9 convolutions (theoretical
receptive field ±139 px) fed with BM masks (±110 px), so an output pixel can in principle depend
on inputs ±249 px away, but the influence decays fast. ``margin`` is 64 px, the halo of the
paper's tiling (512 px tiles, 128 px overlap); the model card reports the measured difference
between tiled and whole-image output beyond it. The fuser is therefore *approximately*
margin-bounded, not exactly; the stitcher's distance-weighted blend hides the residual.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from wsi_fusion._types import TileStack
from wsi_fusion.fusers._filters import luminance
from wsi_fusion.fusers._registry import register_fuser
from wsi_fusion.fusers._torch import TorchFuser, TorchParams
from wsi_fusion.fusers._weights import (
    WeightsRecord,
    load_into,
    load_state_dict,
    resolve_weights,
)
from wsi_fusion.fusers.base import FusionResult

if TYPE_CHECKING:
    from pathlib import Path

    import torch

log = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

#: Mean per-pixel SML (luminance units) below which every plane counts as blank glass.
BLANK_SML = 2e-3
#: Halo of the paper's tiling (128 px overlap between 512 px tiles).
MARGIN = 64


class CganBlurMaskParams(TorchParams):
    #: ``single``: the reference plane only; ``few``: the reference plane and its neighbours.
    mode: Literal["single", "few"] = "single"
    #: How the reference plane ("plane 0") is chosen in a multi-plane tile.
    reference: Literal["sharpest", "middle"] = "sharpest"
    #: Gate calibration: BM blur probabilities at or below this keep plane 0 exactly
    #: (``DenseUNetGenerator.gate_threshold``), and in few-plane mode with ``few_base="fusion"``
    #: keep the fusion of the three planes. ``None``: the value calibrated with the shipped
    #: weights (``GATE_THRESHOLD_SINGLE``); 0 lets BM's raw mask gate the output.
    gate_threshold: float | None = Field(default=None, ge=0.0, lt=1.0)
    #: What the few-plane output falls back to where a plane shows the tissue sharply:
    #: ``fusion`` (default): the default fuser's fusion of the same three planes, the generator
    #: filling in only where BM calls all three blurred; ``plane``: the reference plane, through
    #: the generator's own gate, as it was trained (the paper's output).
    few_base: Literal["fusion", "plane"] = "fusion"


def plane_sharpness(stack: TileStack) -> Float32Array:
    """Mean sum-modified-Laplacian (step 1) of each plane's luminance, ``(Z,)``."""
    lum = luminance(stack)
    p = np.pad(lum, [(0, 0), (1, 1), (1, 1)], mode="symmetric")
    c = 2.0 * p[:, 1:-1, 1:-1]
    ml = np.abs(c - p[:, :-2, 1:-1] - p[:, 2:, 1:-1]) + np.abs(c - p[:, 1:-1, :-2] - p[:, 1:-1, 2:])
    return ml.mean(axis=(1, 2)).astype(np.float32)


def reference_plane(stack: TileStack, how: Literal["sharpest", "middle"] = "sharpest") -> int:
    """Index of the reference plane ("plane 0") of a ``(Z, C, H, W)`` stack."""
    z = stack.shape[0]
    if how == "middle" or z == 1:
        return z // 2
    sharpness = plane_sharpness(stack)
    if float(sharpness.max()) < BLANK_SML:
        return z // 2
    return int(np.argmax(sharpness))


def few_plane_indices(n_planes: int, ref: int) -> list[int]:
    """Three plane indices around ``ref``: ``ref-1, ref, ref+1`` shifted inside ``0..Z-1``.

    With fewer than three planes the nearest plane is repeated (``[0, 0, 1]`` for two planes
    with reference 0, ``[0, 0, 0]`` for one).
    """
    if n_planes >= 3:
        start = min(max(ref - 1, 0), n_planes - 3)
        return [start, start + 1, start + 2]
    return [max(ref - 1, 0), ref, min(ref + 1, n_planes - 1)]


@register_fuser(
    "cgan_blurmask",
    paper=(
        "'Generating fused images from single-focus or few-focus cytopathological images based "
        "on a conditional GAN' (U-Net/DenseBlock generator, PatchGAN discriminator, DeepLab-v3 "
        "blur-mask network; code: github.com/GengXieBo/fusion)"
    ),
)
class CganBlurMaskFuser(TorchFuser):
    """Single- or few-plane conditional GAN with a DeepLab-v3 blur-mask network."""

    Params = CganBlurMaskParams
    params: CganBlurMaskParams
    min_planes: ClassVar[int] = 1
    extra_outputs: ClassVar[tuple[str, ...]] = ("blur_mask",)
    weights_record: ClassVar[WeightsRecord] = WeightsRecord(
        model="cgan_blurmask.lite",
        file="cgan_blurmask/cgan_blurmask.lite.safetensors",
        sha256="1f52c7f421b37b3e4550e6de4f565449e1776c408da4798bdd77fba919ed6f4e",
    )

    def build_model(self) -> torch.nn.Module:
        from wsi_fusion.nets.cgan_blurmask import CganBlurMask

        # The paper-width generators behind the lite BM they are trained against (preset).
        model = CganBlurMask(self.params.width, bm_variant="deeplab_v3_lite")
        model.single.gate_threshold = self._single_gate_threshold
        if self.paper_width:
            # Only the mode's generator gets weights (load_weights): the other would hold tens of
            # MB of random parameters for nothing.
            delattr(model, "few" if self.params.mode == "single" else "single")
        return model

    @property
    def _single_gate_threshold(self) -> float:
        """The single-plane gate's calibration: ``gate_threshold`` or the shipped one."""
        from wsi_fusion.nets.cgan_blurmask import GATE_THRESHOLD_SINGLE

        given = self.params.gate_threshold
        return GATE_THRESHOLD_SINGLE if given is None else given

    def paper_weights_file(self) -> str:
        """The ``h100-8min`` preset's output for the generator of ``mode``."""
        return f"cgan_blurmask/cgan_{self.params.mode}.paper.safetensors"

    def misfit_hint(self) -> str:
        if not self.paper_width:
            return super().misfit_hint()
        mode = self.params.mode
        return (
            f"width 'paper' with mode {mode!r} loads the paper-width {mode}-plane generator "
            f"alone (cgan_{mode}.paper from the GPU run's h100-8min preset, behind the shipped "
            "lite BM); the shipped packed file and lite generators need width 'lite' (the "
            "default), the other generator the other mode"
        )

    def load_weights(self, model: torch.nn.Module, path: Path) -> None:
        """``width: lite``: the packed file. ``width: paper``: the generator of ``mode`` from
        ``path``, BM from the shipped file (pinned)."""
        if not self.paper_width:
            super().load_weights(model, path)
            return
        from wsi_fusion.nets.cgan_blurmask import CganBlurMask

        assert isinstance(model, CganBlurMask)
        generator = model.single if self.params.mode == "single" else model.few
        state = load_state_dict(path, self._expected_sha256())
        load_into(generator, state, source=str(path), hint=self.misfit_hint())
        record = self.weights_record
        shipped = resolve_weights(record)
        packed = load_state_dict(shipped, record.sha256)
        bm = {k.removeprefix("bm."): v for k, v in packed.items() if k.startswith("bm.")}
        load_into(model.bm, bm, source=f"{shipped} (bm.)")

    def describe(self) -> dict[str, Any]:
        """As :meth:`TorchFuser.describe`; with ``width: paper`` also the shipped file whose
        BM runs in front of the paper-width generator (``blurmask``, pinned)."""
        info = super().describe()
        if self.paper_width and not self._random_init:
            record = self.weights_record
            info["blurmask"] = {
                "model": f"{record.model} (bm.)",
                "file": record.file,  # relative to the models folder
                "sha256": record.sha256,
                "pinned": True,
            }
        return info

    @property
    def margin(self) -> int:
        return MARGIN

    def input_planes(self, stack: TileStack) -> list[int]:
        """Indices of the planes the generator sees for this tile."""
        ref = reference_plane(stack, self.params.reference)
        if self.params.mode == "single":
            return [ref]
        return few_plane_indices(stack.shape[0], ref)

    def _forward(self, stacks: list[TileStack]) -> tuple[Float32Array, Float32Array]:
        """Generated ``(N, 3, H, W)`` and blur masks ``(N, H, W)`` of equal stacks: the
        reference plane's, or for ``few_base="fusion"`` the least blurred of the three planes'
        (where that is high, no input plane shows the tissue sharply)."""
        import torch

        inputs = np.stack([s[self.input_planes(s)] for s in stacks])
        model = self.model
        fused, masks = [], []
        with self.autocast():
            for i in range(0, len(inputs), self.tparams.batch_size):
                x = torch.from_numpy(inputs[i : i + self.tparams.batch_size]).to(self.device)
                out, mask = model(x, mode=self.params.mode)
                fused.append(out.float().clamp_(0.0, 1.0).cpu().numpy())
                if self._fills_fusion:
                    mask = mask.amin(dim=1, keepdim=True)
                masks.append(mask[:, mask.shape[1] // 2, 0].float().cpu().numpy())
        return np.concatenate(fused).astype(np.float32), np.concatenate(masks).astype(np.float32)

    def fuse(self, stack: TileStack) -> FusionResult:
        return self.fuse_batch([stack])[0]

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Fuse tiles with batched forward passes (tiles of equal shape share a batch)."""
        stacks = [np.asarray(s, dtype=np.float32) for s in stacks]
        fused: dict[int, Float32Array] = {}
        masks: dict[int, Float32Array] = {}
        todo: list[int] = []
        for i, s in enumerate(stacks):
            if float(plane_sharpness(s).max()) < BLANK_SML:
                # Nothing to restore (empty glass, the white outside a slide): the generator
                # would only add its small synthesis error, so the plane is returned as it is,
                # and its blur mask says that nothing was synthesised.
                fused[i] = s[s.shape[0] // 2].copy()
                masks[i] = np.zeros(s.shape[2:], dtype=np.float32)
            else:
                todo.append(i)
        for group in _groups_by_shape([stacks[i] for i in todo]):
            indices = [todo[j] for j in group]
            out, mask = self._forward([stacks[i] for i in indices])
            for i, generated, blurred in zip(indices, out, mask, strict=True):
                fused[i] = (
                    self._fill_fusion(stacks[i], generated, blurred)
                    if self._fills_fusion
                    else generated
                )
            masks.update(zip(indices, mask, strict=True))
        want_mask = "blur_mask" in self.extras
        return [
            FusionResult(
                fused=fused[i],
                weights=None,
                extras={"blur_mask": masks[i]} if want_mask else {},
            )
            for i in range(len(stacks))
        ]

    @property
    def _fills_fusion(self) -> bool:
        return self.params.mode == "few" and self.params.few_base == "fusion"

    def _fill_fusion(
        self, stack: Float32Array, generated: Float32Array, blurred: Float32Array
    ) -> Float32Array:
        """The default fuser's fusion of the three input planes, with the generated pixels
        faded in where all three are blurred, by the single-plane gate's calibration.

        Where one of the planes shows the tissue sharply, that plane's pixels are the truth a
        generator can only approximate: the three-plane generator alone lost 2.9 dB to this
        fusion on the held-out stacks. It is left to synthesise what no plane shows.
        """
        import torch

        from wsi_fusion.fusers import create_fuser
        from wsi_fusion.nets.cgan_blurmask import calibrated_gate

        base = create_fuser("focus_measure").fuse(stack[self.input_planes(stack)]).fused
        gate = calibrated_gate(torch.from_numpy(blurred), self._single_gate_threshold).numpy()
        return base + gate[None] * (generated - base)

    def blur_mask(self, stack: TileStack) -> Float32Array:
        """BM's blur probability ``(H, W)`` of the reference plane: the regions G synthesised."""
        _, masks = self._forward([np.asarray(stack, dtype=np.float32)])
        return masks[0]

    @classmethod
    def weights_status(cls) -> str:
        return super().weights_status()


def _groups_by_shape(stacks: list[TileStack]) -> list[list[int]]:
    """Indices of ``stacks`` grouped by shape (a batch needs equal shapes)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(stacks):
        groups.setdefault(tuple(s.shape), []).append(i)
    return list(groups.values())
