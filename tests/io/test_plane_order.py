"""Per-plane files given against the numbers in their names: a warning that names them."""

from __future__ import annotations

import logging

import pytest

from wsi_fusion.io.readers.plane_order import out_of_name_order, warn_if_out_of_order

GLOB_ORDER = [f"scan/plane_{k}.png" for k in (1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9)]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (GLOB_ORDER, ("scan/plane_11.png", "scan/plane_2.png")),
        ([f"plane_{k}.png" for k in range(1, 12)], None),
        ([f"plane_{k}.png" for k in range(11, 0, -1)], None),  # top to bottom is a focal order
        ([f"plane_{k:02d}.png" for k in range(1, 12)], None),  # zero-padded: glob order is fine
        (["top.png", "middle.png", "bottom.png"], None),  # no numbers to go by
        (["z1/img.png", "z3/img.png", "z2/img.png"], ("z3/img.png", "z2/img.png")),
        (["a_1.png", "b_3.png", "a_2.png"], None),  # names differ in more than numbers
        (["p_-1.png", "p_+1.png", "p_0.png"], None),
        (["plane_1.png", "plane_2.png"], None),  # two planes are in order either way
    ],
)
def test_out_of_name_order(paths: list[str], expected: tuple[str, str] | None) -> None:
    assert out_of_name_order(paths) == expected


def test_the_warning_names_the_two_files_and_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="wsi_fusion.io.readers.plane_order"):
        warn_if_out_of_order(["run7/plane_1.png", "run7/plane_10.png", "run7/plane_2.png"])
        warn_if_out_of_order(["run7/plane_1.png", "run7/plane_10.png", "run7/plane_2.png"])
        warn_if_out_of_order(["run8/plane_1.png", "run8/plane_2.png", "run8/plane_10.png"])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1  # once per file list, and none for the list in order
    assert "run7/plane_2.png comes right after run7/plane_10.png" in messages[0]
    assert "ls -v" in messages[0]
