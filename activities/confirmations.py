"""Tracking inclusion and confirmations of a withdrawal's attempts (all at one nonce).

The network's `BlockWatcher` answers on the happy path: it reads the receipts of a block holding one
of our hashes once for every withdrawal in it, and reads that block's receipts again once it is deep
enough, so a waiting withdrawal makes no call of its own. Direct checks (receipts by hash, the block
at the inclusion height) remain for what the watcher cannot tell: when it is unhealthy, when a block
lists our hash but its receipts are unknown, when it holds another block at the inclusion height, for
a transaction signed before it started following the chain, and every `fallback_after` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from temporalio import activity

from activities.blocks import BlockWatcher, Receipt, nonce_read, watcher_for
from activities.broadcast import find_mined_attempt, resend
from activities.rpc import ChainRpc, Chains, RpcError, RpcUnavailable
from models import repo
from models.db import Database
from models.domain import AwaitInput, Inclusion, InclusionOutcome, TxPurpose
from models.tables import TxAttempt, Withdrawal
from settings import EngineConfig

log = structlog.get_logger()

# A wait heartbeats at most this often (its heartbeat timeout is 20 s: workflows/withdrawal.py).
HEARTBEAT_EVERY = 5.0
# Direct looks at receipts (the fallback beside the block watcher) in flight at once per network in
# one process. A wait that finds them all busy looks in a later round: with thousands waiting, a
# watcher gone stale under load would otherwise send every one of them to the node at once, and the
# queue of requests costs more CPU than the loop has (the watcher then stays stale).
DIRECT_LOOKS = 8


class ConfirmationActivities:
    def __init__(self, db: Database, chains: Chains, config: EngineConfig) -> None:
        self.db, self.chains, self.config = db, chains, config
        self._mined_nonces: dict[tuple[str, str], tuple[float, int]] = {}
        self._nonce_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._direct_looks: dict[str, asyncio.Semaphore] = {}

    async def mined_nonce(self, network: str, wallet: str) -> int:
        """The wallet's mined transaction count, read once per block (at the watcher's head) for all
        the withdrawals of the wallet waiting in this process (RPC cost per wallet, not per
        withdrawal); without a healthy watcher at most once per half block."""
        blocks = self.watcher(network)
        if blocks.healthy:
            with contextlib.suppress(RpcUnavailable):  # the same read as signing's funds check
                _, (value,), _ = await blocks.at_head([nonce_read(wallet)])
                if not isinstance(value, RpcError):
                    return int(value, 16)
        key = (network, wallet)
        max_age = max(0.2, self.config.networks[network].block_time_seconds / 2)
        lock = self._nonce_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._mined_nonces.get(key)
            if cached is not None and time.monotonic() - cached[0] < max_age:
                return cached[1]
            value = await self.chains[network].latest_nonce(wallet)
            self._mined_nonces[key] = (time.monotonic(), value)
            return value

    def watcher(self, network: str) -> BlockWatcher:
        w = watcher_for(self.chains[network], self.config.networks[network])
        w.ensure_started()
        return w

    async def aclose(self) -> None:
        for rpc in self.chains.rpc.values():
            if rpc.watcher is not None:
                await rpc.watcher.aclose()

    @activity.defn
    async def await_transaction(self, inp: AwaitInput) -> Inclusion:
        """Watch the withdrawal's attempts on chain, heartbeating throughout.

        `until_included_only`: return INCLUDED as soon as one is in a block; STUCK when ours is the next
        nonce the chain must mine for the wallet and has not been mined for `stuck_after_seconds` since
        it became next (a transaction queued behind a lower nonce is never stuck); NONCE_USED when the
        wallet's mined nonce passed ours but no node shows one of our receipts (the workflow then proves
        who holds it). Otherwise: return CONFIRMED with the required confirmations on the canonical
        chain, or REORGED when the block that held it is proven gone (a null receipt alone proves
        nothing). While ours is next and not mined, its recorded bytes are resent now and then (a
        dropped transaction comes back). Writes data only (block, confirmations, fee, attempt
        outcomes); the workflow moves the status.
        """
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, inp.withdrawal_id)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
        if w is None:
            raise LookupError(inp.withdrawal_id)
        blocks = self.watcher(w.network)
        target = inp.included_block_number + inp.required_confirmations - 1
        confirm = None if inp.until_included_only else (inp.included_block_number, target)
        with blocks.watching([a.tx_hash for a in attempts], confirm=confirm):
            return await self._follow(w, attempts, inp, blocks)

    async def _follow(
        self, w: Withdrawal, attempts: list[TxAttempt], inp: AwaitInput, blocks: BlockWatcher
    ) -> Inclusion:
        cfg = self.config.networks[w.network]
        rpc = self.chains[w.network]
        hashes = [a.tx_hash for a in attempts]
        wait = max(0.2, min(cfg.block_time_seconds * 2, 10.0))
        resend_after = max(2.0, cfg.block_time_seconds * 3)
        fallback_after = max(30.0, cfg.block_time_seconds * 20)
        # The wallet's mined nonce is only looked at once a transaction had time to be mined and seen.
        nonce_after = 2 * cfg.block_time_seconds
        target = inp.included_block_number + inp.required_confirmations - 1
        started = last_send = time.monotonic()
        await blocks.ready(min(2.0, wait))
        # One of our attempts may be in a block the watcher never read (signed before it started
        # following the chain, e.g. after a restart): one direct look first.
        covered = all(blocks.covers(a.tx_hash, a.created_at) for a in attempts)
        last_direct = 0.0 if inp.until_included_only and not covered else started
        direct_head = -1  # the watcher's head at the last direct look it asked for
        seen: str | None = None
        next_since: float | None = None  # when ours was first seen as the wallet's next nonce to mine
        used_since: float | None = None  # when the wallet's mined nonce was first seen past ours
        beat = -HEARTBEAT_EVERY  # when it last heartbeated
        looks = self._direct_looks.get(w.network)
        if looks is None:
            looks = self._direct_looks[w.network] = asyncio.Semaphore(DIRECT_LOOKS)
        while True:
            now = time.monotonic()
            if now - beat >= HEARTBEAT_EVERY:  # not every block: thousands wait in one process
                activity.heartbeat()
                beat = now
            # A direct look is due without a healthy watcher, and now and then beside it. A healthy
            # watcher is asked every round all the same: a due look that finds no free slot must not
            # keep a waiter from what the watcher already knows.
            due = not blocks.healthy or now - last_direct > fallback_after
            direct = due
            if blocks.healthy:
                if inp.until_included_only:
                    receipt, unsure = await blocks.inclusion(hashes)
                elif cfg.finality == "finalized" and blocks.finalized < inp.included_block_number:
                    receipt, unsure = None, False
                else:
                    receipt, unsure = await blocks.confirmation(
                        hashes, inp.included_block_number, inp.included_block_hash or "", target
                    )
                if receipt is not None:
                    return await self._settle_seen(w.id, attempts, receipt, blocks.head, inp)
                # The watcher cannot tell (receipts unknown, another block at that height): look
                # directly, once per new block.
                direct = due or (unsure and blocks.head != direct_head)
            if direct and not looks.locked():  # all busy: look in a later round (costs time, not safety)
                last_direct, direct_head = now, blocks.head
                async with looks:
                    result = await self._check_or_none(rpc, blocks, w.id, attempts, inp, seen)
                if isinstance(result, Inclusion):
                    return result
                seen = result or seen
            if (
                seen is None
                and inp.until_included_only
                and w.hot_wallet
                and w.nonce is not None
                and now - started >= nonce_after
            ):
                try:
                    mined = await self.mined_nonce(w.network, w.hot_wallet)
                except RpcUnavailable:
                    mined = -1  # unknown: neither stuck nor used
                if mined > w.nonce:
                    used_since = used_since or now
                    if now - used_since > 2 * cfg.block_time_seconds:
                        # Before the proof from blocks: one direct look at our receipts.
                        result = await self._check_or_none(rpc, blocks, w.id, attempts, inp, seen)
                        if isinstance(result, Inclusion):
                            return result
                        log.warning(
                            "withdrawal.nonce_used", withdrawal_id=w.id, nonce=w.nonce, mined_nonce=mined
                        )
                        return Inclusion(outcome=InclusionOutcome.NONCE_USED)
                elif mined == w.nonce:
                    used_since = None
                    next_since = next_since or now
                    if inp.stuck_after_seconds and now - next_since > inp.stuck_after_seconds:
                        log.warning("withdrawal.stuck", withdrawal_id=w.id, nonce=w.nonce)
                        return Inclusion(outcome=InclusionOutcome.STUCK)
                    if now - last_send > resend_after:
                        with contextlib.suppress(RpcUnavailable):
                            await resend(rpc, w.id, attempts)
                        last_send = time.monotonic()
                else:
                    next_since = used_since = None  # queued behind a lower nonce of the wallet
            if time.monotonic() - beat >= HEARTBEAT_EVERY:  # this round's calls took a while
                activity.heartbeat()
                beat = time.monotonic()
            await blocks.wait_next_block(min(wait, max(0.2, beat + HEARTBEAT_EVERY - time.monotonic())))

    async def _check_or_none(
        self,
        rpc: ChainRpc,
        blocks: BlockWatcher,
        withdrawal_id: str,
        attempts: list[TxAttempt],
        inp: AwaitInput,
        seen: str | None,
    ) -> Inclusion | str | None:
        try:
            return await self._check(rpc, blocks, withdrawal_id, attempts, inp, seen)
        except RpcUnavailable as e:
            log.warning("withdrawal.confirmations.rpc_down", withdrawal_id=withdrawal_id, error=str(e)[:200])
            return None

    async def _settle_seen(
        self, withdrawal_id: str, attempts: list[TxAttempt], receipt: Receipt, head: int, inp: AwaitInput
    ) -> Inclusion:
        """Record what the watcher saw: its receipt, in a block of the chain it follows (and, for the
        final confirmation, read again at the required depth with the block's hash unchanged)."""
        attempt = next(a for a in attempts if a.tx_hash.lower() == receipt.tx_hash)
        confirmations = max(head, receipt.block_number) - receipt.block_number + 1
        return await self._record(
            withdrawal_id,
            attempt,
            inp,
            block_number=receipt.block_number,
            block_hash=receipt.block_hash,
            confirmations=confirmations,
            success=receipt.success,
            fee=receipt.fee_wei,
        )

    async def _check(
        self,
        rpc: ChainRpc,
        blocks: BlockWatcher,
        withdrawal_id: str,
        attempts: list[TxAttempt],
        inp: AwaitInput,
        seen: str | None,
    ) -> Inclusion | str | None:
        """One direct look at the receipts: an Inclusion to return, the hash seen mined, or None."""
        mined = await find_mined_attempt(rpc, attempts)
        if mined is None:
            if inp.until_included_only or await self._still_included(rpc, inp):
                return None  # not mined yet, or the node does not know a receipt the chain holds
            gone = seen or (attempts[-1].tx_hash if attempts else "")
            return await self._reorged(withdrawal_id, gone, moved=False)
        attempt, receipt = mined
        moved = inp.included_block_hash and receipt.get("blockHash") != inp.included_block_hash
        if moved and not inp.until_included_only:
            if await self._still_included(rpc, inp):
                return None  # the receipt names another block, the block that held it is unchanged
            return await self._reorged(withdrawal_id, attempt.tx_hash, moved=True)
        result = await self._inclusion(rpc, blocks, withdrawal_id, attempt, receipt, inp)
        return result if result is not None else attempt.tx_hash

    async def _still_included(self, rpc: ChainRpc, inp: AwaitInput) -> bool:
        """Whether the block our transaction was included in is still the canonical block at that
        height (a block's hash commits to its transactions). Only another block at that height proves
        a reorg. A node without a block there (one behind the others, e.g. a failover endpoint) proves
        nothing, and neither does no answer: "still included" (wait, do not resend); a chain that did
        fall back below that height shows another block there once it grows past it again."""
        try:
            block = await rpc.block(inp.included_block_number)
        except RpcUnavailable:
            return True
        return block is None or block.get("hash") == inp.included_block_hash

    async def _reorged(self, withdrawal_id: str, tx_hash: str, *, moved: bool) -> Inclusion:
        async with self.db.transaction() as s:
            await repo.record_reorg(s, withdrawal_id)
        log.warning("withdrawal.reorg.detected", withdrawal_id=withdrawal_id, tx_hash=tx_hash, moved=moved)
        return Inclusion(outcome=InclusionOutcome.REORGED, tx_hash=tx_hash)

    async def _inclusion(
        self,
        rpc: ChainRpc,
        blocks: BlockWatcher,
        withdrawal_id: str,
        attempt: TxAttempt,
        receipt: dict[str, Any],
        inp: AwaitInput,
    ) -> Inclusion | None:
        block_number = int(receipt["blockNumber"], 16)
        head = blocks.head if blocks.healthy else await rpc.block_number()
        head = max(head, block_number)
        confirmations = max(0, head - block_number + 1)
        if not inp.until_included_only:
            if confirmations < inp.required_confirmations:
                return None
            if self.config.networks[attempt.network].finality == "finalized":
                finalized = blocks.finalized if blocks.finalized >= 0 else -1
                if finalized < block_number:
                    fin = await rpc.block("finalized")
                    finalized = int(fin["number"], 16) if fin else -1
                if finalized < block_number:
                    return None
            block = await rpc.block(block_number)
            if block is None or block.get("hash") != receipt.get("blockHash"):
                return None  # the node is mid-reorg: look again
        fee = int(receipt["gasUsed"], 16) * int(receipt.get("effectiveGasPrice", "0x0"), 16)
        return await self._record(
            withdrawal_id,
            attempt,
            inp,
            block_number=block_number,
            block_hash=str(receipt.get("blockHash", "")),
            confirmations=confirmations,
            success=int(receipt.get("status", "0x1"), 16) == 1,
            fee=fee,
        )

    async def _record(
        self,
        withdrawal_id: str,
        attempt: TxAttempt,
        inp: AwaitInput,
        *,
        block_number: int,
        block_hash: str,
        confirmations: int,
        success: bool,
        fee: int,
    ) -> Inclusion:
        async with self.db.transaction() as s:
            await repo.record_inclusion(
                s,
                withdrawal_id,
                tx_hash=attempt.tx_hash,
                block_number=block_number,
                confirmations=confirmations,
                fee_wei=fee,
            )
        return Inclusion(
            outcome=InclusionOutcome.INCLUDED if inp.until_included_only else InclusionOutcome.CONFIRMED,
            tx_hash=attempt.tx_hash,
            purpose=TxPurpose(attempt.purpose),
            block_number=block_number,
            block_hash=block_hash,
            confirmations=confirmations,
            success=success,
            fee_wei=str(fee),
        )
