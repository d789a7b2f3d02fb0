"""Nonces: allocation per hot wallet, realignment, and the per-wallet reconciler.

Allocation is serialized by the hot wallet's row lock (see `models.repo`), so nonces stay contiguous
across any number of worker processes; a retried allocation returns the same nonce.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.alerts import Alerter
from activities.broadcast import resend
from activities.failures import fail, rpc_down
from activities.fees import FeeAboveCap
from activities.pauses import held_by_pause
from activities.proof import find_nonce_holder
from activities.rpc import ChainIdMismatch, Chains, RpcError, RpcUnavailable
from activities.signer import KeystoreSigner
from activities.transactions import preflight, quote_fees, self_transfer
from models import repo
from models.db import Database
from models.domain import (
    ErrorCode,
    ErrorInfo,
    Nonce,
    NonceAllocation,
    NonceConflictInput,
    NonceHolderOutcome,
    NoncePurpose,
    NonceResolution,
    ReconcileInput,
    ReconcileReport,
    WithdrawalRef,
    WithdrawalStatus,
)
from models.tables import NonceAllocation as AllocationRow
from models.tables import Withdrawal, utcnow
from settings import EngineConfig

log = structlog.get_logger()


class NonceActivities:
    def __init__(self, db: Database, chains: Chains, config: EngineConfig) -> None:
        self.db, self.chains, self.config = db, chains, config

    async def ensure_hot_wallets(self) -> None:
        """Register every configured hot wallet; its first nonce is the chain's pending nonce."""
        for network, cfg in self.config.networks.items():
            for wallet in cfg.hot_wallets:
                nonce = await self.chains[network].pending_nonce(wallet)
                async with self.db.transaction() as s:
                    await repo.ensure_hot_wallet(s, network, wallet, nonce)

    @activity.defn
    async def allocate_nonce(self, ref: WithdrawalRef) -> NonceAllocation:
        """The withdrawal's nonce (a retry gets the same one). First, for a token transfer, one the
        token would refuse fails non-retryable (`transactions.preflight`), so it parks without a nonce
        that the wallet's later withdrawals would wait behind."""
        w, alloc = await self._allocate(ref.withdrawal_id, preflighted=False)
        if alloc is None:  # estimated outside the write transaction, then allocated
            assert w is not None
            try:
                await preflight(w, self.config.networks[w.network], self.chains[w.network])
            except ChainIdMismatch as e:
                raise fail(ErrorCode.CHAIN_ID_MISMATCH, str(e)) from e
            except RpcUnavailable as e:
                raise rpc_down(e) from e
            w, alloc = await self._allocate(ref.withdrawal_id, preflighted=True)
        assert alloc is not None
        log.info("withdrawal.nonce.allocated", withdrawal_id=ref.withdrawal_id, nonce=alloc.nonce)
        return NonceAllocation(hot_wallet=alloc.hot_wallet, nonce=Nonce(alloc.nonce))

    async def _allocate(
        self, withdrawal_id: str, *, preflighted: bool
    ) -> tuple[Withdrawal | None, AllocationRow | None]:
        """In one write transaction: the kill switch (the withdrawal stays PENDING, no nonce taken),
        then the allocation; (withdrawal, None) instead when it is a token transfer that holds no
        nonce yet and was not `preflighted` (a repeat after its nonce was taken gets it as it is)."""
        async with self.db.transaction() as s:
            w = await repo.get_withdrawal(s, withdrawal_id)
            held = await held_by_pause(s, w.network, w.hot_wallet) if w else None
            if held is not None:
                raise held
            cfg = self.config.networks.get(w.network) if w else None
            token = w is not None and cfg is not None and w.asset != cfg.native_asset
            if token and not preflighted and await repo.active_allocation(s, withdrawal_id) is None:
                return w, None
            return w, await repo.allocate_nonce(s, withdrawal_id)

    @activity.defn
    async def resolve_nonce_conflict(self, inp: NonceConflictInput) -> NonceResolution:
        """The withdrawal's nonce is used on chain ("nonce too low", or the wallet's mined nonce passed
        it) and no node shows one of our receipts. Prove the holder from blocks (`activities.proof`):
        ours → the caller confirms it; another transaction at the required depth → with `inp.move` only
        (an operator's decision) the withdrawal gets the wallet's next nonce, its attempts at the old
        one marked FAILED. No proof: a retryable NONCE_UNPROVEN (the workflow waits, then parks)."""
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, inp.withdrawal_id)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
        if w is None or w.hot_wallet is None or w.nonce is None:
            raise LookupError(inp.withdrawal_id)
        cfg, rpc = self.config.networks[w.network], self.chains[w.network]
        at_nonce = [a for a in attempts if a.nonce == w.nonce]
        holder = await find_nonce_holder(
            rpc, w.hot_wallet, w.nonce, at_nonce, required_depth=cfg.required_confirmations
        )
        if holder.outcome is NonceHolderOutcome.UNPROVEN:
            log.warning("nonce.conflict.unproven", withdrawal_id=w.id, nonce=w.nonce, detail=holder.detail)
            raise fail(ErrorCode.NONCE_UNPROVEN, holder.detail, retryable=True)
        if holder.outcome is NonceHolderOutcome.OURS or not inp.move:
            if holder.outcome is NonceHolderOutcome.EXTERNAL:
                log.error("nonce.conflict.external", alert=True, withdrawal_id=w.id, detail=holder.detail)
            return NonceResolution(holder=holder, old_nonce=Nonce(w.nonce))
        try:
            latest = await rpc.latest_nonce(w.hot_wallet)
        except RpcUnavailable as e:
            raise rpc_down(e) from e
        async with self.db.transaction() as s:
            old, new = await repo.realign_nonce(s, w.id, latest)
        log.error(
            "nonce.realigned",
            alert=True,
            withdrawal_id=w.id,
            hot_wallet=w.hot_wallet,
            old_nonce=old,
            new_nonce=new.nonce,
            reason=holder.detail,
        )
        return NonceResolution(holder=holder, old_nonce=Nonce(old), new_nonce=Nonce(new.nonce))


class WorkflowProbe(Protocol):
    async def running(self, withdrawal_id: str) -> bool | None:
        """True: its workflow runs; False: it provably does not; None: cannot tell now."""
        ...


class TemporalWorkflowProbe:
    """Asks Temporal whether a withdrawal's workflow still runs. Only NOT_FOUND or a closed execution
    mean "not running"; any other error is "cannot tell", and the reconciler leaves the nonce alone."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def running(self, withdrawal_id: str) -> bool | None:
        try:
            desc = await self.client.get_workflow_handle(f"withdrawal-{withdrawal_id}").describe()
        except RPCError as e:
            return False if e.status == RPCStatusCode.NOT_FOUND else None
        return desc.status == WorkflowExecutionStatus.RUNNING


class ReconcileActivities:
    """Per-hot-wallet nonce reconciliation (run by `NonceReconcilerWorkflow` on a Temporal Schedule).

    Compares the engine's allocations with the chain's latest and pending nonce and:
    - records nonces used by transactions sent outside the engine and moves the counter past them;
    - re-broadcasts allocated transactions that no node knows any more;
    - fills a nonce whose withdrawal's workflow provably ended without sending anything (0-value
      self-transfer), and ends that withdrawal CANCELLED with its reservation released;
    - logs an alert (`nonce.reconcile.alert`) for each of these.
    """

    def __init__(
        self,
        db: Database,
        chains: Chains,
        signer: KeystoreSigner,
        config: EngineConfig,
        workflows: WorkflowProbe,
        *,
        alerts: Alerter | None = None,
    ) -> None:
        self.db, self.chains, self.signer, self.config, self.workflows = db, chains, signer, config, workflows
        self.alerts = alerts or Alerter(db)

    @activity.defn
    async def reconcile_wallet(self, inp: ReconcileInput) -> ReconcileReport:
        rpc = self.chains[inp.network]
        alerts: list[str] = []
        try:
            latest = await rpc.latest_nonce(inp.hot_wallet)
            pending = await rpc.pending_nonce(inp.hot_wallet)
        except RpcUnavailable as e:
            raise rpc_down(e) from e
        async with self.db.transaction() as s:
            hw = await repo.lock_hot_wallet(s, inp.network, inp.hot_wallet)
            external = await repo.record_external_nonces(s, hw, latest)
            next_nonce = max(hw.next_nonce, latest)
        corrected: list[tuple[str, int, int]] = []
        try:
            async with self.db.transaction() as s:
                corrected = await repo.recount_holds(s, inp.network, inp.hot_wallet)
        except Exception as e:  # e.g. a first reservation of an asset committed meanwhile: next run
            log.warning("nonce.reconcile.recount_failed", network=inp.network, error_type=type(e).__name__)
        for asset, was, now_held in corrected:
            alerts.append(
                f"held total of {asset} was {was}, its reservations hold {now_held}: corrected (the totals "
                "admission reads were out of step with the reservations)"
            )
        if external:
            alerts.append(
                f"nonces {external[0]}..{external[-1]} used by transactions sent outside the engine"
            )
        async with self.db.read() as s:
            unmined = await repo.nonce_allocations(s, inp.network, inp.hot_wallet, from_nonce=latest)
            allocs = [
                a for a in unmined if a.active and a.purpose == NoncePurpose.WITHDRAWAL and a.withdrawal_id
            ]
            attempts = await repo.attempts_for_many(s, [a.withdrawal_id for a in allocs if a.withdrawal_id])
        rebroadcast: list[str] = []
        for fill in (
            a for a in unmined if a.purpose == NoncePurpose.FILL and a.fill_raw_tx and a.fill_tx_hash
        ):
            if not await rpc.call("eth_getTransactionByHash", [fill.fill_tx_hash]):  # a fill no node knows
                with contextlib.suppress(RpcError):
                    await rpc.send_raw(str(fill.fill_raw_tx))
                rebroadcast.append(str(fill.fill_tx_hash))
                alerts.append(f"nonce {fill.nonce}: fill {fill.fill_tx_hash} unknown to the node, resent")
        filled: list[int] = []
        now = utcnow()
        for alloc in allocs:
            assert alloc.withdrawal_id is not None
            mine = [a for a in attempts.get(alloc.withdrawal_id, []) if a.nonce == alloc.nonce]
            if mine:
                if alloc.nonce < pending:
                    # The node holds a transaction of the wallet at this nonce (its pending count runs
                    # past it): nothing was dropped here. Only from the first gap up is each looked up,
                    # so a wallet with thousands in its pool costs no lookup per nonce per run.
                    continue
                known = [a for a in mine if await rpc.call("eth_getTransactionByHash", [a.tx_hash])]
                if not known:
                    await resend(rpc, alloc.withdrawal_id, mine)
                    rebroadcast.append(mine[-1].tx_hash)
                    alerts.append(
                        f"nonce {alloc.nonce}: transaction {mine[-1].tx_hash} unknown to the node, resent"
                    )
                continue
            age = (now - alloc.created_at).total_seconds()
            if age < inp.orphan_after_seconds:
                continue
            running = await self.workflows.running(alloc.withdrawal_id)
            if running is None:
                continue  # cannot tell: never touch a withdrawal that may be live
            if running:
                alerts.append(
                    f"nonce {alloc.nonce} held by withdrawal {alloc.withdrawal_id} for {int(age)} s with "
                    "nothing signed: later transactions of this wallet wait behind it (retry or cancel)"
                )
                continue
            async with self.db.read() as s:  # the kill switch holds fills too: nothing new is signed
                held = await held_by_pause(s, inp.network, inp.hot_wallet)
            if held is not None:
                alerts.append(f"nonce {alloc.nonce} needs a fill, held: {held.message}")
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
        await self.alerts.reconciler_findings(inp.network, inp.hot_wallet, alerts)  # one alert per nonce
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
        cfg, rpc = self.config.networks[inp.network], self.chains[inp.network]
        try:
            fees = await quote_fees(cfg, rpc, capped=False)
        except FeeAboveCap as e:
            raise fail(ErrorCode.FEE_ABOVE_CAP, f"nonce fill waits: {e}", retryable=True) from e
        tx = self_transfer(inp.hot_wallet, cfg)
        tx.pop("from")
        tx.update(nonce=nonce, chainId=cfg.chain_id)
        tx.update(fees.tx_fields())
        raw, tx_hash = self.signer.sign(inp.hot_wallet, tx)
        async with self.db.transaction() as s:
            await repo.record_fill(
                s,
                inp.network,
                inp.hot_wallet,
                nonce,
                withdrawal_id=withdrawal_id,
                tx_hash=tx_hash,
                raw_tx=raw,
            )
            await repo.transition(
                s,
                withdrawal_id,
                WithdrawalStatus.CANCELLED,
                error=ErrorInfo(
                    code=ErrorCode.CANCELLED,
                    message=f"workflow ended before sending; nonce {nonce} filled by {tx_hash}",
                ),
            )
        with contextlib.suppress(RpcError):
            await rpc.send_raw(raw)
        return tx_hash
