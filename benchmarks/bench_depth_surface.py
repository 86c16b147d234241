"""CPU time per tile of the default fuser: per-pixel pick vs depth surface, side by side.

The real-scan issue's budget: the depth surface (``fusers/_depth.py``) may cost at most 1.2x the
per-pixel pick it replaced. Five variants of ``focus_measure`` fuse the same 512² tiles of 5
planes (held-out synthetic stacks), interleaved round by round, one thread, CPU seconds:

- ``per-pixel``: ``depth_radius=0``, the decision before the surface;
- ``surface, full resolution``: ``pool_step=1``, the surface pooled at every pixel;
- ``surface, 4-px grid, luminance only``: ``surface_measure="gradient"``, the surface before it
  pooled the optical density too;
- ``surface, 4-px grid, hard composition``: ``low_band_radius=0``, the picked pixels as they are
  (before the two-band composition, ``fusers/_low_band.py``);
- ``surface, 4-px grid``: the default (``pool_step=4``, ``surface_measure="gradient_od"``, the
  low band blended along the surface).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_depth_surface.py [--rounds 7] [--tiles 4]

Prints the median CPU ms per tile and the ratio to the per-pixel pick.
"""

from __future__ import annotations

import argparse
import statistics
import time

from wsi_fusion.fusers import create_fuser
from wsi_fusion.training.data import heldout_stacks
from wsi_fusion.training.heldout import to_tile

VARIANTS = {
    "per-pixel": {"depth_radius": 0},
    "surface, full resolution": {"pool_step": 1},
    "surface, 4-px grid, luminance only": {"surface_measure": "gradient"},
    "surface, 4-px grid, hard composition": {"low_band_radius": 0},
    "surface, 4-px grid": {},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tiles", type=int, default=4)
    args = parser.parse_args(argv)
    tiles = [to_tile(s) for _, s in heldout_stacks(n=args.tiles, size=512, n_planes=5)]
    fusers = {name: create_fuser("focus_measure", **params) for name, params in VARIANTS.items()}
    for fuser in fusers.values():  # warm-up
        fuser.fuse(tiles[0])
    seconds: dict[str, list[float]] = {name: [] for name in fusers}
    for _ in range(args.rounds):
        for name, fuser in fusers.items():
            started = time.process_time()
            for tile in tiles:
                fuser.fuse(tile)
            seconds[name].append((time.process_time() - started) / len(tiles))
    base = statistics.median(seconds["per-pixel"])
    width = max(map(len, seconds))
    print(f"{'variant':{width}s} {'CPU ms/tile':>12s} {'ratio':>6s}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:{width}s} {1000 * median:12.1f} {median / base:6.2f}")


if __name__ == "__main__":
    main()
