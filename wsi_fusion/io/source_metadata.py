"""Slide metadata carried from the inputs to the fused output: objective power, mpp, vendor and
the scanner's own properties.

Read through the OpenSlide API (openslide-python, else tiffslide) from the first input of a stack
of slide files, the form scanners write (SVS, NDPI, MRXS, … one file per plane); other forms
carry their mpp only. The scanner's properties are kept under their vendor prefix (``aperio.*``,
``hamamatsu.*`` …) minus the keys that identify a slide, a patient or an operator
(:data:`IDENTIFYING`): they end up in outputs that travel.

Outputs: ``source`` in :func:`~wsi_fusion.io.readers.describe_stack` and so in the provenance
(``run.json``, the OME-Zarr's ``wsi_fusion`` attribute); the OME-TIFF gets a ``MapAnnotation``
(namespace :data:`NAMESPACE`) and the objective's ``NominalMagnification``, and the slide's
associated images (:func:`associated_images`: label, macro, thumbnail) as further OME images.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: Namespace of the OME-XML MapAnnotation holding the source properties.
NAMESPACE = "wsi_fusion.source_properties"

#: Property-name parts (case-insensitive, matched against the part after the vendor prefix)
#: that are left out: barcodes, file and slide names, operators, label text.
IDENTIFYING = re.compile(
    r"barcode|file[ _]?name|slide[ _]?(name|id)|user|operator|patient|label|reference|"
    r"accession|specimen|case",
    re.IGNORECASE,
)

#: Prefixes that describe the source *file* (its levels, tiles, hashes, associated images), not
#: the scan: they do not apply to the fused output.
_FILE_PREFIXES = ("openslide.", "tiff.", "tiffslide.")


def _number(value: Any) -> float | None:
    """``value`` as a positive finite float, else ``None``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _slide_properties(path: str) -> Mapping[str, str] | None:
    """The OpenSlide-style properties of ``path``, or ``None`` if neither library opens it."""
    try:
        import openslide

        with openslide.OpenSlide(path) as slide:
            return dict(slide.properties)
    except Exception:  # noqa: BLE001 - not an OpenSlide slide (or no OpenSlide): try tiffslide
        pass
    try:
        import tiffslide

        with tiffslide.TiffSlide(path) as slide:
            return {k: str(v) for k, v in slide.properties.items() if v is not None}
    except Exception as err:  # noqa: BLE001 - a raster or unknown file: no slide properties
        logger.debug("no slide properties from %s: %s", path, err)
        return None


def scan_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """The scanner's own properties: vendor-prefixed keys, without file-level and identifying
    ones (see :data:`IDENTIFYING`)."""
    kept: dict[str, str] = {}
    for key, value in properties.items():
        if key.startswith(_FILE_PREFIXES) or "." not in key:
            continue
        if IDENTIFYING.search(key.split(".", 1)[1]):
            continue
        kept[key] = str(value)
    return dict(sorted(kept.items()))


def source_metadata(form: str, sources: tuple[str, ...], mpp: float | None) -> dict[str, Any]:
    """What the fused output should say about the slide it came from.

    Parameters
    ----------
    form
        The stack's form (``layers`` for one slide file per plane).
    sources
        Its input files.
    mpp
        Its level-0 pixel size, as the reader found it.

    Returns
    -------
    dict
        ``objective_power`` (float or ``None``), ``mpp``, ``vendor`` (``None`` when unknown) and
        ``properties`` (the scanner's properties, :func:`scan_properties`).
    """
    out: dict[str, Any] = {"objective_power": None, "mpp": mpp, "vendor": None, "properties": {}}
    if form != "layers" or not sources:
        return out
    props = _slide_properties(sources[0])
    if not props:
        return out
    out["objective_power"] = _number(
        props.get("openslide.objective-power") or props.get("tiffslide.objective-power")
    )
    out["vendor"] = props.get("openslide.vendor") or props.get("tiffslide.vendor") or None
    out["properties"] = scan_properties(props)
    return out


def as_map_annotation(source: Mapping[str, Any]) -> dict[str, str]:
    """``source`` flattened to the string key/values of an OME ``MapAnnotation``."""
    out: dict[str, str] = {}
    for key in ("objective_power", "mpp", "vendor"):
        if source.get(key) is not None:
            out[key] = f"{source[key]:g}" if isinstance(source[key], float) else str(source[key])
    out.update({str(k): str(v) for k, v in dict(source.get("properties") or {}).items()})
    return out


#: Associated images carried to the output, in this order (others a scanner writes are skipped).
ASSOCIATED = ("label", "macro", "thumbnail")


def associated_images(
    form: str, sources: tuple[str, ...], *, label: bool = True
) -> dict[str, npt.NDArray[np.uint8]]:
    """The label, macro and thumbnail images of the first slide file, as (h, w, 3) uint8 RGB.

    Only for a stack of slide files (``form == "layers"``), read through the OpenSlide API
    (openslide-python, else tiffslide); transparent pixels become white. ``label=False`` leaves
    out the label, which can show patient data (``--no-label``). Empty when there are none.
    """
    if form != "layers" or not sources:
        return {}
    wanted = [n for n in ASSOCIATED if label or n != "label"]
    for opener in (_openslide_associated, _tiffslide_associated):
        try:
            found = opener(sources[0], wanted)
        except Exception as err:  # noqa: BLE001 - not a slide this library opens: try the next
            logger.debug("no associated images from %s: %s", sources[0], err)
            continue
        return {name: found[name] for name in wanted if name in found}
    return {}


def _openslide_associated(path: str, wanted: list[str]) -> dict[str, npt.NDArray[np.uint8]]:
    import openslide

    from wsi_fusion.io.readers._base import pil_to_rgb

    with openslide.OpenSlide(path) as slide:
        images = slide.associated_images
        return {n: np.ascontiguousarray(pil_to_rgb(images[n])) for n in wanted if n in images}


def _tiffslide_associated(path: str, wanted: list[str]) -> dict[str, npt.NDArray[np.uint8]]:
    import tiffslide

    from wsi_fusion.io.readers._base import pil_to_rgb

    with tiffslide.TiffSlide(path) as slide:
        images = slide.associated_images
        return {n: np.ascontiguousarray(pil_to_rgb(images[n])) for n in wanted if n in images}
