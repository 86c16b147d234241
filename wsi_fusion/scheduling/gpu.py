"""Learned fusers on a worker: device placement, CPU fallback and the automatic batch size.

torch is imported only inside these functions, and only for fusers that need weights, so the
classical pipeline never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from wsi_fusion.fusers import Fuser

logger = logging.getLogger(__name__)

#: Share of the free GPU memory the automatic batch size plans to use; the rest absorbs
#: allocator fragmentation and the peaks of other processes on the same device.
MEMORY_FRACTION = 0.6
#: Largest automatic batch: beyond this the GPU is saturated and the latency per task grows.
MAX_AUTO_BATCH = 64

MemGetInfo = Callable[[Any], tuple[int, int]]


def auto_batch_size(
    free_bytes: int,
    bytes_per_tile: int,
    *,
    fraction: float = MEMORY_FRACTION,
    limit: int = MAX_AUTO_BATCH,
) -> int:
    """Tiles per forward pass that fit in ``fraction`` of ``free_bytes``, clamped to [1, limit].

    Parameters
    ----------
    free_bytes
        Free device memory after the model is loaded (``torch.cuda.mem_get_info()[0]``).
    bytes_per_tile
        Peak memory one tile of the job adds to a forward pass (:func:`probe_bytes_per_tile`).
    """
    if bytes_per_tile <= 0:
        return limit
    return max(1, min(limit, int(free_bytes * fraction) // bytes_per_tile))


def probe_bytes_per_tile(fuser: Fuser, planes: int, channels: int, tile: int) -> int:
    """Peak CUDA memory one ``(planes, channels, tile, tile)`` stack adds to a forward pass."""
    import torch

    device = fuser.device  # type: ignore[attr-defined]
    if fuser.needs_weights:
        _ = fuser.model  # type: ignore[attr-defined]  # weights loaded before measuring
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    # Noise, not zeros: a blank tile takes shortcuts (focus_measure skips its refinement when
    # one plane wins everywhere) and would under-estimate what a real tile needs.
    noise = np.random.default_rng(0).random((planes, channels, tile, tile), dtype=np.float32)
    fuser.fuse_batch([noise])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    # Never below the input itself (float32), whatever the allocator reports.
    return max(int(peak), planes * channels * tile * tile * 4)


def device_for_worker(worker_index: int | None, n_devices: int) -> str | None:
    """The ``cuda:N`` a worker uses when several GPUs are visible to it (``None``: default).

    One worker per GPU: a local cluster on a multi-GPU node numbers its workers 0..n-1, so
    worker ``k`` takes GPU ``k mod n``. Workers that see one GPU (SLURM jobs with ``--gres=gpu:1``,
    dask-cuda workers) keep the default device.
    """
    if worker_index is None or n_devices <= 1:
        return None
    return f"cuda:{worker_index % n_devices}"


def runs_on_device(fuser: Fuser) -> bool:
    """Whether ``fuser`` runs on a torch device: a learned fuser, or a classical one in its
    torch implementation (``focus_measure`` with a ``device``)."""
    return fuser.needs_weights or bool(getattr(fuser, "on_device", False))


def place_fuser(name: str, params: dict[str, Any], worker_index: int | None) -> dict[str, Any]:
    """``params`` with a per-worker CUDA device when none (or ``auto``) was chosen."""
    if params.get("device", "auto") != "auto":
        return params
    import torch

    if not torch.cuda.is_available():
        return params
    device = device_for_worker(worker_index, torch.cuda.device_count())
    return params if device is None else {**params, "device": device}


def configure_learned_fuser(
    fuser: Fuser,
    *,
    planes: int,
    channels: int,
    tile: int,
    batch_given: bool,
    mem_get_info: MemGetInfo | None = None,
    probe: Callable[[Fuser, int, int, int], int] = probe_bytes_per_tile,
) -> int:
    """Log where a learned fuser runs and set its batch size; return the batch size.

    On the CPU (no CUDA device visible) the configured batch size is kept and one warning says
    so. On a GPU without a configured ``batch_size`` the batch is chosen from the free memory
    after loading the model and the measured cost of one tile (:func:`auto_batch_size`).
    """
    params = fuser.params
    configured = int(getattr(params, "batch_size", 1))
    device = fuser.device  # type: ignore[attr-defined]
    if device.type != "cuda":
        logger.warning(
            "fuser %s runs on the CPU (%s): no CUDA GPU visible to this worker; expect it to be "
            "much slower than on a GPU",
            fuser.name,
            "device=cpu requested" if getattr(params, "device", "auto") == "cpu" else "fallback",
        )
        return configured
    if batch_given:
        logger.info("fuser %s on %s, batch size %d (configured)", fuser.name, device, configured)
        return configured
    if mem_get_info is None:
        import torch

        mem_get_info = torch.cuda.mem_get_info
    per_tile = probe(fuser, planes, channels, tile)
    free, _total = mem_get_info(device)
    chosen = auto_batch_size(free, per_tile)
    fuser.params = params.model_copy(update={"batch_size": chosen})
    logger.info(
        "fuser %s on %s, batch size %d (automatic: %.1f GiB free, %.0f MiB per tile)",
        fuser.name,
        device,
        chosen,
        free / 2**30,
        per_tile / 2**20,
    )
    return chosen
