"""On-disk tile cache: fused tiles, their plane weights and extras, with per-tile done markers.

Phase 1 tasks write each fused tile into its own zarr chunk and then drop an empty marker file;
no locks are needed because no two tasks share a chunk. A rerun lists the markers and skips the
finished tiles, so a killed run resumes where it stopped. The cache is tied to a fingerprint of
the inputs and the configuration: a cache made for anything else is discarded, never reused.

The cache folder carries this tool's marker (:mod:`wsi_fusion.io.ownership`): a folder without
it is never emptied or removed, so ``--cache-dir`` pointed at a folder holding slides is refused
instead of wiping it. A folder that was empty when the cache took it is emptied, not removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import zarr

from wsi_fusion.errors import ForeignPath
from wsi_fusion.io import ownership

logger = logging.getLogger(__name__)

_FINGERPRINT = "fingerprint.json"


class TileCache:
    """Fused tiles ``(n, C, T, T)`` uint8, weights ``(n, Z, T, T)`` uint8 and each requested
    extra output ``(n, 1, T, T)`` uint8 (array ``extra_<name>``) under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._group: zarr.Group | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def prepare(
        cls,
        root: Path,
        fingerprint: dict[str, object],
        n_tiles: int,
        channels: int,
        planes: int,
        tile: int,
        with_weights: bool,
        extras: Sequence[str] = (),
    ) -> TileCache:
        """Open the cache at ``root`` if it matches ``fingerprint``, else start a fresh one."""
        root = Path(root)
        stamp = root / _FINGERPRINT
        wanted = json.dumps(fingerprint, sort_keys=True, default=str)
        record = ownership.marker(root) if root.is_dir() else None
        if record is not None:
            if stamp.exists() and stamp.read_text() == wanted:
                logger.info("resuming from tile cache %s", root)
                return cls(root)
            logger.warning(
                "tile cache %s was made for other inputs or settings; starting over", root
            )
            _empty(root)
            ownership.mark(root, "tile cache", created_folder=record.get("created_folder", True))
        elif ownership.is_empty_folder(root):
            ownership.mark(root, "tile cache", created_folder=False)
        elif os.path.lexists(root):
            raise ForeignPath(
                f"tile cache folder {root} exists, is not empty and was not made by wsi_fusion "
                f"(no {ownership.MARKER_NAME} marker), so it is left alone; pass --cache-dir "
                "with a new or empty folder"
            )
        else:
            root.mkdir(parents=True)
            ownership.mark(root, "tile cache")
        group = zarr.open_group(root / "tiles.zarr", mode="w")
        chunks = (1, channels, tile, tile)
        group.create_array(
            "fused", shape=(n_tiles, channels, tile, tile), chunks=chunks, dtype="u1"
        )
        if with_weights:
            group.create_array(
                "weights",
                shape=(n_tiles, planes, tile, tile),
                chunks=(1, planes, tile, tile),
                dtype="u1",
            )
        for name in extras:
            # (n, 1, T, T): one channel, so blend_block reads an extra like a one-plane tile.
            group.create_array(
                _extra_array(name),
                shape=(n_tiles, 1, tile, tile),
                chunks=(1, 1, tile, tile),
                dtype="u1",
            )
        for name in ("tiles_done", "blocks_done"):
            (root / name).mkdir()
        # The stamp goes last: a cache without it is incomplete and is rebuilt.
        stamp.write_text(wanted)
        return cls(root)

    def _array(self, name: str) -> zarr.Array:
        if self._group is None:
            self._group = zarr.open_group(self.root / "tiles.zarr", mode="r+")
        array = self._group[name]
        assert isinstance(array, zarr.Array)  # internal layout, written by prepare()
        return array

    # -- tiles ---------------------------------------------------------------------------------
    def done_tiles(self) -> set[int]:
        return {int(name) for name in os.listdir(self.root / "tiles_done")}

    def write_tile(
        self,
        index: int,
        fused: npt.NDArray[np.uint8],
        weights: npt.NDArray[np.uint8] | None,
        extras: Mapping[str, npt.NDArray[np.uint8]] | None = None,
    ) -> None:
        """Store tile ``index`` (extras as ``(T, T)`` uint8), then mark it done."""
        if weights is not None:
            self._array("weights")[index] = weights
        for name, values in (extras or {}).items():
            self._array(_extra_array(name))[index] = values[None]
        self._array("fused")[index] = fused
        # The marker is created only after the data is on disk.
        (self.root / "tiles_done" / str(index)).touch()

    def read_fused(self, index: int) -> npt.NDArray[np.uint8]:
        return np.asarray(self._array("fused")[index])

    def read_weights(self, index: int) -> npt.NDArray[np.uint8]:
        return np.asarray(self._array("weights")[index])

    def read_extra(self, name: str, index: int) -> npt.NDArray[np.uint8]:
        """Extra output ``name`` of tile ``index``, ``(1, T, T)`` uint8."""
        return np.asarray(self._array(_extra_array(name))[index])

    # -- output blocks -------------------------------------------------------------------------
    def done_blocks(self) -> set[int]:
        return {int(name) for name in os.listdir(self.root / "blocks_done")}

    def mark_block(self, index: int) -> None:
        (self.root / "blocks_done" / str(index)).touch()

    def forget_blocks(self) -> None:
        """Drop block markers (the partial output they refer to is gone)."""
        for name in os.listdir(self.root / "blocks_done"):
            (self.root / "blocks_done" / name).unlink()

    def remove(self) -> None:
        """Delete the cache: the folder if this tool made it, else only what it put inside."""
        record = ownership.marker(self.root)
        if record is None:
            return  # not (or no longer) ours: leave it
        if record.get("created_folder", True):
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            _empty(self.root)


def _empty(root: Path) -> None:
    """Remove everything inside ``root``, the marker too (callers check it is ours first)."""
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _extra_array(name: str) -> str:
    return f"extra_{name}"


def quantize(values: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Float [0, 1] to uint8 with rounding (exact for values that came from uint8)."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
