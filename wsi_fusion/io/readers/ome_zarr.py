"""OME-Zarr (NGFF v0.4 on Zarr v2, v0.5 on Zarr v3) images with a z axis, read through zarr.

Only metadata is parsed on open; level 0 is indexed per region, so a read decodes just the chunks
it touches. Axes come from ``multiscales[0].axes`` (``c,z,y,x``, ``t,c,z,y,x``, ...; any order);
mpp and z positions from the level-0 scale (and translation) transforms when the axis unit is a
length unit. A bioformats2raw layout (image in group ``0``) is followed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import zarr

from wsi_fusion.errors import UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers._base import (
    ArrayLevelsStack,
    axes_permutation,
    check_pixel_type,
    positive_or_none,
    to_um,
)

logger = logging.getLogger(__name__)

#: Files that mark a directory as a Zarr group (v2 / v3).
ZARR_MARKERS = (".zgroup", ".zattrs", "zarr.json")


def is_zarr_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding Zarr group metadata."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ZARR_MARKERS)


def _multiscales(group: zarr.Group) -> tuple[zarr.Group, Mapping[str, Any]] | None:
    """The group holding NGFF multiscales metadata and its first multiscale, if any."""
    for candidate in (group, group.get("0")):
        if not isinstance(candidate, zarr.Group):
            continue
        attrs = dict(candidate.attrs)
        ome = attrs.get("ome")
        ms = ome.get("multiscales") if isinstance(ome, Mapping) else attrs.get("multiscales")
        if isinstance(ms, list) and ms and isinstance(ms[0], Mapping):
            return candidate, ms[0]
    return None


def _axes(ms: Mapping[str, Any], ndim: int, path: str) -> list[tuple[str, str | None]]:
    """(name, unit) per axis; NGFF v0.3 strings or v0.4+ dicts; default ``tczyx`` tail."""
    raw = ms.get("axes")
    if raw is None:  # NGFF <= 0.2: always 5D t,c,z,y,x
        raw = ["t", "c", "z", "y", "x"][-ndim:]
    axes: list[tuple[str, str | None]] = []
    for axis in raw:
        if isinstance(axis, Mapping):
            unit = axis.get("unit")
            axes.append(
                (str(axis.get("name", "")).lower(), unit if isinstance(unit, str) else None)
            )
        else:
            axes.append((str(axis).lower(), None))
    if len(axes) != ndim:
        raise UnsupportedInput(
            f"{path}: multiscales axes {[a for a, _ in axes]} do not match the level-0 array's "
            f"{ndim} dimensions; the OME-Zarr metadata is inconsistent: re-export it."
        )
    return axes


def _scale_translation(transforms: Any, ndim: int) -> tuple[list[float], list[float]]:
    """Combined scale and translation vectors from a list of NGFF coordinate transforms."""
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for t in transforms if isinstance(transforms, list) else []:
        if not isinstance(t, Mapping):
            continue
        values = t.get("scale") if t.get("type") == "scale" else t.get("translation")
        if not isinstance(values, list) or len(values) != ndim:
            continue  # a "path" transform or malformed entry: not used
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            continue
        if t.get("type") == "scale":
            scale = [a * b for a, b in zip(scale, numbers, strict=True)]
            shift = [a * b for a, b in zip(shift, numbers, strict=True)]
        elif t.get("type") == "translation":
            shift = [a + b for a, b in zip(shift, numbers, strict=True)]
    return scale, shift


class OmeZarrStack(ArrayLevelsStack):
    """Focal planes along the ``z`` axis of an OME-Zarr image."""

    form = "ome-zarr"

    def __init__(
        self,
        path: str,
        levels: Sequence[Any],
        axes: Sequence[str],
        *,
        z_positions_um: Sequence[float | None],
        mpp: float | None,
        version: str,
    ) -> None:
        base = levels[0]
        self._axes = list(axes)
        y, x = self._axes.index("y"), self._axes.index("x")
        super().__init__(
            sources=[path],
            z_positions_um=z_positions_um,
            shape=(int(base.shape[y]), int(base.shape[x])),
            mpp=mpp,
            reader="zarr",
            details={
                "axes": "".join(self._axes),
                "array_shape": list(base.shape),
                "ngff_version": version,
                "levels": [list(level.shape) for level in levels],
            },
        )
        self._levels = list(levels)
        self._level_shapes = [(int(a.shape[y]), int(a.shape[x])) for a in levels]
        kept = [a for a in self._axes if a in ("y", "x", "c")]
        self._perm = axes_permutation(kept, "y", "x", "c")

    def _level(self, index: int) -> Any:
        return self._levels[index]

    def _index(self, plane: int, ys: slice, xs: slice) -> tuple[Any, ...]:
        picks = {"z": plane, "y": ys, "x": xs, "c": slice(None)}
        return tuple(picks.get(a, 0) for a in self._axes)

    def _close(self) -> None:
        self._levels.clear()


def _unknown_codec(err: BaseException) -> str | None:
    """The codec an "unknown codec" error of zarr or numcodecs names, else ``None``."""
    seen: BaseException | None = err
    while seen is not None:
        if type(seen).__name__ == "UnknownCodecError":
            quoted = re.search(r"'+([^']+)'+", str(seen))
            return quoted.group(1) if quoted else str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _open_error(name: str, err: BaseException, what: str) -> UnreadableSlide:
    """Why an OME-Zarr cannot be opened: a codec this installation lacks, or a broken store."""
    codec = _unknown_codec(err)
    if codec is not None:
        return UnreadableSlide(
            f"{name}: its arrays are compressed with the codec {codec!r}, which this "
            "installation cannot decode; re-export the OME-Zarr with a standard codec (blosc, "
            "zstd or gzip) or install the package that registers this codec with numcodecs"
        )
    return UnreadableSlide(
        f"{name}: {what} cannot be opened ({err}); the store is incomplete or corrupt: copy or "
        "export it again."
    )


def open_ome_zarr(path: str | os.PathLike[str]) -> OmeZarrStack:
    """Open an OME-Zarr image whose planes lie along its ``z`` axis.

    Parameters
    ----------
    path
        The image group's directory (NGFF v0.4 / Zarr v2 or v0.5 / Zarr v3).

    Returns
    -------
    OmeZarrStack
        One plane per ``z`` index (a single plane when there is no ``z`` axis).

    Raises
    ------
    UnreadableSlide
        When the store cannot be opened or its level-0 array is missing.
    UnsupportedInput
        For a ``t`` axis longer than 1, unknown stacked axes, or non-8-bit pixels.
    """
    name = os.fspath(path)
    try:
        group = zarr.open_group(name, mode="r")
    except Exception as err:
        raise UnreadableSlide(
            f"{name}: cannot open as a Zarr group ({err}); check that it is an OME-Zarr image."
        ) from err
    try:
        found = _multiscales(group)
    except Exception as err:
        raise _open_error(name, err, "its group metadata cannot be read") from err
    if found is None:
        raise UnsupportedInput(
            f"{name}: Zarr group without OME-NGFF 'multiscales' metadata; point at the image "
            "group of an OME-Zarr (the folder whose attributes list 'multiscales')."
        )
    image, ms = found
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise UnsupportedInput(f"{name}: OME-Zarr multiscales lists no datasets (levels).")
    levels: list[zarr.Array[Any]] = []
    for dataset in datasets:
        try:
            level = image[str(dataset["path"])]
        except Exception as err:
            raise _open_error(name, err, "an OME-Zarr level listed in 'multiscales'") from err
        if not isinstance(level, zarr.Array):
            raise UnsupportedInput(f"{name}: OME-Zarr level {dataset['path']!r} is not an array.")
        levels.append(level)
    base = levels[0]
    ndim = len(base.shape)
    axes_units = _axes(ms, ndim, name)
    axes = [a for a, _ in axes_units]
    if "y" not in axes or "x" not in axes:
        raise UnsupportedInput(f"{name}: OME-Zarr axes {axes} lack 'y' and 'x'.")
    sizes = dict(zip(axes, (int(n) for n in base.shape), strict=True))
    if sizes.get("t", 1) > 1:
        raise UnsupportedInput(
            f"{name}: {sizes.get('z', 1)} focal plane(s) (z) and {sizes['t']} time points (t) "
            f"found (axes {axes}, shape {tuple(base.shape)}); only a single time point can be "
            "fused. Export one time point first."
        )
    others = [f"{a}={n}" for a, n in sizes.items() if a not in ("t", "c", "z", "y", "x") and n > 1]
    if others:
        raise UnsupportedInput(
            f"{name}: OME-Zarr axes {axes} stack images along {', '.join(others)}; only z can be "
            "fused. Export a single z-stack first."
        )
    check_pixel_type(base.dtype, sizes.get("c", 1), name)

    scale, shift = _scale_translation(datasets[0].get("coordinateTransformations"), ndim)
    g_scale, g_shift = _scale_translation(ms.get("coordinateTransformations"), ndim)
    # Dataset transforms apply first, then the multiscale-wide ones.
    scale = [a * b for a, b in zip(scale, g_scale, strict=True)]
    shift = [a * b + c for a, b, c in zip(shift, g_scale, g_shift, strict=True)]
    units = dict(axes_units)
    xi = axes.index("x")
    mpp = positive_or_none(to_um(scale[xi], units["x"])) if units.get("x") else None
    n_z = sizes.get("z", 1)
    z: list[float | None] = [None] * n_z
    if "z" in axes and units.get("z"):
        zi = axes.index("z")
        step, origin = to_um(scale[zi], units["z"]), to_um(shift[zi], units["z"])
        if step is not None and origin is not None:
            z = [origin + i * step for i in range(n_z)]
    ome = dict(image.attrs).get("ome")
    version = str((ome.get("version") if isinstance(ome, Mapping) else None) or ms.get("version"))
    stack = OmeZarrStack(name, levels, axes, z_positions_um=z, mpp=mpp, version=version)
    try:
        stack.probe()
    except BaseException:
        stack.close()
        raise
    return stack
