"""Admission (limits and hot-wallet reservations) and status records."""

from __future__ import annotations

import asyncio

import structlog
from temporalio import activity

from activities.rpc import Chains
from models import repo
from models.amounts import to_units
from models.db import Database
from models.domain import Admission, StatusChange, WithdrawalRef, WithdrawalRequest, WithdrawalStatus
from models.tables import Withdrawal, utcnow
from settings import EngineConfig, NetworkConfig

log = structlog.get_logger()


class FundsActivities:
    def __init__(self, db: Database, chains: Chains, config: EngineConfig) -> None:
        self.db, self.chains, self.config = db, chains, config

    async def _balances(self, cfg: NetworkConfig, network: str, asset: str) -> dict[tuple[str, str], int]:
        rpc = self.chains[network]
        pairs: list[tuple[str, str]] = []
        calls = []
        for wallet in cfg.hot_wallets:
            pairs.append((wallet, cfg.native_asset))
            calls.append(rpc.balance(wallet))
            if asset != cfg.native_asset:
                pairs.append((wallet, asset))
                calls.append(rpc.token_balance(cfg.tokens[asset].address, wallet))
        return dict(zip(pairs, await asyncio.gather(*calls), strict=True))

    def _admission(self, w: Withdrawal, cfg: NetworkConfig) -> Admission:
        limits = cfg.limits.get(w.asset)
        threshold = to_units(limits.approval_threshold, w.decimals) if limits else None
        return Admission(
            accepted=w.status != WithdrawalStatus.REJECTED,
            status=w.status,
            error_code=w.error_code,
            error_message=w.error_message,
            hot_wallet=w.hot_wallet,
            requires_approval=threshold is not None and w.amount > threshold,
            required_confirmations=cfg.required_confirmations,
            approval_timeout_seconds=self.config.approval_timeout_seconds,
            funds_retry_seconds=self.config.funds_retry_seconds,
            stuck_after_seconds=cfg.stuck_after_blocks * cfg.block_time_seconds,
        )

    @activity.defn
    async def admit(self, req: WithdrawalRequest) -> Admission:
        """Create the withdrawal row: daily limit, then a reservation on a hot wallet that can cover it
        (else WAITING_FOR_FUNDS). Idempotent: a repeat returns what the first call decided."""
        cfg = self.config.networks[req.network]
        async with self.db.read() as s:
            existing = await repo.get_withdrawal(s, req.withdrawal_id)
        if existing is not None:
            return self._admission(existing, cfg)
        balances = await self._balances(cfg, req.network, req.asset)
        async with self.db.transaction() as s:
            existing = await repo.get_withdrawal(s, req.withdrawal_id)
            if existing is not None:
                return self._admission(existing, cfg)
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
            decision = await repo.admit(s, w, cfg, balances, now=utcnow())
        log.info(
            "withdrawal.admitted", withdrawal_id=w.id, status=decision.status, hot_wallet=decision.hot_wallet
        )
        return self._admission(w, cfg)

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
            return await repo.reserve_existing(s, w.id, cfg, balances)

    @activity.defn
    async def record_status(self, change: StatusChange) -> None:
        """Write a status change to the row; terminal statuses consume or release the reservation once."""
        async with self.db.transaction() as s:
            await repo.apply_status_change(s, change)
        log.info(
            "withdrawal.status",
            withdrawal_id=change.withdrawal_id,
            status=change.status,
            error=change.error_code,
        )
