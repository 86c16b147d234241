"""The metric registry and :func:`evaluate`, which runs every metric the given inputs allow."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Literal

from wsi_fusion.errors import UnsupportedInput, WsiFusionError
from wsi_fusion.metrics._image import ImageLike
from wsi_fusion.metrics.feature_mi import fmi
from wsi_fusion.metrics.full_reference import cc, psnr, q_mi, ssim
from wsi_fusion.metrics.gradient import q_abf, q_avg
from wsi_fusion.metrics.information import mi, mi_norm, q_ncie
from wsi_fusion.metrics.perceptual import q_cb
from wsi_fusion.metrics.structural import q_y

__all__ = ["METRICS", "MetricSpec", "UnknownMetric", "evaluate", "list_metrics"]

log = logging.getLogger(__name__)

MetricKind = Literal["full_reference", "no_reference"]


class UnknownMetric(WsiFusionError, KeyError):
    """A metric name is not in :data:`METRICS`."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    ``fn(fused, other)`` takes the fused image and, for ``"full_reference"`` metrics, the ground
    truth, for ``"no_reference"`` ones the sequence of source planes.
    """

    name: str
    kind: MetricKind
    higher_is_better: bool
    fn: Callable[..., float]
    #: Paper / reference implementation, for reports.
    reference: str
    #: Whether a no-reference metric reads the sources (Q_AVG only looks at the fused image).
    needs_sources: bool = True


def _specs() -> dict[str, MetricSpec]:
    fr: MetricKind = "full_reference"
    nr: MetricKind = "no_reference"
    specs = [
        MetricSpec("psnr", fr, True, psnr, "PSNR, m-SegNet Eqs. 18-19"),
        MetricSpec("ssim", fr, True, ssim, "SSIM, Wang et al. 2004; cytology cGAN Eq. 7"),
        MetricSpec("cc", fr, True, cc, "correlation coefficient, cytology cGAN Eq. 8"),
        MetricSpec("q_mi", fr, True, q_mi, "normalised MI, cytology cGAN Eqs. 9-11"),
        MetricSpec("q_abf", nr, True, q_abf, "Xydeas & Petrovic 2000 (GACN Q_g, Eqs. 8-18)"),
        MetricSpec(
            "q_avg", nr, True, q_avg, "average gradient, m-SegNet Eq. 16", needs_sources=False
        ),
        MetricSpec("mi", nr, True, mi, "fusion MI, m-SegNet Eq. 20 (Qu et al. 2002)"),
        MetricSpec("mi_norm", nr, True, mi_norm, "normalised fusion MI, Hossny et al. 2008"),
        MetricSpec("q_y", nr, True, q_y, "Yang et al. 2008"),
        MetricSpec("q_cb", nr, True, q_cb, "Chen & Blum 2009"),
        MetricSpec("q_ncie", nr, True, q_ncie, "NCIE, Wang, Shen & Zhang 2005/2008"),
        MetricSpec(
            "fmi_edge", nr, True, partial(fmi, feature="edge"), "FMI (edge), Haghighat 2011/2014"
        ),
        MetricSpec(
            "fmi_dct", nr, True, partial(fmi, feature="dct"), "FMI (DCT), Haghighat 2011/2014"
        ),
    ]
    return {s.name: s for s in specs}


#: Every metric by name (registry keys are the metrics' usual short names).
METRICS: dict[str, MetricSpec] = _specs()


def list_metrics(kind: MetricKind | None = None) -> list[str]:
    """Registered metric names, optionally only those of one ``kind``."""
    return [n for n, s in METRICS.items() if kind is None or s.kind == kind]


def _lookup(names: Iterable[str]) -> list[MetricSpec]:
    out = []
    for name in names:
        if name not in METRICS:
            raise UnknownMetric(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
        out.append(METRICS[name])
    return out


def _applicable(spec: MetricSpec, have_ground_truth: bool, have_sources: bool) -> bool:
    """Whether ``spec`` can run with the inputs at hand."""
    if spec.kind == "full_reference":
        return have_ground_truth
    return have_sources or not spec.needs_sources


def evaluate(
    fused: ImageLike,
    sources: Iterable[ImageLike] | None = None,
    ground_truth: ImageLike | None = None,
    metrics: Iterable[str] | None = None,
) -> dict[str, float]:
    """Run the metrics that the given inputs allow.

    Parameters
    ----------
    fused
        The fused image, (H, W) / (H, W, 3) / (3, H, W), uint8 or float in [0, 1].
    sources
        The source planes (enables the no-reference metrics).
    ground_truth
        The all-in-focus reference (enables the full-reference metrics).
    metrics
        Names to run. ``None`` runs every applicable metric; names given explicitly must be
        applicable, otherwise the call fails rather than silently skipping them.

    Returns
    -------
    dict[str, float]
        Metric name -> value, in registry order.

    Raises
    ------
    UnknownMetric
        For a name that is not registered.
    UnsupportedInput
        When an explicitly requested metric lacks its input (ground truth or sources).
    """
    # A generator would be used up by the first metric.
    src_list = None if sources is None else list(sources)
    if metrics is None:
        chosen = [
            s
            for s in METRICS.values()
            if _applicable(s, ground_truth is not None, sources is not None)
        ]
    else:
        chosen = _lookup(metrics)
        for s in chosen:
            if s.kind == "full_reference" and ground_truth is None:
                raise UnsupportedInput(f"metric {s.name!r} is full-reference; pass ground_truth=")
            if s.kind == "no_reference" and s.needs_sources and sources is None:
                raise UnsupportedInput(
                    f"metric {s.name!r} compares with the sources; pass sources="
                )
    results: dict[str, float] = {}
    for s in chosen:
        other = ground_truth if s.kind == "full_reference" else src_list
        results[s.name] = s.fn(fused, other)
        log.debug("metric %s = %.6g", s.name, results[s.name])
    return results
