"""Per-network block watcher: follows the chain block by block and answers, from what it read once per
block, what every waiting withdrawal would otherwise ask the node on its own.

One watcher per network per worker process (`watcher_for`), shared by admission (hot-wallet balances
at a block), signing (fees, the recipient's code) and the confirmation waits. What it keeps:

- the canonical chain of the last RECENT_BLOCKS blocks (number, hash, parent hash, base fee, the
  hashes of their transactions). Each new block must be the child of the block held below it; when
  it is not (a reorg), the watcher reads back to the common ancestor and forgets what was above it.
  A gap larger than MAX_CATCH_UP blocks, or a reorg below what it holds, starts it afresh;
- the receipts of our transactions (sent by one of the network's hot wallets): one
  `eth_getBlockReceipts` per block that holds a transaction someone waits for, and one more read of
  that block once it is deep enough for a confirmation, whatever the number of withdrawals in it;
- per-block reads (`at_head`): an answer read at the head block (its number and hash) is shared by
  every caller while that block is the head. A read asked for at two or more heads in a row (a
  stream of admissions, of signatures) is prefetched: it goes, with the receipts, into one JSON-RPC
  batch sent when the next block arrives, until it was not asked for PREFETCH_BLOCKS blocks.

It polls `eth_getBlockByNumber("latest")` about once per block (`_next_poll`) while a withdrawal of
the network waits on it or something asked in the last `keep_awake` seconds, and sleeps otherwise (a
watcher that slept starts afresh at the head). Positive evidence only: a receipt the watcher holds says where
a transaction is; a receipt it could not read says nothing, and it never concludes that a
transaction is not mined: the waiters check directly then (activities/confirmations.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog

from activities.rpc import ChainIdMismatch, ChainRpc, RpcError, RpcUnavailable, balance_of_data
from models.tables import utcnow
from settings import NetworkConfig

log = structlog.get_logger()

RECENT_BLOCKS = 512
MAX_CATCH_UP = 64
PREFETCH_BLOCKS = 2
# Clocks of the process that signed and of this one may differ this much (see `covers`).
CLOCK_MARGIN = timedelta(seconds=2)
SIGNED_KEPT = 100_000
BLOCK_LEAD = 1 / 32  # the poll after a new block comes this share of a block time early
MAX_MISSES_SAMPLED = 4  # a new head after more empty polls than this is not a spacing sample

Read = tuple[Hashable, str, Callable[[int], list[Any]]]  # cache key, method, its params at a block


def _at_block(params: list[Any], block: int) -> list[Any]:
    return [*params, hex(block)]


def balance_read(wallet: str) -> Read:
    """A wallet's native balance at the head block (shared by admission and signing)."""
    return ("balance", wallet.lower()), "eth_getBalance", partial(_at_block, [wallet])


def token_balance_read(token: str, wallet: str) -> Read:
    """A wallet's balance of an ERC-20 token at the head block."""
    call = {"to": token, "data": balance_of_data(wallet)}
    return ("token_balance", token.lower(), wallet.lower()), "eth_call", partial(_at_block, [call])


def code_read(address: str) -> Read:
    """An address's code at the head block (never reused beyond its block: code can appear)."""
    return ("code", address.lower()), "eth_getCode", partial(_at_block, [address])


def nonce_read(wallet: str) -> Read:
    """A wallet's transaction count at the head block: the nonces below it are mined there."""
    return ("nonce", wallet.lower()), "eth_getTransactionCount", partial(_at_block, [wallet])


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: str
    success: bool
    fee_wei: int


@dataclass(frozen=True)
class ReceiptsRead:
    """The receipts of one block as read when the watcher's head was `head` (ours only, by hash)."""

    head: int
    receipts: dict[str, Receipt]


@dataclass
class _Block:
    number: int
    hash: str
    parent: str
    base_fee: int | None
    txs: frozenset[str]
    seen_at: datetime  # UTC, when this watcher read it: the block existed then
    seen_mono: float  # the same on this process's monotonic clock
    read: ReceiptsRead | None = None


@dataclass
class _Wanted:
    """A per-block read callers asked for, at heads `first` to `last` with no gap of more than
    PREFETCH_BLOCKS blocks."""

    method: str
    params: Callable[[int], list[Any]]
    first: int
    last: int


def receipt_of(r: dict[str, Any]) -> Receipt:
    return Receipt(
        tx_hash=str(r["transactionHash"]).lower(),
        block_number=int(r["blockNumber"], 16),
        block_hash=str(r["blockHash"]),
        success=int(r.get("status", "0x1"), 16) == 1,
        fee_wei=int(r["gasUsed"], 16) * int(r.get("effectiveGasPrice", "0x0"), 16),
    )


def watcher_for(rpc: ChainRpc, cfg: NetworkConfig) -> BlockWatcher:
    """The network's watcher, created on first use (one per ChainRpc, i.e. per worker process)."""
    if rpc.watcher is None:
        rpc.watcher = BlockWatcher(
            rpc,
            cfg.block_time_seconds,
            track_finalized=cfg.finality == "finalized",
            senders=cfg.hot_wallets,
        )
    return rpc.watcher


class BlockWatcher:
    def __init__(
        self,
        rpc: ChainRpc,
        block_time: float,
        *,
        track_finalized: bool = False,
        senders: Iterable[str] = (),
    ) -> None:
        self.rpc = rpc
        self.block_time = block_time
        self.track_finalized = track_finalized
        self.senders = {s.lower() for s in senders}
        self.finalized = -1  # number of the node's `finalized` block (when tracked)
        self.interval = max(0.1, min(block_time / 2, 5.0))
        self.keep_awake = max(10.0, 10 * block_time)
        self.head = -1
        self.last_progress = 0.0
        self._misses = 0  # polls in a row without a new block
        self._spacing = block_time  # the time between new heads, as observed (moving average)
        self._samples = 0
        self._last_new = 0.0  # when the last new head was seen
        self._blocks: dict[int, _Block] = {}
        self._first = -1  # the lowest block held; every block from there to the head is held
        self._index: dict[str, int] = {}  # tx hash -> number of the block holding it
        self._watched: Counter[str] = Counter()  # tx hashes a withdrawal waits for
        self._depth: Counter[tuple[int, int]] = Counter()  # (block, head it must reach) of confirmations
        self._wanted: dict[Hashable, _Wanted] = {}
        self._cache: dict[tuple[int, str, Hashable], Any] = {}  # (number, hash, key) -> answer
        self._inflight: dict[Hashable, asyncio.Task[None]] = {}
        self._signed: dict[str, float] = {}  # tx hash -> when signed in this process (monotonic)
        self._awake_until = 0.0
        self._wake = asyncio.Event()
        self._cond = asyncio.Condition()
        self._tick: asyncio.Future[None] | None = None  # done at the next poll that saw something new
        self._task: asyncio.Task[None] | None = None

    # --- what it knows -------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """It holds the node's head as of a poll at most 3 block times + 2 s ago."""
        return self.head >= 0 and time.monotonic() - self.last_progress < 3 * self.block_time + 2

    @property
    def base_fee(self) -> int | None:
        top = self._blocks.get(self.head)
        return top.base_fee if top is not None else None

    def hash_at(self, number: int) -> str | None:
        b = self._blocks.get(number)
        return b.hash if b is not None else None

    def covers(self, tx_hash: str, signed_at: datetime) -> bool:
        """Whether a transaction can only be in blocks this watcher has read: it holds every block
        from its first one on, and the first one already existed when it was read, so a transaction
        signed after that is in a later block. Signed in this process: compared on this process's
        clock (`signed`); else by `signed_at` (UTC, the signer's clock) with CLOCK_MARGIN. A
        transaction signed earlier may be in an older block: the waiter checks it directly. (A wrong
        answer costs time, never safety: see activities/confirmations.py.)"""
        first = self._blocks.get(self._first)
        if first is None:
            return False
        here = self._signed.get(tx_hash.lower())
        if here is not None:
            return here > first.seen_mono
        return signed_at > first.seen_at + CLOCK_MARGIN

    def signed(self, tx_hash: str) -> None:
        """Note a transaction signed in this process now (see `covers`)."""
        self._signed[tx_hash.lower()] = time.monotonic()
        while len(self._signed) > SIGNED_KEPT:
            del self._signed[next(iter(self._signed))]

    # --- running -------------------------------------------------------------------------------

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"blocks-{self.rpc.network}"
            )

    def wake(self) -> None:
        """Follow the chain (again) for at least `keep_awake` seconds."""
        self._awake_until = max(self._awake_until, time.monotonic() + self.keep_awake)
        self.ensure_started()
        self._wake.set()

    async def ready(self, within: float) -> bool:
        """Wake it and, when it has no view yet (just woken), wait up to `within` seconds for its
        first poll. A view gone stale is not waited for: the caller reads directly."""
        self.wake()
        if self.head < 0:
            with contextlib.suppress(TimeoutError):
                async with self._cond:
                    await asyncio.wait_for(self._cond.wait_for(lambda: self.healthy), within)
        return self.healthy

    @contextlib.contextmanager
    def watching(self, tx_hashes: Sequence[str], *, confirm: tuple[int, int] | None = None) -> Iterator[None]:
        """While inside: the receipts of blocks holding one of `tx_hashes` are read as they come, and
        with `confirm` = (block, head) that block is read again once the head reaches `head`."""
        keys = [h.lower() for h in tx_hashes]
        self._watched.update(keys)
        if confirm is not None:
            self._depth[confirm] += 1
        self.wake()
        try:
            yield
        finally:
            for k in keys:
                self._watched[k] -= 1
                if self._watched[k] <= 0:
                    del self._watched[k]
            if confirm is not None:
                self._depth[confirm] -= 1
                if self._depth[confirm] <= 0:
                    del self._depth[confirm]
            self._awake_until = max(self._awake_until, time.monotonic() + self.keep_awake)

    async def wait_next_block(self, at_most: float) -> None:
        """Until the next poll that saw something new, or `at_most` seconds. The waiters share one
        future per poll: thousands of them cost a callback each when it comes, not a task each and a
        turn at a lock (as a Condition's would)."""
        loop = asyncio.get_running_loop()
        tick = self._tick
        if tick is None or tick.done() or tick.get_loop() is not loop:
            tick = self._tick = loop.create_future()
        await asyncio.wait((tick,), timeout=at_most)

    def _busy(self) -> bool:
        return bool(self._watched) or bool(self._depth) or time.monotonic() < self._awake_until

    async def _run(self) -> None:
        while True:
            if not self._busy():
                self._wake.clear()
                if not self._busy():
                    await self._wake.wait()
                    self._reset()  # blocks went by unread while it slept: start again at the head
            started = time.monotonic()
            new = False
            try:
                new = await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep watching; waiters fall back to direct checks meanwhile
                log.warning("blocks.watch.failed", network=self.rpc.network, error=str(e)[:200])
            await asyncio.sleep(max(0.0, started + self._next_poll(new) - time.monotonic()))

    def _next_poll(self, new: bool) -> float:
        """Seconds from this poll's start to the next. Blocks come about one block time apart (the
        interval observed between new heads, else the configured one): after a new one the next
        poll is due one such interval later, a little early (BLOCK_LEAD), so the polls settle just
        after each block's arrival, about one per block; a poll that finds nothing new is repeated
        after 1/8 of it, doubling up to half a block time (a slot without a block, mining paused)."""
        now = time.monotonic()
        if new:
            if self._misses <= MAX_MISSES_SAMPLED and self._last_new:
                sample = min(max(now - self._last_new, self.block_time / 4), 4 * self.block_time)
                self._spacing += (sample - self._spacing) / (3 if self._samples else 1)
                self._samples += 1
            self._last_new, self._misses = now, 0
            return self._spacing * (1 - BLOCK_LEAD)
        self._misses += 1
        return min(self.interval, self._spacing / 8 * 2 ** (self._misses - 1))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for task in list(self._inflight.values()):
            task.cancel()

    # --- following the chain -------------------------------------------------------------------

    async def _poll(self) -> bool:
        """Read the node's head; True when the watcher has a new head."""
        was_healthy = self.healthy
        top = await self.rpc.block("latest")
        if top is None:
            return False
        number = int(top["number"], 16)
        held = self._blocks.get(number)
        if held is not None and held.hash == str(top["hash"]):
            if number < self.head:
                return False  # a lagging node (behind a load balancer): what it knows, we hold already
            self.last_progress = time.monotonic()
            if not was_healthy:
                await self._notify()
            return False
        new = [top]  # from the top down, until one's parent is a block we hold
        joined = False
        while True:
            low = int(new[-1]["number"], 16)
            parent = self._blocks.get(low - 1)
            if parent is not None and parent.hash == str(new[-1].get("parentHash")):
                joined = True
                break
            if not self._blocks or low - 1 < self._first or len(new) > MAX_CATCH_UP or low == 0:
                break
            block = await self.rpc.block(low - 1)
            if block is None:
                return False  # the node does not know it (now): look again at the next poll
            if str(block.get("hash")) != str(new[-1].get("parentHash")):
                # Not the parent of the block above it (a lagging endpoint answered from another
                # fork): never stitch two forks together; look again at the next poll.
                log.warning("blocks.walk.mismatch", network=self.rpc.network, number=low - 1)
                return False
            new.append(block)
        lowest = int(new[-1]["number"], 16)
        if joined:
            if lowest <= self.head:
                log.warning(
                    "blocks.reorg", network=self.rpc.network, since=lowest, old_head=self.head, head=number
                )
            self._forget_from(lowest)
        else:
            if self._blocks:
                log.warning("blocks.restart", network=self.rpc.network, old_head=self.head, head=number)
            self._reset()
        seen_at, seen_mono = utcnow(), time.monotonic()
        fresh = [self._append(b, seen_at, seen_mono) for b in reversed(new)]
        self.last_progress = time.monotonic()
        await self._after_new(fresh)
        await self._notify()
        return True

    async def _notify(self) -> None:
        tick, self._tick = self._tick, None
        if tick is not None and not tick.done():
            tick.set_result(None)
        async with self._cond:
            self._cond.notify_all()

    def _reset(self) -> None:
        self._blocks.clear()
        self._index.clear()
        self._cache.clear()
        self._first = -1
        self.head = -1
        self._last_new = 0.0

    def _append(self, raw: dict[str, Any], seen_at: datetime, seen_mono: float) -> _Block:
        number = int(raw["number"], 16)
        txs = frozenset(
            str(t if isinstance(t, str) else t.get("hash", "")).lower() for t in raw.get("transactions", [])
        )
        base = raw.get("baseFeePerGas")
        block = _Block(
            number=number,
            hash=str(raw["hash"]),
            parent=str(raw.get("parentHash", "")),
            base_fee=int(base, 16) if base else None,
            txs=txs,
            seen_at=seen_at,
            seen_mono=seen_mono,
        )
        self._blocks[number] = block
        for h in txs:
            self._index[h] = number
        self.head = number
        if self._first < 0:
            self._first = number
        while len(self._blocks) > RECENT_BLOCKS:
            self._drop(self._first)
            self._first += 1
        return block

    def _drop(self, number: int) -> None:
        block = self._blocks.pop(number, None)
        if block is not None:
            for h in block.txs:
                if self._index.get(h) == number:
                    del self._index[h]

    def _forget_from(self, number: int) -> None:
        """Blocks at `number` and above are no longer canonical."""
        for n in range(number, self.head + 1):
            self._drop(n)
        self.head = number - 1

    async def _after_new(self, fresh: list[_Block]) -> None:
        """One batch per new head: receipts of new blocks holding a watched transaction, receipts of
        blocks now deep enough for a waiting confirmation, and the per-block reads still wanted."""
        top = self._blocks[self.head]
        stale = [k for k in self._cache if k[0] < top.number - 2]
        for k in stale:
            del self._cache[k]
        receipts: dict[int, _Block] = {}
        if self._watched:
            for b in fresh:
                if any(h in self._watched for h in b.txs):
                    receipts[b.number] = b
        for number, target in self._depth:
            deep = self._blocks.get(number)
            if deep is not None and target <= top.number and (deep.read is None or deep.read.head < target):
                receipts[number] = deep
        plan: list[tuple[str, list[Any]]] = []
        sinks: list[Callable[[Any], None]] = []
        keys: list[Hashable] = []
        for b in receipts.values():
            plan.append(("eth_getBlockReceipts", [hex(b.number)]))
            sinks.append(partial(self._take_receipts, b, top.number))
            keys.append(("receipts", b.number, b.hash))
        for key, wanted in list(self._wanted.items()):
            if wanted.last < top.number - PREFETCH_BLOCKS:
                del self._wanted[key]
                continue
            if wanted.first == wanted.last:
                continue  # asked at one head only so far
            ck = (top.number, top.hash, key)
            plan.append((wanted.method, wanted.params(top.number)))
            sinks.append(partial(self._cache.__setitem__, ck))
            keys.append(ck)
        if self.track_finalized and (self._watched or self._depth or self.finalized < 0):
            plan.append(("eth_getBlockByNumber", ["finalized", False]))
            sinks.append(self._take_finalized)
        if plan:  # callers asking for the same reads meanwhile wait for this batch
            task = self._spawn(keys, self._batch(plan, sinks))
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _batch(self, plan: list[tuple[str, list[Any]]], sinks: list[Callable[[Any], None]]) -> None:
        try:
            results = await self.rpc.batch(plan)
        except (RpcUnavailable, ChainIdMismatch) as e:
            log.warning("blocks.batch.failed", network=self.rpc.network, error=str(e)[:200])
            return
        for sink, result in zip(sinks, results, strict=True):
            sink(result)

    def _take_finalized(self, result: Any) -> None:
        if isinstance(result, dict) and result.get("number"):
            self.finalized = int(result["number"], 16)

    def _take_receipts(self, block: _Block, head: int, result: Any) -> None:
        """Keep a block's receipts only when the node answered all of them for this very block."""
        if not isinstance(result, list) or len(result) < len(block.txs):
            return  # null, an error, or fewer receipts than transactions: the node does not know them
        ours: dict[str, Receipt] = {}
        for r in result:
            if not isinstance(r, dict) or str(r.get("blockHash")) != block.hash:
                return  # another block at that height now: the next poll follows it
            if self.senders and str(r.get("from", "")).lower() not in self.senders:
                continue
            try:
                receipt = receipt_of(r)
            except (KeyError, TypeError, ValueError):
                return  # a malformed receipt: keep nothing of this read (waiters check directly)
            ours[receipt.tx_hash] = receipt
        if block.read is None or block.read.head <= head:
            block.read = ReceiptsRead(head=head, receipts=ours)

    # --- answers for the waiters ---------------------------------------------------------------

    async def inclusion(self, tx_hashes: Sequence[str]) -> tuple[Receipt | None, bool]:
        """A receipt of one of `tx_hashes` in a block of the followed chain: (receipt, False).
        (None, True): a block lists one of them but its receipt cannot be read now (check directly).
        (None, False): in none of the blocks it holds."""
        for h in tx_hashes:
            block = self._blocks.get(self._index.get(h.lower(), -1))
            if block is None:
                continue
            read = await self._receipts(block, 0)
            receipt = read.receipts.get(h.lower()) if read is not None else None
            return (receipt, False) if receipt is not None else (None, True)
        return None, False

    async def confirmation(
        self, tx_hashes: Sequence[str], number: int, block_hash: str, target: int
    ) -> tuple[Receipt | None, bool]:
        """Once the head reached `target`: the receipt of one of `tx_hashes` in block `number`, which
        must still be `block_hash` in the followed chain and in the node's answer to a read of that
        height made at head >= `target`: (receipt, False). (None, True): it cannot tell (block not
        held, another block at that height, receipts unknown): check directly. (None, False): not
        deep enough yet (checked before that only for another block held at that height)."""
        block = self._blocks.get(number)
        if block is not None and block.hash != block_hash:
            return None, True  # another block at that height: a reorg to prove (or not) right away
        if self.head < target:
            return None, False
        if block is None:
            return None, True
        read = await self._receipts(block, target)
        if read is None:
            return None, True
        for h in tx_hashes:
            receipt = read.receipts.get(h.lower())
            if receipt is not None:
                return receipt, False
        return None, True

    async def _receipts(self, block: _Block, min_head: int) -> ReceiptsRead | None:
        """The block's receipts as read at head >= `min_head`: a read under way (the new block's
        batch, another waiter's) is awaited, else one is made; None when the node does not know."""
        for _ in range(2):
            read = block.read
            if read is not None and read.head >= min_head:
                return read
            key = ("receipts", block.number, block.hash)
            task = self._inflight.get(key) or self._spawn([key], self._read_receipts(block))
            with contextlib.suppress(RpcError, RpcUnavailable, ChainIdMismatch):
                await asyncio.shield(task)
        read = block.read
        return read if read is not None and read.head >= min_head else None

    async def _read_receipts(self, block: _Block) -> None:
        head = self.head
        result = await self.rpc.call("eth_getBlockReceipts", [hex(block.number)])
        self._take_receipts(block, head, result)

    async def at_head(
        self, reads: Sequence[Read], extra: Sequence[tuple[str, list[Any]]] = ()
    ) -> tuple[int, list[Any], list[Any]]:
        """Each of `reads` made at the head block (by number; cached under its number and hash):
        answered from the cache, else the missing ones in one batch shared with concurrent callers,
        together with the caller's own uncached `extra` calls. A read asked for at two heads in a
        row is prefetched with the next blocks. Returns (head number, answers to `reads`, answers to
        `extra`); an answer is the node's result or its RpcError. Raises RpcUnavailable (no current
        head, or the batch went unanswered)."""
        top = self._blocks.get(self.head)
        if top is None or not self.healthy:
            raise RpcUnavailable(f"{self.rpc.network}: the block watcher has no current head")
        self.wake()
        waits: list[asyncio.Task[None]] = []
        fetch: list[tuple[tuple[int, str, Hashable], str, list[Any]]] = []
        for key, method, params in reads:
            wanted = self._wanted.get(key)
            if wanted is None or wanted.last < top.number - PREFETCH_BLOCKS:
                self._wanted[key] = _Wanted(method, params, top.number, top.number)
            else:
                wanted.last = max(wanted.last, top.number)
            ck = (top.number, top.hash, key)
            if ck in self._cache:
                continue
            task = self._inflight.get(ck)
            if task is None:
                fetch.append((ck, method, params(top.number)))
            elif task not in waits:
                waits.append(task)
        extra_out: list[Any] = []
        if fetch or extra:
            work = self._fetch(fetch, list(extra), extra_out)
            waits.append(self._spawn([ck for ck, _, _ in fetch], work))
        for task in waits:
            await asyncio.shield(task)
        values = []
        for key, _, _ in reads:
            ck = (top.number, top.hash, key)
            if ck not in self._cache:
                raise RpcUnavailable(f"{self.rpc.network}: no answer at block {top.number}")
            values.append(self._cache[ck])
        return top.number, values, extra_out

    async def _fetch(
        self,
        items: list[tuple[tuple[int, str, Hashable], str, list[Any]]],
        extra: list[tuple[str, list[Any]]],
        extra_out: list[Any],
    ) -> None:
        results = await self.rpc.batch([(method, params) for _, method, params in items] + extra)
        for (ck, _, _), result in zip(items, results, strict=False):
            self._cache[ck] = result
        extra_out.extend(results[len(items) :])

    def _spawn(self, keys: list[Hashable], work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        for k in keys:
            self._inflight[k] = task

        def done(t: asyncio.Task[None]) -> None:
            for k in keys:
                if self._inflight.get(k) is t:
                    del self._inflight[k]
            if not t.cancelled():
                t.exception()  # retrieved: a failure is the callers' to handle, not the loop's to log

        task.add_done_callback(done)
        return task
