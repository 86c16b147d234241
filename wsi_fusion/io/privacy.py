"""What the outputs say about where things are: file names by default, full paths on request.

Pathology file and folder names often hold accession numbers or patient names, and an output
travels (to a viewer, a collaborator, a repository) far beyond the machine it was made on. So the
provenance in the OME-XML, the TIFF ImageDescription, the zarr attributes and ``run.json`` names
each input, weights file and output by its file name only; ``--record-paths`` (``RunConfig.
record_paths``) records absolute paths instead. Identity is not lost: the run digest still hashes
every input's absolute path, size and modification time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def shown_path(path: str | os.PathLike[str], record_paths: bool) -> str:
    """``path`` as an output records it: its file name, or its absolute path."""
    p = Path(path)
    return str(p.absolute()) if record_paths else p.name


def redact_stack_info(info: Mapping[str, Any], record_paths: bool) -> dict[str, Any]:
    """:func:`~wsi_fusion.io.readers.describe_stack` output with its sources as recorded."""
    out = dict(info)
    out["sources"] = [shown_path(s, record_paths) for s in info.get("sources", [])]
    return out


def redact_fuser(description: Mapping[str, Any], record_paths: bool) -> dict[str, Any]:
    """A fuser's ``describe()`` with its weights file (and an explicit weights parameter) as
    recorded; the sha256 is what identifies the weights."""
    out = dict(description)
    weights = out.get("weights")
    if isinstance(weights, Mapping) and weights.get("file"):
        out["weights"] = {**weights, "file": shown_path(weights["file"], record_paths)}
    params = out.get("params")
    if isinstance(params, Mapping) and params.get("weights"):
        out["params"] = {**params, "weights": shown_path(params["weights"], record_paths)}
    return out


def redact_config(config: Mapping[str, Any], record_paths: bool) -> dict[str, Any]:
    """A dumped run config with an explicit weights path as recorded."""
    out = dict(config)
    params = out.get("fuser_params")
    if isinstance(params, Mapping) and params.get("weights"):
        out["fuser_params"] = {**params, "weights": shown_path(params["weights"], record_paths)}
    return out
