"""Contact sheets: the worst blocks of a fusion, side by side with the planes, at 100 %.

Numbers say *that* a fusion went wrong; a reviewer needs to *see* where and how (patchwork inside
a cell, a doubled object, speckle on glass, halos). A contact sheet shows the ``n`` worst blocks
by :func:`~wsi_fusion.metrics.fidelity.block_fidelity` and the ``n`` worst by
:func:`~wsi_fusion.metrics.focus.focus_attainment` (farthest outside the healthy window), one row
each: **fused | sharpest plane (at its best-matching shift) | middle plane**, as ``crop`` px
crops (default 128) centred on the 64 px block, which is outlined. Each row is labelled with its
score when Pillow is installed (it is a scikit-image dependency); a JSON sidecar
(``SHEET.json``) lists the same rows with their positions either way.

:func:`sheet_rows` takes the rows of one region (a tile of a slide, a crop of a stack);
:func:`write_contact_sheet` keeps the worst rows over all regions and writes the PNG.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from wsi_fusion._types import Box
from wsi_fusion.metrics._image import ImageLike, to_luma
from wsi_fusion.metrics.fidelity import BlockFidelity, block_box, high_pass, match_block
from wsi_fusion.metrics.focus import FocusAttainment, outside_window

__all__ = [
    "CROP",
    "GAP",
    "HEADER_H",
    "LABEL_H",
    "SheetRow",
    "sheet_rows",
    "sheet_size",
    "worst_rows",
    "write_contact_sheet",
]

#: Crop side in px (the 64 px block plus 32 px of context each side).
CROP = 128
#: Space between crops and rows, height of each row's label strip and of the column header.
GAP = 4
LABEL_H = 14
HEADER_H = 14

U8 = npt.NDArray[np.uint8]
RowKind = Literal["fidelity", "attainment"]

_MARK = np.array([255, 200, 0], dtype=np.uint8)
_BACKGROUND = 40
_COLUMNS = ("fused", "sharpest plane, shifted", "middle plane")


@dataclass(frozen=True)
class SheetRow:
    """One block on a contact sheet."""

    kind: RowKind
    #: Block fidelity score, or the focus-attainment ratio.
    score: float
    #: Sort key, higher = worse: ``1 - score`` for fidelity, distance outside the window for
    #: attainment (:func:`~wsi_fusion.metrics.focus.outside_window`).
    badness: float
    #: Where the region came from (a tile, a stack name); printed in the label.
    where: str
    #: The block in the coordinates of the whole image or slide (``origin`` + block position).
    box: Box
    #: Sharpest plane and its best-matching shift (dy, dx) in px.
    plane: int
    shift: tuple[int, int]
    #: (CROP, CROP, 3) uint8 crops: fused, sharpest plane at its shift, middle plane.
    crops: tuple[U8, U8, U8]

    def label(self) -> str:
        """One line: what, score, where."""
        name = "fidelity" if self.kind == "fidelity" else "attainment"
        where = f"{self.where} " if self.where else ""
        return (
            f"{name} {self.score:.3f} | {where}y {self.box.y}, x {self.box.x} | "
            f"plane {self.plane}, shift {self.shift[0]:+d}, {self.shift[1]:+d}"
        )

    def record(self) -> dict[str, Any]:
        """JSON-ready description (no pixels)."""
        return {
            "kind": self.kind,
            "score": self.score,
            "where": self.where,
            "box": {"y": self.box.y, "x": self.box.x, "h": self.box.h, "w": self.box.w},
            "plane": self.plane,
            "shift": list(self.shift),
        }


def _rgb8(image: ImageLike) -> U8:
    """(H, W, 3) uint8 for display from any layout the metrics accept."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3) and arr.shape[0] in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return arr


def _window(box: Box, side: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Top-left of a ``side`` px window centred on ``box``, kept inside ``shape`` if it fits."""
    y0 = box.y + box.h // 2 - side // 2
    x0 = box.x + box.w // 2 - side // 2
    return int(np.clip(y0, 0, max(0, shape[0] - side))), int(
        np.clip(x0, 0, max(0, shape[1] - side))
    )


def _crop(image: U8, y0: int, x0: int, side: int, block: Box) -> U8:
    """The ``side`` px crop at (y0, x0), padded where it leaves the image, ``block`` outlined.

    ``block`` is in the image's coordinates.
    """
    h, w = image.shape[:2]
    out = np.full((side, side, 3), _BACKGROUND, dtype=np.uint8)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + side), min(w, x0 + side)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    top, left = block.y - y0, block.x - x0
    bottom, right = top + block.h - 1, left + block.w - 1
    rows = slice(max(top, 0), min(bottom, side - 1) + 1)
    cols = slice(max(left, 0), min(right, side - 1) + 1)
    for r in (top, bottom):
        if 0 <= r < side:
            out[r, cols] = _MARK
    for c in (left, right):
        if 0 <= c < side:
            out[rows, c] = _MARK
    return out


def sheet_rows(
    fused: ImageLike,
    planes: Sequence[ImageLike],
    fidelity: BlockFidelity,
    attainment: FocusAttainment,
    *,
    n: int = 8,
    offset: tuple[int, int] = (0, 0),
    origin: tuple[int, int] = (0, 0),
    where: str = "",
    search: int = 24,
    crop: int = CROP,
) -> list[SheetRow]:
    """The ``n`` worst blocks by fidelity and the ``n`` worst by attainment of one region.

    Parameters
    ----------
    fused
        The fused region.
    planes
        The planes ``fidelity`` was computed on (unregistered, possibly with a margin).
    fidelity, attainment
        The region's :func:`~wsi_fusion.metrics.fidelity.block_fidelity` and
        :func:`~wsi_fusion.metrics.focus.focus_attainment` results (same block size).
    n
        Rows of each kind.
    offset
        The fused region's origin within ``planes`` (as given to ``block_fidelity``).
    origin
        The fused region's origin in the slide, for the rows' positions.
    where
        Name of the region, for the labels.
    search
        Search radius for blocks that fidelity did not score (attainment rows).
    crop
        Crop side in px.
    """
    f = _rgb8(fused)
    ps = [_rgb8(p) for p in planes]
    middle = ps[len(ps) // 2]
    block = fidelity["block"]
    shape = (int(f.shape[0]), int(f.shape[1]))
    oy, ox = offset
    rows: list[SheetRow] = []

    scores = fidelity["scores"]
    fid_idx = [(int(i[0]), int(i[1])) for i in np.argwhere(fidelity["textured"])]
    fid_idx.sort(key=lambda i: float(scores[i]))
    far = outside_window(attainment["ratios"])
    att_idx = [(int(i[0]), int(i[1])) for i in np.argwhere(np.nan_to_num(far) > 0)]
    att_idx.sort(key=lambda i: -float(far[i]))
    hp: dict[int, npt.NDArray[np.float32]] = {}

    def shift_of(index: tuple[int, int], z: int, box: Box) -> tuple[int, int]:
        if fidelity["textured"][index]:
            dy, dx = fidelity["shifts"][index]
            return int(dy), int(dx)
        if -1 not in hp:
            hp[-1] = high_pass(to_luma(f))
        if z not in hp:
            hp[z] = high_pass(to_luma(ps[z]))
        score, dy, dx = match_block(hp[-1], hp[z], box, search, offset)
        return (dy, dx) if not math.isnan(score) else (0, 0)

    picks: list[tuple[RowKind, tuple[int, int], float, float]] = [
        ("fidelity", i, float(scores[i]), 1.0 - float(scores[i])) for i in fid_idx[:n]
    ]
    picks += [("attainment", i, float(attainment["ratios"][i]), float(far[i])) for i in att_idx[:n]]
    for kind, index, score, badness in picks:
        box = block_box(index, block, shape)
        z = int(fidelity["best_plane"][index])
        dy, dx = shift_of(index, z, box)
        # One window for all three: the fused one (kept inside the fused region), carried into
        # the planes (and for the sharpest plane by its best shift).
        y0, x0 = _window(box, crop, shape)
        in_planes = Box(box.y + oy, box.x + ox, box.h, box.w)
        shifted = Box(in_planes.y + dy, in_planes.x + dx, box.h, box.w)
        crops = (
            _crop(f, y0, x0, crop, box),
            _crop(ps[z], y0 + oy + dy, x0 + ox + dx, crop, shifted),
            _crop(middle, y0 + oy, x0 + ox, crop, in_planes),
        )
        rows.append(
            SheetRow(
                kind=kind,
                score=score,
                badness=badness,
                where=where,
                box=Box(box.y + origin[0], box.x + origin[1], box.h, box.w),
                plane=z,
                shift=(dy, dx),
                crops=crops,
            )
        )
    return rows


def worst_rows(rows: Sequence[SheetRow], n: int) -> list[SheetRow]:
    """The ``n`` worst fidelity rows, then the ``n`` worst attainment rows, worst first."""
    out: list[SheetRow] = []
    for kind in ("fidelity", "attainment"):
        of_kind = [r for r in rows if r.kind == kind]
        out += sorted(of_kind, key=lambda r: -r.badness)[:n]
    return out


def sheet_size(n_rows: int, crop: int = CROP) -> tuple[int, int]:
    """(height, width) in px of a contact sheet of ``n_rows`` rows."""
    return HEADER_H + n_rows * (LABEL_H + crop + GAP) + GAP, 3 * crop + 4 * GAP


def write_contact_sheet(
    rows: Sequence[SheetRow],
    path: str | os.PathLike[str],
    n: int = 8,
    *,
    title: str = "",
) -> Path:
    """Write the ``n`` worst rows of each kind as a PNG, and their list as ``PATH.json``.

    The sheet is :func:`sheet_size` px: a column header, then per row a label strip and the
    three crops (fused | sharpest plane at its best shift | middle plane). Labels need Pillow;
    without it the sheet has none and the sidecar JSON is the key.
    """
    import imageio.v3 as iio

    chosen = worst_rows(rows, n)
    crop = chosen[0].crops[0].shape[0] if chosen else CROP
    height, width = sheet_size(len(chosen), crop)
    sheet = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    texts: list[tuple[int, int, str]] = [
        (GAP + k * (crop + GAP), 1, name) for k, name in enumerate(_COLUMNS)
    ]
    y = HEADER_H
    for row in chosen:
        texts.append((GAP, y + 1, row.label()))
        y += LABEL_H
        for k, image in enumerate(row.crops):
            x = GAP + k * (crop + GAP)
            sheet[y : y + crop, x : x + crop] = image
        y += crop + GAP
    sheet = _draw_text(sheet, texts)
    out = Path(path)
    iio.imwrite(out, sheet)
    sidecar = out.with_name(out.name + ".json")
    record = {
        "title": title,
        "columns": list(_COLUMNS),
        "crop": crop,
        "rows": [r.record() for r in chosen],
    }
    sidecar.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return out


def _draw_text(sheet: U8, texts: list[tuple[int, int, str]]) -> U8:
    """Write ``(x, y, text)`` labels in white with Pillow; unchanged without Pillow."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return sheet
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    try:
        font: Any = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = ImageFont.load_default()
    for x, y, text in texts:
        draw.text((x, y), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)
