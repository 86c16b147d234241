"""Run configuration: one validated model, loadable from YAML.

Unknown keys are errors that name the key, so a typo in a config never silently falls back to a
default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wsi_fusion._resources import shipped_configs_dir
from wsi_fusion.errors import ConfigError

OutputFormat = Literal["ome-zarr", "ome-tiff", "tiff", "dicom"]


class TissueConfig(BaseModel):
    """Tissue detection on a thumbnail; background tiles are copied, not fused."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    #: Longer side of the thumbnail the mask is computed on.
    thumbnail_side: int = Field(2048, ge=64)
    #: A tile is fused when at least this fraction of it is tissue.
    min_fraction: float = Field(0.02, ge=0.0, le=1.0)


class RegistrationConfig(BaseModel):
    """Lateral registration of the focal planes to the reference plane before fusion."""

    model_config = ConfigDict(extra="forbid")
    #: ``auto``: measure the drift and register only when it exceeds ``threshold_px``.
    mode: Literal["auto", "on", "off"] = "auto"
    #: Largest shift (px) that ``auto`` leaves uncorrected.
    threshold_px: float = Field(0.5, ge=0.0)
    #: Regions per side of the slide on which the drift is measured. In ``auto`` mode the four
    #: corner regions are measured first; when every shift there is below ``threshold_px / 2``
    #: the stack is not registered and the other regions are not measured (2 x 2 field).
    grid: int = Field(4, ge=1, le=64)


class LearnedConfig(BaseModel):
    """How learned fusers run; merged into their parameters unless ``fuser_params`` set them."""

    model_config = ConfigDict(extra="forbid")
    #: Tiles per forward pass; ``None``: chosen from the free GPU memory (the fuser's default
    #: on the CPU).
    batch_size: int | None = Field(None, ge=1)
    #: Autocast precision on CUDA (``fp16``/``bf16`` halve activation memory); CPU runs fp32.
    precision: Literal["fp32", "fp16", "bf16"] | None = None


class RunConfig(BaseModel):
    """Everything that determines a fusion run's output."""

    model_config = ConfigDict(extra="forbid")

    fuser: str = "focus_measure"
    fuser_params: dict[str, Any] = Field(default_factory=dict)
    #: Fusion tile side and overlap in px. ``None`` (default) chooses per fuser
    #: (:func:`wsi_fusion.tiling.plan.fusion_plan`): 512/128, the design's tiling, for learned
    #: fusers; for the others each ``chunk`` block is fused once with a halo of the margin.
    tile: int | None = Field(None, ge=16)
    overlap: int | None = Field(None, ge=0)
    format: OutputFormat | None = None
    #: OME-Zarr (NGFF) version: 0.4 (Zarr v2; QuPath, OMERO) or 0.5 (Zarr v3; napari, vizarr).
    ngff_version: Literal["0.4", "0.5"] = "0.4"
    #: TIFF tile compression: JPEG at ``jpeg_quality`` or lossless.
    compression: Literal["jpeg", "deflate", "zstd", "lzw", "none"] = "jpeg"
    jpeg_quality: int = Field(90, ge=1, le=100)
    focus_map: bool = False
    #: Also write the blur mask of a fuser that generates its output (``cgan_blurmask``): where
    #: the image was synthesised rather than copied (``labels/blur_mask``, ``NAME.blur_mask.tif``).
    blur_mask: bool = False
    #: Plane copied for background tiles and used for the tissue thumbnail (None: middle plane).
    reference_plane: int | None = None
    #: Order of per-plane files: ``given`` takes them in the order given (a warning when they look
    #: out of focal order); ``similarity`` reorders them so that each plane's neighbours are the
    #: planes most like it, for a focus sweep saved in capture order
    #: (:mod:`wsi_fusion.registration.focal_order`).
    plane_order: Literal["given", "similarity"] = "given"
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    #: Fusion tiles per Dask task (tasks of many tiles keep the graph small).
    tiles_per_task: int = Field(32, ge=1)
    #: Output chunk side (OME-Zarr chunks, blending blocks) in pixels.
    chunk: int = Field(1024, ge=64)
    learned: LearnedConfig = Field(default_factory=LearnedConfig)
    #: ``threads`` (default), ``processes``, ``sync``, ``local-cluster`` or the address of a
    #: running distributed scheduler (``tcp://host:8786``).
    scheduler: str = "threads"
    #: Threads/processes of the local schedulers, worker processes of ``local-cluster``.
    workers: int | None = Field(None, ge=1)
    #: Record absolute input, weights and output paths in the outputs' provenance instead of
    #: file names (names by default: folder names often hold accession numbers).
    record_paths: bool = False
    #: Leave the slide's label image out of the outputs (it can show patient data); the macro
    #: and thumbnail images are still carried (OME-TIFF output from slide files).
    no_label: bool = False

    @property
    def extras(self) -> tuple[str, ...]:
        """Names of the fuser extra outputs this run writes (see ``Fuser.extra_outputs``)."""
        return ("blur_mask",) if self.blur_mask else ()

    def effective_fuser_params(self, needs_weights: bool) -> dict[str, Any]:
        """``fuser_params`` plus the ``learned`` settings for a fuser that needs weights."""
        params = dict(self.fuser_params)
        if needs_weights:
            for key, value in self.learned.model_dump(exclude_none=True).items():
                params.setdefault(key, value)
        return params

    @model_validator(mode="after")
    def _overlap_fits(self) -> RunConfig:
        tile = 512 if self.tile is None else self.tile
        if self.overlap is not None and self.overlap >= tile:
            raise ValueError(f"overlap {self.overlap} must be smaller than tile {tile}")
        return self


def shipped_config(path: str | Path) -> Path:
    """``path`` itself if it exists, else the shipped config of that name, else ``path``.

    ``configs/lossless-focus-map.yaml``, ``lossless-focus-map.yaml`` and ``lossless-focus-map``
    all name the shipped config when no such file is in the working folder, so the configs of
    ``configs/`` work from an installed wheel as they do in a checkout.
    """
    path = Path(path)
    if path.exists() or path.parent not in (Path("."), Path("configs")):
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    shipped = shipped_configs_dir() / name
    return shipped if shipped.is_file() else path


def load_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Load a YAML config (if given) and apply non-``None`` ``overrides`` on top.

    ``path`` may name a shipped config (see :func:`shipped_config`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = shipped_config(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} does not exist") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        data.update(loaded or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**data)
    except ValidationError as err:
        where = f" in {path}" if path is not None else ""
        problems = validation_problems(err, "config")
        raise ConfigError(f"invalid configuration{where}: {problems}") from err


def validation_problems(err: ValidationError, root: str, prefix: str = "") -> str:
    """A pydantic error as one line: ``key.path: problem; ...`` (``root`` names the model
    itself, ``prefix`` goes before every key path)."""
    return "; ".join(
        f"{prefix}{'.'.join(str(p) for p in e['loc']) or root}: "
        + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
        for e in err.errors()
    )
