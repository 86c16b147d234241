"""Decoded TIFF tiles kept for the next read that needs them again.

tifffile's zarr store decodes a TIFF tile (JPEG, mostly) on every read. A block plan's fusion tile
(a 1024-px output block with a 64-px halo, :func:`wsi_fusion.tiling.plan.block_plan`) touches
4 x 4 of a scanner's 512-px tiles per plane, 2.25 x 2.25 tiles' worth of which it uses, and its
neighbour in the row (next in the same task) needs half of them again. Kept for one fusion tile,
every source tile is decoded about twice instead of four times: on a 67-Mpx, 5-plane slide of
512-px JPEG tiles that is 2.3 CPU-s of decoding out of ~33 (``benchmarks/bench_pipeline.py``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

#: The largest read the cache is sized for (px per side): a 1024-px block with its halo.
READ_SIDE = 1280
#: Upper bound of one cache (bytes), for files whose tiles are huge (full-width strips).
MAX_BYTES = 512 * 2**20


class DecodedTileCache(WrapperStore[Any]):
    """A read-only zarr store that keeps the last ``max_bytes`` of values ``store`` returned.

    Not locked: zarr runs every store call of a process on its one event-loop thread.
    """

    def __init__(self, store: Any, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(store)
        self.max_bytes = max_bytes
        self._values: OrderedDict[str, Buffer] = OrderedDict()
        self._bytes = 0

    def size_for(self, tile_hw: tuple[int, int], tile_bytes: int, planes: int) -> None:
        """Hold every tile that one ``READ_SIDE``-px read of each of ``planes`` planes touches."""
        per_plane = math.prod(-(-READ_SIDE // side) + 1 for side in tile_hw)
        self.max_bytes = min(MAX_BYTES, per_plane * planes * tile_bytes)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if byte_range is not None:
            return await self._store.get(key, prototype, byte_range)
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
            return value
        value = await self._store.get(key, prototype)
        if value is not None:
            self._values[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes and len(self._values) > 1:
                self._bytes -= len(self._values.popitem(last=False)[1])
        return value
