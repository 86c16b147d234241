"""Preset overlays (``configs/presets/*/``), the dry run and the training session.

Every preset file merges over its base run config into a valid run; ``--dry-run`` shrinks it and
writes under ``scratch/dry_run/``; a dry run of one recipe trains a few steps with prefetched
batches and writes a checkpoint and weights; prefetched batches equal the ones a step draws
itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

# One map from a config name to its run model, shared with the config tests.
from test_configs import model_class  # noqa: E402

from wsi_fusion.errors import ConfigError  # noqa: E402
from wsi_fusion.training import session  # noqa: E402
from wsi_fusion.training.config import (  # noqa: E402
    DRY_RUN_STEPS,
    Preset,
    load_preset,
    load_train_config,
    merge_overlay,
    preset_path,
    resolve_config_data,
)
from wsi_fusion.training.loop import step_rng, train_loop  # noqa: E402
from wsi_fusion.training.run import train_parser, training_summary  # noqa: E402

ROOT = Path(__file__).parents[2]
CONFIG_DIR = ROOT / "configs"
PRESET = "h100-8min"
OVERLAYS = sorted((CONFIG_DIR / "presets").glob("*/*.yaml"))

#: The learned fusers' training runs that the GPU preset must cover (issue 13).
EXPECTED = {
    "train_msegnet",
    "train_gacn",
    "train_acnn",
    "train_fmb_net",
    "train_blurmask",
    "train_cgan_single",
    "train_cgan_few",
}
#: What "the paper's width" is in each run model.
PAPER_WIDTH = {
    "train_acnn": {"width": "paper"},
    "train_gacn": {"width": "paper"},
    "train_msegnet": {"widths": (32, 64, 128, 256)},
    "train_blurmask": {"variant": "deeplab_v3_resnet50"},
    "train_cgan": {"width": "paper"},
    "train_fmb_net": {"width": "paper"},
}


def base_of(overlay: Path) -> Path:
    return CONFIG_DIR / overlay.name


@pytest.fixture(autouse=True)
def _plain_session() -> Iterator[None]:
    """Every test starts and ends with a plain CPU session (the session is process-wide)."""
    session.stop()
    yield
    session.stop()


def test_the_gpu_preset_covers_every_learned_fuser() -> None:
    have = {p.stem for p in (CONFIG_DIR / "presets" / PRESET).glob("*.yaml")}
    assert have == EXPECTED


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[f"{p.parent.name}/{p.name}" for p in OVERLAYS])
def test_overlay_merges_into_a_valid_run(overlay: Path) -> None:
    base = base_of(overlay)
    assert base.is_file(), f"{overlay} overlays a config that does not exist"
    preset = overlay.parent.name
    raw = Preset(**yaml.safe_load(overlay.read_text()))
    cls = model_class(overlay)
    base_cfg = load_train_config(base, cls, preset=None, dry_run=False)
    cfg = load_train_config(base, cls, preset=preset, dry_run=False)
    merged = cfg.model_dump()
    for key, value in raw.config.items():  # the overlay's keys win ...
        assert merged[key] == cls(**{**base_cfg.model_dump(), key: value}).model_dump()[key], key
    for key, value in base_cfg.model_dump().items():  # ... the others stay the base's
        if key not in raw.config:
            assert merged[key] == value, key
    # A preset never writes over the base run's checkpoint or weights (the shipped models).
    assert cfg.output != base_cfg.output and cfg.checkpoint != base_cfg.checkpoint
    prefix = max((k for k in PAPER_WIDTH if overlay.stem.startswith(k)), key=len)
    for key, value in PAPER_WIDTH[prefix].items():
        assert merged[key] == value, f"{overlay.name}: {key} is not the paper's"
    # The named batch function exists in the recipe's module (prefetching can find it).
    if raw.run.batch_fn:
        module, name = raw.run.batch_fn.split(":")
        assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[f"{p.parent.name}/{p.name}" for p in OVERLAYS])
def test_dry_run_shrinks_and_writes_elsewhere(overlay: Path) -> None:
    preset = overlay.parent.name
    raw = Preset(**yaml.safe_load(overlay.read_text()))
    cls = model_class(overlay)
    cfg = load_train_config(base_of(overlay), cls, preset=preset, dry_run=True).model_dump()
    assert cfg["steps"] == DRY_RUN_STEPS and cfg["max_seconds"] is None
    folder = f"scratch/dry_run/{preset}/{overlay.stem}/"
    assert cfg["checkpoint"].startswith(folder) and cfg["output"].startswith(folder)
    for key, value in raw.dry_run.items():
        assert cfg[key] == cls(**{**cfg, key: value}).model_dump()[key], key
    _, run = resolve_config_data(base_of(overlay), preset, dry_run=True)
    assert run.prefetch_workers <= 2 and run.amp == raw.run.amp


def test_merge_overlay_is_key_by_key() -> None:
    base = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2]}
    out = merge_overlay(base, {"b": {"y": 3}, "c": [4], "d": None})
    assert out == {"a": 1, "b": {"x": 1, "y": 3}, "c": [4], "d": None}
    assert base["b"] == {"x": 1, "y": 2}  # not modified


def test_bad_presets_name_the_file(tmp_path: Path) -> None:
    from wsi_fusion.training.gacn import GACNTrainConfig

    config = tmp_path / "train_gacn.yaml"
    config.write_text("steps: 5\n")
    with pytest.raises(ConfigError, match="nope.*train_gacn.yaml"):
        load_preset(config, "nope")
    overlay = preset_path(config, "p")
    overlay.parent.mkdir(parents=True)
    overlay.write_text("config:\n  stepz: 5\n")
    with pytest.raises(ConfigError, match=r"(?s)presets/p/train_gacn.yaml.*stepz"):
        load_train_config(config, GACNTrainConfig, preset="p")
    overlay.write_text("runn: {}\n")
    with pytest.raises(ConfigError, match="invalid preset overlay"):
        load_train_config(config, GACNTrainConfig, preset="p")


def test_command_line_starts_the_session_that_the_loader_reads() -> None:
    from wsi_fusion.training.gacn import GACNTrainConfig

    parser = train_parser("Train.", CONFIG_DIR / "train_gacn.yaml")
    args = parser.parse_args(["--preset", PRESET, "--dry-run"])
    assert (args.device, args.preset, args.dry_run) == ("cpu", PRESET, True)
    cfg = load_train_config(args.config, GACNTrainConfig, steps=None)
    assert cfg.width == "paper" and cfg.steps == DRY_RUN_STEPS
    assert session.current().run.batch_fn == "wsi_fusion.training.gacn:sample_batch"
    # Without options the session is plain again and configs load as before.
    parser.parse_args([])
    assert session.current().is_default
    assert load_train_config(args.config, GACNTrainConfig).width == "small"


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="--device cuda"):
        session.start("cuda")


# -- a dry run of one recipe ---------------------------------------------------------------------


def test_gacn_dry_run_trains_a_few_steps_and_writes_a_checkpoint(tmp_path: Path) -> None:
    from wsi_fusion.training import gacn

    session.start("cpu", PRESET, dry_run=True)
    cfg = load_train_config(CONFIG_DIR / "train_gacn.yaml", gacn.GACNTrainConfig)
    history, sha, seconds = gacn.train(cfg, tmp_path, progress=False)
    assert history[-1]["step"] == DRY_RUN_STEPS and len(sha) == 64
    assert (tmp_path / cfg.checkpoint).is_file() and (tmp_path / cfg.output).is_file()
    stats = session.current().stats
    assert "data_wait_seconds" in stats and stats["batches_drawn_in_step"] == 0
    summary = training_summary(cfg, history, seconds, sha)
    assert summary["session"]["preset"] == PRESET and summary["session"]["amp"] == "none"
    assert summary["stopped_at_budget"] is False and summary["steps_per_second"] > 0


# -- prefetching ---------------------------------------------------------------------------------


def fake_batch(sources: list[int], rng: np.random.Generator, cfg: Mapping[str, Any], k: int):
    """A recipe's batch function: an array and a tensor drawn from the step's generator."""
    x = rng.random((2, k)).astype(np.float32) + sources[0] + cfg["offset"]
    return x, torch.from_numpy(rng.random(3).astype(np.float32))


def _draws(tmp_path: Path, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run 5 steps whose step function calls this module's ``fake_batch``; the batches seen."""
    this = sys.modules[__name__]
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    net = torch.nn.Linear(1, 1)

    def step(i: int) -> dict[str, float]:
        x, t = this.fake_batch([1], step_rng(7, i), {"offset": 0.5}, 4)
        assert isinstance(x, np.ndarray) and isinstance(t, torch.Tensor)
        seen.append((x.copy(), t.numpy().copy()))
        if i == 2:  # a second draw in one step is computed directly, not taken from the queue
            this.fake_batch([1], step_rng(7, 99), {"offset": 0.5}, 4)
        return {"loss": 0.0}

    train_loop(step, 5, tmp_path / name / "c.ckpt", {"net": net}, seed=7, progress=False)
    return seen


def test_prefetched_batches_are_the_steps_own(tmp_path: Path) -> None:
    direct = _draws(tmp_path, "direct")
    session.start("cpu")
    session.use_run_options(
        session.RunOptions(batch_fn=f"{__name__}:fake_batch", prefetch_workers=2)
    )
    ahead = _draws(tmp_path, "ahead")
    assert len(ahead) == len(direct) == 5
    for (x0, t0), (x1, t1) in zip(direct, ahead, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(t0, t1)
    assert session.current().stats["batches_drawn_in_step"] == 1
    assert sys.modules[__name__].fake_batch is fake_batch  # restored after the loop


# -- on a GPU (run by workflows/gpu_run.sh before its training runs) -----------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dry_runs_place_everything_on_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gacn (train_and_save, fp32, prefetched) and the single-plane cGAN (its own loop, frozen
    BM, bf16 autocast) for a few steps on CUDA, as their workflows run them (recipe modules
    imported before the command line starts the session)."""
    from wsi_fusion.training import cgan_blurmask, gacn

    session.start("cuda", PRESET, dry_run=True)
    cfg = load_train_config(CONFIG_DIR / "train_gacn.yaml", gacn.GACNTrainConfig)
    history, sha, _ = gacn.train(cfg, tmp_path, progress=False)
    assert len(sha) == 64 and np.isfinite(history[-1]["loss"])
    assert "prefetch_error" not in session.current().stats

    monkeypatch.chdir(tmp_path)  # train_cgan's paths are relative to the working directory
    bm_file = ROOT / "models" / "cgan_blurmask" / "cgan_blurmask.lite.safetensors"
    cfg = load_train_config(
        CONFIG_DIR / "train_cgan_single.yaml", cgan_blurmask.CganTrainConfig, blurmask=str(bm_file)
    )
    bm = cgan_blurmask.load_blurmask(cfg.blurmask)
    assert next(bm.parameters()).is_cuda
    gen, _, history = cgan_blurmask.train_cgan(cfg, bm, progress=False)
    assert next(gen.parameters()).is_cuda and np.isfinite(history[-1]["l1"])
    assert session.current().stats["peak_gpu_mib"] > 0


def test_sigterm_ends_the_loop_with_a_checkpoint(tmp_path: Path) -> None:
    """``gpu_run.sh`` stops an overrunning run with SIGTERM: the steps so far are kept."""
    import os
    import signal

    net = torch.nn.Linear(1, 1)

    def step(i: int) -> dict[str, float]:
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": float(i)}

    before = signal.getsignal(signal.SIGTERM)
    ckpt = tmp_path / "c.ckpt"
    history = train_loop(step, 10, ckpt, {"net": net}, log_every=1, progress=False)
    assert history[-1]["step"] == 2 and torch.load(ckpt, weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before
