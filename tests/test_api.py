"""The public Python API: lazy re-exports, ``fuse_array`` layouts and errors, ``fuse``, README."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import wsi_fusion
from wsi_fusion import api
from wsi_fusion.errors import ConfigError, UnknownFuser, UnsupportedInput

README = Path(__file__).resolve().parents[1] / "README.md"


def _stack(z: int = 3, h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (z, h, w, 3), dtype=np.uint8)


def test_import_is_light_and_every_public_name_resolves() -> None:
    code = (
        "import sys, wsi_fusion; heavy = [m for m in ('numpy', 'dask', 'torch', 'zarr') "
        "if m in sys.modules]; print(heavy); "
        "[getattr(wsi_fusion, n) for n in wsi_fusion.__all__]; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "False"  # resolving the API (registry included) does not import torch


def test_public_names() -> None:
    from wsi_fusion.pipeline import fuse_slide

    assert wsi_fusion.fuse_slide is fuse_slide
    assert issubclass(wsi_fusion.UnsupportedInput, wsi_fusion.WsiFusionError)
    assert "focus_measure" in wsi_fusion.list_fusers()
    assert set(wsi_fusion.__all__) <= set(dir(wsi_fusion))
    with pytest.raises(AttributeError):
        wsi_fusion.no_such_name  # noqa: B018


def test_uint8_zhwc_matches_the_fuser_on_the_tile_convention() -> None:
    planes = _stack()
    fused = wsi_fusion.fuse_array(planes, "laplacian_pyramid")
    direct = wsi_fusion.create_fuser("laplacian_pyramid").fuse(
        planes.transpose(0, 3, 1, 2).astype(np.float32) / 255
    )
    assert fused.shape == (64, 80, 3) and fused.dtype == np.uint8
    expected = np.clip(np.rint(direct.fused.transpose(1, 2, 0) * 255), 0, 255)
    np.testing.assert_array_equal(fused, expected.astype(np.uint8))


def test_float_zchw_in_float_chw_out_and_float_zhwc_by_layout() -> None:
    floats = _stack().transpose(0, 3, 1, 2) / 255.0
    out = wsi_fusion.fuse_array(floats)
    assert out.shape == (3, 64, 80) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    hwc = wsi_fusion.fuse_array(floats.transpose(0, 2, 3, 1), layout="zhwc")
    np.testing.assert_array_equal(hwc, out.transpose(1, 2, 0))


def test_plane_fuser_returns_the_chosen_plane_bit_for_bit() -> None:
    planes = _stack()
    out = wsi_fusion.fuse_array(planes, "plane", index=1)
    np.testing.assert_array_equal(out, planes[1])


def test_greyscale_keeps_one_channel() -> None:
    planes = _stack()[..., :1]
    out = wsi_fusion.fuse_array(planes, "plane", index=2)
    assert out.shape == (64, 80, 1)
    np.testing.assert_array_equal(out, planes[2])


def _half_sharp_stack(h: int = 150, w: int = 170) -> np.ndarray:
    """Three planes of a photo: left half sharp in plane 0, right half in plane 1, all blurred."""
    from skimage import data, filters

    sharp = data.astronaut()[:h, :w]
    blur = (filters.gaussian(sharp, 3, channel_axis=-1) * 255).round().astype(np.uint8)
    left, right = sharp.copy(), blur.copy()
    left[:, w // 2 :], right[:, w // 2 :] = blur[:, w // 2 :], sharp[:, w // 2 :]
    return np.stack([left, right, blur])


def test_tiled_equals_whole_for_a_margin_bounded_fuser() -> None:
    # Full-resolution depth surface: nothing depends on where a tile starts.
    fuser = wsi_fusion.create_fuser("focus_measure", pool_step=1)
    tile, overlap = 2 * fuser.margin + 48, 2 * fuser.margin
    planes = _half_sharp_stack(2 * tile + 30, 3 * tile - 20)
    whole = wsi_fusion.fuse_array(planes, fuser)
    tiled = wsi_fusion.fuse_array(planes, fuser, tile=tile, overlap=overlap)
    np.testing.assert_array_equal(tiled, whole)
    crop = planes[:, : tile - 10, :tile]  # no larger than one tile: one call
    np.testing.assert_array_equal(
        wsi_fusion.fuse_array(crop, fuser, tile=tile, overlap=overlap),
        wsi_fusion.fuse_array(crop, fuser),
    )


def test_default_fuser_tiled_differs_from_whole_only_where_planes_tie() -> None:
    """The default depth surface lies on a 4-px grid from each tile's corner (last tiles are not
    on the whole image's grid): tiled and whole fusion may pick different, tied planes there."""
    margin = wsi_fusion.create_fuser("focus_measure").margin
    tile, overlap = 2 * margin + 48, 2 * margin
    planes = _half_sharp_stack(2 * tile + 30, 3 * tile - 20)
    whole = wsi_fusion.fuse_array(planes).astype(int)
    tiled = wsi_fusion.fuse_array(planes, tile=tile, overlap=overlap).astype(int)
    differs = np.abs(tiled - whole).max(axis=-1)
    # Measured: 0.4 % of pixels differ, 0.01 % by more than 1 grey level, at most by 10: where
    # a tied boundary moves, the low band (fusers._low_band) shifts along with it over ~15 px.
    assert (differs > 0).mean() < 1e-2
    assert (differs > 1).mean() < 1e-3
    assert (differs > 2).mean() < 2e-4


def test_dask_array_in_lazy_dask_array_out_equal_to_whole_image() -> None:
    da = pytest.importorskip("dask.array")
    planes = _half_sharp_stack(300, 530)
    whole = wsi_fusion.fuse_array(planes)
    lazy = wsi_fusion.fuse_array(da.from_array(planes, chunks=(1, 128, 200, 3)))
    assert isinstance(lazy, da.Array) and lazy.shape == whole.shape and lazy.dtype == np.uint8
    assert len(lazy.chunks[0]) > 1  # fused chunk by chunk, not as one block
    np.testing.assert_array_equal(lazy.compute(), whole)  # the margin halo makes it exact
    floats = planes.transpose(0, 3, 1, 2) / 255.0
    lazy = wsi_fusion.fuse_array(da.from_array(floats, chunks=(5, 3, 100, 100)))
    assert lazy.shape == (3, *planes.shape[1:3]) and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), wsi_fusion.fuse_array(floats))
    grey = wsi_fusion.fuse_array(da.from_array(planes[..., :1], chunks=(3, 100, 100, 1)), "plane")
    np.testing.assert_array_equal(grey.compute(), planes[1, ..., :1])
    with pytest.raises(UnsupportedInput, match="at least 2 planes"):
        wsi_fusion.fuse_array(da.from_array(planes[:1]))


@pytest.mark.parametrize("pool_step", [8, 3])
def test_dask_chunks_off_the_cell_grid_still_give_the_whole_image(pool_step: int) -> None:
    da = pytest.importorskip("dask.array")
    from wsi_fusion.fusers import create_fuser

    planes = _half_sharp_stack(300, 330)
    fuser = create_fuser("focus_measure", pool_step=pool_step)
    lazy = wsi_fusion.fuse_array(da.from_array(planes, chunks=(1, 100, 110, 3)), fuser)
    assert len(lazy.chunks[0]) > 1 and all(c % pool_step == 0 for c in lazy.chunks[0][:-1])
    np.testing.assert_array_equal(lazy.compute(), wsi_fusion.fuse_array(planes, fuser))


def test_fuser_instance_and_params() -> None:
    fuser = wsi_fusion.create_fuser("plane", index=0)
    np.testing.assert_array_equal(wsi_fusion.fuse_array(_stack(), fuser), _stack()[0])
    with pytest.raises(ConfigError):
        wsi_fusion.fuse_array(_stack(), fuser, index=1)
    with pytest.raises(UnknownFuser):
        wsi_fusion.fuse_array(_stack(), "no_such_fuser")


@pytest.mark.parametrize(
    ("stack", "match"),
    [
        (np.zeros((3, 64, 64), np.uint8), "4-D"),
        (np.zeros((3, 64, 64, 3), np.uint16), "uint16"),
        (np.full((3, 3, 64, 64), 2.0), "scale them"),
        (np.zeros((3, 64, 64, 3), np.float32), "layout='zhwc'"),
        (np.zeros((3, 64, 64, 4), np.uint8), "4 channels"),
        (np.zeros((1, 64, 64, 3), np.uint8), "at least 2 planes"),
    ],
)
def test_bad_stacks_are_refused(stack: np.ndarray, match: str) -> None:
    with pytest.raises(UnsupportedInput, match=match):
        wsi_fusion.fuse_array(stack)


def test_fuse_writes_a_slide_with_options_and_a_shipped_config(tmp_path: Path) -> None:
    paths = []
    for k, plane in enumerate(_half_sharp_stack()):
        paths.append(tmp_path / f"p_z{k}.tif")
        tifffile.imwrite(paths[-1], plane, photometric="rgb", tile=(128, 128))
    report = wsi_fusion.fuse(
        paths, tmp_path / "out.ome.tif", config="lossless-focus-map", scheduler="sync"
    )
    assert isinstance(report, wsi_fusion.RunReport)
    assert report.output == tmp_path / "out.ome.tif" and report.output.is_file()
    (focus,) = report.extra_outputs  # the focus map, asked for by the shipped config
    assert focus.is_file() and focus.name.endswith(".focus.tif")
    with pytest.raises(ConfigError, match="no_such_option"):
        wsi_fusion.fuse(paths, tmp_path / "x.ome.zarr", no_such_option=1)


def test_open_stack_reads_a_box(tmp_path: Path) -> None:
    planes = _stack()
    paths = []
    for k, plane in enumerate(planes):
        paths.append(tmp_path / f"p_z{k}.tif")
        tifffile.imwrite(paths[-1], plane, photometric="rgb")
    stack = wsi_fusion.open_stack(paths)
    try:
        assert stack.n_planes == 3 and stack.shape == (64, 80)
        np.testing.assert_array_equal(
            stack.read(1, wsi_fusion.Box(8, 16, 20, 30)), planes[1, 8:28, 16:46]
        )
    finally:
        stack.close()


def test_readme_python_api_example_runs() -> None:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    test = doctest.DocTestParser().get_doctest(section, {}, "README Python API", str(README), 0)
    assert len(test.examples) >= 5
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_api_docstring_examples() -> None:
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


def test_api_page_lists_every_public_name_with_its_signature() -> None:
    """docs/API.md is generated (``make api-docs``); signatures there match the code."""
    from wsi_fusion import _apidoc

    page = (README.parent / "docs" / "API.md").read_text()
    fresh = _apidoc.render()  # raises if a public name has no place on the page
    for name in wsi_fusion.__all__:
        if name != "__version__":
            assert f"`{name}" in page, f"{name} missing from docs/API.md: run make api-docs"
    signatures = [line for line in fresh.splitlines() if re.match(r"^\w+\(", line)]
    assert signatures
    for line in signatures:
        assert line in page, f"docs/API.md is stale ({line[:60]}…): run make api-docs"
