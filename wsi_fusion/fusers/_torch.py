"""Base class of the learned fusers: lazy torch, weights by record, device and precision.

torch is imported on first use of :attr:`TorchFuser.model`, never at import time, so listing the
registry and starting the CLI stay fast. The model is built, loaded strictly from its checked
safetensors file, put in eval mode and moved to the device once per fuser instance; the pipeline
keeps one instance per worker thread (``scheduling.workers``).

Every learned fuser has two widths (parameter ``width``): ``lite``, the shipped, CPU-trained
network, and ``paper``, the paper's width as the GPU run trains it (``workflows/gpu_run.sh``,
preset ``configs/presets/h100-8min``). Paper-width weights are not shipped: ``weights: PATH``
names them, else the preset's output ``models/<fuser>/<name>.paper.safetensors``
(:meth:`TorchFuser.paper_weights_file`) is loaded, unpinned and recorded by its sha256.
"""

from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from wsi_fusion.errors import WeightsError
from wsi_fusion.fusers._weights import (
    WeightsRecord,
    file_sha256,
    load_into,
    load_state_dict,
    resolve_paper_weights,
    resolve_weights,
    weights_state,
)
from wsi_fusion.fusers.base import Fuser, FuserParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class TorchParams(FuserParams):
    """Parameters every learned fuser accepts."""

    #: Network width: ``lite`` (the shipped, CPU-trained network) or ``paper`` (the paper's
    #: width, as ``workflows/gpu_run.sh`` trains it with the ``h100-8min`` preset; its weights
    #: are not shipped: ``weights: PATH``, else the preset's output file is looked for).
    width: Literal["lite", "paper"] = "lite"
    #: Explicit weights file (safetensors); default: the shipped file of the fuser's record
    #: (``width: lite``) or ``models/<fuser>/<name>.paper.safetensors`` (``width: paper``).
    weights: str | None = None
    #: sha256 the weights file must have (loading refuses any other content); default: the
    #: pinned hash of the shipped file, none for an explicit file. The pipeline sets it to the
    #: hash it records, so that every worker loads exactly the file named in run.json.
    weights_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    #: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    device: str = "auto"
    #: Tiles per forward pass in :meth:`Fuser.fuse_batch`.
    batch_size: int = Field(default=8, ge=1)
    #: Autocast precision on CUDA; CPU always runs float32.
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"


class TorchFuser(Fuser):
    """A fuser backed by a torch module with shipped weights."""

    Params: ClassVar[type[FuserParams]] = TorchParams
    needs_weights: ClassVar[bool] = True
    #: The shipped weights file (path relative to ``models/`` and its sha256).
    weights_record: ClassVar[WeightsRecord]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._model: torch.nn.Module | None = None
        self._random_init = False
        self._seed = 0

    @classmethod
    def untrained(cls, seed: int = 0, **params: Any) -> TorchFuser:
        """An instance with seeded random weights (contract tests; never for real output)."""
        fuser = cls(**params)
        fuser._random_init = True
        fuser._seed = seed
        return fuser

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """The architecture, with freshly initialised parameters."""

    @property
    def tparams(self) -> TorchParams:
        """The validated parameters, typed as :class:`TorchParams`."""
        assert isinstance(self.params, TorchParams)
        return self.params

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        import torch

        wanted = self.tparams.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(wanted)

    @property
    def model(self) -> torch.nn.Module:
        """The model, built, loaded, in eval mode and on :attr:`device` (once)."""
        if self._model is None:
            import torch

            if self._random_init:
                torch.manual_seed(self._seed)
                model = self.build_model()
            else:
                model = self.build_model()
                self.load_weights(model, self.weights_path())
            self._model = model.eval().to(self.device)
            log.debug("%s: model on %s", self.name, self.device)
        return self._model

    @property
    def paper_width(self) -> bool:
        """Whether this instance runs the paper-width network (``width: paper``)."""
        return self.tparams.width == "paper"

    def paper_weights_file(self) -> str:
        """Where the GPU run's preset writes this fuser's paper-width weights, relative to the
        models folder (the preset's ``output`` without ``models/``)."""
        return f"{self.name}/{self.name}.paper.safetensors"

    def weights_model(self) -> str:
        """Name of the weights this instance loads: the record's model, or ``<name>.paper``."""
        if self.paper_width:
            return Path(self.paper_weights_file()).name.removesuffix(".safetensors")
        return self.weights_record.model

    def weights_path(self) -> Path:
        """The weights file to load: ``weights`` if given, else the shipped file of the record
        (``width: lite``) or the GPU run's paper-width file (``width: paper``).

        Raises
        ------
        WeightsError
            The file is missing; for the paper width the message names the file and how to
            make it (``workflows/gpu_run.sh``).
        """
        if self.paper_width:
            return resolve_paper_weights(
                self.weights_model(), self.paper_weights_file(), self.tparams.weights
            )
        return resolve_weights(self.weights_record, self.tparams.weights)

    def misfit_hint(self) -> str:
        """The end of the error for weights that do not fit the network built: which width
        was built, and which parameter another width's file needs."""
        if self.paper_width:
            return (
                f"width 'paper' builds the paper-width {self.name} network, as the GPU run's "
                "h100-8min preset trains it; a file of the shipped width needs width 'lite' "
                "(the default)"
            )
        return (
            f"width 'lite' builds the shipped {self.name} network; a file of the paper width "
            "(from workflows/gpu_run.sh) needs width 'paper'"
        )

    def load_weights(self, model: torch.nn.Module, path: Path) -> None:
        """Load the weights file ``path`` into ``model`` (built by :meth:`build_model`)
        strictly, checking its sha256 first when one is expected."""
        load_into(
            model,
            load_state_dict(path, self._expected_sha256()),
            source=str(path),
            hint=self.misfit_hint(),
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """``inference_mode`` plus autocast to the requested precision on CUDA."""
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.tparams.precision)
        with torch.inference_mode():
            if dtype is not None and self.device.type == "cuda":
                with torch.autocast("cuda", dtype=dtype):
                    yield
            else:
                yield

    @classmethod
    def weights_status(cls) -> str:
        """State of the shipped weights: ``present``, ``missing`` or ``sha256 mismatch``."""
        return weights_state(cls.weights_record)

    def _expected_sha256(self) -> str | None:
        """The hash the weights file must have: the one asked for, else the pinned one of the
        shipped file; ``None`` (unchecked) for an explicit or a paper-width file with no hash
        given (those are recorded by their digest instead)."""
        if self.tparams.weights_sha256 is not None:
            return self.tparams.weights_sha256
        if self.tparams.weights or self.paper_width:
            return None
        return self.weights_record.sha256

    def describe(self) -> dict[str, Any]:
        """Name, parameters, and the weights file with its sha256 (and whether it is pinned).

        Weights that are not the pinned, shipped file are logged once as a warning: the output
        then depends on weights nobody reviewed here.
        """
        info = super().describe()
        if self._random_init:
            info["weights"] = {"file": None, "sha256": None, "note": "random (untrained)"}
            return info
        path = self.weights_path()
        digest = file_sha256(path)
        expected = self._expected_sha256()
        if expected is not None and digest != expected:
            raise WeightsError(
                f"{path} has sha256 {digest[:16]}…, expected {expected[:16]}…: the file is "
                "corrupt or not the one asked for; restore it or give the matching weights_sha256"
            )
        pinned = digest == self.weights_record.sha256
        if self.paper_width:
            log.warning(
                "%s: width paper, weights %s (sha256 %s…): trained by a GPU run, not shipped "
                "or pinned; the output depends on them, and run.json records their hash",
                self.name,
                path.name,
                digest[:16],
            )
        elif not pinned:
            log.warning(
                "%s: weights %s (sha256 %s…) are not the pinned %s weights (sha256 %s…); the "
                "output depends on them, and run.json records their hash",
                self.name,
                path.name,
                digest[:16],
                self.weights_record.model,
                self.weights_record.sha256[:16],
            )
        info["weights"] = {
            "model": self.weights_model(),
            "file": str(path),
            "sha256": digest,
            "pinned": pinned,
        }
        return info
