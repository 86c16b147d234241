"""Which slides a batch converts: from a folder (planes grouped by a filename pattern) or a CSV.

A folder holds either per-plane files named by a pattern (default ``{slide}_z{plane}.{ext}``:
``A_z0.svs, A_z1.svs, B_z0.svs ...``) or multi-plane files/stores, one per slide (an OME-TIFF with
Z, an NDPI z-stack, an OME-Zarr with a z axis, a DICOM folder). A CSV manifest lists the slides
explicitly: columns ``slide`` and ``planes`` (plane files separated by ``;``, relative to the
CSV's folder), optional ``output`` (file name inside OUTDIR) and ``fuser``.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from wsi_fusion.errors import ConfigError, SlideNotFound

DEFAULT_PATTERN = "{slide}_z{plane}.{ext}"

#: File endings taken as slides when a folder entry does not match the plane pattern.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".scn",
    ".mrxs",
    ".vms",
    ".bif",
    ".svslide",
    ".dcm",
    ".zarr",
    ".png",
    ".jpg",
    ".jpeg",
)
#: Names a batch (or a fuse run) writes next to its outputs; never inputs.
_OUTPUT_MARKERS = (".partial", ".cache", ".run.json", ".old", ".log", ".lock")

_PLACEHOLDERS = {
    "slide": r"(?P<slide>.+?)",
    "plane": r"(?P<plane>[^/]+?)",
    "ext": r"(?P<ext>[^/]+)",
}


@dataclass(frozen=True)
class SlideSpec:
    """One slide of a batch: its id, its input files (in focal order) and per-slide choices."""

    slide_id: str
    inputs: tuple[str, ...]
    #: Output file name inside OUTDIR (``None``: ``<slide_id>`` + the format's suffix).
    output_name: str | None = None
    #: Fuser for this slide only (``None``: the run config's).
    fuser: str | None = None


def collect_slides(
    source: str | os.PathLike[str],
    *,
    pattern: str = DEFAULT_PATTERN,
    exclude: tuple[Path, ...] = (),
) -> list[SlideSpec]:
    """The slides of a batch: a ``.csv`` manifest, or the entries of a folder.

    Parameters
    ----------
    source
        A CSV manifest or a folder.
    pattern
        How per-plane file names are built, with ``{slide}``, ``{plane}`` and optionally
        ``{ext}``; files of one ``{slide}`` form one slide, ordered by ``{plane}``.
    exclude
        Paths never taken as inputs (the batch's output folder when it lies inside ``source``).
    """
    path = Path(source)
    if not path.exists():
        raise SlideNotFound(f"batch input {path} does not exist; give a folder or a CSV manifest")
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_manifest(path)
    if path.is_dir() and not _is_store(path):
        return discover_folder(path, pattern=pattern, exclude=exclude)
    raise ConfigError(
        f"batch input {path} is neither a folder of slides nor a .csv manifest; to convert one "
        "slide use `wsi-fusion fuse`"
    )


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a filename pattern with ``{slide}``, ``{plane}`` and ``{ext}`` placeholders."""
    names = re.findall(r"{(\w*)}", pattern)
    unknown = sorted(set(names) - set(_PLACEHOLDERS))
    if unknown or "slide" not in names or "plane" not in names:
        raise ConfigError(
            f"file pattern {pattern!r} must contain {{slide}} and {{plane}} (and may contain "
            f"{{ext}}){'; unknown: ' + ', '.join(unknown) if unknown else ''}"
        )
    if len(names) != len(set(names)):
        raise ConfigError(f"file pattern {pattern!r} repeats a placeholder")
    parts = re.split(r"({\w+})", pattern)
    body = "".join(_PLACEHOLDERS[p[1:-1]] if p in _WRAPPED else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


_WRAPPED = {f"{{{name}}}" for name in _PLACEHOLDERS}


def discover_folder(
    folder: Path, *, pattern: str = DEFAULT_PATTERN, exclude: tuple[Path, ...] = ()
) -> list[SlideSpec]:
    """Group the entries of ``folder`` into slides (see the module docstring)."""
    regex = pattern_regex(pattern)
    excluded = {p.absolute() for p in exclude}
    groups: dict[str, list[tuple[str, Path]]] = {}
    singles: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.absolute() in excluded:
            continue
        if any(marker in entry.name for marker in _OUTPUT_MARKERS):
            continue
        if entry.is_dir() and not _is_store(entry):
            continue
        match = regex.match(entry.name)
        if match is not None:
            groups.setdefault(match["slide"], []).append((match["plane"], entry))
        elif entry.is_dir() or entry.name.lower().endswith(SLIDE_SUFFIXES):
            singles.append(entry)
    slides = [
        SlideSpec(slide, tuple(str(p) for _, p in sorted(planes, key=lambda t: _natural(t[0]))))
        for slide, planes in groups.items()
    ]
    slides += [SlideSpec(_slide_name(p), (str(p),)) for p in singles]
    if not slides:
        raise SlideNotFound(
            f"no slides found in {folder}: no entry matches the pattern {pattern!r} and none is "
            f"a slide file ({', '.join(SLIDE_SUFFIXES)}); pass --pattern or a CSV manifest"
        )
    _check_unique([s.slide_id for s in slides], f"folder {folder}")
    return sorted(slides, key=lambda s: _natural(s.slide_id))


def read_manifest(path: Path) -> list[SlideSpec]:
    """Read a CSV manifest (columns ``slide``, ``planes``, optional ``output`` and ``fuser``)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("slide", "planes") if c not in columns]
        if missing:
            raise ConfigError(
                f"manifest {path} lacks the column(s) {', '.join(missing)}; the header must be "
                "slide,planes[,output][,fuser] (planes separated by ';')"
            )
        unknown = sorted(set(columns) - {"slide", "planes", "output", "fuser"})
        if unknown:
            raise ConfigError(
                f"manifest {path} has unknown column(s) {', '.join(unknown)}; allowed: slide, "
                "planes, output, fuser"
            )
        slides = []
        for row_number, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            planes = [p.strip() for p in row["planes"].split(";") if p.strip()]
            if not row["slide"] or not planes:
                raise ConfigError(
                    f"manifest {path}, row {row_number}: needs a slide id and at least one plane "
                    "file"
                )
            slides.append(
                SlideSpec(
                    row["slide"],
                    tuple(str(_relative_to(path.parent, p)) for p in planes),
                    output_name=row.get("output") or None,
                    fuser=row.get("fuser") or None,
                )
            )
    if not slides:
        raise ConfigError(f"manifest {path} lists no slides")
    _check_unique([s.slide_id for s in slides], f"manifest {path}")
    return slides


def _relative_to(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _is_store(path: Path) -> bool:
    """A folder that is one slide: an OME-Zarr store or a DICOM WSI folder."""
    from wsi_fusion.io.readers.ome_zarr import is_zarr_dir

    if not path.is_dir():
        return False
    return is_zarr_dir(path) or any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def _slide_name(path: Path) -> str:
    """Slide id of a multi-plane file: its name without the (possibly double) suffix."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix else name


def _natural(text: str) -> tuple[tuple[int, object], ...]:
    """Sort key that orders ``z2`` before ``z10`` and ``-1`` before ``0``."""
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
        return ((0, float(text)),)
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text) if t)


def _check_unique(ids: list[str], where: str) -> None:
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ConfigError(f"{where} names slide(s) {', '.join(duplicates)} more than once")
