"""Resolution pyramids: level sizes and 2x downsampling of image and label blocks."""

from __future__ import annotations

from wsi_fusion.pyramid.downsample import downsample2, downsample_labels2, level_shapes

__all__ = ["downsample2", "downsample_labels2", "level_shapes"]
