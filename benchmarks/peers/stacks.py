"""The benchmark's stacks, written once as plane files every tool reads the same way.

* Synthetic (ground truth): a tissue-rich square of the bundled H&E region
  (``CMU-1-Small-Region.svs``) made into a 5-plane stack by :func:`wsi_fusion.synth.make_stack`
  (no drift, mild read noise), planes and ground truth saved as lossless PNG.
* Real (no ground truth): the z-stacks in ``../shared/data``; the full-size stacks are given to
  the tools as the original JPEG files (no re-encoding), crops are saved as lossless PNG.

Metrics on real stacks need planes aligned with each other: :func:`registered_planes` resamples
them onto the middle plane with :mod:`wsi_fusion.registration`, the same planes for every tool.
"""

from __future__ import annotations

import glob
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from wsi_fusion._types import Box
from wsi_fusion.io.readers import open_stack
from wsi_fusion.registration import RegisteredStack, estimate_drift
from wsi_fusion.synth import demo_source_path, make_stack
from wsi_fusion.tiling.tissue import tile_fractions, tissue_mask

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
REAL = {
    "blood_smear": "zstack_wbc_0054/*.jpg",
    "algae": "zstack_algae/layer_*.jpg",
    # The stacks added for issue 9 (facts in ../shared/data/README.md). Given to the tools as
    # lossless PNG copies of the (cropped) planes in a folder of their own, so that focusweave,
    # which stacks every image of a folder, never sees the licence files beside the originals.
    "smear": "zstack_smear_cc0/plane_*.png",  # 19 grey planes, 330 x 286
    "unstained_cells": "zstack_unstained_cells/plane_*.png",  # 6 grey planes, 1344 x 1024
    "pseudoscorpion": "zstack_pseudoscorpion/frame_*.png",  # 14 frames in CAPTURE order
    "skeleton": "zstack_skeleton_zeiss/plane_*.png",  # 3 planes, 170 x 116
}
#: The stacks of :data:`REAL` that the benchmark runs whole when no crop is asked for, as the
#: tools' original files (the speed tables of docs/PEERS.md were measured so).
ORIGINAL_FILES = ("blood_smear", "algae")
#: Stacks that must not be registered by phase correlation: the unstained cells' contrast inverts
#: through focus, so pairs with a far plane give shifts of 10-76 px that are not there (the
#: near-focus planes agree to < 1 px). Their reference planes stay unregistered, and the CLI row
#: runs with ``--register off``.
NO_REGISTRATION = ("unstained_cells",)
#: Stacks whose files are not in focal order (the pseudoscorpion sweep goes through focus and
#: back): the CLI row runs with ``--plane-order similarity``, as a user told so by the data's
#: README would; the peers get the frames as they are (their per-pixel picks ignore the order).
CAPTURE_ORDER = ("pseudoscorpion",)
SYNTH_PLANES = 5
SYNTH_SEED = 7
#: Mild read noise (intensity units) so that noise-amplifying methods are not flattered.
SYNTH_NOISE = 0.005

RGB = npt.NDArray[np.uint8]


@dataclass
class StackCase:
    """One stack of the benchmark, as files on disk."""

    name: str
    kind: str  # "synthetic" or "real"
    planes: list[str]
    height: int
    width: int
    ground_truth: str | None = None
    #: Real stacks: the source and the crop box (y, x, h, w) it was cut from.
    source: str | None = None
    box: tuple[int, int, int, int] | None = None
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def mpx(self) -> float:
        return self.height * self.width / 1e6

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> StackCase:
        data = json.loads(path.read_text())
        if data.get("box") is not None:
            data["box"] = tuple(data["box"])
        return cls(**data)


def _save_png(image: RGB, path: Path) -> str:
    # compress_level 1: these files are read by every tool; decoding cost matters, size does not.
    Image.fromarray(image).save(path, compress_level=1)
    return str(path)


def _read_he() -> RGB:
    with open_stack([demo_source_path()]) as source:
        h, w = source.shape
        return source.read(0, Box(0, 0, h, w))


def _tissue_square(image: RGB, side: int) -> Box:
    """The ``side`` px square of ``image`` with the most tissue (on a 128 px grid)."""
    h, w = image.shape[:2]
    step = 4
    mask = tissue_mask(np.ascontiguousarray(image[::step, ::step]))
    candidates = [
        Box(y, x, side, side)
        for y in range(0, h - side + 1, 128)
        for x in range(0, w - side + 1, 128)
    ]
    return candidates[int(np.argmax(tile_fractions(mask, (h, w), candidates)))]


def synthetic_case(workdir: Path, side: int) -> StackCase:
    """A ``side`` x ``side`` 5-plane synthetic stack with ground truth (PNG files)."""
    folder = workdir / f"synth_he_{side}"
    meta = folder / "case.json"
    if meta.exists():
        return StackCase.load(meta)
    # The planes get a folder of their own: focusweave stacks every image in the folder it is given.
    (folder / "planes").mkdir(parents=True, exist_ok=True)
    he = _read_he()
    box = _tissue_square(he, side)
    synth = make_stack(
        np.ascontiguousarray(he[box.slices()]),
        SYNTH_PLANES,
        seed=SYNTH_SEED,
        noise_sigma=SYNTH_NOISE,
    )
    planes = [
        _save_png(p, folder / "planes" / f"plane_{z}.png") for z, p in enumerate(synth.planes)
    ]
    case = StackCase(
        name=f"synthetic H&E {side}²",
        kind="synthetic",
        planes=planes,
        height=side,
        width=side,
        ground_truth=_save_png(synth.ground_truth, folder / "ground_truth.png"),
        source=str(demo_source_path()),
        box=(box.y, box.x, box.h, box.w),
        notes={"seed": SYNTH_SEED, "noise_sigma": SYNTH_NOISE, "planes": SYNTH_PLANES},
    )
    case.save(meta)
    return case


def real_files(name: str) -> list[str]:
    """The plane files of the real stack ``name`` (empty when ``../shared/data`` is absent)."""
    return sorted(glob.glob(str(SHARED / REAL[name])))


def real_case(workdir: Path, name: str, side: int | None) -> StackCase | None:
    """The real stack ``name``, whole (``side=None``: its own JPEGs) or a central crop (PNG)."""
    files = real_files(name)
    if not files:
        return None
    with open_stack(files) as stack:
        h, w = stack.shape
        if side is None:
            return StackCase(
                name=f"{name} {w}×{h}",
                kind="real",
                planes=files,
                height=h,
                width=w,
                source=str(Path(files[0]).parent),
                box=(0, 0, h, w),
                notes={"planes": len(files)},
            )
        sh, sw = min(side, h), min(side, w)
        folder = workdir / f"{name}_{sw}x{sh}"
        meta = folder / "case.json"
        if meta.exists():
            return StackCase.load(meta)
        (folder / "planes").mkdir(parents=True, exist_ok=True)
        box = Box((h - sh) // 2, (w - sw) // 2, sh, sw)
        # Zero-padded names: tools that take a folder (focusweave) order its files by name.
        planes = [
            _save_png(stack.read(z, box), folder / "planes" / f"plane_{z:02d}.png")
            for z in range(stack.n_planes)
        ]
    whole = (sh, sw) == (h, w)
    case = StackCase(
        name=f"{name} {sw}×{sh}" if whole else f"{name} crop {sw}×{sh}",
        kind="real",
        planes=planes,
        height=sh,
        width=sw,
        source=str(Path(files[0]).parent),
        box=(box.y, box.x, box.h, box.w),
        notes={
            "planes": len(files),
            "register": name not in NO_REGISTRATION,
            "plane_order": "similarity" if name in CAPTURE_ORDER else "given",
        },
    )
    case.save(meta)
    return case


def registered_planes(case: StackCase) -> tuple[RGB, float]:
    """The real case's planes aligned onto the middle plane, (Z, H, W, 3), and the max drift.

    Drift is measured on the whole source stack (more texture to correlate than a crop has) and
    applied to the case's box, so crops and whole stacks share one registration. Stacks in
    :data:`NO_REGISTRATION` come back unregistered, with a NaN drift.
    """
    name = case.name.split(" ")[0]
    files = real_files(name)
    if name in NO_REGISTRATION:
        assert case.box is not None
        with open_stack(files) as stack:
            box = Box(*case.box)
            return np.stack([stack.read(z, box) for z in range(stack.n_planes)]), float("nan")
    with open_stack(files) as stack:
        drift = estimate_drift(stack, reference=stack.n_planes // 2)
        reader = RegisteredStack(stack, drift)
        assert case.box is not None
        box = Box(*case.box)
        planes = np.stack([reader.read(z, box) for z in range(stack.n_planes)])
    return planes, float(drift.max_abs())


def raw_planes(case: StackCase, margin: int) -> tuple[RGB, tuple[int, int]]:
    """The real case's planes **unregistered**, with up to ``margin`` px of context around its box.

    Returns the (Z, H', W', 3) planes and the case box's origin in them, for
    :func:`wsi_fusion.metrics.block_fidelity` (``offset``): its search window then reaches
    beyond a crop's border, as ``workflows/evaluate.py`` reads them.
    """
    files = real_files(case.name.split(" ")[0])
    assert case.box is not None
    with open_stack(files) as stack:
        h, w = stack.shape
        box = Box(*case.box)
        y, x = max(0, box.y - margin), max(0, box.x - margin)
        grown = Box(y, x, min(h, box.y1 + margin) - y, min(w, box.x1 + margin) - x)
        planes = np.stack([stack.read(z, grown) for z in range(stack.n_planes)])
    return planes, (box.y - y, box.x - x)


def load_rgb(path: str) -> RGB:
    """An image file as (H, W, 3) uint8 (16-bit outputs are scaled down, alpha dropped)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            arr = np.asarray(im, dtype=np.float64) / 257.0
            return np.repeat(np.clip(np.rint(arr), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))
