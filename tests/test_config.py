from __future__ import annotations

from pathlib import Path

import pytest

from wsi_fusion.config import load_config
from wsi_fusion.errors import ConfigError

CONFIG_DIR = Path(__file__).parents[1] / "configs"
#: Run configs; training (train_*.yaml) and cluster (slurm*.yaml) configs have their own schemas.
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith(("train_", "slurm")))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path: Path) -> None:
    load_config(path)


def test_shipped_slurm_config_is_valid() -> None:
    from wsi_fusion.scheduling.slurm import load_slurm_settings

    load_slurm_settings(CONFIG_DIR / "slurm.yaml")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fuser: focus_measure\ntile_size: 512\n")
    with pytest.raises(ConfigError, match="tile_size: unknown key"):
        load_config(path)


def test_nested_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tissue:\n  treshold: 0.5\n")
    with pytest.raises(ConfigError, match="tissue.treshold: unknown key"):
        load_config(path)


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("tile: 256\noverlap: 64\n")
    config = load_config(path, tile=None, overlap=32)
    assert (config.tile, config.overlap) == (256, 32)


def test_overlap_not_smaller_than_tile_is_refused() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        load_config(tile=128, overlap=128)
