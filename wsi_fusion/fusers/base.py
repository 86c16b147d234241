"""The fuser contract.

A fuser takes a tile stack ``(Z, C, H, W)`` float32 in [0, 1] and returns the fused tile
``(C, H, W)`` and per-plane soft weights ``(Z, H, W)`` that sum to 1 over Z (one-hot for hard
decisions, ``None`` only for generative fusers). It declares ``margin``: the width of the border
of its output that depends on pixels outside the tile. The tile plan refuses an overlap smaller
than twice the margin, which is what makes tiled fusion equal whole-image fusion.

Some fusers can also produce *extra outputs*: per-pixel maps in [0, 1] that explain the fused
tile (``cgan_blurmask``'s blur mask shows which regions its generator synthesised). A fuser lists
the names it can produce in ``extra_outputs``; the pipeline asks for some of them with
:meth:`Fuser.request_extras`, and the fuser then returns each in ``FusionResult.extras``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from wsi_fusion._types import FusedTile, PlaneWeights, TileStack
from wsi_fusion.errors import ConfigError
from wsi_fusion.tiling.plan import grid_halo

#: An extra output of one tile: ``(H, W)`` float32 in [0, 1].
ExtraMap = npt.NDArray[np.float32]


class FuserParams(BaseModel):
    """Base of each fuser's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class FusionResult:
    """What a fuser returns for one tile."""

    fused: FusedTile
    weights: PlaneWeights | None
    #: The extra outputs the fuser was asked for (:meth:`Fuser.request_extras`), by name.
    extras: Mapping[str, ExtraMap] = field(default_factory=dict)


class Fuser(ABC):
    """Base class of all fusers; subclasses register with :func:`register_fuser`."""

    #: Registry key, set by the decorator.
    name: ClassVar[str] = ""
    #: Source paper (citation) and licence of the method/weights, set by the decorator.
    paper: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    #: Parameter model; subclasses override with their own FuserParams subclass.
    Params: ClassVar[type[FuserParams]] = FuserParams
    #: Fewest planes the method can fuse.
    min_planes: ClassVar[int] = 2
    #: Whether the fuser needs trained weights.
    needs_weights: ClassVar[bool] = False
    #: Names of the extra outputs the fuser can produce (see :meth:`request_extras`).
    extra_outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)
        #: Extra outputs every result carries, in request order (none unless requested).
        self.extras: tuple[str, ...] = ()

    def request_extras(self, names: Iterable[str]) -> None:
        """Make every :class:`FusionResult` of this fuser carry the extra outputs ``names``.

        Raises
        ------
        ConfigError
            If the fuser cannot produce one of them; the message names the fusers that can.
        """
        wanted = tuple(dict.fromkeys(names))
        for name in wanted:
            if name not in self.extra_outputs:
                raise ConfigError(unsupported_extra_message(self.name, name))
        self.extras = wanted

    @property
    @abstractmethod
    def margin(self) -> int:
        """Unreliable border width of the output in pixels (the receptive-field halo)."""

    @property
    def cell_grid(self) -> int:
        """The px grid a tile's origin must lie on for the fuser's output to equal whole-image
        fusion (1: any origin).

        A fuser that pools its decisions on cells counted from the tile's origin (the depth
        surface's ``pool_step``, and the low band that follows it) sees other cells in a tile that
        starts off that grid, which may move a boundary between two near-tied planes. Every fuser
        on the depth surface (parameters with ``depth_radius`` and ``pool_step``: the default and
        the decision-map fusers) has that grid while the surface is on.
        """
        p = self.params
        return int(getattr(p, "pool_step", 1)) if getattr(p, "depth_radius", 0) else 1

    @property
    def block_halo(self) -> int:
        """The halo of the blocks a whole image is fused in: the margin rounded up to whole
        cells, so that a block whose corner is on the cell grid has its tile's on it too."""
        return grid_halo(self.margin, self.cell_grid)

    @abstractmethod
    def fuse(self, stack: TileStack) -> FusionResult:
        """Fuse one ``(Z, C, H, W)`` stack."""

    def fuse_batch(self, stacks: list[TileStack]) -> list[FusionResult]:
        """Fuse several stacks; learned fusers override this to batch forward passes."""
        return [self.fuse(s) for s in stacks]

    @classmethod
    def weights_status(cls) -> str:
        """State of the fuser's weights for ``wsi-fusion fusers`` (``present``, ``missing``…)."""
        return "not needed"

    def describe(self) -> dict[str, Any]:
        """Name, parameters and weight provenance, for run metadata."""
        return {"name": self.name, "params": self.params.model_dump(), "paper": self.paper}


def unsupported_extra_message(fuser: str, extra: str) -> str:
    """Why fuser ``fuser`` cannot give ``extra``, naming the registered fusers that can."""
    from wsi_fusion.fusers._registry import fuser_class, list_fusers

    able = [n for n in list_fusers() if extra in fuser_class(n).extra_outputs]
    option = "--" + extra.replace("_", "-")
    fix = f"use --fuser {' or --fuser '.join(able)}" if able else "no registered fuser produces it"
    return (
        f"fuser {fuser!r} cannot produce the extra output {extra!r} ({option}); {fix}, "
        f"or drop {option}"
    )


def one_hot_weights(index: np.ndarray, n_planes: int) -> PlaneWeights:
    """Turn an (H, W) plane-index map into one-hot (Z, H, W) float32 weights."""
    planes = np.arange(n_planes, dtype=index.dtype)[:, None, None]
    return (index[None] == planes).astype(np.float32)


def weighted_sum(stack: TileStack, weights: PlaneWeights) -> FusedTile:
    """Combine planes ``(Z, C, H, W)`` with weights ``(Z, H, W)`` into ``(C, H, W)``."""
    fused = np.einsum("zchw,zhw->chw", stack, weights, optimize=True)
    return np.clip(fused, 0.0, 1.0).astype(np.float32, copy=False)
