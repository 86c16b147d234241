"""Baseline "best single plane": copy the stack's sharpest plane, no fusion.

Usage: ``python benchmarks/peers/run_best_plane.py OUTPUT PLANE...``

The sharpest plane is the one with the highest mean gradient energy over the whole image
(:func:`wsi_fusion.metrics.focus.sharpness_map`: squared Gaussian-derivative gradient magnitude,
sigma 1 px, on luminance) -- the "best single plane" of ``workflows/evaluate.py``, what an
autofocus would keep. Writes it as a lossless PNG and prints its index and file name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_fusion.metrics._image import to_luma
from wsi_fusion.metrics.focus import sharpness_map


def gradient_energy(path: str) -> float:
    """Mean gradient energy of one plane file (grey levels^2 / px^2)."""
    with Image.open(path) as im:
        return float(sharpness_map(to_luma(np.asarray(im.convert("RGB")))).mean())


def best_plane(paths: list[str]) -> int:
    """Index of the sharpest plane of ``paths``."""
    return int(np.argmax([gradient_energy(p) for p in paths]))


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    output, *paths = argv[1:]
    z = best_plane(paths)
    with Image.open(paths[z]) as im:
        im.convert("RGB").save(output, compress_level=1)
    print(f"best single plane: {z} ({Path(paths[z]).name})")


if __name__ == "__main__":
    main(sys.argv)
