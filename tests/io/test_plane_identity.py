"""Per-plane inputs: the same file twice, and planes that disagree on knowing their pixel size."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_fusion.errors import PlaneMismatch
from wsi_fusion.io.readers import open_stack
from wsi_fusion.io.readers._duplicates import refuse_duplicate_planes


def plane(path: Path, seed: int, mpp: float | None = None) -> str:
    rng = np.random.default_rng(seed)
    extra = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": 3}
    pixels = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(128, 128), **extra)
    return str(path)


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "copy"])
def test_the_same_file_twice_is_refused_naming_both(tmp_path: Path, how: str) -> None:
    a = plane(tmp_path / "a_z0.tif", 0)
    b = plane(tmp_path / "a_z1.tif", 1)
    twin = str(tmp_path / "twin.tif")
    if how == "same path":
        twin = a
    elif how == "symlink":
        os.symlink(a, twin)
    elif how == "hard link":
        os.link(a, twin)
    else:
        shutil.copyfile(a, twin)
    with pytest.raises(PlaneMismatch) as caught:
        open_stack([a, b, twin])
    message = str(caught.value)
    assert a in message and twin in message and "planes 1" in message and "3" in message
    assert ("identical content" if how == "copy" else "same file") in message


def test_equal_size_files_that_differ_only_between_samples_are_not_refused(
    tmp_path: Path,
) -> None:
    size = 3 << 20
    data = bytearray(os.urandom(size))
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(data))
    data[size // 2 + 12345] ^= 0xFF  # outside every sampled block
    b.write_bytes(bytes(data))
    refuse_duplicate_planes([str(a), str(b)])


def test_planes_that_disagree_on_knowing_their_pixel_size_are_refused(tmp_path: Path) -> None:
    with_mpp = plane(tmp_path / "s_z0.tif", 0, mpp=0.5)
    without = plane(tmp_path / "s_z1.tif", 1)
    with pytest.raises(PlaneMismatch, match="records 0.5 um/px but .*s_z1.tif records none"):
        open_stack([with_mpp, without])
    assert open_stack([with_mpp, plane(tmp_path / "s_z2.tif", 2, mpp=0.5)]).mpp == 0.5
