"""The depth surface for decision-map fusers (``gacn``, ``acnn``, ``msegnet``).

A network's per-pixel decision map has the same failure on real stacks as a per-pixel focus
measure: it switches planes inside smooth cell interiors and follows defocus rings, so cells come
out in patches (``gacn``'s patches were larger than the default fuser's). Every decision-map
fuser therefore ends in the default fuser's decision (:mod:`._depth`): the depth surface comes
from the pooled sum-modified-Laplacian energy, and the network's decisions -- as the local share
``v`` of pixels voting for each plane within ``VOTE_RADIUS`` -- scale the focus measure by
``1 + v`` as the evidence that moves a pixel off the surface. A network can tip a pixel to a plane
that the focus measure nearly prefers (a neighbouring plane), never to one it clearly rejects; a
network's patch of confident but wrong decisions inside a cell therefore cannot cut the cell.

Measured (1024² crops, :func:`~wsi_fusion.metrics.block_fidelity` p10 on the blood smear, raw
network -> on the surface): gacn 0.85 -> 0.93, acnn 0.94 -> 0.96, msegnet 0.79 -> 0.94; held-out
synthetic stacks: gacn -0.03 dB, acnn +0.07 dB, msegnet +2.3 dB, all within 0.2 dB of the oracle.
The weights returned are the decision really used, so ``--focus-map`` shows it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from wsi_fusion._types import PlaneWeights, TileStack
from wsi_fusion.fusers._depth import DepthParams
from wsi_fusion.fusers._filters import box_mean
from wsi_fusion.fusers.base import FusionResult
from wsi_fusion.fusers.focus_measure import FocusMeasureFuser

#: Radius (px) of the window over which a network's decisions are counted as votes.
VOTE_RADIUS = 8


def surface_margin(decision_margin: int, params: DepthParams) -> int:
    """Margin of a decision-map fuser whose own decisions reach ``decision_margin`` px."""
    if params.depth_radius == 0:
        return decision_margin
    surface = FocusMeasureFuser(depth_radius=params.depth_radius)
    p = surface.params
    votes = decision_margin + VOTE_RADIUS
    focus = p.radius + p.step + 2 * p.depth_radius
    return max(votes, focus) + 2 * p.guided_radius


def on_depth_surface(
    stack: TileStack, weights: PlaneWeights | None, params: DepthParams
) -> FusionResult | None:
    """Re-decide ``weights`` (a network's ``(Z, H, W)`` decisions) on the depth surface.

    Returns ``None`` when the surface is off (``depth_radius`` 0) or there are no weights.
    """
    if params.depth_radius == 0 or weights is None:
        return None
    surface = FocusMeasureFuser(
        depth_radius=params.depth_radius, clearly_sharper=params.clearly_sharper
    )
    votes: npt.NDArray[np.float32] = box_mean(weights, VOTE_RADIUS)
    return surface.fuse_on_surface(np.asarray(stack, dtype=np.float32), votes)
