"""MRXS z-stacks: OpenSlide reads one plane of them, so a Slidedat.ini declaring several focal
planes is refused with the route, alone or among per-plane files. No real MRXS z-stack exists
here: the fixture is a hand-written MIRAX layout (``x.mrxs`` + ``x/Slidedat.ini``) with the keys
OpenSlide and bioformats2raw's MiraxReader use; the refusal comes before any pixel is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_fusion.errors import UnreadableSlide, UnsupportedInput
from wsi_fusion.io.readers import open_stack
from wsi_fusion.io.readers.mrxs import mrxs_focus, parse_slidedat, refuse_mrxs_zstack


def slidedat(z_offsets: list[float], *, ext_focus: bool = True, bom: bool = True) -> str:
    """A Slidedat.ini with a zoom and a filter hierarchy and, if ``z_offsets``, a focus one."""
    hier = ["HIER_0_NAME = Slide zoom level", "HIER_0_COUNT = 1", "HIER_0_VAL_0 = ZoomLevel_0"]
    hier += ["HIER_1_NAME = Slide filter level", "HIER_1_COUNT = 1", "HIER_1_VAL_0 = FilterLevel_0"]
    sections: list[str] = []
    mid = len(z_offsets) // 2
    steps = [f"{k - mid:+d}" if k != mid else "0" for k in range(len(z_offsets))]
    values = (["ExtFocusLevel"] if ext_focus else []) + [f"ZStackLevel_({s})" for s in steps]
    count = 2
    if values:
        count = 3
        hier += ["HIER_2_NAME = Microscope focus level", f"HIER_2_COUNT = {len(values)}"]
        offsets = ([0.0] if ext_focus else []) + z_offsets
        for j, (value, offset) in enumerate(zip(values, offsets, strict=True)):
            section = f"LAYER_2_LEVEL_{j}_SECTION"
            hier += [f"HIER_2_VAL_{j} = {value}", f"HIER_2_VAL_{j}_SECTION = {section}"]
            sections += [f"[{section}]", f"OFFSET_IN_MICROMETERS = {offset}", ""]
    text = "\n".join(
        [
            "[GENERAL]",
            "SLIDE_VERSION = 01.03",
            "SLIDE_ID = 0A6E096C19BC4977A324C3AE7EFD105F",
            "IMAGENUMBER_X = 4",
            "IMAGENUMBER_Y = 4",
            "OBJECTIVE_MAGNIFICATION = 20",
            "",
            "[HIERARCHICAL]",
            f"HIER_COUNT = {count}",
            "INDEXFILE = Index.dat",
            *hier,
            "",
            *sections,
        ]
    )
    return ("\ufeff" if bom else "") + text


def write_mrxs(folder: Path, name: str, ini: str) -> Path:
    """``name.mrxs`` (not a TIFF, as in real slides) and ``name/Slidedat.ini``."""
    path = folder / f"{name}.mrxs"
    path.write_bytes(b"\x00" * 64)
    (folder / name).mkdir()
    (folder / name / "Slidedat.ini").write_text(ini, encoding="utf-8")
    return path


def test_slidedat_focus_levels_and_depths() -> None:
    focus = parse_slidedat(slidedat([-2.0, -1.0, 0.0, 1.0, 2.0]))
    assert focus.n_planes == 5
    assert focus.levels == (
        "ZStackLevel_(-2)", "ZStackLevel_(-1)", "ZStackLevel_(0)", "ZStackLevel_(+1)",
        "ZStackLevel_(+2)",
    )  # fmt: skip
    assert focus.offsets_um == (-2.0, -1.0, 0.0, 1.0, 2.0)
    assert focus.extended_focus  # ExtFocusLevel is the scanner's EDF image, not a plane


def test_slidedat_without_focus_hierarchy_has_no_planes() -> None:
    assert parse_slidedat(slidedat([])).n_planes == 0
    only_edf = parse_slidedat(slidedat([0.0]))
    assert only_edf.n_planes == 1 and only_edf.extended_focus


def test_mrxs_zstack_alone_is_refused_with_the_route(tmp_path: Path) -> None:
    path = write_mrxs(tmp_path, "scan", slidedat([-1.5, 0.0, 1.5]))
    assert mrxs_focus(path) is not None
    with pytest.raises(UnsupportedInput) as err:
        open_stack([path])
    message = str(err.value)
    assert str(path) in message
    assert "3 focal planes" in message and "-1.5, 0, 1.5 µm" in message
    assert "OpenSlide reads only one of them" in message and "bioformats2raw" in message
    assert "docs/OUTPUTS.md" in message


def test_mrxs_zstack_among_plane_files_is_refused(tmp_path: Path) -> None:
    path = write_mrxs(tmp_path, "scan", slidedat([0.0, 1.0]))
    plane = tmp_path / "plane.tif"
    tifffile.imwrite(plane, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(UnsupportedInput, match="2 focal planes"):
        open_stack([plane, path])


def test_one_plane_mrxs_goes_to_openslide(tmp_path: Path) -> None:
    """Not refused as a z-stack: OpenSlide opens it (here it fails on the missing data files)."""
    path = write_mrxs(tmp_path, "flat", slidedat([0.0]))
    refuse_mrxs_zstack(path)
    with pytest.raises(UnreadableSlide):
        open_stack([path])


def test_non_mrxs_and_unparsable_slidedat_are_left_to_openslide(tmp_path: Path) -> None:
    other = tmp_path / "scan.svs"
    other.write_bytes(b"\x00")
    assert mrxs_focus(other) is None
    broken = write_mrxs(tmp_path, "broken", "no section header\n")
    assert mrxs_focus(broken) is None
    refuse_mrxs_zstack(broken)
