"""The shared training-workflow plumbing: options, train-and-save, summaries, exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

torch = pytest.importorskip("torch")

from wsi_fusion.training.loop import step_rng  # noqa: E402
from wsi_fusion.training.run import (  # noqa: E402
    Built,
    finish_run,
    save_and_finish,
    train_and_save,
    train_parser,
    training_summary,
)


class TinyRun(BaseModel):
    seed: int = 0
    steps: int = 6
    threads: int = 1
    max_seconds: float | None = None
    checkpoint: str = "ck/tiny.ckpt"
    output: str = "out/tiny.safetensors"
    log_every: int = 2
    checkpoint_every: int = 2


def build() -> Built:
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)

    def step(i: int) -> dict[str, float]:
        x = torch.from_numpy(step_rng(3, i).random((8, 4), dtype="float32"))
        loss = ((net(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    return net, step, opt, sched


def test_parser_has_the_common_options() -> None:
    parser = train_parser("Train it.\n\nMore.", Path("configs/x.yaml"))
    args = parser.parse_args(["--steps", "5", "--no-progress"])
    assert (args.config, args.steps, args.max_seconds, args.no_progress) == (
        "configs/x.yaml",
        5,
        None,
        True,
    )
    assert parser.description == "Train it."


def test_train_and_save_is_seeded_and_resumes(tmp_path: Path) -> None:
    history, sha, _ = train_and_save(TinyRun(), tmp_path / "a", build, progress=False)
    assert history[-1]["step"] == 6 and len(sha) == 64
    assert (tmp_path / "a" / "out" / "tiny.safetensors").exists()

    # A 4-step run, then resumed to 6 steps: the same weights as 6 steps in one go.
    history, sha_part, _ = train_and_save(TinyRun(steps=4), tmp_path / "b", build, progress=False)
    assert sha_part and history[-1]["step"] == 4
    history, sha_resumed, _ = train_and_save(TinyRun(), tmp_path / "b", build, progress=False)
    assert history[-1]["step"] == 6 and sha_resumed == sha


def test_summary_and_exit_status(tmp_path: Path) -> None:
    cfg = TinyRun(checkpoint=str(tmp_path / "run.ckpt"))
    history = [{"step": 6.0, "seconds": 1.5, "loss": 0.1}]
    summary = training_summary(cfg, history, 2.04, "ab" * 32)
    assert summary["steps_done"] == 6 and summary["this_invocation_seconds"] == 2.0
    assert summary["config"] == cfg.model_dump() and summary["final"] == history[-1]
    assert finish_run(Path(cfg.checkpoint), summary) == 0
    written = json.loads((tmp_path / "run.summary.json").read_text())
    assert written["sha256"] == "ab" * 32
    assert finish_run(Path(cfg.checkpoint), training_summary(cfg, [], 0.0, "")) == 1


def test_save_and_finish_saves_only_a_finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("ck").mkdir()  # the training loop made it
    net = torch.nn.Linear(2, 1)
    cfg = TinyRun()
    assert save_and_finish(cfg, net, [], 0.1, steps_done=3) == (1, None)
    assert not Path(cfg.output).exists()
    assert json.loads(Path("ck/tiny.summary.json").read_text())["output"] is None
    status, sha = save_and_finish(cfg, net, [], 0.1, steps_done=6)
    assert status == 0 and sha and Path(cfg.output).exists()
    assert json.loads(Path("ck/tiny.summary.json").read_text())["output"] == cfg.output


@pytest.mark.parametrize("validation", [False, True])
def test_run_comparison_writes_the_model_card_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validation: bool
) -> None:
    from wsi_fusion.training import heldout
    from wsi_fusion.training.run import run_comparison

    # Tiny stacks: the plumbing is under test, not the fusers.
    heldout_stacks, validation_stacks = heldout.heldout_stacks, heldout.validation_stacks
    monkeypatch.setattr(
        heldout, "heldout_stacks", lambda **_: heldout_stacks(n=1, size=96, n_planes=3)
    )
    monkeypatch.setattr(
        heldout, "validation_stacks", lambda: validation_stacks(n=1, size=96, n_planes=3)
    )
    out = tmp_path / "metrics.json"
    compared: dict[str, tuple[str, dict[str, Any]]] = {"wavelet, again": ("wavelet", {})}
    assert run_comparison(compared, out, validation=validation) == 0
    result = json.loads(out.read_text())
    assert set(result["fusers"]) == {"wavelet, again", *heldout.CLASSICAL}
    assert ("validation" in result) == validation
    assert ("seconds_per_tile_interleaved" in result) != validation
