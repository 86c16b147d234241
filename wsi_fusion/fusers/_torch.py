"""Base class of the learned fusers: lazy torch, weights by record, device and precision.

torch is imported on first use of :attr:`TorchFuser.model`, never at import time, so listing the
registry and starting the CLI stay fast. The model is built, loaded strictly from its checked
safetensors file, put in eval mode and moved to the device once per fuser instance; the pipeline
keeps one instance per worker thread (``scheduling.workers``).
"""

from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from wsi_fusion.errors import WeightsError
from wsi_fusion.fusers._weights import (
    WeightsRecord,
    file_sha256,
    load_into,
    load_state_dict,
    resolve_weights,
    weights_state,
)
from wsi_fusion.fusers.base import Fuser, FuserParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class TorchParams(FuserParams):
    """Parameters every learned fuser accepts."""

    #: Explicit weights file (safetensors); default: the shipped file of the fuser's record.
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
                path = resolve_weights(self.weights_record, self.tparams.weights)
                load_into(model, load_state_dict(path, self._expected_sha256()), source=str(path))
            self._model = model.eval().to(self.device)
            log.debug("%s: model on %s", self.name, self.device)
        return self._model

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
        shipped file; ``None`` (unchecked) only for an explicit file with no hash given."""
        if self.tparams.weights_sha256 is not None:
            return self.tparams.weights_sha256
        return None if self.tparams.weights else self.weights_record.sha256

    def describe(self) -> dict[str, Any]:
        """Name, parameters, and the weights file with its sha256 (and whether it is pinned).

        Weights that are not the pinned, shipped file are logged once as a warning: the output
        then depends on weights nobody reviewed here.
        """
        info = super().describe()
        if self._random_init:
            info["weights"] = {"file": None, "sha256": None, "note": "random (untrained)"}
            return info
        path = resolve_weights(self.weights_record, self.tparams.weights)
        digest = file_sha256(path)
        expected = self._expected_sha256()
        if expected is not None and digest != expected:
            raise WeightsError(
                f"{path} has sha256 {digest[:16]}…, expected {expected[:16]}…: the file is "
                "corrupt or not the one asked for; restore it or give the matching weights_sha256"
            )
        pinned = digest == self.weights_record.sha256
        if not pinned:
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
            "model": self.weights_record.model,
            "file": str(path),
            "sha256": digest,
            "pinned": pinned,
        }
        return info
