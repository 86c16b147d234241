"""Where a run writes: output format, partial paths and the atomic publish step.

Everything is written under ``OUTPUT.partial`` names and renamed into place only when complete,
so an interrupted run never leaves an output that looks finished.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from wsi_fusion.config import OutputFormat
from wsi_fusion.errors import ConfigError, OutputExists, OutputNotWritable
from wsi_fusion.io import ownership

_SUFFIXES: tuple[tuple[str, OutputFormat], ...] = (
    (".ome.zarr", "ome-zarr"),
    (".zarr", "ome-zarr"),
    (".ome.tiff", "ome-tiff"),
    (".ome.tif", "ome-tiff"),
    (".tiff", "tiff"),
    (".tif", "tiff"),
    (".dicom", "dicom"),
)


def format_from_suffix(path: Path) -> OutputFormat | None:
    name = path.name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    return None


def stem(path: Path) -> str:
    """The output name without its format suffix (``slide.ome.zarr`` -> ``slide``)."""
    name = path.name
    for suffix, _ in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass(frozen=True)
class Destination:
    """The final and in-progress paths of one run's outputs."""

    output: Path
    format: OutputFormat
    cache_dir: Path

    @property
    def partial(self) -> Path:
        return self.output.with_name(self.output.name + ".partial")

    @property
    def run_json(self) -> Path:
        # The full name, so an OME-Zarr and a TIFF of the same slide keep separate records.
        return self.output.with_name(self.output.name + ".run.json")

    @property
    def run_json_partial(self) -> Path:
        return self.run_json.with_name(self.run_json.name + ".partial")

    @property
    def default_cache_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".cache")

    @property
    def cache_lock(self) -> Path:
        """Lock of a ``--cache-dir`` of its own, so two outputs never share one tile cache."""
        return self.cache_dir.with_name(self.cache_dir.name + ".lock")

    @property
    def lock(self) -> Path:
        """The advisory lock that keeps a second run off this output (:mod:`.output_lock`)."""
        return self.output.with_name(self.output.name + ".lock")

    @property
    def old(self) -> Path:
        """Where a replaced OME-Zarr output waits while the new one is renamed into place."""
        return self.output.with_name(self.output.name + ".old")

    @property
    def focus_map_tiff(self) -> Path:
        return self.sidecar("focus")

    def sidecar(self, kind: str) -> Path:
        """A TIFF beside a TIFF output, named from the output's full name (:func:`sidecar_path`)."""
        return sidecar_path(self.output, kind)

    @property
    def image_zarr(self) -> Path:
        """The OME-Zarr the pipeline blends into: the output itself, or a cache copy for TIFF."""
        return self.partial if self.format == "ome-zarr" else self.cache_dir / "image.ome.zarr"


def sidecar_path(output: Path, kind: str) -> Path:
    """``x.ome.tif`` -> ``x.ome.<kind>.tif``, ``x.tif`` -> ``x.<kind>.tif``.

    Only the last suffix is replaced, so an OME-TIFF and a generic TIFF of the same slide (or a
    ``.tif`` and a ``.tiff``) never share a sidecar; any other name gets ``.<kind>.tif`` appended.
    """
    name = output.name
    for ext in (".tiff", ".tif"):
        if name.lower().endswith(ext):
            return output.with_name(f"{name[: -len(ext)]}.{kind}{name[-len(ext) :]}")
    return output.with_name(f"{name}.{kind}.tif")


def resolve_destination(
    output: str | os.PathLike[str],
    fmt: OutputFormat | None,
    *,
    overwrite: bool,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Destination:
    """Check ``output`` can be written and work out the format and the cache location."""
    path = Path(output).absolute()
    chosen = fmt or format_from_suffix(path)
    if chosen is None:
        raise ConfigError(
            f"cannot tell the output format from {path.name!r}; end it in .ome.zarr, .ome.tif, "
            ".tif or .dicom, or pass --format ome-zarr|ome-tiff|tiff|dicom"
        )
    if path.exists() and not overwrite:
        raise OutputExists(f"output {path} already exists; pass --overwrite to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise OutputNotWritable(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritable(
            f"output folder {folder} is not writable; choose another -o or fix its permissions"
        )
    cache = Path(cache_dir) if cache_dir is not None else path.with_name(path.name + ".cache")
    dest = Destination(output=path, format=chosen, cache_dir=cache.absolute())
    _refuse_cache_on_output(dest)
    return dest


def _refuse_cache_on_output(dest: Destination) -> None:
    """The tile cache is removed after success: it must not be, hold or sit in the output."""
    cache = Path(os.path.realpath(dest.cache_dir))
    for path in (dest.output, dest.partial):
        real = Path(os.path.realpath(path))
        if cache.is_relative_to(real) or real.is_relative_to(cache):
            raise ConfigError(
                f"--cache-dir {dest.cache_dir} overlaps the output {path}; give the tile cache "
                "a folder of its own beside or away from the output"
            )


def publish(src: Path, dst: Path) -> None:
    """Move a finished ``src`` to ``dst`` atomically, replacing what was there.

    A file replaces a file in one ``rename``. A folder cannot replace a non-empty folder that
    way, so the old one is first renamed to ``dst.old`` and removed after the swap; both old
    folders must carry this tool's marker (:mod:`.ownership`), never a folder of someone else's.
    """
    old = dst.with_name(dst.name + ".old")
    if not dst.is_dir() or dst.is_symlink():
        os.replace(src, dst)
        if ownership.is_ours(old):
            shutil.rmtree(old)  # left by a swap that was killed between its two renames
        return
    fix = "move it away yourself, then rerun"
    ownership.remove_ours(old, "swap folder", fix)
    ownership.check_replaceable(dst, "output", fix)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)
