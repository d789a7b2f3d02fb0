"""Every query of the engine. Callers pass an open transaction (`Database.transaction()`).

Locking: allocation of nonces and reservations lock the network's hot-wallet rows
(`SELECT ... FOR UPDATE` on MySQL; on SQLite the whole write transaction is already serialized
by BEGIN IMMEDIATE). That is what keeps nonces contiguous and reservations within balances across
any number of worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.amounts import to_units
from models.domain import StatusChange, WithdrawalStatus
from models.tables import (
    ApiClient,
    FundReservation,
    HotWallet,
    NonceAllocation,
    TxAttempt,
    User,
    Withdrawal,
    utcnow,
)
from settings import NetworkConfig

# Statuses whose amount no longer counts towards the daily limit.
_NOT_COUNTED = (WithdrawalStatus.REJECTED, WithdrawalStatus.CANCELLED, WithdrawalStatus.FAILED)

Balances = Mapping[tuple[str, str], int]  # (hot wallet, asset) -> on-chain balance in base units


# --- clients and users -------------------------------------------------------------------------


async def find_api_client_by_hash(s: AsyncSession, key_hash: str) -> ApiClient | None:
    return (await s.exec(select(ApiClient).where(ApiClient.key_hash == key_hash))).first()  # type: ignore[attr-defined]


async def get_user(s: AsyncSession, username: str) -> User | None:
    return (await s.exec(select(User).where(User.username == username))).first()  # type: ignore[attr-defined]


# --- withdrawals -------------------------------------------------------------------------------


async def get_withdrawal(
    s: AsyncSession, withdrawal_id: str, *, client_id: str | None = None
) -> Withdrawal | None:
    q = select(Withdrawal).where(Withdrawal.id == withdrawal_id)
    if client_id is not None:
        q = q.where(Withdrawal.client_id == client_id)
    return (await s.exec(q)).first()  # type: ignore[attr-defined]


async def lock_withdrawal(s: AsyncSession, withdrawal_id: str) -> Withdrawal:
    q = select(Withdrawal).where(Withdrawal.id == withdrawal_id).with_for_update()
    w = (await s.exec(q)).first()  # type: ignore[attr-defined]
    if w is None:
        raise LookupError(f"withdrawal {withdrawal_id} not found")
    return w


async def list_withdrawals(
    s: AsyncSession,
    *,
    status: str | None = None,
    network: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Withdrawal]:
    q = select(Withdrawal)
    if status:
        q = q.where(Withdrawal.status == status)
    if network:
        q = q.where(Withdrawal.network == network)
    q = q.order_by(col(Withdrawal.created_at).desc()).limit(limit).offset(offset)
    return list((await s.exec(q)).all())  # type: ignore[attr-defined]


async def count_by_status_and_network(
    s: AsyncSession, client_id: str | None = None
) -> list[tuple[str, str, int]]:
    q = select(Withdrawal.network, Withdrawal.status, func.count()).group_by(
        Withdrawal.network, Withdrawal.status
    )
    if client_id is not None:
        q = q.where(Withdrawal.client_id == client_id)
    return [(n, st, int(c)) for n, st, c in (await s.exec(q)).all()]  # type: ignore[attr-defined]


async def _update_withdrawal(s: AsyncSession, withdrawal_id: str, **values: Any) -> None:
    """One UPDATE of a withdrawal row (it takes the row lock on MySQL; SQLite is already serialized)."""
    result: Any = await s.exec(
        update(Withdrawal)  # type: ignore[call-overload]
        .where(col(Withdrawal.id) == withdrawal_id)
        .values(updated_at=utcnow(), **values)
    )
    if result.rowcount != 1:
        raise LookupError(f"withdrawal {withdrawal_id} not found")


async def apply_status_change(s: AsyncSession, change: StatusChange) -> None:
    """Write a status transition and its data; consume or release reservations exactly once."""
    await _update_withdrawal(
        s,
        change.withdrawal_id,
        status=change.status,
        error_code=change.error_code,
        error_message=change.error_message,
    )
    if change.status == WithdrawalStatus.BROADCAST:
        await s.exec(
            update(TxAttempt)  # type: ignore[call-overload]
            .where(col(TxAttempt.withdrawal_id) == change.withdrawal_id, col(TxAttempt.outcome) == "SIGNED")
            .values(outcome="BROADCAST", updated_at=utcnow())
        )
    if change.status in (WithdrawalStatus.REJECTED, WithdrawalStatus.CANCELLED, WithdrawalStatus.FAILED):
        await settle_reservations(s, change.withdrawal_id, "RELEASED")
    elif change.status == WithdrawalStatus.CONFIRMED:
        await settle_reservations(s, change.withdrawal_id, "CONSUMED")


async def record_inclusion(
    s: AsyncSession,
    withdrawal_id: str,
    *,
    tx_hash: str,
    block_number: int,
    confirmations: int,
    fee_wei: int,
    status: str | None = None,
) -> None:
    """Record which attempt is in a block (the others are replaced), optionally with a status."""
    values: dict[str, Any] = {
        "tx_hash": tx_hash,
        "block_number": block_number,
        "confirmations": confirmations,
        "fee_wei": fee_wei,
    }
    if status is not None:
        values.update(status=status, error_code=None, error_message=None)
    await _update_withdrawal(s, withdrawal_id, **values)
    mined = col(TxAttempt.tx_hash) == tx_hash
    await s.exec(
        update(TxAttempt)  # type: ignore[call-overload]
        .where(col(TxAttempt.withdrawal_id) == withdrawal_id)
        .where(or_(mined, col(TxAttempt.outcome).in_(["SIGNED", "BROADCAST"])))
        .values(outcome=case((mined, "MINED"), else_="REPLACED"), updated_at=utcnow())
    )


async def record_reorg(s: AsyncSession, withdrawal_id: str, tx_hash: str) -> None:
    """The transaction left the canonical chain: back to BROADCAST, no block, no confirmations."""
    w = await lock_withdrawal(s, withdrawal_id)
    w.status, w.block_number, w.confirmations, w.fee_wei = WithdrawalStatus.BROADCAST, None, 0, None
    w.updated_at = utcnow()
    s.add(w)
    await s.exec(
        update(TxAttempt)  # type: ignore[call-overload]
        .where(
            col(TxAttempt.withdrawal_id) == withdrawal_id, col(TxAttempt.outcome).in_(["MINED", "REPLACED"])
        )
        .values(outcome="BROADCAST", updated_at=utcnow())
    )


# --- admission: limits and reservations ----------------------------------------------------------


@dataclass(frozen=True)
class AdmissionDecision:
    status: WithdrawalStatus
    hot_wallet: str | None
    error_code: str | None = None
    error_message: str | None = None


async def _lock_wallets(s: AsyncSession, network: str) -> list[HotWallet]:
    q = select(HotWallet).where(HotWallet.network == network).order_by(col(HotWallet.id)).with_for_update()
    return list((await s.exec(q)).all())  # type: ignore[attr-defined]


async def _held(s: AsyncSession, network: str) -> dict[tuple[str, str], int]:
    q = select(FundReservation.hot_wallet, FundReservation.asset, FundReservation.amount).where(
        FundReservation.network == network, FundReservation.state == "HELD"
    )
    held: dict[tuple[str, str], int] = {}
    for wallet, asset, amount in (await s.exec(q)).all():  # type: ignore[attr-defined]
        held[(wallet, asset)] = held.get((wallet, asset), 0) + int(amount)
    return held


async def _in_flight(s: AsyncSession, network: str) -> dict[str, int]:
    q = (
        select(FundReservation.hot_wallet, func.count(func.distinct(FundReservation.withdrawal_id)))
        .where(FundReservation.network == network, FundReservation.state == "HELD")
        .group_by(FundReservation.hot_wallet)
    )
    return {w: int(c) for w, c in (await s.exec(q)).all()}  # type: ignore[attr-defined]


async def daily_total(s: AsyncSession, *, network: str, asset: str, user_id: str, since: datetime) -> int:
    q = select(Withdrawal.amount).where(
        Withdrawal.network == network,
        Withdrawal.asset == asset,
        Withdrawal.user_id == user_id,
        col(Withdrawal.created_at) >= since,
        col(Withdrawal.status).not_in(_NOT_COUNTED),
    )
    return sum(int(a) for a in (await s.exec(q)).all())  # type: ignore[attr-defined]


def reservation_amounts(cfg: NetworkConfig, asset: str, amount: int) -> dict[str, int]:
    """What a withdrawal holds: the amount in its asset, plus a worst-case fee in native coin."""
    fee = cfg.fee_allowance_wei(asset)
    if asset == cfg.native_asset:
        return {asset: amount + fee}
    return {asset: amount, cfg.native_asset: fee}


async def try_reserve(s: AsyncSession, w: Withdrawal, cfg: NetworkConfig, balances: Balances) -> str | None:
    """Reserve on the least busy hot wallet that can cover the withdrawal. Returns the wallet or None.

    Must run with the network's wallet rows locked (see `admit` and `reserve_existing`).
    """
    need = reservation_amounts(cfg, w.asset, w.amount)
    held = await _held(s, w.network)
    busy = await _in_flight(s, w.network)
    candidates = [
        wallet
        for wallet in cfg.hot_wallets
        if all(balances.get((wallet, a), 0) - held.get((wallet, a), 0) >= n for a, n in need.items())
    ]
    if not candidates:
        return None
    wallet = min(candidates, key=lambda x: (busy.get(x, 0), cfg.hot_wallets.index(x)))
    for a, n in need.items():
        s.add(FundReservation(withdrawal_id=w.id, network=w.network, hot_wallet=wallet, asset=a, amount=n))
    w.hot_wallet = wallet
    return wallet


async def admit(
    s: AsyncSession, w: Withdrawal, cfg: NetworkConfig, balances: Balances, *, now: datetime
) -> AdmissionDecision:
    """Insert a new withdrawal after the daily limit check, reserving hot-wallet funds if it can."""
    await _lock_wallets(s, w.network)
    limits = cfg.limits.get(w.asset)
    if limits is not None:
        used = await daily_total(
            s, network=w.network, asset=w.asset, user_id=w.user_id, since=now - timedelta(days=1)
        )
        if used + w.amount > to_units(limits.daily_per_user, w.decimals):
            w.status = WithdrawalStatus.REJECTED
            w.error_code, w.error_message = "LIMIT_EXCEEDED", "daily withdrawal limit for this user exceeded"
            s.add(w)
            return AdmissionDecision(WithdrawalStatus.REJECTED, None, w.error_code, w.error_message)
    wallet = await try_reserve(s, w, cfg, balances)
    w.status = WithdrawalStatus.PENDING if wallet else WithdrawalStatus.WAITING_FOR_FUNDS
    s.add(w)
    return AdmissionDecision(WithdrawalStatus(w.status), wallet)


async def reserve_existing(
    s: AsyncSession, withdrawal_id: str, cfg: NetworkConfig, balances: Balances
) -> str | None:
    """Retry the reservation of a withdrawal waiting for funds; idempotent."""
    w = await lock_withdrawal(s, withdrawal_id)
    if w.hot_wallet is not None:
        return w.hot_wallet
    await _lock_wallets(s, w.network)
    wallet = await try_reserve(s, w, cfg, balances)
    if wallet:
        w.updated_at = utcnow()
        s.add(w)
    return wallet


async def settle_reservations(s: AsyncSession, withdrawal_id: str, state: str) -> int:
    """HELD -> CONSUMED or RELEASED. Only HELD rows move, so a repeat changes nothing."""
    result: Any = await s.exec(
        update(FundReservation)
        .where(col(FundReservation.withdrawal_id) == withdrawal_id, col(FundReservation.state) == "HELD")
        .values(state=state, settled_at=utcnow())
    )
    return int(result.rowcount or 0)


async def reservations_for(s: AsyncSession, withdrawal_id: str) -> list[FundReservation]:
    q = select(FundReservation).where(FundReservation.withdrawal_id == withdrawal_id)
    return list((await s.exec(q)).all())  # type: ignore[attr-defined]


# --- hot wallets and nonces ----------------------------------------------------------------------


async def ensure_hot_wallet(s: AsyncSession, network: str, address: str, chain_nonce: int) -> HotWallet:
    q = select(HotWallet).where(HotWallet.network == network, HotWallet.address == address)
    hw = (await s.exec(q)).first()  # type: ignore[attr-defined]
    if hw is None:
        hw = HotWallet(network=network, address=address, next_nonce=chain_nonce)
        s.add(hw)
        await s.flush()
    return hw


async def allocate_nonce(s: AsyncSession, withdrawal_id: str) -> NonceAllocation:
    """Give the withdrawal the wallet's next nonce, once: a retry gets the same allocation.

    The withdrawal row is locked first, so two concurrent calls for one withdrawal serialize and the
    second finds the first one's allocation; the hot-wallet row lock then serializes the counter."""
    w = await lock_withdrawal(s, withdrawal_id)
    existing = await active_allocation(s, withdrawal_id)
    if existing is not None:
        return existing
    if w.hot_wallet is None:
        raise LookupError(f"withdrawal {withdrawal_id} has no hot wallet")
    q = (
        select(HotWallet)
        .where(HotWallet.network == w.network, HotWallet.address == w.hot_wallet)
        .with_for_update()
    )
    hw = (await s.exec(q)).one()  # type: ignore[attr-defined]
    alloc = NonceAllocation(
        network=w.network, hot_wallet=w.hot_wallet, nonce=hw.next_nonce, withdrawal_id=w.id
    )
    hw.next_nonce += 1
    w.nonce = alloc.nonce
    w.status = WithdrawalStatus.PROCESSING
    w.updated_at = utcnow()
    s.add_all([alloc, hw, w])
    await s.flush()
    return alloc


async def active_allocation(s: AsyncSession, withdrawal_id: str) -> NonceAllocation | None:
    q = select(NonceAllocation).where(
        NonceAllocation.withdrawal_id == withdrawal_id, col(NonceAllocation.active).is_(True)
    )
    return (await s.exec(q)).first()  # type: ignore[attr-defined]


async def lock_hot_wallet(s: AsyncSession, network: str, address: str) -> HotWallet:
    q = select(HotWallet).where(HotWallet.network == network, HotWallet.address == address).with_for_update()
    return (await s.exec(q)).one()  # type: ignore[attr-defined]


async def record_external_nonces(s: AsyncSession, hw: HotWallet, chain_latest: int) -> list[int]:
    """Nonces below the chain's that the engine never allocated were used outside it: record them as
    EXTERNAL and move the wallet's counter past them. `hw` must be locked."""
    skipped = list(range(hw.next_nonce, chain_latest))
    for n in skipped:
        s.add(
            NonceAllocation(
                network=hw.network, hot_wallet=hw.address, nonce=n, purpose="EXTERNAL", active=False
            )
        )
    if skipped:
        hw.next_nonce = chain_latest
        s.add(hw)
        await s.flush()
    return skipped


async def realign_nonce(
    s: AsyncSession, withdrawal_id: str, chain_latest: int
) -> tuple[int, NonceAllocation]:
    """The withdrawal's nonce was consumed on chain by a transaction the engine did not send (none of
    ours is mined there): give it the wallet's next nonce. Its attempts at the old nonce can never be
    mined any more, so one withdrawal still gets at most one mined transaction. Returns (old, new)."""
    w = await lock_withdrawal(s, withdrawal_id)
    old = await active_allocation(s, withdrawal_id)
    if old is None or w.hot_wallet is None:
        raise LookupError(f"withdrawal {withdrawal_id} has no nonce")
    if old.nonce >= chain_latest:
        return old.nonce, old  # the nonce is still free on chain: nothing to realign
    hw = await lock_hot_wallet(s, w.network, w.hot_wallet)
    old.active, old.purpose = False, "EXTERNAL"
    s.add(old)
    await record_external_nonces(s, hw, chain_latest)
    new = NonceAllocation(network=w.network, hot_wallet=w.hot_wallet, nonce=hw.next_nonce, withdrawal_id=w.id)
    hw.next_nonce += 1
    w.nonce = new.nonce
    w.updated_at = utcnow()
    s.add_all([new, hw, w])
    await s.exec(
        update(TxAttempt)  # type: ignore[call-overload]
        .where(col(TxAttempt.withdrawal_id) == withdrawal_id, col(TxAttempt.nonce) == old.nonce)
        .values(
            outcome="FAILED", error="nonce used by a transaction sent outside the engine", updated_at=utcnow()
        )
    )
    await s.flush()
    return old.nonce, new


async def mark_allocation(
    s: AsyncSession, network: str, hot_wallet: str, nonce: int, *, purpose: str
) -> None:
    await s.exec(
        update(NonceAllocation)  # type: ignore[call-overload]
        .where(
            col(NonceAllocation.network) == network,
            col(NonceAllocation.hot_wallet) == hot_wallet,
            col(NonceAllocation.nonce) == nonce,
        )
        .values(purpose=purpose, active=False)
    )


async def nonce_allocations(s: AsyncSession, network: str, hot_wallet: str) -> list[NonceAllocation]:
    q = (
        select(NonceAllocation)
        .where(NonceAllocation.network == network, NonceAllocation.hot_wallet == hot_wallet)
        .order_by(col(NonceAllocation.nonce))
    )
    return list((await s.exec(q)).all())  # type: ignore[attr-defined]


# --- transaction attempts ------------------------------------------------------------------------


async def attempts_for(s: AsyncSession, withdrawal_id: str, purpose: str | None = None) -> list[TxAttempt]:
    q = select(TxAttempt).where(TxAttempt.withdrawal_id == withdrawal_id)
    if purpose is not None:
        q = q.where(TxAttempt.purpose == purpose)
    return list((await s.exec(q.order_by(col(TxAttempt.id)))).all())  # type: ignore[attr-defined]


async def attempt_by_hash(s: AsyncSession, tx_hash: str) -> TxAttempt | None:
    return (await s.exec(select(TxAttempt).where(TxAttempt.tx_hash == tx_hash))).first()  # type: ignore[attr-defined]


async def record_attempt(s: AsyncSession, attempt: TxAttempt) -> None:
    s.add(attempt)
    w = await lock_withdrawal(s, attempt.withdrawal_id)
    w.tx_hash = attempt.tx_hash
    w.updated_at = utcnow()
    s.add(w)
    await s.flush()


async def mark_attempt(s: AsyncSession, tx_hash: str, outcome: str, error: str | None = None) -> None:
    await s.exec(
        update(TxAttempt)
        .where(col(TxAttempt.tx_hash) == tx_hash, col(TxAttempt.outcome).in_(["SIGNED", "BROADCAST"]))
        .values(outcome=outcome, error=error, updated_at=utcnow())
    )
