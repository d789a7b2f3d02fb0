"""Admission (limits and hot-wallet reservations): the policy the repository only stores.

- daily limit per user and asset over the last 24 hours (REJECTED when exceeded);
- a reservation of amount (+ worst-case fee in native coin) on the least busy hot wallet whose
  on-chain balance minus what is already held covers it (WAITING_FOR_FUNDS when none can).
Both run with the network's hot-wallet rows locked, so concurrent admissions never over-reserve.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities.blocks import Read, balance_read, token_balance_read, watcher_for
from activities.rpc import Chains, RpcError, RpcUnavailable
from activities.webhooks import WebhookKicker
from models import repo
from models.amounts import MAX_AMOUNT_UNITS, format_amount, to_units
from models.db import Database
from models.domain import (
    Admission,
    ErrorCode,
    ErrorInfo,
    Wei,
    WithdrawalRef,
    WithdrawalRequest,
    WithdrawalStatus,
)
from models.requests import RequestRefused, revalidate
from models.tables import Withdrawal, utcnow
from models.views import withdrawal_object
from models.webhooks import queued_in
from settings import EngineConfig, NetworkConfig

log = structlog.get_logger()


@dataclass(frozen=True)
class Balances:
    """On-chain balances in base units, (hot wallet, asset) -> amount, as of `block` (None: latest)."""

    amounts: Mapping[tuple[str, str], int]
    block: int | None = None

    def get(self, key: tuple[str, str], default: int = 0) -> int:
        return self.amounts.get(key, default)


DAILY_LIMIT = ErrorInfo(
    code=ErrorCode.LIMIT_EXCEEDED, message="daily withdrawal limit for this user exceeded"
)


def reservation_amounts(cfg: NetworkConfig, asset: str, amount: int) -> dict[str, Wei]:
    """What a withdrawal holds, in base units: the amount in its asset, plus a worst-case fee in
    native coin."""
    fee = cfg.fee_allowance_wei(asset)
    if asset == cfg.native_asset:
        return {asset: Wei(amount + fee)}
    return {asset: Wei(amount), cfg.native_asset: Wei(fee)}


def choose_wallet(
    cfg: NetworkConfig,
    need: Mapping[str, int],
    balances: Balances,
    held: Mapping[tuple[str, str], int],
    busy: Mapping[str, int],
) -> str | None:
    """The least busy hot wallet (ties: config order) that can cover `need` after what it holds."""
    candidates = [
        wallet
        for wallet in cfg.hot_wallets
        if all(balances.get((wallet, a), 0) - held.get((wallet, a), 0) >= n for a, n in need.items())
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda x: (busy.get(x, 0), cfg.hot_wallets.index(x)))


class FundsActivities:
    def __init__(
        self,
        db: Database,
        chains: Chains,
        config: EngineConfig,
        pause_poll_seconds: float = 5.0,
        webhooks: WebhookKicker | None = None,
    ) -> None:
        self.db, self.chains, self.config = db, chains, config
        self.pause_poll_seconds = pause_poll_seconds
        self.webhooks = webhooks

    async def _balances(self, cfg: NetworkConfig, network: str, asset: str) -> Balances:
        """The hot wallets' balances at one block (the reservation arithmetic counts what settled after
        it: `repo.held_amounts(as_of_block=...)`), so a withdrawal confirmed between this read and the
        reservation is never counted as still in the wallet.

        With a healthy block watcher the block is its head, and the reads at that block are shared
        by every admission while it is the head (cached under its number and hash, prefetched with
        the next blocks while admissions go on): still a read at that block. Else the node's head."""
        rpc = self.chains[network]
        pairs: list[tuple[str, str]] = []
        reads: list[Read] = []
        for wallet in cfg.hot_wallets:
            pairs.append((wallet, cfg.native_asset))
            reads.append(balance_read(wallet))
            if asset != cfg.native_asset:
                pairs.append((wallet, asset))
                reads.append(token_balance_read(cfg.tokens[asset].address, wallet))
        blocks = watcher_for(rpc, cfg)
        if await blocks.ready(min(2.0, rpc.timeout)):
            with contextlib.suppress(RpcUnavailable):
                block, values, _ = await blocks.at_head(reads)
                if not any(isinstance(v, RpcError) for v in values):  # e.g. a node behind the watcher
                    return Balances(dict(zip(pairs, (int(v, 16) for v in values), strict=True)), block)
        block = await rpc.block_number()
        calls = []
        for wallet in cfg.hot_wallets:
            calls.append(rpc.balance(wallet, block=block))
            if asset != cfg.native_asset:
                calls.append(rpc.token_balance(cfg.tokens[asset].address, wallet, block=block))
        return Balances(dict(zip(pairs, await asyncio.gather(*calls), strict=True)), block)

    def _admission(self, w: Withdrawal, cfg: NetworkConfig | None) -> Admission:
        status = WithdrawalStatus(w.status)
        error = (
            ErrorInfo(code=ErrorCode(w.error_code), message=w.error_message or "") if w.error_code else None
        )
        if cfg is None:  # refused: its network is not configured
            return Admission(
                accepted=False, status=status, status_seq=w.status_seq, error=error, view=withdrawal_object(w)
            )
        limits = cfg.limits.get(w.asset)
        threshold = to_units(limits.approval_threshold, w.decimals) if limits else None
        four_eyes = (
            to_units(limits.four_eyes_threshold, w.decimals)
            if limits and limits.four_eyes_threshold is not None
            else None
        )
        return Admission(
            accepted=status is not WithdrawalStatus.REJECTED,
            status=status,
            status_seq=w.status_seq,
            error=error,
            hot_wallet=w.hot_wallet,
            requires_approval=threshold is not None and w.amount > threshold,
            approvals_required=2 if four_eyes is not None and w.amount > four_eyes else 1,
            amount_display=f"{format_amount(w.amount, w.decimals)} {w.asset}",
            pause_poll_seconds=self.pause_poll_seconds,
            required_confirmations=cfg.required_confirmations,
            approval_timeout_seconds=self.config.approval_timeout_seconds,
            funds_retry_seconds=self.config.funds_retry_seconds,
            stuck_after_seconds=cfg.stuck_after_blocks * cfg.block_time_seconds,
            view=withdrawal_object(w, native_decimals=cfg.native_decimals),
        )

    async def _try_reserve(
        self, s: AsyncSession, w: Withdrawal, cfg: NetworkConfig, balances: Balances
    ) -> str | None:
        """Reserve on a wallet that can cover the withdrawal; the network's wallets must be locked."""
        need = reservation_amounts(cfg, w.asset, w.amount)
        wallet = choose_wallet(
            cfg,
            need,
            balances,
            await repo.held_amounts(s, w.network, as_of_block=balances.block),
            await repo.in_flight_counts(s, w.network),
        )
        if wallet is not None:
            await repo.reserve(s, w.id, w.network, wallet, need)
        return wallet

    @activity.defn
    async def admit(self, req: WithdrawalRequest) -> Admission:
        """Create the withdrawal row: daily limit, then a reservation on a hot wallet that can cover it
        (else WAITING_FOR_FUNDS). Idempotent: a repeat returns what the first call decided."""
        cfg = self.config.network(req.network)
        async with self.db.read() as s:
            existing = await repo.get_withdrawal(s, req.withdrawal_id)
        if existing is not None:
            return self._admission(existing, cfg)
        try:
            revalidate(self.config, req.network, req.asset, req.to_address, req.amount)
        except RequestRefused as refused:
            w = await self.record_refusal(req, refused)
            log.warning("withdrawal.refused", withdrawal_id=w.id, code=refused.code, field=refused.field)
            return self._admission(w, cfg)
        assert cfg is not None
        balances = await self._balances(cfg, req.network, req.asset)
        w = await self.record_admission(req, cfg, balances)
        log.info("withdrawal.admitted", withdrawal_id=w.id, status=w.status, hot_wallet=w.hot_wallet)
        return self._admission(w, cfg)

    async def record_refusal(self, req: WithdrawalRequest, refused: RequestRefused) -> Withdrawal:
        """A workflow whose input fails validation (started around the API): the row records it
        REJECTED with the reason; nothing is reserved, nothing will be signed."""
        cfg = self.config.network(req.network)
        digits = isinstance(req.amount, str) and req.amount.isascii() and req.amount.isdigit()
        async with self.db.transaction() as s:
            existing = await repo.get_withdrawal(s, req.withdrawal_id)
            if existing is not None:
                return existing
            w = Withdrawal(
                id=req.withdrawal_id,
                client_id=req.client_id[:36],
                idempotency_key=req.idempotency_key[:255],
                fingerprint=req.fingerprint[:64],
                user_id=req.user_id[:255],
                network=req.network[:32],
                asset=req.asset[:32],
                to_address=req.to_address[:42],
                amount=min(int(req.amount), MAX_AMOUNT_UNITS) if digits else 0,
                decimals=(cfg.asset_decimals(req.asset) if cfg else None) or 0,
                client_reference=(req.client_reference or "")[:255] or None,
                status=WithdrawalStatus.PENDING,
                required_confirmations=cfg.required_confirmations if cfg else 1,
            )
            await repo.insert_withdrawal(s, w)
            error = ErrorInfo(code=refused.code, message=refused.message)
            await repo.transition(s, w.id, WithdrawalStatus.REJECTED, error=error, seq=1)
            queued = queued_in(s)
        await self._kick(queued)
        return await self._row(req.withdrawal_id)

    async def record_admission(
        self, req: WithdrawalRequest, cfg: NetworkConfig, balances: Balances
    ) -> Withdrawal:
        """Insert the withdrawal and decide, with the network's wallets locked: REJECTED over the daily
        limit, PENDING with a reservation, else WAITING_FOR_FUNDS. A repeat returns the existing row."""
        async with self.db.transaction() as s:
            existing = await repo.get_withdrawal(s, req.withdrawal_id)
            if existing is not None:
                return existing
            await repo.lock_wallets(s, req.network)
            w = Withdrawal(
                id=req.withdrawal_id,
                client_id=req.client_id,
                idempotency_key=req.idempotency_key,
                fingerprint=req.fingerprint,
                user_id=req.user_id,
                network=req.network,
                asset=req.asset,
                to_address=req.to_address,
                amount=int(req.amount),
                decimals=cfg.asset_decimals(req.asset) or 0,
                client_reference=req.client_reference,
                status=WithdrawalStatus.PENDING,
                required_confirmations=cfg.required_confirmations,
            )
            await repo.insert_withdrawal(s, w)
            decided = await self._decide(s, w, cfg, balances)
            if decided is not WithdrawalStatus.PENDING:
                error = DAILY_LIMIT if decided is WithdrawalStatus.REJECTED else None
                await repo.transition(s, w.id, decided, error=error, seq=1)
            queued = queued_in(s)
        await self._kick(queued)
        return await self._row(req.withdrawal_id)

    async def _kick(self, queued: set[tuple[str, str]]) -> None:
        """Webhook deliveries written with the admission: start their delivery at once (the sweeper
        would find them within a minute otherwise)."""
        if queued and self.webhooks is not None:
            await self.webhooks.kick(queued)

    async def _row(self, withdrawal_id: str) -> Withdrawal:
        """The row as committed (the objects written above are never changed in memory: the database
        is the record, and the lifecycle's writer is `repo.transition` alone)."""
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, withdrawal_id)
        if w is None:
            raise LookupError(withdrawal_id)
        return w

    async def _decide(
        self, s: AsyncSession, w: Withdrawal, cfg: NetworkConfig, balances: Balances
    ) -> WithdrawalStatus:
        limits = cfg.limits.get(w.asset)
        if limits is not None:
            used = await repo.daily_total(
                s,
                client_id=w.client_id,
                network=w.network,
                asset=w.asset,
                user_id=w.user_id,
                since=utcnow() - timedelta(days=1),
            )
            # `used` includes this withdrawal: its row is already inserted.
            if used > to_units(limits.daily_per_user, w.decimals):
                return WithdrawalStatus.REJECTED
        if await self._try_reserve(s, w, cfg, balances):
            return WithdrawalStatus.PENDING
        return WithdrawalStatus.WAITING_FOR_FUNDS

    @activity.defn
    async def reserve(self, ref: WithdrawalRef) -> str | None:
        """Retry the reservation of a withdrawal waiting for funds. Returns the hot wallet, or None."""
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, ref.withdrawal_id)
        if w is None:
            raise LookupError(ref.withdrawal_id)
        if w.hot_wallet:
            return w.hot_wallet
        cfg = self.config.networks[w.network]
        balances = await self._balances(cfg, w.network, w.asset)
        async with self.db.transaction() as s:
            w = await repo.lock_withdrawal(s, ref.withdrawal_id)
            if w.hot_wallet is not None:
                return w.hot_wallet
            await repo.lock_wallets(s, w.network)
            return await self._try_reserve(s, w, cfg, balances)
