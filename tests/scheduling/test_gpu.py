"""GPU placement and automatic batch size, with the device and its free memory mocked."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import Field

from wsi_fusion.fusers.base import FuserParams
from wsi_fusion.scheduling.gpu import (
    auto_batch_size,
    configure_learned_fuser,
    device_for_worker,
)

GiB = 2**30
MiB = 2**20


@pytest.mark.parametrize(
    ("free", "per_tile", "expected"),
    [
        (10 * GiB, 100 * MiB, 61),  # 0.6 * 10 GiB = 6144 MiB -> 61 tiles of 100 MiB
        (10 * GiB, 1 * MiB, 64),  # capped: the GPU is saturated long before
        (50 * MiB, 100 * MiB, 1),  # never zero: one tile still runs (or fails with a clear OOM)
        (1 * GiB, 0, 64),
    ],
)
def test_auto_batch_size_arithmetic(free: int, per_tile: int, expected: int) -> None:
    assert auto_batch_size(free, per_tile) == expected


def test_auto_batch_size_fraction_and_limit() -> None:
    assert auto_batch_size(1000, 100, fraction=1.0, limit=1000) == 10
    assert auto_batch_size(1000, 100, fraction=0.5, limit=3) == 3


def test_one_worker_per_gpu() -> None:
    assert [device_for_worker(k, 4) for k in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
    ]
    assert device_for_worker(3, 1) is None  # one visible GPU (SLURM gres, dask-cuda): default
    assert device_for_worker(None, 4) is None  # worker names that are not indices


class _Params(FuserParams):
    device: str = "auto"
    batch_size: int = Field(8, ge=1)
    precision: str = "fp32"


class FakeLearned:
    """Stands in for a TorchFuser: a device and TorchParams-like parameters."""

    name = "fake"

    def __init__(self, device_type: str, **params: Any) -> None:
        self.params = _Params(**params)
        self.device = SimpleNamespace(type=device_type)


def test_gpu_batch_size_chosen_from_free_memory() -> None:
    fuser = FakeLearned("cuda")
    probed = []

    def probe(f: Any, planes: int, channels: int, tile: int) -> int:
        probed.append((planes, channels, tile))
        return 200 * MiB

    chosen = configure_learned_fuser(
        fuser,  # type: ignore[arg-type]
        planes=5,
        channels=3,
        tile=512,
        batch_given=False,
        mem_get_info=lambda device: (20 * GiB, 80 * GiB),
        probe=probe,
    )
    assert probed == [(5, 3, 512)]
    assert chosen == 61 and fuser.params.batch_size == 61  # 0.6 * 20 GiB / 200 MiB


def test_configured_batch_size_is_kept_on_gpu() -> None:
    fuser = FakeLearned("cuda", batch_size=3)

    def no_probe(*args: Any) -> int:
        raise AssertionError("a configured batch size needs no probe")

    chosen = configure_learned_fuser(
        fuser,  # type: ignore[arg-type]
        planes=5,
        channels=3,
        tile=512,
        batch_given=True,
        mem_get_info=lambda device: (1, 1),
        probe=no_probe,
    )
    assert chosen == 3 and fuser.params.batch_size == 3


def test_cpu_fallback_is_logged_and_keeps_the_batch_size(caplog: pytest.LogCaptureFixture) -> None:
    fuser = FakeLearned("cpu")
    with caplog.at_level(logging.WARNING, logger="wsi_fusion.scheduling.gpu"):
        chosen = configure_learned_fuser(
            fuser,  # type: ignore[arg-type]
            planes=3,
            channels=3,
            tile=256,
            batch_given=False,
        )
    assert chosen == 8
    assert "runs on the CPU" in caplog.text and "no CUDA GPU" in caplog.text
