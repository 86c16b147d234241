"""Thumbnails of planes without a pyramid are read tile by tile in bounded memory, and equal the
area mean of the full plane."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_fusion._types import Box
from wsi_fusion.io.readers import open_stack
from wsi_fusion.io.readers._thumbnail import READ_TILE, tiled_thumbnail

SIDE = 4096  # 4096² RGB = 50 MB decoded; the tiles compress to almost nothing
TILE = 512


def _tile(seed: int, y: int, x: int) -> np.ndarray:
    """A tile with structure (a gradient and a checker) so the thumbnail is not flat."""
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    value = ((yy + y) // 64 + (xx + x) // 64 + seed) % 2 * 120 + (x * 255 // SIDE) // 2
    return np.repeat(value.astype(np.uint8)[:, :, None], 3, axis=2)


def _tiles(seed: int, planes: int = 1) -> Iterator[np.ndarray]:
    for z in range(planes):
        for y in range(0, SIDE, TILE):
            for x in range(0, SIDE, TILE):
                yield _tile(seed + z, y, x)


def _peak_bytes(run) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


def test_single_plane_tiff_without_pyramid(tmp_path: Path) -> None:
    """Read through OpenSlide, whose own thumbnail would decode the whole plane at once."""
    path = tmp_path / "flat.tif"
    tifffile.imwrite(
        path, _tiles(0), shape=(SIDE, SIDE, 3), dtype=np.uint8, photometric="rgb",
        tile=(TILE, TILE), compression="zlib",
    )  # fmt: skip
    with open_stack([path]) as stack:
        assert stack.reader == "openslide"
        peak, thumb = _peak_bytes(lambda: stack.thumbnail(0, 256))
    full = SIDE * SIDE * 3
    assert thumb.shape == (256, 256, 3)
    assert peak < full / 10, f"peak {peak / 1e6:.1f} MB for a {full / 1e6:.0f} MB plane"
    assert thumb.std() > 10  # the checker survived: real content, not a blank


def test_multi_plane_ome_tiff_without_pyramid(tmp_path: Path) -> None:
    path = tmp_path / "flat.ome.tif"
    tifffile.imwrite(
        path, _tiles(0, planes=2), shape=(2, SIDE, SIDE, 3), dtype=np.uint8, photometric="rgb",
        tile=(TILE, TILE), compression="zlib", metadata={"axes": "ZYXS"}, ome=True,
    )  # fmt: skip
    with open_stack([path]) as stack:
        assert stack.n_planes == 2
        peak, thumb = _peak_bytes(lambda: stack.thumbnail(1, 256))
    assert thumb.shape == (256, 256, 3)
    # Strided zarr reads decode one tile chunk at a time per concurrent task (zarr runs about
    # ten at once): the bound is ~10 chunks of 0.8 MB, whatever the plane's size.
    assert peak < min(SIDE * SIDE * 3 / 4, 16e6), f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize(("shape", "target"), [((1000, 700), (100, 70)), ((517, 333), (40, 25))])
def test_tiled_thumbnail_is_the_area_mean(shape: tuple[int, int], target: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    reads: list[Box] = []

    def read(box: Box) -> np.ndarray:
        reads.append(box)
        return image[box.y : box.y + box.h, box.x : box.x + box.w]

    thumb = tiled_thumbnail(read, shape, target)
    f = min(shape[0] // target[0], shape[1] // target[1])
    h, w = shape
    expected = np.empty((-(-h // f), -(-w // f), 3))
    for i in range(expected.shape[0]):
        for j in range(expected.shape[1]):
            expected[i, j] = image[i * f : (i + 1) * f, j * f : (j + 1) * f].mean(axis=(0, 1))
    assert np.abs(thumb.astype(float) - expected).max() <= 0.5 + 1e-9
    assert all(b.h * b.w <= READ_TILE * READ_TILE for b in reads)


def test_dicom_plane_without_a_small_level_is_read_tile_by_tile(
    tmp_path: Path, writers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DICOM focal plane that only level 0 holds: its thumbnail is the area mean, read in
    tiles (forced here on a small slide), not the whole level in one read."""
    from wsi_fusion.io.readers import dicom

    planes = writers.make_planes(2, seed=3)
    path = writers.dicom(tmp_path / "slide.dcm", planes)
    monkeypatch.setattr(dicom, "direct_read_is_bounded", lambda level, target: False)
    reads: list[tuple[int, int]] = []
    with open_stack([path]) as stack:
        original = stack._slide.read_region

        def read_region(location, level, size, **kwargs):
            reads.append(size)
            return original(location, level, size, **kwargs)

        monkeypatch.setattr(stack._slide, "read_region", read_region)
        h, w = stack.shape
        thumb = stack._thumbnail(1, (h // 4, w // 4))
    plane = planes[1].astype(float)
    expected = plane.reshape(h // 4, 4, w // 4, 4, 3).mean(axis=(1, 3))
    assert thumb.shape == expected.shape
    assert np.abs(thumb - expected).max() <= 0.5 + 1e-9
    assert reads and all(bw * bh <= READ_TILE * READ_TILE for bw, bh in reads)
