"""The training loop resumes from its checkpoint exactly where an uninterrupted run would be."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from wsi_fusion.training.loop import step_rng, train_loop  # noqa: E402


def make(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def stepper(model: torch.nn.Module, opt: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    def step(i: int) -> dict[str, float]:
        rng = step_rng(7, i)
        x = torch.from_numpy(rng.random((8, 4), dtype="float32"))
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    return step


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    model, opt = make()
    full = train_loop(
        stepper(model, opt),
        40,
        tmp_path / "a.ckpt",
        {"m": model},
        {"o": opt},
        log_every=10,
        checkpoint_every=10,
        progress=False,
    )
    assert full[-1]["loss"] < full[0]["loss"]

    model, opt = make()
    train_loop(
        stepper(model, opt),
        20,
        tmp_path / "b.ckpt",
        {"m": model},
        {"o": opt},
        log_every=10,
        checkpoint_every=10,
        progress=False,
    )
    model2, opt2 = make(seed=99)  # a fresh process would start from other random weights
    resumed = train_loop(
        stepper(model2, opt2),
        40,
        tmp_path / "b.ckpt",
        {"m": model2},
        {"o": opt2},
        log_every=10,
        checkpoint_every=10,
        progress=False,
    )
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full])
    assert (tmp_path / "b.log.json").exists()
