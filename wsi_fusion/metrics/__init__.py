"""Fusion-quality metrics: full-reference, no-reference (N sources) and focus checks.

Besides the registry, two block-wise checks for real stacks without ground truth:
:func:`focus_attainment` (is each block as sharp as its sharpest plane? healthy 0.95-1.15; well
above means invented texture) and :func:`block_fidelity` (does each block *look like* its sharpest
plane, within a drift search window? patchwork, rings and doubled objects score low).

Conventions (see :mod:`._image`): every metric works on the luminance (MATLAB ``rgb2gray`` /
ITU-R BT.601 weights) on the 0-255 scale; ``uint8`` input is 0-255, float input [0, 1]. Each
no-reference metric generalises its published two-source formula to N sources so that N = 2
gives the published value; the module docstrings state how.

===========  ===============  ==============================================================
name         kind             definition / reference implementation followed
===========  ===============  ==============================================================
psnr         full_reference   m-SegNet Eqs. 18-19 (scikit-image)
ssim         full_reference   Wang et al. 2004, cytology cGAN Eq. 7 (scikit-image)
cc           full_reference   cytology cGAN Eq. 8
q_mi         full_reference   cytology cGAN Eqs. 9-11
q_abf        no_reference     Xydeas & Petrovic 2000 = GACN Q_g; ``Qabf.m`` constants
q_avg        no_reference     average gradient, m-SegNet Eq. 16
mi           no_reference     m-SegNet Eq. 20 (typo fixed); VIFB ``metricsMutinf.m``
mi_norm      no_reference     Hossny et al. 2008; Liu ``metricMI.m``
q_y          no_reference     Yang et al. 2008; Liu ``metricYang.m``
q_cb         no_reference     Chen & Blum 2009; Liu ``metricChenBlum.m``
q_ncie       no_reference     Wang et al.; Liu ``metricWang.m`` / ``NCC.m``
fmi_edge     no_reference     Haghighat 2011/2014; ``fmi.m`` feature ``'edge'``
fmi_dct      no_reference     Haghighat 2011/2014; ``fmi.m`` feature ``'dct'``
===========  ===============  ==============================================================
"""

from __future__ import annotations

from wsi_fusion.metrics.feature_mi import fmi
from wsi_fusion.metrics.fidelity import BlockFidelity, block_fidelity, worst_blocks
from wsi_fusion.metrics.focus import FocusAttainment, focus_attainment, halo_score, seam_score
from wsi_fusion.metrics.full_reference import cc, psnr, q_mi, ssim
from wsi_fusion.metrics.gradient import q_abf, q_avg
from wsi_fusion.metrics.information import mi, mi_norm, q_ncie
from wsi_fusion.metrics.perceptual import q_cb
from wsi_fusion.metrics.registry import METRICS, MetricSpec, UnknownMetric, evaluate, list_metrics
from wsi_fusion.metrics.structural import q_y

__all__ = [
    "METRICS",
    "BlockFidelity",
    "FocusAttainment",
    "MetricSpec",
    "UnknownMetric",
    "block_fidelity",
    "cc",
    "evaluate",
    "fmi",
    "focus_attainment",
    "halo_score",
    "list_metrics",
    "mi",
    "mi_norm",
    "psnr",
    "q_abf",
    "q_avg",
    "q_cb",
    "q_mi",
    "q_ncie",
    "q_y",
    "seam_score",
    "ssim",
    "worst_blocks",
]
