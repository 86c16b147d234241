"""The built-in demo: a synthetic focal stack made from a bundled real H&E region.

The source, ``CMU-1-Small-Region.svs`` (OpenSlide test data, Carnegie Mellon University; see
``wsi_fusion/data/ATTRIBUTION.md``), ships inside the package so the demo runs offline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from wsi_fusion.errors import SlideNotFound
from wsi_fusion.synth.write import synthesize

log = logging.getLogger(__name__)

DEMO_SOURCE = "CMU-1-Small-Region.svs"
#: Focal planes of the demo stack.
DEMO_PLANES = 5
#: Seed of the demo stack (fixed so every machine builds the same demo).
DEMO_SEED = 0


def demo_source_path() -> Path:
    """Path of the bundled demo source slide (2220 x 2967 px H&E, Aperio SVS, 0.499 µm/px).

    Returns
    -------
    Path
        A real file on disk (the package is installed unzipped).

    Raises
    ------
    SlideNotFound
        The package was installed without its data files.
    """
    ref = resources.files("wsi_fusion").joinpath("data", DEMO_SOURCE)
    path = Path(str(ref))
    if not path.is_file():
        raise SlideNotFound(
            f"demo source {path} is missing: the package was installed without its data; "
            "reinstall wsi-fusion (pip install --force-reinstall wsi-fusion)"
        )
    return path


def make_demo_stack(
    out_dir: str | os.PathLike[str],
    forms: Sequence[str] = ("ome-tiff",),
    **kwargs: Any,
) -> Path:
    """Synthesise the demo focal stack (5 planes, the whole 2220 x 2967 region).

    Parameters
    ----------
    out_dir : path
        Output folder (see :func:`wsi_fusion.synth.write.synthesize` for its contents).
    forms : sequence of str
        Input forms to write: ``"ome-tiff"`` (default), ``"ome-zarr"``, ``"planes"``.
    **kwargs
        Further :func:`~wsi_fusion.synth.write.synthesize` arguments (e.g. ``overwrite=True``,
        ``tile=512`` or model parameters), applied over the demo's defaults.

    Returns
    -------
    Path
        ``out_dir``; the stack is ``out_dir/stack.ome.tif`` for the default form.
    """
    options: dict[str, Any] = {"n_planes": DEMO_PLANES, "seed": DEMO_SEED}
    options.update(kwargs)
    log.info("building the demo focal stack from %s", DEMO_SOURCE)
    return synthesize(demo_source_path(), out_dir, forms=tuple(forms), **options)
