"""Trained weights: where they live, how they are checked, loaded and saved.

Weights are plain state dicts in safetensors files, never pickles: unpickling a file someone hands
you runs whatever code it contains. Every shipped file is pinned by its sha256 in a
:class:`WeightsRecord`, so a corrupt or swapped file is refused before a tensor is read.

Resolution order of a weights file: an explicit path (fuser parameter ``weights``), then
``$WSI_FUSION_WEIGHTS/<record.file>``, then the shipped ``models/<record.file>`` (inside the
package when installed from a wheel, the repository's ``models/`` in a checkout).

Paper-width weights (fuser parameter ``width: paper``) are not shipped: a GPU run of the
``h100-8min`` preset (``workflows/gpu_run.sh``) writes them to
``models/<fuser>/<name>.paper.safetensors``, where :func:`resolve_paper_weights` looks for them
(in ``$WSI_FUSION_WEIGHTS`` instead when it is set) unless ``weights`` names a file. They are
loaded unpinned and recorded by their sha256, as any explicit file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_fusion._resources import shipped_models_dir
from wsi_fusion.errors import WeightsError

if TYPE_CHECKING:  # torch is imported lazily: listing fusers must not import it.
    import torch

#: Environment variable naming a folder laid out like ``models/``.
WEIGHTS_ENV = "WSI_FUSION_WEIGHTS"

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # protocol-2+ pickle, zip (torch.save) archives


@dataclass(frozen=True)
class WeightsRecord:
    """One shipped weights file.

    Attributes
    ----------
    model : str
        Architecture/variant name, e.g. ``"acnn.small"``.
    file : str
        Path relative to the models folder, e.g. ``"acnn/acnn.safetensors"``.
    sha256 : str
        Hex digest of the file; loading refuses any other content.
    """

    model: str
    file: str
    sha256: str


def models_dir() -> Path:
    """The folder holding weights: ``$WSI_FUSION_WEIGHTS`` if set, else the shipped ``models/``.

    The shipped folder is ``wsi_fusion/_models`` in an installed wheel, the repository's
    ``models/`` in a checkout (:func:`wsi_fusion._resources.shipped_models_dir`).
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    return shipped_models_dir()


def resolve_weights(record: WeightsRecord, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Path of the weights file for ``record`` (``explicit`` wins); raise if it is missing."""
    return _existing(
        record.file,
        explicit,
        f"weights file for {record.model!r} not found: {{path}}. Reinstall wsi-fusion from its "
        f"wheel or a full clone (the file ships in models/{record.file}), set "
        f"${WEIGHTS_ENV} to a folder that holds it, or pass weights=PATH",
    )


#: How to get paper-width weights, for the error of a missing file.
GPU_RUN_HINT = (
    "paper-width weights are not shipped: a GPU run of the h100-8min preset writes them there "
    "(bash workflows/gpu_run.sh on a GPU machine, then unpack its results in the repository "
    "root; see workflows/README.md, 'Training on a lent GPU'), or pass weights=PATH to a "
    "safetensors file of the paper-width network"
)


def resolve_paper_weights(
    model: str, file: str, explicit: str | os.PathLike[str] | None = None
) -> Path:
    """Path of the paper-width weights ``file`` (relative to the models folder) of ``model``
    (e.g. ``"msegnet.paper"``); ``explicit`` wins. Raise, naming the file and how to make it
    (``workflows/gpu_run.sh``), if it is missing."""
    return _existing(
        file,
        explicit,
        f"weights file for {model!r} (width paper) not found: {{path}}; {GPU_RUN_HINT}",
    )


def _existing(file: str, explicit: str | os.PathLike[str] | None, missing: str) -> Path:
    """``explicit``, else ``file`` in the models folder; :class:`WeightsError` with the
    ``missing`` message (its ``{path}`` filled in) if that is not a file."""
    path = Path(explicit) if explicit is not None else models_dir() / file
    if not path.is_file():
        raise WeightsError(missing.replace("{path}", str(path)))
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_state(record: WeightsRecord) -> str:
    """``present``, ``missing`` or ``sha256 mismatch`` for the default location of ``record``."""
    path = models_dir() / record.file
    if not path.is_file():
        return "missing"
    return "present" if file_sha256(path) == record.sha256 else "sha256 mismatch"


def load_state_dict(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict, checking its sha256 first when one is given.

    Raises
    ------
    WeightsError
        The file is a pickle / torch archive, is truncated or corrupt, or its hash differs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"). The
    # length's first byte may be 0x80 too, so only a file without that layout is a pickle.
    if head[8:9] != b"{" and head.startswith(_PICKLE_MAGIC):
        raise WeightsError(
            f"{path} is a pickle/torch.save archive, refused because loading it can run "
            "arbitrary code; convert it to safetensors (safetensors.torch.save_file)"
        )
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise WeightsError(
                f"{path} has sha256 {actual[:16]}…, expected {sha256[:16]}…: the file is corrupt "
                "or not the shipped one; restore it from the repository (git checkout -- models/)"
            )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated — restore it "
            "from the repository or re-export it with safetensors"
        ) from err


#: The end of the error for weights that do not fit, unless the caller gives a better hint.
MISFIT_HINT = "They belong to another architecture or width; use the file shipped for this fuser"


def load_into(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str = "",
    hint: str = MISFIT_HINT,
) -> None:
    """Load ``state`` into ``module`` strictly, casting to the module's dtypes.

    ``hint`` ends the error message of weights that do not fit (what to do about it).

    Raises
    ------
    WeightsError
        Keys are missing or unexpected, or a tensor has the wrong shape.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            parts.append(f"wrong shape {wrong[:3]}")
        raise WeightsError(
            f"weights {source or ''} do not fit {type(module).__name__}: {'; '.join(parts)}. "
            + hint
        )
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def save_weights(module: torch.nn.Module, path: Path, dtype: str = "float16") -> str:
    """Write ``module``'s state dict as safetensors in ``dtype`` (floats only); return sha256."""
    import torch
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    state = {
        k: (v.detach().to(target) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in module.state_dict().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return file_sha256(path)
