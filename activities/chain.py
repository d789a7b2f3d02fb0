"""Nonce, signing, broadcast and confirmations. Every step is idempotent per withdrawal:

- `allocate_nonce` returns the allocation already recorded for the withdrawal, if any;
- `sign_transaction` returns the attempt already recorded for the purpose, never re-signs it;
- `broadcast_transaction` sends the recorded bytes, so a resend is the same transaction;
- `await_transaction` looks for a receipt of any attempt at the withdrawal's nonce.
"""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal
from typing import Any

import structlog
from eth_abi import encode as abi_encode
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import fees as feemath
from activities.blocks import BlockWatcher
from activities.rpc import ChainIdMismatch, ChainRpc, Chains, RpcError, RpcUnavailable
from activities.rpc_errors import RpcErrorKind
from activities.signer import KeystoreSigner, SignerUnavailable
from models import repo
from models.db import Database
from models.domain import (
    AwaitInput,
    BroadcastInput,
    ErrorType,
    Inclusion,
    NonceAllocation,
    Realignment,
    ReconcileInput,
    ReconcileReport,
    SignedTx,
    SignInput,
    StatusChange,
    TxPurpose,
    WithdrawalRef,
    WithdrawalStatus,
)
from models.tables import TxAttempt, utcnow
from settings import EngineConfig, NetworkConfig

log = structlog.get_logger()

TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")  # transfer(address,uint256)


def erc20_transfer_data(to: str, amount: int) -> str:
    return "0x" + (TRANSFER_SELECTOR + abi_encode(["address", "uint256"], [to, amount])).hex()


def _fail(kind: ErrorType, message: str, *, retryable: bool = False) -> ApplicationError:
    return ApplicationError(message, type=kind.value, non_retryable=not retryable)


def _rpc_down(e: Exception) -> ApplicationError:
    return _fail(ErrorType.RPC_UNAVAILABLE, str(e)[:500], retryable=True)


class ChainActivities:
    def __init__(self, db: Database, chains: Chains, signer: KeystoreSigner, config: EngineConfig) -> None:
        self.db, self.chains, self.signer, self.config = db, chains, signer, config
        self._watchers: dict[str, BlockWatcher] = {}

    async def ensure_hot_wallets(self) -> None:
        """Register every configured hot wallet; its first nonce is the chain's pending nonce."""
        for network, cfg in self.config.networks.items():
            for wallet in cfg.hot_wallets:
                nonce = await self.chains[network].pending_nonce(wallet)
                async with self.db.transaction() as s:
                    await repo.ensure_hot_wallet(s, network, wallet, nonce)

    @activity.defn
    async def realign_nonce(self, ref: WithdrawalRef) -> Realignment:
        """After "nonce too low" with none of our attempts mined: the nonce went to a transaction sent
        outside the engine. Move the withdrawal to the wallet's next free nonce (alerting)."""
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, ref.withdrawal_id)
            attempts = await repo.attempts_for(s, ref.withdrawal_id)
        if w is None or w.hot_wallet is None:
            raise LookupError(ref.withdrawal_id)
        rpc = self.chains[w.network]
        try:
            if await self._mined_attempt(rpc, attempts) is not None:
                raise _fail(ErrorType.NONCE_CONFLICT, "one of our transactions is mined: nothing to realign")
            latest = await rpc.latest_nonce(w.hot_wallet)
        except RpcUnavailable as e:
            raise _rpc_down(e) from e
        async with self.db.transaction() as s:
            old, new = await repo.realign_nonce(s, w.id, latest)
        log.error(
            "nonce.realigned",
            alert=True,
            withdrawal_id=w.id,
            hot_wallet=w.hot_wallet,
            old_nonce=old,
            new_nonce=new.nonce,
            reason="nonce used by a transaction sent outside the engine",
        )
        return Realignment(old_nonce=old, new_nonce=new.nonce)

    @activity.defn
    async def allocate_nonce(self, ref: WithdrawalRef) -> NonceAllocation:
        async with self.db.transaction() as s:
            alloc = await repo.allocate_nonce(s, ref.withdrawal_id)
        log.info("withdrawal.nonce.allocated", withdrawal_id=ref.withdrawal_id, nonce=alloc.nonce)
        return NonceAllocation(hot_wallet=alloc.hot_wallet, nonce=alloc.nonce)

    # --- signing -------------------------------------------------------------------------------

    async def _fees(self, cfg: NetworkConfig, rpc: ChainRpc) -> feemath.Fees:
        cap = int(cfg.max_fee_per_gas_cap_gwei * 10**9)
        if cfg.fee_model == "legacy":
            return feemath.legacy(await rpc.gas_price(), cfg.legacy_gas_price_multiplier, cap)
        head = await rpc.block("latest")
        base = int((head or {}).get("baseFeePerGas", "0x0"), 16)
        priority = await rpc.max_priority_fee()
        if priority is None:
            priority = int(cfg.priority_fee_gwei * 10**9)
        return feemath.eip1559(base, priority, cap)

    async def _gas_limit(self, cfg: NetworkConfig, rpc: ChainRpc, tx: dict[str, Any], native: bool) -> int:
        if native and (await rpc.get_code(tx["to"])) in ("0x", "0x0", ""):
            return cfg.native_gas_limit
        try:
            estimate = await rpc.estimate_gas(
                {k: v for k, v in tx.items() if k in ("from", "to", "value", "data")}
            )
        except RpcError as e:
            if e.kind is RpcErrorKind.EXECUTION_REVERTED:
                raise _fail(ErrorType.EXECUTION_REVERTED, f"the transfer would revert: {e.message}") from e
            raise
        limit = int(Decimal(estimate) * cfg.gas_limit_margin)
        return min(limit, cfg.token_gas_limit_cap) if not native else limit

    @activity.defn
    async def sign_transaction(self, inp: SignInput) -> SignedTx:
        """Build, sign and record a transaction at the withdrawal's nonce. The attempt is committed
        before anything is broadcast; a repeat returns the recorded attempt unchanged."""
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, inp.withdrawal_id)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
        if w is None:
            raise LookupError(inp.withdrawal_id)
        same = [a for a in attempts if a.purpose == inp.purpose and a.seq == inp.seq]
        if same:
            return SignedTx(tx_hash=same[0].tx_hash, nonce=same[0].nonce, purpose=same[0].purpose)
        if w.nonce is None or w.hot_wallet is None:
            raise _fail(ErrorType.NONCE_CONFLICT, "no nonce allocated")
        cfg = self.config.networks[w.network]
        rpc = self.chains[w.network]
        if not self.signer.has(w.hot_wallet):
            raise _fail(ErrorType.SIGNER_UNAVAILABLE, f"no signing key for hot wallet {w.hot_wallet}")
        try:
            if inp.purpose == TxPurpose.CANCEL:
                tx: dict[str, Any] = {"from": w.hot_wallet, "to": w.hot_wallet, "value": 0, "data": "0x"}
                tx["gas"] = cfg.native_gas_limit
            elif w.asset == cfg.native_asset:
                tx = {"from": w.hot_wallet, "to": w.to_address, "value": w.amount, "data": "0x"}
                tx["gas"] = await self._gas_limit(cfg, rpc, tx, native=True)
            else:
                token = cfg.tokens[w.asset].address
                tx = {
                    "from": w.hot_wallet,
                    "to": token,
                    "value": 0,
                    "data": erc20_transfer_data(w.to_address, w.amount),
                }
                tx["gas"] = await self._gas_limit(cfg, rpc, tx, native=False)
            try:
                fees = await self._fees(cfg, rpc)
            except feemath.FeeAboveCap as e:
                if inp.purpose != TxPurpose.CANCEL:
                    raise _fail(
                        ErrorType.FEE_ABOVE_CAP,
                        str(e),
                        retryable=not any(a.nonce == w.nonce for a in attempts),
                    ) from e
                fees = await self._uncapped_fees(cfg, rpc)
        except (RpcUnavailable, ChainIdMismatch) as e:
            if isinstance(e, ChainIdMismatch):
                raise _fail(ErrorType.CHAIN_ID_MISMATCH, str(e)) from e
            raise _rpc_down(e) from e
        at_nonce = [a for a in attempts if a.nonce == w.nonce]
        if at_nonce:  # a replacement at the same nonce must outbid every earlier attempt
            top = max(at_nonce, key=lambda a: a.max_fee_per_gas or a.gas_price or 0)
            fees = feemath.replacement(
                fees, feemath.Fees(top.max_fee_per_gas, top.max_priority_fee_per_gas, top.gas_price)
            )
            cap = int(cfg.max_fee_per_gas_cap_gwei * 10**9)
            if inp.purpose != TxPurpose.CANCEL and fees.per_gas_ceiling > cap:
                raise _fail(
                    ErrorType.FEE_ABOVE_CAP,
                    f"a replacement needs {fees.per_gas_ceiling} wei/gas, above the cap of {cap}",
                )
        tx.pop("from")
        tx.update(nonce=w.nonce, chainId=cfg.chain_id)
        tx.update(fees.tx_fields())
        try:
            raw, tx_hash = self.signer.sign(w.hot_wallet, tx)
        except SignerUnavailable as e:
            raise _fail(ErrorType.SIGNER_UNAVAILABLE, str(e)) from e
        attempt = TxAttempt(
            withdrawal_id=w.id,
            purpose=inp.purpose,
            seq=inp.seq,
            network=w.network,
            hot_wallet=w.hot_wallet,
            nonce=w.nonce,
            tx_hash=tx_hash,
            raw_tx=raw,
            tx_type=2 if fees.gas_price is None else 0,
            gas_limit=tx["gas"],
            max_fee_per_gas=fees.max_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            gas_price=fees.gas_price,
        )
        async with self.db.transaction() as s:
            await repo.record_attempt(s, attempt)
        log.info("withdrawal.signed", withdrawal_id=w.id, tx_hash=tx_hash, nonce=w.nonce, purpose=inp.purpose)
        return SignedTx(tx_hash=tx_hash, nonce=w.nonce, purpose=inp.purpose)

    async def _uncapped_fees(self, cfg: NetworkConfig, rpc: ChainRpc) -> feemath.Fees:
        """A cancellation is never blocked by the cap: quote without it."""
        big = 2**255
        if cfg.fee_model == "legacy":
            return feemath.legacy(await rpc.gas_price(), cfg.legacy_gas_price_multiplier, big)
        head = await rpc.block("latest")
        base = int((head or {}).get("baseFeePerGas", "0x0"), 16)
        return feemath.eip1559(base, await rpc.max_priority_fee() or int(cfg.priority_fee_gwei * 10**9), big)

    # --- broadcast -----------------------------------------------------------------------------

    async def _mined_attempt(
        self, rpc: ChainRpc, attempts: list[TxAttempt]
    ) -> tuple[TxAttempt, dict[str, Any]] | None:
        for a in reversed(attempts):
            r = await rpc.receipt(a.tx_hash)
            if r is not None:
                return a, r
        return None

    @activity.defn
    async def broadcast_transaction(self, inp: BroadcastInput) -> str:
        """Send the recorded bytes and classify the node's answer (see `activities.rpc_errors`)."""
        async with self.db.read() as s:
            attempt = await repo.attempt_by_hash(s, inp.tx_hash)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
        if attempt is None:
            raise LookupError(inp.tx_hash)
        rpc = self.chains[attempt.network]
        try:
            await rpc.send_raw(attempt.raw_tx)
        except RpcError as e:
            kind = e.kind
            if kind is RpcErrorKind.NONCE_TOO_LOW:
                # Maybe ours was mined already (a resend after a crash): reconcile by our hashes.
                try:
                    mined = await self._mined_attempt(rpc, attempts)
                except RpcUnavailable as down:
                    raise _rpc_down(down) from down
                if mined is None:
                    raise _fail(
                        ErrorType.NONCE_CONFLICT,
                        f"nonce {attempt.nonce} of {attempt.hot_wallet} was used by a transaction"
                        " the engine did not send",
                    ) from e
            elif kind is RpcErrorKind.INSUFFICIENT_FUNDS:
                raise _fail(
                    ErrorType.INSUFFICIENT_HOT_WALLET_FUNDS, f"hot wallet cannot pay: {e.message}"
                ) from e
            elif kind.transient:
                raise _rpc_down(e) from e
            elif kind in (
                RpcErrorKind.UNDERPRICED,
                RpcErrorKind.REPLACEMENT_UNDERPRICED,
                RpcErrorKind.FEE_BELOW_BASE_FEE,
            ):
                async with self.db.transaction() as s:
                    await repo.mark_attempt(s, attempt.tx_hash, "FAILED", f"{kind}: {e.message}"[:1000])
                raise _fail(ErrorType.UNDERPRICED, f"{kind}: {e.message}"[:500]) from e
            elif kind is not RpcErrorKind.ALREADY_KNOWN:
                async with self.db.transaction() as s:
                    await repo.mark_attempt(s, attempt.tx_hash, "FAILED", f"{kind}: {e.message}"[:1000])
                raise _fail(ErrorType.BROADCAST_REJECTED, f"{kind}: {e.message}"[:500]) from e
        except RpcUnavailable as e:
            raise _rpc_down(e) from e  # unknown outcome: the retry resends the same bytes
        if inp.record_status:
            async with self.db.transaction() as s:
                await repo.apply_status_change(
                    s, StatusChange(withdrawal_id=inp.withdrawal_id, status=WithdrawalStatus.BROADCAST)
                )
        log.info("withdrawal.broadcast.sent", withdrawal_id=inp.withdrawal_id, tx_hash=attempt.tx_hash)
        return attempt.tx_hash

    # --- confirmations -------------------------------------------------------------------------

    def watcher(self, network: str) -> BlockWatcher:
        w = self._watchers.get(network)
        if w is None:
            cfg = self.config.networks[network]
            w = self._watchers[network] = BlockWatcher(
                self.chains[network], cfg.block_time_seconds, track_finalized=cfg.finality == "finalized"
            )
        w.ensure_started()
        return w

    async def aclose(self) -> None:
        for w in self._watchers.values():
            await w.aclose()

    @activity.defn
    async def await_transaction(self, inp: AwaitInput) -> Inclusion:
        """Watch the withdrawal's attempts (all at one nonce) on chain, heartbeating throughout.

        `until_included_only`: return INCLUDED as soon as one is in a block (status CONFIRMING is written
        with it), or STUCK when nothing is mined within `stuck_after_seconds`. Otherwise: return
        CONFIRMED with the required confirmations on the canonical chain, or REORGED when the receipt
        disappeared or moved to another block. New blocks come from the network's `BlockWatcher`; the
        receipt is read when the watcher saw one of our hashes (or the confirmation height is reached),
        and directly as a fallback when the watcher is unhealthy or nothing came for a long time.
        While nothing is mined, the recorded bytes are resent periodically (a dropped transaction comes
        back; a known one is answered "already known").
        """
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, inp.withdrawal_id)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
        if w is None:
            raise LookupError(inp.withdrawal_id)
        cfg = self.config.networks[w.network]
        rpc = self.chains[w.network]
        blocks = self.watcher(w.network)
        hashes = [a.tx_hash for a in attempts]
        wait = max(0.2, min(cfg.block_time_seconds * 2, 10.0))
        resend_after = max(2.0, cfg.block_time_seconds * 3)
        fallback_after = max(30.0, cfg.block_time_seconds * 20)
        target = inp.included_block_number + inp.required_confirmations - 1
        started = last_send = time.monotonic()
        last_direct = 0.0 if inp.until_included_only else started
        seen: str | None = None
        while True:
            activity.heartbeat()
            now = time.monotonic()
            if inp.until_included_only:
                due = blocks.lookup(hashes) is not None
            elif cfg.finality == "finalized":
                due = blocks.finalized >= inp.included_block_number and blocks.head >= target
            else:
                due = blocks.head >= target
            if due or not blocks.healthy or now - last_direct > fallback_after:
                last_direct = now
                try:
                    result = await self._check(rpc, blocks, w.id, attempts, inp, seen)
                except RpcUnavailable as e:
                    log.warning("withdrawal.confirmations.rpc_down", withdrawal_id=w.id, error=str(e)[:200])
                    result = None
                if isinstance(result, Inclusion):
                    return result
                seen = result or seen
            if seen is None and inp.until_included_only:
                if inp.stuck_after_seconds and now - started > inp.stuck_after_seconds:
                    log.warning("withdrawal.stuck", withdrawal_id=w.id, nonce=w.nonce)
                    return Inclusion(outcome="STUCK")
                if now - last_send > resend_after:
                    with contextlib.suppress(RpcUnavailable):
                        await self._resend(rpc, w.id, attempts)
                    last_send = time.monotonic()
            await blocks.wait_next_block(wait)

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
        mined = await self._mined_attempt(rpc, attempts)
        if mined is None:
            if inp.until_included_only:
                return None
            gone = seen or (attempts[-1].tx_hash if attempts else "")
            async with self.db.transaction() as s:
                await repo.record_reorg(s, withdrawal_id, gone)
            log.warning("withdrawal.reorg.detected", withdrawal_id=withdrawal_id, tx_hash=gone)
            return Inclusion(outcome="REORGED", tx_hash=gone)
        attempt, receipt = mined
        moved = inp.included_block_hash and receipt.get("blockHash") != inp.included_block_hash
        if moved and not inp.until_included_only:
            async with self.db.transaction() as s:
                await repo.record_reorg(s, withdrawal_id, attempt.tx_hash)
            log.warning(
                "withdrawal.reorg.detected", withdrawal_id=withdrawal_id, tx_hash=attempt.tx_hash, moved=True
            )
            return Inclusion(outcome="REORGED", tx_hash=attempt.tx_hash)
        result = await self._inclusion(rpc, blocks, withdrawal_id, attempt, receipt, inp)
        return result if result is not None else attempt.tx_hash

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
        async with self.db.transaction() as s:
            await repo.record_inclusion(
                s,
                withdrawal_id,
                tx_hash=attempt.tx_hash,
                block_number=block_number,
                confirmations=confirmations,
                fee_wei=fee,
                status=WithdrawalStatus.CONFIRMING if inp.until_included_only else None,
            )
            success = int(receipt.get("status", "0x1"), 16) == 1
            if inp.settle and success and attempt.purpose == TxPurpose.WITHDRAWAL:
                await repo.apply_status_change(
                    s, StatusChange(withdrawal_id=withdrawal_id, status=WithdrawalStatus.CONFIRMED)
                )
        return Inclusion(
            outcome="INCLUDED" if inp.until_included_only else "CONFIRMED",
            tx_hash=attempt.tx_hash,
            purpose=attempt.purpose,
            block_number=block_number,
            block_hash=str(receipt.get("blockHash", "")),
            confirmations=confirmations,
            success=int(receipt.get("status", "0x1"), 16) == 1,
            fee_wei=str(fee),
        )

    async def _resend(self, rpc: ChainRpc, withdrawal_id: str, attempts: list[TxAttempt]) -> None:
        for a in attempts:
            if a.outcome == "FAILED":
                continue
            try:
                await rpc.send_raw(a.raw_tx)
                log.info("withdrawal.resent", withdrawal_id=withdrawal_id, tx_hash=a.tx_hash)
            except RpcError as e:
                if e.kind not in (
                    RpcErrorKind.ALREADY_KNOWN,
                    RpcErrorKind.NONCE_TOO_LOW,
                    RpcErrorKind.REPLACEMENT_UNDERPRICED,
                ):
                    log.info(
                        "withdrawal.resend.answer",
                        withdrawal_id=withdrawal_id,
                        tx_hash=a.tx_hash,
                        kind=e.kind,
                        error=e.message[:200],
                    )


class ReconcileActivities:
    """Per-hot-wallet nonce reconciliation (run by `NonceReconcilerWorkflow` on a Temporal Schedule).

    Compares the engine's allocations with the chain's latest and pending nonce and:
    - records nonces used by transactions sent outside the engine and moves the counter past them;
    - re-broadcasts allocated transactions that no node knows any more;
    - fills a nonce whose withdrawal's workflow is gone without sending anything (0-value self-transfer),
      and ends that withdrawal CANCELLED with its reservation released;
    - logs an alert (`nonce.reconcile.alert`) for each of these.
    """

    def __init__(self, chain: ChainActivities, client: Any | None = None) -> None:
        self.chain = chain
        self.client = client  # temporalio Client, to ask whether a withdrawal's workflow still runs

    async def _workflow_running(self, withdrawal_id: str) -> bool | None:
        if self.client is None:
            return None
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError as TemporalRPCError

        try:
            desc = await self.client.get_workflow_handle(f"withdrawal-{withdrawal_id}").describe()
        except TemporalRPCError:
            return False
        return desc.status == WorkflowExecutionStatus.RUNNING

    @activity.defn
    async def reconcile_wallet(self, inp: ReconcileInput) -> ReconcileReport:
        db, rpc = self.chain.db, self.chain.chains[inp.network]
        alerts: list[str] = []
        try:
            latest = await rpc.latest_nonce(inp.hot_wallet)
            pending = await rpc.pending_nonce(inp.hot_wallet)
        except RpcUnavailable as e:
            raise _rpc_down(e) from e
        async with db.transaction() as s:
            hw = await repo.lock_hot_wallet(s, inp.network, inp.hot_wallet)
            external = await repo.record_external_nonces(s, hw, latest)
            next_nonce = hw.next_nonce
        if external:
            alerts.append(
                f"nonces {external[0]}..{external[-1]} used by transactions sent outside the engine"
            )
        async with db.read() as s:
            allocs = [
                a for a in await repo.nonce_allocations(s, inp.network, inp.hot_wallet) if a.nonce >= latest
            ]
            attempts = {
                a.withdrawal_id: await repo.attempts_for(s, a.withdrawal_id)
                for a in allocs
                if a.withdrawal_id
            }
        rebroadcast: list[str] = []
        filled: list[int] = []
        now = utcnow()
        for alloc in allocs:
            if alloc.purpose != "WITHDRAWAL" or not alloc.active or alloc.withdrawal_id is None:
                continue
            mine = [a for a in attempts.get(alloc.withdrawal_id, []) if a.nonce == alloc.nonce]
            if mine:
                known = [a for a in mine if await rpc.call("eth_getTransactionByHash", [a.tx_hash])]
                if not known:
                    await self.chain._resend(rpc, alloc.withdrawal_id, mine)
                    rebroadcast.append(mine[-1].tx_hash)
                    alerts.append(
                        f"nonce {alloc.nonce}: transaction {mine[-1].tx_hash} unknown to the node, resent"
                    )
                continue
            age = (now - alloc.created_at).total_seconds()
            running = await self._workflow_running(alloc.withdrawal_id)
            if running or (running is None and age < inp.orphan_after_seconds) or age < 1:
                if age > inp.orphan_after_seconds:
                    alerts.append(
                        f"nonce {alloc.nonce} held by withdrawal {alloc.withdrawal_id} for {int(age)} s with "
                        "nothing signed: later transactions of this wallet wait behind it (retry or cancel)"
                    )
                continue
            tx_hash = await self._fill(inp, alloc.withdrawal_id, alloc.nonce)
            filled.append(alloc.nonce)
            alerts.append(f"nonce {alloc.nonce} of withdrawal {alloc.withdrawal_id} filled by {tx_hash}")
        for text in alerts:
            log.error(
                "nonce.reconcile.alert",
                alert=True,
                network=inp.network,
                hot_wallet=inp.hot_wallet,
                detail=text,
            )
        return ReconcileReport(
            network=inp.network,
            hot_wallet=inp.hot_wallet,
            latest_nonce=latest,
            pending_nonce=pending,
            next_nonce=next_nonce,
            rebroadcast=rebroadcast,
            filled=filled,
            external=external,
            alerts=alerts,
        )

    async def _fill(self, inp: ReconcileInput, withdrawal_id: str, nonce: int) -> str:
        """0-value self-transfer at `nonce`; the orphaned withdrawal ends CANCELLED, funds released."""
        chain = self.chain
        cfg, rpc = chain.config.networks[inp.network], chain.chains[inp.network]
        fees = await chain._uncapped_fees(cfg, rpc)
        tx: dict[str, Any] = {
            "to": inp.hot_wallet,
            "value": 0,
            "data": "0x",
            "gas": cfg.native_gas_limit,
            "nonce": nonce,
            "chainId": cfg.chain_id,
        }
        tx.update(fees.tx_fields())
        raw, tx_hash = chain.signer.sign(inp.hot_wallet, tx)
        attempt = TxAttempt(
            withdrawal_id=withdrawal_id,
            purpose=TxPurpose.FILL,
            seq=0,
            network=inp.network,
            hot_wallet=inp.hot_wallet,
            nonce=nonce,
            tx_hash=tx_hash,
            raw_tx=raw,
            tx_type=0 if fees.gas_price is not None else 2,
            gas_limit=tx["gas"],
            max_fee_per_gas=fees.max_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            gas_price=fees.gas_price,
        )
        async with chain.db.transaction() as s:
            s.add(attempt)
            await repo.mark_allocation(s, inp.network, inp.hot_wallet, nonce, purpose="FILL")
            await repo.apply_status_change(
                s,
                StatusChange(
                    withdrawal_id=withdrawal_id,
                    status=WithdrawalStatus.CANCELLED,
                    error_code="CANCELLED",
                    error_message=f"workflow ended before sending; nonce {nonce} filled by {tx_hash}",
                ),
            )
        with contextlib.suppress(RpcError):
            await rpc.send_raw(raw)
        return tx_hash
