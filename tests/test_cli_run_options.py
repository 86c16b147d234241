"""The run options shared by ``fuse`` and ``batch`` become one RunConfig the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from wsi_fusion.cli._run_options import run_config, run_options

UNSET: dict[str, Any] = {
    "tile": None,
    "overlap": None,
    "lossless": False,
    "register": None,
    "plane_order": None,
    "no_tissue": False,
    "batch_size": None,
    "precision": None,
    "device": None,
    "scheduler": None,
    "workers": None,
    "record_paths": None,
    "no_label": None,
}


def test_unset_options_keep_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("tile: 256\noverlap: 64\n")
    config = run_config(path, **UNSET, fuser=None)
    assert (config.tile, config.overlap, config.fuser) == (256, 64, "focus_measure")


def test_options_override_the_file_and_nested_sections(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("tile: 256\noverlap: 64\n")
    given = {
        **UNSET,
        "overlap": 32,
        "lossless": True,
        "register": "off",
        "plane_order": "similarity",
        "no_tissue": True,
        "batch_size": 4,
        "precision": "bf16",
    }
    config = run_config(path, **given, fuser="wavelet")
    assert (config.tile, config.overlap, config.fuser) == (256, 32, "wavelet")
    assert config.compression == "deflate"
    assert config.registration.mode == "off"
    assert config.plane_order == "similarity"
    assert not config.tissue.enabled
    assert (config.learned.batch_size, config.learned.precision) == (4, "bf16")


def test_device_goes_into_the_fuser_parameters(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("fuser_params: {radius: 3}\n")
    config = run_config(path, **{**UNSET, "device": "cuda"}, fuser=None)
    assert config.fuser_params == {"radius": 3, "device": "cuda"}


def test_decorator_passes_every_run_option() -> None:
    seen: dict[str, Any] = {}

    @click.command()
    @run_options
    def command(**run_settings: Any) -> None:
        seen.update(run_settings)

    result = CliRunner().invoke(command, ["--tile", "128", "--no-tissue", "--register", "on"])
    assert result.exit_code == 0, result.output
    assert set(seen) == {"config_path", *UNSET}
    assert (seen["tile"], seen["no_tissue"], seen["register"]) == (128, True, "on")
