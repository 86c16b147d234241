"""Weights files: sha256 pinning, safetensors only, strict shapes, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wsi_fusion.errors import WeightsError  # noqa: E402
from wsi_fusion.fusers._torch import TorchFuser  # noqa: E402
from wsi_fusion.fusers._weights import (  # noqa: E402
    WEIGHTS_ENV,
    WeightsRecord,
    load_into,
    load_state_dict,
    resolve_weights,
    save_weights,
    weights_state,
)
from wsi_fusion.fusers.base import FusionResult  # noqa: E402


def tiny(width: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.Conv2d(width, 3, 1)
    )


class TinyFuser(TorchFuser):
    """Not registered: a 1-plane pass-through through a small conv net."""

    name = "tiny"
    weights_record = WeightsRecord("tiny", "tiny/tiny.safetensors", "0" * 64)

    @property
    def margin(self) -> int:
        return 1

    def build_model(self) -> torch.nn.Module:
        return tiny()

    def fuse(self, stack: np.ndarray) -> FusionResult:
        with self.autocast():
            out = self.model(torch.from_numpy(stack[0][None]).to(self.device))
        return FusionResult(out[0].float().clamp(0, 1).cpu().numpy(), None)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, str, torch.nn.Module]:
    torch.manual_seed(0)
    module = tiny()
    path = tmp_path / "tiny" / "tiny.safetensors"
    return path, save_weights(module, path), module


def test_roundtrip_in_fp16_with_sha(saved: tuple[Path, str, torch.nn.Module]) -> None:
    path, sha, module = saved
    state = load_state_dict(path, sha)
    assert all(v.dtype == torch.float16 for v in state.values())
    fresh = tiny()
    load_into(fresh, state)
    for (_, a), (_, b) in zip(fresh.state_dict().items(), module.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_sha_mismatch_is_refused(saved: tuple[Path, str, torch.nn.Module]) -> None:
    path, _, _ = saved
    with pytest.raises(WeightsError, match="sha256"):
        load_state_dict(path, "f" * 64)


def test_truncated_file_is_refused(saved: tuple[Path, str, torch.nn.Module]) -> None:
    path, _, _ = saved
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(WeightsError, match="truncated"):
        load_state_dict(path)


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(WeightsError, match="pickle"):
        load_state_dict(bad)
    archive = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), archive)
    with pytest.raises(WeightsError, match="pickle"):
        load_state_dict(archive)


def test_safetensors_whose_header_length_starts_with_0x80_loads(tmp_path: Path) -> None:
    """The header length is little-endian: 0x80 as its first byte must not look like a pickle."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    for n in range(1, 400):  # find a key length that makes the header length end in 0x80
        save_file({"k" * n: torch.zeros(1)}, str(path))
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert list(load_state_dict(path)) == ["k" * n]


def test_wrong_shape_names_the_tensor(saved: tuple[Path, str, torch.nn.Module]) -> None:
    path, sha, _ = saved
    with pytest.raises(WeightsError, match="wrong shape"):
        load_into(tiny(width=8), load_state_dict(path, sha), source=str(path))


def test_resolution_order_and_status(
    saved: tuple[Path, str, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sha, _ = saved
    record = WeightsRecord("tiny", "tiny/tiny.safetensors", sha)
    monkeypatch.setenv(WEIGHTS_ENV, str(path.parent.parent))
    assert resolve_weights(record) == path
    assert weights_state(record) == "present"
    assert weights_state(WeightsRecord("tiny", "tiny/tiny.safetensors", "0" * 64)) == (
        "sha256 mismatch"
    )
    assert weights_state(WeightsRecord("x", "x/none.safetensors", sha)) == "missing"
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(WeightsRecord("x", "x/none.safetensors", sha))


def test_torch_fuser_loads_explicit_weights_lazily(
    saved: tuple[Path, str, torch.nn.Module],
) -> None:
    path, sha, module = saved
    fuser = TinyFuser(weights=str(path), device="cpu")
    assert fuser._model is None  # nothing loaded before first use
    stack = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    result = fuser.fuse(stack)
    assert result.fused.shape == (3, 8, 8)
    assert fuser.describe()["weights"]["sha256"] == sha
    # The shipped-file path is pinned to the record's sha256: a different file is refused.
    with pytest.raises(WeightsError):
        _ = TinyFuser(device="cpu").model


def test_untrained_instance_is_seeded() -> None:
    a = TinyFuser.untrained(seed=3, device="cpu").model
    b = TinyFuser.untrained(seed=3, device="cpu").model
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y)
