"""Every shipped training config (``configs/train_*.yaml``) validates against its run model."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from wsi_fusion.errors import ConfigError
from wsi_fusion.training.config import load_train_config

pytest.importorskip("torch")  # the training modules import torch

CONFIG_DIR = Path(__file__).parents[2] / "configs"

#: Config-name prefix -> "module:class" of the model its workflow loads it into. Variants of a
#: run (``train_cgan_few.yaml``, ``train_blurmask_stain.yaml``) share their prefix's model.
MODELS = {
    "train_acnn": "wsi_fusion.training.acnn:ACNNTrainConfig",
    "train_gacn": "wsi_fusion.training.gacn:GACNTrainConfig",
    "train_msegnet": "wsi_fusion.training.msegnet:MSegNetTrainConfig",
    "train_blurmask": "wsi_fusion.training.cgan_blurmask:BlurMaskTrainConfig",
    "train_cgan": "wsi_fusion.training.cgan_blurmask:CganTrainConfig",
    "train_fmb_net": "wsi_fusion.training.fmb_net:FmbTrainConfig",
}
CONFIGS = sorted(CONFIG_DIR.glob("train_*.yaml"))


def model_class(config: Path) -> type[BaseModel]:
    """The run model of ``config``: the entry with the longest matching prefix."""
    prefixes = [k for k in MODELS if config.stem == k or config.stem.startswith(k + "_")]
    assert prefixes, f"{config.name}: add its run model to MODELS in {__file__}"
    module, name = MODELS[max(prefixes, key=len)].split(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, BaseModel)
    return cls


def test_every_model_has_a_shipped_config() -> None:
    for prefix in MODELS:
        assert any(p.stem == prefix or p.stem.startswith(prefix + "_") for p in CONFIGS), prefix


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_training_config_validates(config: Path) -> None:
    cls = model_class(config)
    # extra="forbid": every key of the file must be a field of the model.
    assert cls.model_config.get("extra") == "forbid"
    assert isinstance(load_train_config(config, cls), cls)


class _Run(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = 10
    lr: float = 1e-3


def test_overrides_replace_the_file_and_none_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\nlr: 0.01\n")
    cfg = load_train_config(path, _Run, steps=7, lr=None)
    assert (cfg.steps, cfg.lr) == (7, 0.01)


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_train_config(path, _Run) == _Run()


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 5\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate") as info:
        load_train_config(path, _Run)
    assert str(path) in str(info.value)
