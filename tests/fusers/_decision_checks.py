"""Shared checks of the decision-map fusers gacn and acnn: weights, reference output, bad files.

Regenerate a reference after retraining with ``python tests/fusers/test_<name>.py --regenerate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FloatArray, depth_map, focal_stack, sharp_image

from wsi_fusion.errors import WeightsError
from wsi_fusion.fusers import create_fuser
from wsi_fusion.fusers._torch import TorchFuser

DATA = Path(__file__).parent / "data"


def reference_stack() -> FloatArray:
    """A fixed 3-plane 48 x 64 stack (astronaut crop, depth edges and a ramp)."""
    sharp = np.ascontiguousarray(sharp_image("astronaut")[:, 100:148, 200:264])
    depth = depth_map(sharp.shape[1:], n_planes=3)
    return focal_stack(sharp, depth, n_planes=3, blur_per_plane=2.0)


def reference_path(name: str) -> Path:
    return DATA / f"{name}_reference.npz"


def regenerate(name: str) -> None:
    """Write the reference output of the shipped weights (run after retraining)."""
    result = create_fuser(name, device="cpu").fuse(reference_stack())
    assert result.weights is not None
    DATA.mkdir(exist_ok=True)
    np.savez_compressed(
        reference_path(name),
        fused=result.fused.astype(np.float32),
        weights=result.weights.astype(np.float16),
    )


def check_reference(name: str) -> None:
    """Shipped weights on the fixed stack reproduce the stored output."""
    ref = np.load(reference_path(name))
    result = create_fuser(name, device="cpu").fuse(reference_stack())
    assert result.weights is not None
    # Float32 CPU kernels differ slightly between machines; a decision can flip only where
    # two planes are nearly tied, so allow a handful of differing pixels.
    fused_diff = np.abs(result.fused - ref["fused"]).max(axis=0)
    assert np.mean(fused_diff > 1e-3) < 0.005, f"{np.mean(fused_diff > 1e-3):.4f} differ"
    weight_diff = np.abs(result.weights - ref["weights"].astype(np.float32)).max(axis=0)
    assert np.mean(weight_diff > 1e-2) < 0.005


def check_bad_weights(cls: type[TorchFuser], wrong_arch: TorchFuser, tmp_path: Path) -> None:
    """Wrong shapes, a truncated file and a pickle each raise a WeightsError naming the file."""
    import torch

    from wsi_fusion.fusers._weights import resolve_weights, save_weights

    # Another architecture's weights: keys and shapes do not fit.
    other = tmp_path / "other.safetensors"
    save_weights(wrong_arch.model, other)
    with pytest.raises(WeightsError, match="do not fit"):
        _ = cls(weights=str(other), device="cpu").model

    shipped = resolve_weights(cls.weights_record)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(shipped.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="truncated"):
        _ = cls(weights=str(truncated), device="cpu").model

    pickled = tmp_path / "model.pt"
    torch.save(cls.untrained(device="cpu").model.state_dict(), pickled)
    with pytest.raises(WeightsError, match="pickle"):
        _ = cls(weights=str(pickled), device="cpu").model


def check_sha256(cls: type[TorchFuser]) -> None:
    """The shipped file exists and matches its record; loading it checks the hash again."""
    from wsi_fusion.fusers._weights import file_sha256, resolve_weights

    path = resolve_weights(cls.weights_record)
    assert file_sha256(path) == cls.weights_record.sha256
    assert cls.weights_status() == "present"
    assert path.stat().st_size <= 25 * 1024 * 1024
    fuser = cls(device="cpu")
    assert fuser.describe()["weights"]["sha256"] == cls.weights_record.sha256
