"""Every weights file a run uses is hashed and recorded; weights that are not the pinned ones are
used with one warning, and workers load exactly the file whose hash run.json records."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import write_random_planes  # noqa: E402

from wsi_fusion.config import RunConfig  # noqa: E402
from wsi_fusion.errors import WeightsError  # noqa: E402
from wsi_fusion.fusers import fuser_class  # noqa: E402
from wsi_fusion.fusers._torch import TorchFuser  # noqa: E402
from wsi_fusion.fusers._weights import (  # noqa: E402
    WEIGHTS_ENV,
    WeightsRecord,
    file_sha256,
    models_dir,
    save_weights,
)
from wsi_fusion.fusers.base import FusionResult  # noqa: E402


def conv() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))


def pinned_record(sha: str) -> WeightsRecord:
    return WeightsRecord("conv", "conv/conv.safetensors", sha)


class ConvFuser(TorchFuser):
    """Not registered: one 1x1 convolution of plane 0."""

    name = "conv"
    weights_record = pinned_record("0" * 64)

    @property
    def margin(self) -> int:
        return 0

    def build_model(self) -> torch.nn.Module:
        return conv()

    def fuse(self, stack: np.ndarray) -> FusionResult:
        with self.autocast():
            out = self.model(torch.from_numpy(stack[0][None]))
        return FusionResult(out[0].float().cpu().numpy(), None)


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, str]:
    torch.manual_seed(0)
    path = tmp_path / "mine.safetensors"
    return path, save_weights(conv(), path)


def test_explicit_unpinned_weights_are_hashed_and_warned_about_once(
    weights: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    path, sha = weights
    with caplog.at_level(logging.WARNING):
        described = ConvFuser(weights=str(path), device="cpu").describe()
    assert described["weights"] == {
        "model": "conv",
        "file": str(path),
        "sha256": sha,
        "pinned": False,
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not the pinned" in warnings[0].getMessage()
    assert "mine.safetensors" in warnings[0].getMessage()


def test_explicit_copy_of_the_pinned_weights_is_not_warned_about(
    weights: tuple[Path, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sha = weights
    monkeypatch.setattr(ConvFuser, "weights_record", pinned_record(sha))
    with caplog.at_level(logging.WARNING):
        described = ConvFuser(weights=str(path), device="cpu").describe()
    assert described["weights"]["pinned"] is True and not caplog.records


def test_workers_refuse_weights_other_than_the_recorded_ones(weights: tuple[Path, str]) -> None:
    path, sha = weights
    other = "1" * 64
    with pytest.raises(WeightsError, match="expected 1111"):
        ConvFuser(weights=str(path), weights_sha256=other, device="cpu").describe()
    with pytest.raises(WeightsError, match="expected 1111"):
        _ = ConvFuser(weights=str(path), weights_sha256=other, device="cpu").model
    assert ConvFuser(weights=str(path), weights_sha256=sha, device="cpu").model is not None


def _planes(folder: Path) -> list[str]:
    return write_random_planes(folder, "p", 2, (160, 200))


@pytest.mark.parametrize("pinned", [True, False])
def test_run_json_records_an_explicit_weights_file(tmp_path: Path, pinned: bool) -> None:
    from wsi_fusion.pipeline import fuse_slide

    gacn = fuser_class("gacn")
    shipped = models_dir() / gacn.weights_record.file
    explicit = tmp_path / "lab" / "my_gacn.safetensors"
    explicit.parent.mkdir()
    if pinned:
        shutil.copyfile(shipped, explicit)
    else:
        save_weights(gacn.untrained(seed=1, device="cpu").model, explicit)
    overlap = 2 * gacn(device="cpu").margin  # margins change as fusers evolve
    config = RunConfig(
        fuser="gacn",
        fuser_params={"weights": str(explicit), "device": "cpu"},
        tile=max(128, 2 * overlap),
        overlap=overlap,
        tissue={"enabled": False},
        registration={"mode": "off"},
        scheduler="sync",
    )
    report = fuse_slide(_planes(tmp_path), tmp_path / "out.ome.zarr", config)
    run = json.loads(report.run_json.read_text())
    recorded = run["fuser"]["weights"]
    assert recorded["sha256"] == file_sha256(explicit)
    assert recorded["file"] == "my_gacn.safetensors" and recorded["pinned"] is pinned
    assert run["config"]["fuser_params"]["weights"] == "my_gacn.safetensors"


def test_weights_from_the_environment_folder_are_recorded_and_must_be_pinned(
    weights: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$WSI_FUSION_WEIGHTS`` stands in for ``models/``: its file is hashed and recorded, and
    must match the pin like the shipped one (an explicit path is the way to use other weights)."""
    path, sha = weights
    folder = tmp_path / "env_models"
    (folder / "conv").mkdir(parents=True)
    shutil.copyfile(path, folder / "conv" / "conv.safetensors")
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    monkeypatch.setattr(ConvFuser, "weights_record", pinned_record(sha))
    described = ConvFuser(device="cpu").describe()["weights"]
    assert described["sha256"] == sha and described["pinned"] is True
    assert described["file"] == str(folder / "conv" / "conv.safetensors")
    monkeypatch.setattr(ConvFuser, "weights_record", pinned_record("2" * 64))
    with pytest.raises(WeightsError, match="expected 2222"):
        ConvFuser(device="cpu").describe()
