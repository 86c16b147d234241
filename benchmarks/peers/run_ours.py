"""Fuse a whole stack of image files with one wsi_fusion fuser, in memory, the way peers do.

Usage: ``python benchmarks/peers/run_ours.py FUSER OUTPUT PLANE...``

Reads every plane with Pillow, fuses the whole image in one ``Fuser.fuse`` call (no tiling, no
registration: the library level, like the peers' Python APIs) and writes a lossless PNG. The
benchmark runs it in its own process so that wall time and peak RSS include start-up and I/O, as
they do for every peer tool.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from wsi_fusion.fusers import create_fuser


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        raise SystemExit(__doc__)
    name, output, *paths = argv[1:]
    fuser = create_fuser(name)
    first = np.asarray(Image.open(paths[0]).convert("RGB"))
    # Fill one (Z, C, H, W) float32 array plane by plane: no (Z, H, W, 3) uint8 copy on the side.
    stack = np.empty((len(paths), 3, *first.shape[:2]), dtype=np.float32)
    for z, path in enumerate(paths):
        plane = first if z == 0 else np.asarray(Image.open(path).convert("RGB"))
        np.multiply(plane.transpose(2, 0, 1), 1.0 / 255.0, out=stack[z], casting="unsafe")
    del first
    fused = fuser.fuse(stack).fused
    del stack
    image = np.clip(np.rint(fused.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(output, compress_level=1)


if __name__ == "__main__":
    main(sys.argv)
