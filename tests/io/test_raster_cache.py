"""Raster planes are decoded once per process and shared, without sharing what readers return."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_fusion._types import Box
from wsi_fusion.errors import UnreadableSlide
from wsi_fusion.io.readers import layers
from wsi_fusion.io.readers.layers import open_layers


def make_planes(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) random uint8 planes."""
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _write_pngs(tmp_path: Path, planes: np.ndarray) -> list[Path]:
    paths = []
    for z, plane in enumerate(planes):
        path = tmp_path / f"plane_{z}.png"
        Image.fromarray(plane).save(path)
        paths.append(path)
    return paths


def test_reopened_stack_shares_decoded_planes_but_returns_private_copies(tmp_path: Path) -> None:
    planes = make_planes(n=2, h=40, w=30)
    paths = _write_pngs(tmp_path, planes)
    first = open_layers(paths)
    second = open_layers(paths)
    # One decode per file: both stacks hold the same read-only pixels.
    assert first._planes[0]._pixels is second._planes[0]._pixels  # type: ignore[attr-defined]
    assert not first._planes[0]._pixels.flags.writeable  # type: ignore[attr-defined]
    box = Box(3, 4, 20, 10)
    region = first.read(1, box)
    assert np.array_equal(region, planes[1][3:23, 4:14])
    region[:] = 0  # a caller may write into what it read ...
    assert np.array_equal(second.read(1, box), planes[1][3:23, 4:14])  # ... without harm
    assert np.array_equal(first.thumbnail(0, 1000), planes[0])
    first.close()
    assert np.array_equal(second.read(0, box), planes[0][3:23, 4:14])
    second.close()


def test_a_rewritten_file_is_decoded_again(tmp_path: Path) -> None:
    planes = make_planes(n=1, h=20, w=20, seed=1)
    (path,) = _write_pngs(tmp_path, planes)
    open_layers([path]).close()
    other = make_planes(n=1, h=20, w=24, seed=2)
    Image.fromarray(other[0]).save(path)
    stack = open_layers([path])
    assert np.array_equal(stack.read(0, Box(0, 0, 20, 24)), other[0])
    stack.close()


def test_recent_planes_are_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(layers, "_RECENT_BYTES", 1)
    paths = _write_pngs(tmp_path, make_planes(n=3, h=10, w=10, seed=3))
    open_layers(paths).close()
    # Only the newest entry survives a bound smaller than one plane.
    assert sum(1 for key in layers._RECENT if key[0].startswith(str(tmp_path.resolve()))) == 1


def test_png_planes_decode_as_pillow_does_in_every_mode(tmp_path: Path) -> None:
    """8-bit PNGs go through imagecodecs, the rest through Pillow: the pixels are the same."""
    rgb = make_planes(n=1, h=24, w=18)[0]
    images = {
        "rgb": Image.fromarray(rgb),
        "rgba": Image.fromarray(rgb).convert("RGBA"),
        "grey": Image.fromarray(rgb).convert("L"),
        "grey_alpha": Image.fromarray(rgb).convert("LA"),
        "palette": Image.fromarray(rgb).convert("P"),
    }
    for name, image in images.items():
        path = tmp_path / f"{name}.png"
        image.save(path)
        expected = np.asarray(image.convert("RGBA") if image.mode == "P" else image)
        expected = expected if expected.ndim == 3 else expected[:, :, None]
        assert np.array_equal(layers._decode(str(path)), expected), name


def test_planes_opened_in_parallel_report_the_first_bad_plane(tmp_path: Path) -> None:
    paths = _write_pngs(tmp_path, make_planes(n=3, h=16, w=16))
    paths[1].write_bytes(paths[1].read_bytes()[:60])  # truncated
    paths[2].write_bytes(b"not an image")
    with pytest.raises(UnreadableSlide, match=re.escape(str(paths[1]))):
        open_layers(paths)
