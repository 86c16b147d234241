"""acnn and gacn, the pairwise decision-map fusers: the checks they share, run for both.

Weights contract of every strategy, shipped weights (sha256, reference output, gain over the
best plane) and refusal of bad weight files. Their own properties (network reach, losses,
margins, batching) are in ``test_acnn.py`` / ``test_gacn.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from learned_checks import (
    check_bad_weights,
    check_beats_every_plane,
    check_reference,
    check_sha256,
    check_weights_contract,
    needs_weights,
    reference_stack,
)

from wsi_fusion.fusers._torch import TorchFuser
from wsi_fusion.fusers.acnn import ACNNFuser
from wsi_fusion.fusers.gacn import GACNFuser

torch = pytest.importorskip("torch")


def _gacn_net() -> Any:
    from wsi_fusion.nets.gacn import GACN, SMALL

    return GACN(SMALL)


def _acnn_net() -> Any:
    from wsi_fusion.nets.acnn import ACNN, SMALL

    return ACNN(SMALL)


#: name -> (fuser class, another architecture's network: weights that do not fit).
FUSERS: dict[str, tuple[type[TorchFuser], Callable[[], Any]]] = {
    "acnn": (ACNNFuser, _gacn_net),
    "gacn": (GACNFuser, _acnn_net),
}
NAMES = sorted(FUSERS)
SHIPPED = [pytest.param(name, marks=needs_weights(FUSERS[name][0])) for name in NAMES]
STRATEGIES = ["round_robin", "calibration", "serial"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", NAMES)
def test_untrained_strategies_keep_contract(name: str, strategy: str) -> None:
    stack = reference_stack()
    # Without the low band the output is the weighted sum of the planes by the weights it
    # reports (with it, only its detail is: test_low_band).
    fuser = FUSERS[name][0].untrained(device="cpu", strategy=strategy, low_band_radius=0)
    check_weights_contract(fuser.fuse(stack), stack)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_and_match_sha256(name: str) -> None:
    check_sha256(FUSERS[name][0])


@pytest.mark.parametrize("name", SHIPPED)
def test_reference_output(name: str) -> None:
    check_reference(name)


@pytest.mark.parametrize("name", NAMES)
def test_bad_weights_are_refused(name: str, tmp_path: Path) -> None:
    cls, other = FUSERS[name]
    check_bad_weights(cls, other(), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", SHIPPED)
def test_trained_fuser_beats_every_plane(name: str, strategy: str) -> None:
    check_beats_every_plane(name, strategy=strategy)
