"""The decoded-tile cache of tiled TIFF reads: same pixels, fewer decodes, bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_fusion._types import Box
from wsi_fusion.io.readers import open_stack
from wsi_fusion.io.readers._decoded_cache import DecodedTileCache


def _tiled_stack(path: Path) -> np.ndarray:
    planes = np.random.default_rng(0).integers(0, 256, (3, 640, 768, 3), dtype=np.uint8)
    tifffile.imwrite(
        path, planes, photometric="rgb", tile=(128, 128), compression="zlib",
        metadata={"axes": "ZYXS"},
    )  # fmt: skip
    return planes


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the values the wrapped tifffile store decodes (cache misses)."""
    counts = {"decoded": 0}
    real_init = DecodedTileCache.__init__

    def init(self, store, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_get = store.get

        async def get(key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
            counts["decoded"] += 1
            return await real_get(key, prototype, byte_range)

        store.get = get
        real_init(self, store, *args, **kwargs)

    monkeypatch.setattr(DecodedTileCache, "__init__", init)
    return counts


def test_neighbouring_reads_reuse_decoded_tiles_and_give_the_same_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planes = _tiled_stack(tmp_path / "stack.ome.tif")
    counts = _count_decodes(monkeypatch)
    left, right = Box(100, 60, 300, 300), Box(100, 220, 300, 300)  # share 140 px of columns
    with open_stack([tmp_path / "stack.ome.tif"]) as stack:
        for plane in range(3):
            assert np.array_equal(stack.read(plane, left), planes[plane, 100:400, 60:360])
        first = counts["decoded"]
        for plane in range(3):
            assert np.array_equal(stack.read(plane, right), planes[plane, 100:400, 220:520])
    # 4 rows x 3 columns of 128-px tiles per plane for the left box; the right one shares two of
    # its four columns (tiles 1-2), so only 2 new columns per row are decoded.
    assert first >= 3 * 4 * 3
    assert counts["decoded"] - first == 3 * 4 * 2


def test_the_cache_keeps_at_most_its_size(tmp_path: Path) -> None:
    _tiled_stack(tmp_path / "stack.ome.tif")
    with open_stack([tmp_path / "stack.ome.tif"]) as stack:
        level = stack._region_level0()
        cache = level.store
        assert isinstance(cache, DecodedTileCache)
        # Sized for one 1280-px read per plane: (1280 / 128 + 1)² tiles of 128² x 3 bytes each.
        assert cache.max_bytes == 11 * 11 * 3 * 128 * 128 * 3
        cache.max_bytes = 5 * 128 * 128 * 3
        for plane in range(3):
            stack.read(plane, Box(0, 0, 640, 768))
        assert sum(len(v) for v in cache._values.values()) <= cache.max_bytes
