"""Fuser registry: ``@register_fuser`` + ``create_fuser`` + ``list_fusers``.

Learned fusers register from modules that import torch lazily, so listing the registry never
imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from wsi_fusion.config import validation_problems
from wsi_fusion.errors import ConfigError, UnknownFuser
from wsi_fusion.fusers.base import Fuser

F = TypeVar("F", bound=type[Fuser])

_REGISTRY: dict[str, type[Fuser]] = {}

#: Modules whose import registers fusers. Kept explicit so the registry is complete and ordered.
_FUSER_MODULES = (
    "wsi_fusion.fusers.plane",
    "wsi_fusion.fusers.focus_measure",
    "wsi_fusion.fusers.laplacian_pyramid",
    "wsi_fusion.fusers.wavelet",
    "wsi_fusion.fusers.msegnet",
    "wsi_fusion.fusers.cgan_blurmask",
    "wsi_fusion.fusers.fmb_net",
    "wsi_fusion.fusers.gacn",
    "wsi_fusion.fusers.acnn",
)

DEFAULT_FUSER = "focus_measure"

#: Fusers with a device implementation chosen by their ``device`` parameter: the name maps to
#: ``module:function`` returning the class (and the parameters it takes) for given parameters.
#: The module imports torch lazily, so naming a device is what loads it.
_DEVICE_VARIANTS = {
    "focus_measure": "wsi_fusion.fusers.focus_measure_torch:select_class",
}


def has_device_variant(name: str) -> bool:
    """Whether ``name`` takes a ``device`` parameter that selects a torch implementation."""
    return name in _DEVICE_VARIANTS


def register_fuser(name: str, *, paper: str, licence: str = "Apache-2.0") -> Callable[[F], F]:
    """Class decorator that adds a fuser to the registry under ``name``."""

    def decorate(cls: F) -> F:
        if name in _REGISTRY:
            raise ValueError(
                f"fuser {name!r} is registered twice ({_REGISTRY[name]!r} and {cls!r})"
            )
        cls.name, cls.paper, cls.licence = name, paper, licence
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_all() -> None:
    for module in _FUSER_MODULES:
        importlib.import_module(module)


def list_fusers() -> list[str]:
    """Names of all registered fusers, in registration order."""
    _load_all()
    return list(_REGISTRY)


def fuser_class(name: str) -> type[Fuser]:
    """The class registered under ``name``."""
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise UnknownFuser(
            f"unknown fuser {name!r}; choose one of: {known} (`wsi-fusion fusers` lists them)"
        ) from None


def create_fuser(name: str, **params: Any) -> Fuser:
    """Instantiate the fuser ``name`` with validated ``params``."""
    cls = fuser_class(name)
    try:
        if name in _DEVICE_VARIANTS and "device" in params:
            module, function = _DEVICE_VARIANTS[name].split(":")
            cls, params = getattr(importlib.import_module(module), function)(params)
        return cls(**params)
    except ValidationError as err:
        # One line, like every error the CLI prints: the key path and the problem.
        problems = validation_problems(err, "fuser_params", prefix="fuser_params.")
        raise ConfigError(f"invalid parameters for fuser {name!r}: {problems}") from err
