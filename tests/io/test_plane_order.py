"""Per-plane files given against the numbers in their names: a warning that names them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_fusion.io.readers import open_stack
from wsi_fusion.io.readers.plane_order import out_of_name_order

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


def test_open_stack_warns_about_a_glob_ordered_file_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    files = []
    for k in (1, 10, 2):
        path = tmp_path / f"plane_{k}.png"
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(path)
        files.append(path)
    with caplog.at_level(logging.WARNING, logger="wsi_fusion.io.readers"):
        with open_stack(files) as stack:
            assert stack.n_planes == 3  # the order given is kept: a warning, not a re-sort
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "plane_2.png comes right after" in message and "plane_10.png" in message
    assert "ls -v" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsi_fusion.io.readers"):
        open_stack(sorted(files, key=lambda p: int(p.stem.split("_")[1]))).close()
    assert not [r for r in caplog.records if "focal order" in r.getMessage()]
