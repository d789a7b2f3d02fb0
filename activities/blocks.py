"""Per-network block watcher: reads each new block once and wakes the activities waiting on it.

One watcher per network per worker process. Waiting withdrawals look their transaction hashes up in
the watcher's index of recent blocks instead of polling for receipts, so RPC calls grow with blocks,
not with pending withdrawals. A withdrawal still checks its receipt directly when the watcher is
unhealthy (no new head for a while) or after a long fallback interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import structlog

from activities.rpc import ChainRpc

log = structlog.get_logger()

RECENT_BLOCKS = 512
MAX_CATCH_UP = 64


class BlockWatcher:
    def __init__(self, rpc: ChainRpc, block_time: float, *, track_finalized: bool = False) -> None:
        self.rpc = rpc
        self.track_finalized = track_finalized
        self.finalized = -1  # number of the node's `finalized` block (when tracked)
        self.interval = max(0.1, min(block_time / 2, 5.0))
        self.block_time = block_time
        self.head = -1
        self.last_progress = 0.0
        self._index: dict[str, tuple[int, str]] = {}  # tx hash -> (block number, block hash)
        self._order: deque[tuple[int, list[str]]] = deque()
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"blocks-{self.rpc.network}"
            )

    @property
    def healthy(self) -> bool:
        return self.head >= 0 and time.monotonic() - self.last_progress < 3 * self.block_time + 2

    def lookup(self, tx_hashes: list[str]) -> tuple[str, int, str] | None:
        for h in tx_hashes:
            hit = self._index.get(h.lower())
            if hit is not None:
                return h, hit[0], hit[1]
        return None

    async def wait_next_block(self, at_most: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with self._cond:
                await asyncio.wait_for(self._cond.wait(), at_most)

    async def _run(self) -> None:
        while True:
            try:
                await self._read_new_blocks()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep watching; waiters fall back to direct checks meanwhile
                log.warning("blocks.watch.failed", network=self.rpc.network, error=str(e)[:200])
            await asyncio.sleep(self.interval)

    async def _read_new_blocks(self) -> None:
        head = await self.rpc.block_number()
        start = max(self.head + 1, head - MAX_CATCH_UP + 1) if self.head >= 0 else head
        if head < self.head:  # the chain went back (reorg/revert): forget what is above it
            self._forget_above(head)
            self.head = head
        for n in range(start, head + 1):
            block = await self.rpc.block(n)
            if block is None:
                break
            self._forget_above(n - 1)
            hashes = [str(t).lower() for t in block.get("transactions", [])]
            for h in hashes:
                self._index[h] = (n, str(block["hash"]))
            self._order.append((n, hashes))
            self.head = n
        if self.track_finalized and (start <= head or self.finalized < 0):
            fin = await self.rpc.block("finalized")
            if fin is not None:
                self.finalized = int(fin["number"], 16)
        while len(self._order) > RECENT_BLOCKS:
            _, old = self._order.popleft()
            for h in old:
                self._index.pop(h, None)
        if self.head == head:
            self.last_progress = time.monotonic()
        async with self._cond:
            self._cond.notify_all()

    def _forget_above(self, n: int) -> None:
        while self._order and self._order[-1][0] > n:
            _, hashes = self._order.pop()
            for h in hashes:
                self._index.pop(h, None)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
