"""The depth surface for decision-map fusers (``gacn``, ``acnn``, ``msegnet``).

A network's per-pixel decision map has the same failure on real stacks as a per-pixel focus
measure: it switches planes inside smooth cell interiors and follows defocus rings, so cells come
out in patches (``gacn``'s patches were larger than the default fuser's). Every decision-map fuser
therefore ends in the default fuser's decision (:mod:`._depth`): the depth surface comes from the
pooled gradient energy of the luminance and the optical density (``surface_measure``), and the
network's decisions -- as the local share ``v`` of pixels voting for each plane within
``VOTE_RADIUS`` -- scale the focus measure by up to ``clearly_sharper`` (``1 + 0.3 v``) as the
evidence that moves a pixel off the surface. A unanimous network is worth one plane of distance: it
can tip a pixel to a neighbouring plane (which looks alike) that the focus measure does not reject,
never farther on its own, so a patch of confident but wrong network decisions cannot cut a cell
(``tests/fusers/test_depth_surface``: untrained networks leave > 97 % of cell interiors within one
plane of focus).

Measured (768² crops, :func:`~wsi_fusion.metrics.block_fidelity` p10 on the blood smear, raw
network -> on the surface): gacn 0.83 -> 0.94, acnn 0.94 -> 0.94, msegnet 0.59 -> 0.94.
The weights returned are the decision really used, so ``--focus-map`` shows it.

The picked pixels are composed as the default fuser composes them, the planes' low band blended
along the depth surface (:mod:`._low_band`).
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


def _surface_fuser(params: DepthParams) -> FocusMeasureFuser:
    """The default fuser with the decision-map fuser's depth-surface settings (every
    :class:`~._depth.DepthParams` field: radius, ``clearly_sharper``, cell size, measure, low
    band), so that its decisions, margin and cell grid are the ones the fuser reports."""
    return FocusMeasureFuser(**params.model_dump(include=set(DepthParams.model_fields)))


def surface_margin(decision_margin: int, params: DepthParams) -> int:
    """Margin of a decision-map fuser whose own decisions reach ``decision_margin`` px."""
    if params.depth_radius == 0:
        return decision_margin
    surface = _surface_fuser(params)
    # The votes reach as far as the network plus the vote window; the focus measure and its
    # surface as far as the default fuser; the guided filter adds its reach to both.
    votes = decision_margin + VOTE_RADIUS + 2 * surface.params.guided_radius
    return max(votes, surface.margin)


def on_depth_surface(
    stack: TileStack, weights: PlaneWeights | None, params: DepthParams
) -> FusionResult | None:
    """Re-decide ``weights`` (a network's ``(Z, H, W)`` decisions) on the depth surface.

    Returns ``None`` when the surface is off (``depth_radius`` 0) or there are no weights.
    """
    if params.depth_radius == 0 or weights is None:
        return None
    surface = _surface_fuser(params)
    votes: npt.NDArray[np.float32] = box_mean(weights, VOTE_RADIUS)
    return surface.fuse_on_surface(np.asarray(stack, dtype=np.float32), votes)
