"""The focal order of a stack's planes, estimated from the planes themselves.

Fusion reads the planes in focal order: the depth surface lets a pixel leave its plane for one
``n`` planes away only on evidence that grows with ``n``, registration chains each plane to its
neighbour, and the middle plane is the reference. Per-plane files come in the order given, and a
microscope focus sweep is often saved in capture order, through focus and back (the
pseudoscorpion sweep in ``../shared/data``): planes far apart in the list are then neighbours in
focus.

Neighbours in focus look most alike. The estimate is the order of the planes along the shortest
path through all of them, the distance between two planes being the mean absolute difference of
their lightly smoothed grey thumbnails (a travelling-salesman path over a handful of planes:
nearest-neighbour paths from every start, each improved by 2-opt). Its total length against the
given order's says how likely the given order is wrong. Measured on the stacks in
``../shared/data`` (1024-px thumbnails; 512 and 256 px give the same orders): the blood smear,
algae, unstained cells and skeleton stacks are in focal order and score 1.000; the grey smear,
19 planes through ±9 defocus steps, scores 1.099, because a plane as far above focus as another
is below looks almost the same as it, so the path may swap planes near focus; the pseudoscorpion
sweep scores 1.477. Hence a
warning above :data:`OUT_OF_ORDER_RATIO`, and reordering only on request
(``plane_order: similarity``): on stacks in focal order with symmetric defocus the estimate is
a little worse than the truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from wsi_fusion._types import PlaneStack, RGBRegion
from wsi_fusion.registration._correlate import grey
from wsi_fusion.registration.drift import THUMBNAIL_SIDE

#: Given order this many times longer than the shortest path: the planes look out of order.
OUT_OF_ORDER_RATIO = 1.25


@dataclass(frozen=True)
class FocalOrder:
    """The estimated focal order of a stack's planes and how the given order compares."""

    #: Plane indices (of the order given) in estimated focal order, lowest index first.
    order: tuple[int, ...]
    #: Path length through the planes in the order given, and along ``order``.
    given_length: float
    estimated_length: float

    @property
    def ratio(self) -> float:
        """Given path length over the estimated one (1: the given order is as good)."""
        if self.estimated_length <= 0.0:
            return 1.0
        return self.given_length / self.estimated_length

    @property
    def looks_out_of_order(self) -> bool:
        return self.ratio > OUT_OF_ORDER_RATIO

    def to_json(self) -> dict[str, Any]:
        return {"estimated_order": list(self.order), "given_to_estimated": round(self.ratio, 3)}


def estimate_focal_order(
    stack: PlaneStack,
    thumbnail_side: int = THUMBNAIL_SIDE,  # registration's: the pipeline reads them once
    thumbnails: Sequence[RGBRegion] | None = None,
) -> FocalOrder:
    """The planes' focal order from their thumbnails (see the module docstring); ``thumbnails``:
    the planes' ``thumbnail_side`` thumbnails when the caller has read them already."""
    if thumbnails is None:
        thumbnails = [stack.thumbnail(z, thumbnail_side) for z in range(stack.n_planes)]
    thumbs = [ndi.gaussian_filter(grey(thumb), 1.0) for thumb in thumbnails]
    distance = plane_distances(thumbs)
    order = shortest_path(distance)
    given = list(range(len(thumbs)))
    return FocalOrder(
        order=tuple(order),
        given_length=path_length(distance, given),
        estimated_length=path_length(distance, order),
    )


def plane_distances(thumbs: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
    """(Z, Z) mean absolute difference between every two thumbnails (grey levels)."""
    n = len(thumbs)
    distance = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        distance[i, j] = distance[j, i] = float(np.mean(np.abs(thumbs[i] - thumbs[j])))
    return distance


def path_length(distance: npt.NDArray[np.float64], order: list[int]) -> float:
    return float(sum(distance[a, b] for a, b in itertools.pairwise(order)))


def shortest_path(distance: npt.NDArray[np.float64]) -> list[int]:
    """A short open path through every plane: the best 2-opt-improved nearest-neighbour path
    over all starts, oriented to begin at the lower of its two end indices."""
    n = len(distance)
    if n < 3:
        return list(range(n))
    best: list[int] | None = None
    for start in range(n):
        path = _two_opt(distance, _nearest_neighbour_path(distance, start))
        if best is None or path_length(distance, path) < path_length(distance, best) - 1e-9:
            best = path
    assert best is not None
    return best if best[0] < best[-1] else best[::-1]


def _nearest_neighbour_path(distance: npt.NDArray[np.float64], start: int) -> list[int]:
    path, left = [start], set(range(len(distance))) - {start}
    while left:
        nearest = min(left, key=lambda j: (distance[path[-1], j], j))
        path.append(nearest)
        left.remove(nearest)
    return path


def _two_opt(distance: npt.NDArray[np.float64], path: list[int]) -> list[int]:
    """Reverse segments while that shortens the open path (first improvement, until none)."""
    n = len(path)
    improved = True
    while improved:
        improved = False
        for i in range(n - 1):
            for j in range(i + 1, n):
                # Reversing path[i..j] changes only the two edges at its ends.
                before = (distance[path[i - 1], path[i]] if i > 0 else 0.0) + (
                    distance[path[j], path[j + 1]] if j < n - 1 else 0.0
                )
                after = (distance[path[i - 1], path[j]] if i > 0 else 0.0) + (
                    distance[path[i], path[j + 1]] if j < n - 1 else 0.0
                )
                if after < before - 1e-9:
                    path[i : j + 1] = path[i : j + 1][::-1]
                    improved = True
    return path
