"""Quality of one tool's output, with :mod:`wsi_fusion.metrics`.

* Synthetic stacks: PSNR and SSIM against the ground truth, on the whole image.
* Real stacks: Q^AB/F, focus attainment and the halo score against the *registered* planes (the
  same registration for every tool), on a fixed sample of textured 512 px tiles drawn once per
  stack, identical for every tool. Whole-image no-reference metrics on the 20-Mpx stack cost about
  a minute per metric and output on this machine; the sample keeps the whole run under its budget
  and measures every tool on the same pixels.
* Real stacks, block checks (issue 9) on the **whole** output: block fidelity p10 / median
  (:func:`wsi_fusion.metrics.block_fidelity` against the raw, unregistered planes read with
  ``SEARCH`` px of context, so the ±24 px search absorbs drift) and focus attainment median /
  p10 / fraction outside the healthy window 0.95-1.15 against the registered planes. Attainment
  is a window, not "higher is better": well above 1.15 is texture that no plane has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import tifffile
from stacks import RGB, StackCase, load_rgb

from wsi_fusion._types import Box
from wsi_fusion.evaluation import sample_tiles
from wsi_fusion.io.readers import open_stack
from wsi_fusion.metrics import block_fidelity, focus_attainment, halo_score, psnr, q_abf, ssim
from wsi_fusion.tiling.tissue import tissue_mask

METRIC_TILE = 512
METRIC_TILES = 6
METRIC_SEED = 0
#: Block fidelity's search (px) and the context read around a crop for it (as in evaluate.py).
SEARCH = 24
#: The block-check columns of real stacks, on the whole output.
BLOCK_COLUMNS = [
    "fidelity_p10",
    "fidelity_median",
    "attainment_median",
    "attainment_p10",
    "attainment_outside",
]


@dataclass
class Reference:
    """What a case's outputs are measured against (built once per case)."""

    ground_truth: RGB | None = None
    #: Real stacks: registered planes cut to the metric tiles, per tile (Z, h, w, 3).
    tile_planes: list[RGB] | None = None
    boxes: list[Box] | None = None
    max_drift_px: float | None = None
    #: (H, W) every output must have.
    shape: tuple[int, int] = (0, 0)
    #: Real stacks, whole-output block checks: the registered planes of the whole case (Z, H, W,
    #: 3) for focus attainment, and the raw planes with context for block fidelity.
    planes: RGB | None = None
    raw_planes: RGB | None = None
    raw_offset: tuple[int, int] = (0, 0)


def metric_boxes(planes: RGB) -> list[Box]:
    """The sampled textured tiles of a real stack, from the middle plane's tissue mask."""
    middle = planes[planes.shape[0] // 2]
    step = max(1, max(middle.shape[:2]) // 1024)
    mask = tissue_mask(np.ascontiguousarray(middle[::step, ::step]))
    return sample_tiles(
        mask, middle.shape[:2], METRIC_TILES, METRIC_TILE, seed=METRIC_SEED, min_tissue=0.25
    )


def reference_for(
    case: StackCase,
    registered: tuple[RGB, float] | None,
    raw: tuple[RGB, tuple[int, int]] | None = None,
) -> Reference:
    if case.kind == "synthetic":
        assert case.ground_truth is not None
        gt = load_rgb(case.ground_truth)
        return Reference(ground_truth=gt, shape=(gt.shape[0], gt.shape[1]))
    assert registered is not None
    planes, drift = registered
    boxes = metric_boxes(planes)
    return Reference(
        tile_planes=[np.ascontiguousarray(planes[(slice(None), *b.slices())]) for b in boxes],
        boxes=boxes,
        max_drift_px=drift,
        shape=(planes.shape[1], planes.shape[2]),
        planes=planes if raw is not None else None,
        raw_planes=raw[0] if raw is not None else None,
        raw_offset=raw[1] if raw is not None else (0, 0),
    )


def read_output(path: str) -> RGB:
    """A tool's output as (H, W, 3) uint8: float TIFF (rawhdr), OME-TIFF (ours), PNG/TIFF/JPEG."""
    if path.endswith(".ome.tif"):
        with open_stack([path]) as fused:
            h, w = fused.shape
            return fused.read(0, Box(0, 0, h, w))
    if path.endswith(".tif"):
        arr = tifffile.imread(path)
        arr = arr[..., :3] if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype.kind == "f":
            return _quantise(arr * 255.0)
        if arr.dtype == np.uint16:
            return _quantise(arr / 257.0)
        return np.ascontiguousarray(arr, dtype=np.uint8)
    return load_rgb(path)


def _quantise(values: npt.NDArray[np.floating]) -> RGB:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def measure(output: RGB, ref: Reference) -> dict[str, float]:
    """The case's quality numbers for one output."""
    if output.shape[:2] != ref.shape:
        raise ValueError(f"output is {output.shape[:2]}, the stack {ref.shape}: geometry changed")
    if ref.ground_truth is not None:
        return {"psnr": psnr(output, ref.ground_truth), "ssim": ssim(output, ref.ground_truth)}
    assert ref.tile_planes is not None and ref.boxes is not None
    qabf, attain, below, halo = [], [], [], []
    for box, planes in zip(ref.boxes, ref.tile_planes, strict=True):
        fused = np.ascontiguousarray(output[box.slices()])
        sources = list(planes)
        qabf.append(q_abf(fused, sources))
        fa = focus_attainment(fused, sources)
        if fa["n_textured"]:
            attain.append(fa["median"])
            below.append(fa["frac_below"])
        halo.append(halo_score(fused, sources))
    out = {
        "q_abf": float(np.mean(qabf)),
        "focus_attainment": float(np.mean(attain)) if attain else float("nan"),
        "frac_focus_lost": float(np.mean(below)) if below else float("nan"),
        "halo": float(np.mean(halo)),
    }
    if ref.planes is not None and ref.raw_planes is not None:
        out.update(block_checks(output, ref))
    return out


def block_checks(output: RGB, ref: Reference) -> dict[str, float]:
    """Block fidelity and focus attainment of the whole output (64-px blocks)."""
    assert ref.planes is not None and ref.raw_planes is not None
    fid = block_fidelity(output, ref.raw_planes, search=SEARCH, offset=ref.raw_offset)
    att = focus_attainment(output, list(ref.planes))
    return {
        "fidelity_p10": fid["p10"],
        "fidelity_median": fid["median"],
        "fidelity_blocks": float(fid["n_textured"]),
        "attainment_median": att["median"],
        "attainment_p10": att["p10"],
        "attainment_outside": att["frac_outside"],
        "attainment_blocks": float(att["n_textured"]),
    }
