"""Checks shared by the tests of the learned fusers (acnn, gacn, msegnet, cgan_blurmask, fmb_net):
shipped weights and their sha256, bad weight files, the fixed reference stack and its stored
output, the weights contract, and the trained fusers' gain over the best plane.

Regenerate a decision fuser's reference after retraining with
``python tests/fusers/test_<name>.py --regenerate``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytest
from conftest import FloatArray, depth_map, focal_stack, psnr, sharp_image

from wsi_fusion.errors import WeightsError
from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers._torch import TorchFuser
from wsi_fusion.fusers.base import FusionResult

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).parent / "data"

F = TypeVar("F", bound=TorchFuser)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test: tiny tensors, and several threads on a shared CPU are
    5-10x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` after
    importing it into the test module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- shipped weights ------------------------------------------------------------------------------


def needs_weights(cls: type[TorchFuser]) -> pytest.MarkDecorator:
    """Skip marker for tests of the shipped weights of ``cls`` (absent in a partial checkout)."""
    state = cls.weights_status()
    return pytest.mark.skipif(state != "present", reason=f"{cls.__name__} weights {state}")


def shipped(cls: type[F], **params: Any) -> F:
    """``cls`` with its shipped weights on the CPU; skips the test when they are not present."""
    if cls.weights_status() != "present":
        pytest.skip(f"{cls.__name__} weights {cls.weights_status()}")
    return cls(device="cpu", **params)


def check_sha256(cls: type[TorchFuser]) -> None:
    """The shipped file exists, matches its record, is small; loading it checks the hash again."""
    from wsi_fusion.fusers._weights import file_sha256, resolve_weights

    path = resolve_weights(cls.weights_record)
    assert file_sha256(path) == cls.weights_record.sha256
    assert cls.weights_status() == "present"
    assert path.stat().st_size <= 25 * 1024 * 1024
    fuser = cls(device="cpu")
    assert not fuser.model.training
    assert fuser.describe()["weights"]["sha256"] == cls.weights_record.sha256


def check_bad_weights(
    cls: type[TorchFuser],
    wrong: torch.nn.Module | Mapping[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    """Wrong shapes, a truncated file and a pickle each raise a WeightsError naming the file.

    ``wrong`` is a network (written with the project's ``save_weights``) or a state dict whose
    keys or shapes do not fit ``cls``'s network (another architecture or width); the other two
    files are made from ``cls``'s own (random) weights, so no shipped file is needed.
    """
    import torch
    from safetensors.torch import save_file

    from wsi_fusion.fusers._weights import save_weights

    own = {k: v.contiguous() for k, v in cls.untrained(device="cpu").model.state_dict().items()}
    misfit = tmp_path / "wrong_shape.safetensors"
    if isinstance(wrong, torch.nn.Module):
        save_weights(wrong, misfit)
    else:
        save_file({k: v.contiguous() for k, v in wrong.items()}, str(misfit))
    truncated = tmp_path / "truncated.safetensors"
    save_file(own, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:1000])
    pickled = tmp_path / "model.pt"
    torch.save(own, pickled)
    for path, reason in [(misfit, "do not fit"), (truncated, "truncated"), (pickled, "pickle")]:
        with pytest.raises(WeightsError, match=reason) as info:
            _ = cls(weights=str(path), device="cpu").model
        assert re.search(re.escape(path.name), str(info.value)), str(info.value)


# -- the fixed reference stack --------------------------------------------------------------------


def reference_stack() -> FloatArray:
    """A fixed 3-plane 48 x 64 stack (astronaut crop, depth edges and a ramp)."""
    sharp = np.ascontiguousarray(sharp_image("astronaut")[:, 100:148, 200:264])
    depth = depth_map(sharp.shape[1:], n_planes=3)
    return focal_stack(sharp, depth, n_planes=3, blur_per_plane=2.0)


#: The network's own decisions, before the depth surface (``fusers.surface``) re-decides them:
#: what the stored references pin down about the shipped weights.
RAW_DECISIONS = {"device": "cpu", "depth_radius": 0}


def reference_path(name: str) -> Path:
    return DATA / f"{name}_reference.npz"


def regenerate(name: str) -> None:
    """Write a decision fuser's reference output of the shipped weights (after retraining)."""
    result = create_fuser(name, **RAW_DECISIONS).fuse(reference_stack())
    assert result.weights is not None
    DATA.mkdir(exist_ok=True)
    np.savez_compressed(
        reference_path(name),
        fused=result.fused.astype(np.float32),
        weights=result.weights.astype(np.float16),
    )


def check_reference(name: str) -> None:
    """A decision fuser's shipped weights on the fixed stack reproduce the stored output."""
    ref = np.load(reference_path(name))
    result = create_fuser(name, **RAW_DECISIONS).fuse(reference_stack())
    assert result.weights is not None
    # Float32 CPU kernels differ slightly between machines; a decision can flip only where
    # two planes are nearly tied, so allow a handful of differing pixels.
    fused_diff = np.abs(result.fused - ref["fused"]).max(axis=0)
    assert np.mean(fused_diff > 1e-3) < 0.005, f"{np.mean(fused_diff > 1e-3):.4f} differ"
    weight_diff = np.abs(result.weights - ref["weights"].astype(np.float32)).max(axis=0)
    assert np.mean(weight_diff > 1e-2) < 0.005


# -- results --------------------------------------------------------------------------------------


def check_weights_contract(result: FusionResult, stack: FloatArray) -> None:
    """Per-plane weights sum to 1 and the fused image is the weighted sum of the planes."""
    assert result.weights is not None
    np.testing.assert_allclose(result.weights.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        result.fused, np.einsum("zchw,zhw->chw", stack, result.weights), atol=1e-5
    )


def check_beats_every_plane(name: str, margin_db: float = 2.0, **params: Any) -> None:
    """The trained fuser beats the best single plane of a 4-plane stack by ``margin_db``."""
    sharp = np.ascontiguousarray(sharp_image("astronaut")[:, 40:168, 180:340])
    stack = focal_stack(sharp, depth_map(sharp.shape[1:], n_planes=4), 4, blur_per_plane=2.0)
    fused = create_fuser(name, device="cpu", **params).fuse(stack).fused
    best_plane = max(psnr(plane, sharp) for plane in stack)
    assert psnr(fused, sharp) > best_plane + margin_db
