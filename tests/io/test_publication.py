"""Provenance that cannot lie: an output and its run.json appear together, or are not trusted.

The defect: run.json was written before the output was renamed into place, so a kill between the
two left a ``focus_measure`` image beside a record saying ``laplacian_pyramid``, and the next
``batch --fuser laplacian_pyramid`` skipped the slide as up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers import FILES_ONLY_RUN

import wsi_fusion.io.destination as destination
import wsi_fusion.io.publication as publication
from wsi_fusion.batch import collect_slides, run_batch
from wsi_fusion.config import RunConfig
from wsi_fusion.errors import OutputExists
from wsi_fusion.io.publication import trusted_record
from wsi_fusion.pipeline import fuse_slide

FAST = FILES_ONLY_RUN


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for z in range(3):
        image = rng.integers(0, 256, (150, 200, 3), np.uint8)
        tifffile.imwrite(folder / f"A_z{z}.tif", image, photometric="rgb")
    return folder


def planes(folder: Path) -> list[Path]:
    return sorted(folder.glob("A_z*.tif"))


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ome_zarr_carries_its_record_inside(slides: Path, tmp_path: Path, ngff: str) -> None:
    out = tmp_path / "A.ome.zarr"
    report = fuse_slide(planes(slides), out, RunConfig(**FAST, ngff_version=ngff))
    group = zarr.open_group(out, mode="r")
    inside = group.attrs["wsi_fusion"]
    assert inside == json.loads(report.run_json.read_text())
    assert trusted_record(out) == inside and inside["report"]["digest"] == report.digest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray file in the store for zarr to trip over
        assert "0" in {name for name, _ in group.members()}


def test_tiff_record_names_every_file_it_belongs_to(slides: Path, tmp_path: Path) -> None:
    out = tmp_path / "A.ome.tif"
    config = RunConfig(**FAST, focus_map=True, compression="deflate")
    report = fuse_slide(planes(slides), out, config)
    record = trusted_record(out)
    assert record is not None
    files = {f["name"]: f for f in record["publication"]["files"]}
    assert set(files) == {"A.ome.tif", "A.ome.focus.tif"}
    for name, entry in files.items():
        path = tmp_path / name
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size
    assert not report.run_json.with_name(report.run_json.name + ".partial").exists()

    with (tmp_path / "A.ome.focus.tif").open("ab") as f:  # a sidecar replaced by something else
        f.write(b"\0")
    assert trusted_record(out) is None


def test_a_kill_before_the_record_is_renamed_leaves_nothing_trusted(
    slides: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "A.tif"
    real_replace = os.replace

    def killed_at_the_record(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith(".run.json"):
            raise KeyboardInterrupt  # stands in for SIGKILL between image and record
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(publication.os, "replace", killed_at_the_record)
        with pytest.raises(KeyboardInterrupt):
            fuse_slide(planes(slides), out, RunConfig(**FAST, compression="deflate"))
    assert out.is_file() and not out.with_name("A.tif.run.json").exists()
    assert trusted_record(out) is None
    with pytest.raises(OutputExists, match="no matching run.json .* pass --overwrite to redo"):
        fuse_slide(planes(slides), out, RunConfig(**FAST, compression="deflate"))
    report = fuse_slide(
        planes(slides), out, RunConfig(**FAST, compression="deflate"), overwrite=True
    )
    assert report.tiles_resumed == report.tiles, "the cache stays until the record is in place"
    assert trusted_record(out) is not None


@pytest.mark.parametrize("fmt", ["ome-zarr", "tiff"])
def test_batch_redoes_a_slide_whose_publication_was_cut_short(
    slides: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    outdir = tmp_path / "out"
    first = RunConfig(**FAST, format=fmt, compression="deflate")
    run_batch(collect_slides(slides), outdir, first)
    other = first.model_copy(update={"fuser": "laplacian_pyramid"})

    # Killed as the new output is published: before the OME-Zarr swap (its record goes with
    # it), or after the TIFF is renamed and before its record is.
    module, name = (destination, "replace") if fmt == "ome-zarr" else (publication, "replace")
    real_replace = os.replace
    cut = {"ome-zarr": ".ome.zarr.old", "tiff": ".tif.run.json"}[fmt]

    def killed(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith(cut):
            raise KeyboardInterrupt
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(module.os, name, killed)
        with pytest.raises(KeyboardInterrupt):
            run_batch(collect_slides(slides), outdir, other)

    again = run_batch(collect_slides(slides), outdir, other)
    assert [r.status for r in again.results] == ["done"], "must not be skipped as up to date"
    output = Path(again.results[0].output)
    record = trusted_record(output)
    assert record is not None and record["fuser"]["name"] == "laplacian_pyramid"
    assert [r.status for r in run_batch(collect_slides(slides), outdir, other).results] == [
        "skipped"
    ]


def test_batch_finishes_a_slide_killed_between_its_sidecar_and_its_image(
    slides: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outdir = tmp_path / "out"
    config = RunConfig(**FAST, format="tiff", focus_map=True, compression="deflate")
    real_replace = os.replace

    def killed(src: str | Path, dst: str | Path) -> None:
        if str(dst).endswith("A.tif"):
            raise KeyboardInterrupt  # the focus map is in place, the image is not
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(publication.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            run_batch(collect_slides(slides), outdir, config)
    assert (outdir / "A.focus.tif").is_file() and not (outdir / "A.tif").exists()

    again = run_batch(collect_slides(slides), outdir, config)
    assert [r.status for r in again.results] == ["done"], again.results[0].error
    assert trusted_record(outdir / "A.tif") is not None
