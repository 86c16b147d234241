"""Multi-file OME-TIFF: files named by the OME-XML are read only when they sit beside the main
file; they are then recorded in run.json and in the run digest; anything else is refused."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import run_cli

from wsi_fusion.config import RunConfig
from wsi_fusion.errors import UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers import open_stack
from wsi_fusion.io.readers.ome_files import referenced_files
from wsi_fusion.pipeline import run_digest

H, W = 160, 200
FAST = ("--fuser", "plane", "--tile", "128", "--overlap", "64", "--register", "off", "-q")


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def multi_file_ome_tiff(main: Path, others: list[tuple[str, Path | None]]) -> Path:
    """Write ``main`` with plane 0 and an OME-XML whose plane z (1, 2, ...) lives in the file
    named ``others[z - 1][0]``; each such file is written at ``others[z - 1][1]`` (if given)."""
    ids = [uuid.uuid4().urn for _ in range(len(others) + 1)]
    data = [(main.name, ids[0])] + [(name, ids[z]) for z, (name, _) in enumerate(others, 1)]
    tiffdata = "".join(
        f'<TiffData FirstZ="{z}" IFD="0" PlaneCount="1"><UUID FileName="{name}">{urn}</UUID>'
        "</TiffData>"
        for z, (name, urn) in enumerate(data)
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{ids[0]}">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" '
        f'SizeX="{W}" SizeY="{H}" SizeC="3" SizeZ="{len(data)}" SizeT="1" Interleaved="true" '
        'PhysicalSizeX="0.5" PhysicalSizeY="0.5"><Channel ID="Channel:0:0" SamplesPerPixel="3"/>'
        f"{tiffdata}</Pixels></Image></OME>"
    )
    tifffile.imwrite(
        main, _pixels(0), photometric="rgb", tile=(128, 128), description=xml, metadata=None
    )
    for z, (_, path) in enumerate(others, 1):
        if path is not None:
            tifffile.imwrite(path, _pixels(z), photometric="rgb", tile=(128, 128))
    return main


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "scan").mkdir()
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "scan", tmp_path / "elsewhere"


def test_files_beside_the_main_file_are_read_recorded_and_digested(
    monkeypatch, capsys, folders, tmp_path: Path
) -> None:
    scan, _ = folders
    z1, z2 = scan / "a_z1.ome.tif", scan / "a_z2.ome.tif"
    main = multi_file_ome_tiff(scan / "a.ome.tif", [(z1.name, z1), (z2.name, z2)])
    assert referenced_files(main) == [str(z1), str(z2)]
    with open_stack([main]) as stack:
        assert stack.n_planes == 3
        assert np.array_equal(stack.read(2, stack_box()), _pixels(2))
    out = tmp_path / "out.ome.zarr"
    code, _, err = run_cli(monkeypatch, capsys, "fuse", str(main), "-o", str(out), *FAST)
    assert code == 0, err
    run = json.loads((tmp_path / "out.ome.zarr.run.json").read_text())
    assert run["referenced_files"] == [z1.name, z2.name]
    before = run_digest([main], RunConfig())
    tifffile.imwrite(z2, _pixels(7), photometric="rgb", tile=(128, 128))
    os.utime(z2, ns=(1, 1))
    assert run_digest([main], RunConfig()) != before


def stack_box():
    from wsi_fusion._types import Box

    return Box(0, 0, H, W)


@pytest.mark.parametrize("how", ["parent folder", "absolute path", "symlink out"])
def test_a_file_outside_the_folder_is_refused_with_one_error_line(
    monkeypatch, capsys, folders, tmp_path: Path, how: str
) -> None:
    scan, elsewhere = folders
    outside = elsewhere / "x.tif"
    tifffile.imwrite(outside, _pixels(5), photometric="rgb")
    if how == "parent folder":
        name = "../elsewhere/x.tif"
    elif how == "absolute path":
        name = str(outside)
    else:
        name = "x_link.tif"
        os.symlink(outside, scan / name)
    main = multi_file_ome_tiff(scan / "a.ome.tif", [(name, None)])
    with pytest.raises(UnsupportedInput, match="outside its folder"):
        open_stack([main])
    out = tmp_path / "out.ome.zarr"
    code, _, err = run_cli(monkeypatch, capsys, "fuse", str(main), "-o", str(out), *FAST)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "a.ome.tif" in lines[0], err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_a_missing_file_beside_the_main_file_is_reported(folders) -> None:
    scan, _ = folders
    main = multi_file_ome_tiff(scan / "a.ome.tif", [("a_z1.ome.tif", None)])
    with pytest.raises(UnreadableSlide, match="a_z1.ome.tif.*does not exist"):
        open_stack([main])


def test_a_renamed_single_file_ome_tiff_still_opens(tmp_path: Path) -> None:
    """Its OME-XML names the old file name under its own UUID: that is the file itself."""
    data = np.stack([_pixels(0), _pixels(1)])
    old = tmp_path / "old.ome.tif"
    tifffile.imwrite(old, data, photometric="rgb", metadata={"axes": "ZYXS"}, ome=True)
    new = tmp_path / "new.ome.tif"
    old.rename(new)
    assert referenced_files(new) == []
    with open_stack([new]) as stack:
        assert stack.n_planes == 2


def test_a_dot_slash_name_is_beside_the_file_but_a_detour_is_not(folders) -> None:
    scan, _ = folders
    z1 = scan / "a_z1.ome.tif"
    main = multi_file_ome_tiff(scan / "a.ome.tif", [("./a_z1.ome.tif", z1)])
    assert referenced_files(main) == [str(z1)]
    with open_stack([main]) as stack:
        assert stack.n_planes == 2
    (scan / "sub").mkdir()
    detour = multi_file_ome_tiff(scan / "b.ome.tif", [("sub/../a_z1.ome.tif", None)])
    with pytest.raises(UnsupportedInput, match="outside its folder"):
        referenced_files(detour)
