"""Every query of the engine. Callers pass an open transaction (`Database.transaction()` or `read()`).

Write style: new rows are inserted as model objects (`s.add`), except the status move's own rows
(its event and webhook deliveries: core INSERTs); existing rows change only through UPDATE
statements (on the hot paths core ones built once, `_set`, which also update the loaded objects of
those rows), never by mutating a loaded object. A withdrawal's status changes only in
`transition`, the single guarded writer of the lifecycle in `models.lifecycle`.

Locking: allocation of nonces and reservations lock the network's hot-wallet rows
(`SELECT ... FOR UPDATE` on MySQL; on SQLite the whole write transaction is already serialized
by BEGIN IMMEDIATE). That is what keeps nonces contiguous and reservations within balances across
any number of worker processes. Policy (which wallet, whether a limit is exceeded) is decided by the
activities that own it; this module only reads and writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, insert, or_, update
from sqlalchemy import select as sa_select  # more columns than sqlmodel's select types
from sqlalchemy.orm.attributes import instance_dict, set_committed_value
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models import lifecycle, webhooks
from models.domain import (
    ErrorInfo,
    NoncePurpose,
    ReservationState,
    TxOutcome,
    Wei,
    WithdrawalStatus,
)
from models.lifecycle import NonceEffect, ReservationEffect, StaleTransition
from models.tables import (
    FundReservation,
    HotWallet,
    NonceAllocation,
    StatusEvent,
    TxAttempt,
    User,
    WalletHold,
    Withdrawal,
    utcnow,
)

# Statuses whose amount no longer counts towards the daily limit.
_NOT_COUNTED = (WithdrawalStatus.REJECTED, WithdrawalStatus.CANCELLED, WithdrawalStatus.FAILED)
_LIVE_ATTEMPT = (TxOutcome.SIGNED, TxOutcome.BROADCAST)


async def _first(s: AsyncSession, q: Any) -> Any:
    return (await s.exec(q)).first()


async def _all(s: AsyncSession, q: Any) -> list[Any]:
    return list((await s.exec(q)).all())


async def _update(s: AsyncSession, stmt: Any, params: Mapping[str, Any] | None = None) -> int:
    result: Any = await s.exec(stmt, params=params)
    return int(result.rowcount or 0)


# Core statements for the hot paths (every withdrawal runs them several times): built once, executed
# with parameters, no ORM work per call. The ORM's own UPDATE also writes its values into the objects
# of those rows loaded in the session; `_sync_loaded` does the same for these.

_SETS: dict[tuple[Any, ...], Any] = {}


def _sync_loaded(s: AsyncSession, model: type[Any], match: Any, values: Mapping[str, Any]) -> None:
    """Give `values` to the objects of `model` loaded in `s` that `match` (a function of the object's
    loaded attributes, a dict): what a core UPDATE wrote to their rows."""
    for obj in list(s.sync_session.identity_map.values()):
        if isinstance(obj, model) and match(instance_dict(obj)):
            for key, value in values.items():
                set_committed_value(obj, key, value)


def _matches(where: Mapping[str, Any]) -> Any:
    def match(loaded: Mapping[str, Any]) -> bool:
        for key, want in where.items():
            have = loaded.get(key, _UNLOADED)
            if have is _UNLOADED or (have not in want if isinstance(want, tuple) else have != want):
                return False
        return True

    return match


_UNLOADED = object()


async def _set(s: AsyncSession, model: type[Any], where: Mapping[str, Any], **values: Any) -> int:
    """UPDATE `model`'s rows whose columns equal `where`'s values (a tuple: are one of them) SET
    `values`; returns the rows changed. One core statement per shape, built once; what the caller
    added to the session is flushed first (as the ORM's autoflush would). A key's value is never None
    (`col = NULL` matches nothing) nor a list (a tuple is the IN form)."""
    if any(v is None or isinstance(v, list) for v in where.values()):
        raise ValueError(f"_set: a key of {model.__name__} is None or a list: {sorted(where)}")
    shape = (model, *((k, isinstance(v, tuple)) for k, v in where.items()), *values)
    stmt = _SETS.get(shape)
    if stmt is None:
        t = model.__table__
        conditions = [
            t.c[k].in_(bindparam(f"w_{k}", expanding=True))
            if isinstance(v, tuple)
            else t.c[k] == bindparam(f"w_{k}")
            for k, v in where.items()
        ]
        stmt = _SETS[shape] = update(t).where(*conditions).values({k: bindparam(f"v_{k}") for k in values})
    await s.flush()
    params = {f"w_{k}": list(v) if isinstance(v, tuple) else v for k, v in where.items()}
    params.update((f"v_{k}", v) for k, v in values.items())
    changed = await _update(s, stmt, params)
    if changed:
        _sync_loaded(s, model, _matches(where), values)
    return changed


# --- users -------------------------------------------------------------------------


async def get_user(s: AsyncSession, username: str) -> User | None:
    user: User | None = await _first(s, select(User).where(User.username == username))
    return user


async def create_user(s: AsyncSession, user: User) -> None:
    s.add(user)
    await s.flush()


# --- withdrawals -------------------------------------------------------------------------------


async def get_withdrawal(
    s: AsyncSession, withdrawal_id: str, *, client_id: str | None = None
) -> Withdrawal | None:
    if client_id is None:
        w: Withdrawal | None = (await s.exec(_WITHDRAWAL, params={"w_id": withdrawal_id})).first()
        return w
    q = select(Withdrawal).where(Withdrawal.id == withdrawal_id, Withdrawal.client_id == client_id)
    theirs: Withdrawal | None = await _first(s, q)
    return theirs


_WITHDRAWAL = select(Withdrawal).where(Withdrawal.id == bindparam("w_id"))
_LOCKED_WITHDRAWAL = _WITHDRAWAL.with_for_update()


async def lock_withdrawal(s: AsyncSession, withdrawal_id: str) -> Withdrawal:
    w: Withdrawal | None = (await s.exec(_LOCKED_WITHDRAWAL, params={"w_id": withdrawal_id})).first()
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
    return await _all(s, q)


async def count_by_status_and_network(
    s: AsyncSession, client_id: str | None = None
) -> list[tuple[str, str, int]]:
    q = select(Withdrawal.network, Withdrawal.status, func.count()).group_by(
        Withdrawal.network, Withdrawal.status
    )
    if client_id is not None:
        q = q.where(Withdrawal.client_id == client_id)
    return [(n, st, int(c)) for n, st, c in await _all(s, q)]


async def insert_withdrawal(s: AsyncSession, w: Withdrawal) -> None:
    """Insert a new withdrawal. Every row is born in `lifecycle.INITIAL`; later statuses come from
    `transition` (in the same transaction, if the admission decides one at once)."""
    if w.status != lifecycle.INITIAL:
        raise ValueError(f"a withdrawal starts in {lifecycle.INITIAL}, not {w.status}")
    w.status_seq = 0
    s.add(w)
    s.add(StatusEvent(withdrawal_id=w.id, seq=0, status=w.status))
    await s.flush()
    await webhooks.enqueue_event(s, w.id, seq=0, event_type=webhooks.status_event_type(w.status))


# --- a status move: core statements on the tables, built once per target status --------------------
#
# The move runs in every status change of every withdrawal, so it skips the ORM's per-statement work
# (building the expression, the ORM compile step, the unit of work; see `_set` above).

_W = Withdrawal.__table__  # type: ignore[attr-defined]
_RESERVATIONS = FundReservation.__table__  # type: ignore[attr-defined]

_INSERT_EVENT = insert(StatusEvent.__table__)  # type: ignore[attr-defined]
_HELD_ROWS: Any = (
    sa_select(
        _RESERVATIONS.c.id,
        _RESERVATIONS.c.network,
        _RESERVATIONS.c.hot_wallet,
        _RESERVATIONS.c.asset,
        _RESERVATIONS.c.amount,
    )
    .where(_RESERVATIONS.c.withdrawal_id == bindparam("w_id"), _RESERVATIONS.c.state == ReservationState.HELD)
    .with_for_update()
)
_MOVES: dict[WithdrawalStatus, Any] = {}


def _move_statement(to: WithdrawalStatus) -> Any:
    """UPDATE withdrawals guarded by the lifecycle (`status IN predecessors(to)`) and the number."""
    stmt = _MOVES.get(to)
    if stmt is None:
        values: dict[str, Any] = {
            "status": bindparam("m_status"),
            "status_seq": bindparam("m_seq"),
            "error_code": bindparam("m_code"),
            "error_message": bindparam("m_message"),
            "updated_at": bindparam("m_at"),
        }
        if to in lifecycle.CLEARS_INCLUSION:
            values.update(block_number=None, confirmations=0, fee_wei=None)
        stmt = _MOVES[to] = (
            update(_W)
            .where(
                _W.c.id == bindparam("w_id"),
                _W.c.status.in_(sorted(lifecycle.predecessors(to))),
                _W.c.status_seq == bindparam("m_prev"),
            )
            .values(**values)
        )
    return stmt


async def _status_of(s: AsyncSession, withdrawal_id: str, to: WithdrawalStatus) -> tuple[str, int]:
    """The row's (status, status_seq); a missing row is a stale move to `to`."""
    row = (
        await s.exec(select(Withdrawal.status, Withdrawal.status_seq).where(Withdrawal.id == withdrawal_id))
    ).first()
    if row is None:
        raise StaleTransition(withdrawal_id, None, to)
    return str(row[0]), int(row[1])


async def transition(
    s: AsyncSession,
    withdrawal_id: str,
    to: WithdrawalStatus,
    *,
    error: ErrorInfo | None = None,
    seq: int | None = None,
) -> bool:
    """Move a withdrawal to `to`: the one writer of a withdrawal's status.

    A single UPDATE guarded by `status IN predecessors(to)` and by the transition number
    (`status_seq = seq - 1`); in the same transaction it applies the lifecycle's effects (reservation
    consumed or released, nonce allocation closed, inclusion data cleared), appends the status event
    numbered `seq` and queues its webhook deliveries (the outbox, `models.webhooks.queue_deliveries`).

    `seq` is the workflow's own count of its moves, so a move re-executed after a crash (a local
    activity whose completion was lost) is recognised by its number and changes nothing (returns
    False), even when the row has moved on since. Writers outside the workflow (the reconciler, for a
    withdrawal whose workflow has ended) pass no `seq` and take the next number. Any move the row's
    status or number does not allow raises `StaleTransition` and changes nothing.
    """
    await s.flush()  # the statements below are core ones: what the caller added must be written first
    if seq is None:
        row = await _status_of(s, withdrawal_id, to)
        if row[0] == to:
            return False
        seq = int(row[1]) + 1
    now = utcnow()
    values: dict[str, Any] = {
        "status": to,
        "status_seq": seq,
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "updated_at": now,
    }
    moved = await _update(
        s,
        _move_statement(to),
        {
            "w_id": withdrawal_id,
            "m_prev": seq - 1,
            "m_status": to,
            "m_seq": seq,
            "m_code": values["error_code"],
            "m_message": values["error_message"],
            "m_at": now,
        },
    )
    if not moved:
        row = await _status_of(s, withdrawal_id, to)
        if int(row[1]) >= seq:
            done = await _first(
                s,
                select(StatusEvent.status).where(
                    StatusEvent.withdrawal_id == withdrawal_id, StatusEvent.seq == seq
                ),
            )
            if done == to:
                return False  # this very move was made before
        raise StaleTransition(withdrawal_id, WithdrawalStatus(row[0]), to)
    if to in lifecycle.CLEARS_INCLUSION:
        values.update(block_number=None, confirmations=0, fee_wei=None)
    _sync_loaded(s, Withdrawal, _matches({"id": withdrawal_id}), values)
    w = await webhooks.withdrawal_row(s, withdrawal_id)  # as it stands now: the events' data
    reservation = lifecycle.RESERVATION_EFFECT[to]
    holds: HoldChanges = {}
    if reservation is not ReservationEffect.HOLD:
        state = (
            ReservationState.CONSUMED
            if reservation is ReservationEffect.CONSUME
            else ReservationState.RELEASED
        )
        holds = await _settle_reservations(s, withdrawal_id, state, w.block_number)
    nonce = lifecycle.NONCE_EFFECT[to]
    if nonce is not NonceEffect.KEEP:
        closed: dict[str, Any] = {"active": False}
        if nonce is NonceEffect.FILLED:
            closed["purpose"] = NoncePurpose.FILL
        await _set(s, NonceAllocation, {"withdrawal_id": withdrawal_id, "active": True}, **closed)
    await s.exec(
        _INSERT_EVENT,
        params={
            "withdrawal_id": withdrawal_id,
            "seq": seq,
            "status": to,
            "error_code": values["error_code"],
            "error_message": values["error_message"],
            "created_at": now,
        },
    )
    # A fresh move: its number was never taken before, so no delivery of its event exists yet.
    await webhooks.queue_deliveries(s, w, seq=seq, event_type=webhooks.status_event_type(to), fresh=True)
    await _apply_holds(s, holds)
    return True


async def status_events(s: AsyncSession, withdrawal_id: str) -> list[StatusEvent]:
    q = select(StatusEvent).where(StatusEvent.withdrawal_id == withdrawal_id).order_by(col(StatusEvent.seq))
    return await _all(s, q)


async def record_inclusion(
    s: AsyncSession,
    withdrawal_id: str,
    *,
    tx_hash: str,
    block_number: int,
    confirmations: int,
    fee_wei: int,
) -> None:
    """Record which attempt is in a block (the other live ones are replaced)."""
    now = utcnow()
    await _set(
        s,
        Withdrawal,
        {"id": withdrawal_id},
        tx_hash=tx_hash,
        block_number=block_number,
        confirmations=confirmations,
        fee_wei=fee_wei,
        updated_at=now,
    )
    await _update(s, _INCLUDED, {"w_id": withdrawal_id, "t_hash": tx_hash, "t_at": now})
    for outcome, where in (
        (TxOutcome.MINED, {"withdrawal_id": withdrawal_id, "tx_hash": tx_hash}),
        (TxOutcome.REPLACED, {"withdrawal_id": withdrawal_id, "outcome": _LIVE_ATTEMPT}),
    ):
        _sync_loaded(s, TxAttempt, _matches(where), {"outcome": outcome, "updated_at": now})


_ATTEMPTS = TxAttempt.__table__  # type: ignore[attr-defined]
_MINED = _ATTEMPTS.c.tx_hash == bindparam("t_hash")
_INCLUDED = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.withdrawal_id == bindparam("w_id"))
    .where(or_(_MINED, _ATTEMPTS.c.outcome.in_(_LIVE_ATTEMPT)))
    .values(outcome=case((_MINED, TxOutcome.MINED), else_=TxOutcome.REPLACED), updated_at=bindparam("t_at"))
)


async def record_reorg(s: AsyncSession, withdrawal_id: str) -> None:
    """The mined attempt left the canonical chain: its attempts are live again (the status moves back
    to BROADCAST through `transition`, which clears the block, confirmations and fee). Queues the
    `withdrawal.reorged` event, numbered after the move it follows."""
    await _update(
        s,
        update(TxAttempt)
        .where(
            col(TxAttempt.withdrawal_id) == withdrawal_id,
            col(TxAttempt.outcome).in_([TxOutcome.MINED, TxOutcome.REPLACED]),
        )
        .values(outcome=TxOutcome.BROADCAST, updated_at=utcnow()),
    )
    await webhooks.enqueue_reorg(s, withdrawal_id)


# --- admission: limits and reservations ----------------------------------------------------------


_LOCKED_WALLETS = (
    select(HotWallet)
    .where(HotWallet.network == bindparam("network"))
    .order_by(col(HotWallet.id))
    .with_for_update()
)


async def lock_wallets(s: AsyncSession, network: str) -> list[HotWallet]:
    return list((await s.exec(_LOCKED_WALLETS, params={"network": network})).all())


def settled_after_query(network: str, as_of_block: int) -> Any:
    """The reservations settled by a transaction mined after `as_of_block`: a balance read at that
    block still contains what they paid. Seeks (network, settled_block); only the last few blocks'
    settlements match (tests/models/test_repo.py asks both databases for the plan)."""
    return select(FundReservation.hot_wallet, FundReservation.asset, FundReservation.amount).where(
        col(FundReservation.network) == network,
        col(FundReservation.settled_block) > as_of_block,
        col(FundReservation.state) != ReservationState.HELD,
    )


async def _holds(s: AsyncSession, network: str) -> list[tuple[str, str, int, int]]:
    """(hot wallet, asset, held, holders) of the network: columns, not objects, so a second read in
    one session sees the row as it is now (an object already loaded would be handed back unchanged)."""
    rows = await s.exec(_HOLDS, params={"network": network})
    return [(str(w), str(a), int(h), int(n)) for w, a, h, n in rows.all()]


_HOLDS = select(WalletHold.hot_wallet, WalletHold.asset, WalletHold.held, WalletHold.holders).where(
    WalletHold.network == bindparam("network")
)


async def held_amounts(
    s: AsyncSession, network: str, *, as_of_block: int | None = None
) -> dict[tuple[str, str], int]:
    """(hot wallet, asset) -> what is spoken for, against balances read at `as_of_block`: the HELD
    reservations (their running totals, `wallet_holds`), plus those settled by a transaction mined
    after that block (the balance read there still contains funds that have left since). Without a
    block: HELD only. Reads a row per wallet and asset, however many withdrawals are in flight."""
    held = {(wallet, asset): amount for wallet, asset, amount, _ in await _holds(s, network) if amount}
    if as_of_block is not None:
        for wallet, asset, amount in await _all(s, settled_after_query(network, as_of_block)):
            held[(wallet, asset)] = held.get((wallet, asset), 0) + int(amount)
    return held


async def in_flight_counts(s: AsyncSession, network: str) -> dict[str, int]:
    """Hot wallet -> number of withdrawals holding a reservation on it. Every withdrawal holds native
    coin (its amount or its fee allowance), so the most held-for asset of a wallet counts them all."""
    counts: dict[str, int] = {}
    for wallet, _, _, holders in await _holds(s, network):
        if holders:
            counts[wallet] = max(counts.get(wallet, 0), holders)
    return counts


def _hold_key(network: str, hot_wallet: str, asset: str) -> tuple[Any, ...]:
    return (
        col(WalletHold.network) == network,
        col(WalletHold.hot_wallet) == hot_wallet,
        col(WalletHold.asset) == asset,
    )


async def _held_by_asset(
    s: AsyncSession, network: str, hot_wallet: str, asset: str | None = None
) -> dict[str, tuple[int, int]]:
    """Asset -> (held, holders) from the wallet's HELD reservations themselves (one asset, or all),
    through the (network, hot_wallet, state) index."""
    q = select(FundReservation.asset, FundReservation.amount).where(
        col(FundReservation.network) == network,
        col(FundReservation.hot_wallet) == hot_wallet,
        col(FundReservation.state) == ReservationState.HELD,
    )
    if asset is not None:
        q = q.where(col(FundReservation.asset) == asset)
    truth: dict[str, tuple[int, int]] = {}
    for a, amount in await _all(s, q):
        held, holders = truth.get(str(a), (0, 0))
        truth[str(a)] = (held + int(amount), holders + 1)
    return truth


async def _recount(s: AsyncSession, network: str, hot_wallet: str, asset: str) -> tuple[int, int]:
    return (await _held_by_asset(s, network, hot_wallet, asset)).get(asset, (0, 0))


async def _adjust_holds(
    s: AsyncSession, network: str, hot_wallet: str, changes: Mapping[str, tuple[int, int]]
) -> None:
    """Apply (amount, count) deltas to the wallet's running totals, asset by asset in sorted order (so
    two writers lock the rows in one order), each row locked, read and written (exact on SQLite, where
    amounts are text). Call after the reservation rows themselves changed: a total that would go
    below zero is out of step with them (an edit by hand) and is recounted from the rows instead."""
    for asset in sorted(changes):
        amount, count = changes[asset]
        key = _hold_key(network, hot_wallet, asset)
        # Columns, locked and read now: an object loaded earlier in this session (admission reads the
        # totals before it reserves) would be handed back with its old values, and a settlement
        # committed in between would be written over.
        row = await _first(s, select(WalletHold.held, WalletHold.holders).where(*key).with_for_update())
        if row is None:
            held, holders = await _recount(s, network, hot_wallet, asset)
            s.add(WalletHold(network=network, hot_wallet=hot_wallet, asset=asset, held=held, holders=holders))
            await s.flush()
            continue
        held, holders = int(row[0]) + amount, int(row[1]) + count
        if held < 0 or holders < 0:
            held, holders = await _recount(s, network, hot_wallet, asset)
        at = {"network": network, "hot_wallet": hot_wallet, "asset": asset}
        await _set(s, WalletHold, at, held=held, holders=holders)


async def recount_holds(s: AsyncSession, network: str, hot_wallet: str) -> list[tuple[str, int, int]]:
    """Check the wallet's running totals against its HELD reservations and correct any that differ
    (an edit by hand, a bug): the totals rows are locked first, so a reservation or settlement in
    flight either committed before (and is counted) or waits and applies its change on top. Returns
    (asset, total before, sum of the rows) of each one corrected."""
    locked = await _all(
        s,
        select(WalletHold.asset, WalletHold.held, WalletHold.holders)
        .where(col(WalletHold.network) == network, col(WalletHold.hot_wallet) == hot_wallet)
        .order_by(col(WalletHold.asset))
        .with_for_update(),
    )
    totals = {str(a): (int(h), int(n)) for a, h, n in locked}
    truth = await _held_by_asset(s, network, hot_wallet)
    corrected: list[tuple[str, int, int]] = []
    for asset in sorted(set(totals) | set(truth)):
        have, want = totals.get(asset, (0, 0)), truth.get(asset, (0, 0))
        if have == want:
            continue
        corrected.append((asset, have[0], want[0]))
        if asset in totals:
            await _update(
                s,
                update(WalletHold)
                .where(*_hold_key(network, hot_wallet, asset))
                .values(held=want[0], holders=want[1]),
            )
        else:
            s.add(
                WalletHold(network=network, hot_wallet=hot_wallet, asset=asset, held=want[0], holders=want[1])
            )
    await s.flush()
    return corrected


async def daily_total(
    s: AsyncSession, *, client_id: str, network: str, asset: str, user_id: str, since: datetime
) -> int:
    """What one client's user withdrew (or is withdrawing) of an asset since `since`: a user id is
    the client's own, so the same id at two clients is two people."""
    params = {"client_id": client_id, "network": network, "asset": asset, "user_id": user_id, "since": since}
    return sum(int(a) for a in (await s.exec(_DAILY, params=params)).all())


_DAILY = select(Withdrawal.amount).where(
    Withdrawal.client_id == bindparam("client_id"),
    Withdrawal.network == bindparam("network"),
    Withdrawal.asset == bindparam("asset"),
    Withdrawal.user_id == bindparam("user_id"),
    col(Withdrawal.created_at) >= bindparam("since"),
    col(Withdrawal.status).not_in(_NOT_COUNTED),
)


async def reserve(
    s: AsyncSession, withdrawal_id: str, network: str, hot_wallet: str, amounts: Mapping[str, Wei]
) -> None:
    """Hold `amounts` (asset -> base units) on `hot_wallet` for the withdrawal and assign the wallet;
    the wallet's running totals grow by the same amounts in the same transaction."""
    for asset, amount in amounts.items():
        s.add(
            FundReservation(
                withdrawal_id=withdrawal_id,
                network=network,
                hot_wallet=hot_wallet,
                asset=asset,
                amount=amount,
            )
        )
    await _set(s, Withdrawal, {"id": withdrawal_id}, hot_wallet=hot_wallet, updated_at=utcnow())
    await _adjust_holds(s, network, hot_wallet, {a: (int(n), 1) for a, n in amounts.items()})


HoldChanges = dict[tuple[str, str], dict[str, tuple[int, int]]]  # (network, wallet) -> asset -> deltas


async def _settle_reservations(
    s: AsyncSession, withdrawal_id: str, state: ReservationState, mined_in: int | None
) -> HoldChanges:
    """HELD -> CONSUMED or RELEASED (with the block that mined its transaction, if any). Only HELD
    rows move, so a repeat changes nothing. Returns what the wallet's running totals must lose, by
    exactly the rows this call settled (locked first); the caller applies it (`_apply_holds`) in
    the same transaction, as late as it can (the totals row is every settlement's on that wallet)."""
    rows = list((await s.exec(_HELD_ROWS, params={"w_id": withdrawal_id})).all())
    changes: HoldChanges = {}
    if not rows:
        return changes
    ids = [r[0] for r in rows]
    held = {"withdrawal_id": withdrawal_id, "state": ReservationState.HELD, "id": tuple(ids)}
    await _set(s, FundReservation, held, state=state, settled_at=utcnow(), settled_block=mined_in)
    for _, network, wallet, asset, amount in rows:
        changes.setdefault((str(network), str(wallet)), {})[str(asset)] = (-int(amount), -1)
    return changes


async def _apply_holds(s: AsyncSession, changes: HoldChanges) -> None:
    for (network, wallet), deltas in sorted(changes.items()):
        await _adjust_holds(s, network, wallet, deltas)


async def reservations_for(s: AsyncSession, withdrawal_id: str) -> list[FundReservation]:
    return await _all(s, select(FundReservation).where(FundReservation.withdrawal_id == withdrawal_id))


# --- hot wallets and nonces ----------------------------------------------------------------------


async def ensure_hot_wallet(s: AsyncSession, network: str, address: str, chain_nonce: int) -> None:
    q = select(HotWallet).where(HotWallet.network == network, HotWallet.address == address)
    if await _first(s, q) is None:
        s.add(HotWallet(network=network, address=address, next_nonce=chain_nonce))
        await s.flush()


_LOCKED_HOT_WALLET = (
    select(HotWallet)
    .where(HotWallet.network == bindparam("network"), HotWallet.address == bindparam("address"))
    .with_for_update()
)
_NEXT_NONCE = select(HotWallet.next_nonce).where(HotWallet.id == bindparam("hw_id"))


async def lock_hot_wallet(s: AsyncSession, network: str, address: str) -> HotWallet:
    hw: HotWallet = (await s.exec(_LOCKED_HOT_WALLET, params={"network": network, "address": address})).one()
    return hw


async def _take_nonce(s: AsyncSession, hw: HotWallet, withdrawal_id: str) -> NonceAllocation:
    """The wallet's next nonce for the withdrawal. `hw` must be locked; its counter is read here."""
    next_nonce: int = (await s.exec(_NEXT_NONCE, params={"hw_id": hw.id})).one()
    alloc = NonceAllocation(
        network=hw.network, hot_wallet=hw.address, nonce=next_nonce, withdrawal_id=withdrawal_id
    )
    s.add(alloc)
    await _set(s, HotWallet, {"id": hw.id}, next_nonce=next_nonce + 1)  # flushes the allocation first
    await _set(s, Withdrawal, {"id": withdrawal_id}, nonce=alloc.nonce, updated_at=utcnow())
    return alloc


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
    hw = await lock_hot_wallet(s, w.network, w.hot_wallet)
    return await _take_nonce(s, hw, w.id)


_ACTIVE_ALLOCATION = select(NonceAllocation).where(
    NonceAllocation.withdrawal_id == bindparam("w_id"), col(NonceAllocation.active).is_(True)
)


async def active_allocation(s: AsyncSession, withdrawal_id: str) -> NonceAllocation | None:
    alloc: NonceAllocation | None = (await s.exec(_ACTIVE_ALLOCATION, params={"w_id": withdrawal_id})).first()
    return alloc


async def record_external_nonces(s: AsyncSession, hw: HotWallet, chain_latest: int) -> list[int]:
    """Nonces below the chain's that the engine never allocated were used outside it: record them as
    EXTERNAL and move the wallet's counter past them. `hw` must be locked and just read."""
    skipped = list(range(hw.next_nonce, chain_latest))
    for n in skipped:
        s.add(
            NonceAllocation(
                network=hw.network,
                hot_wallet=hw.address,
                nonce=n,
                purpose=NoncePurpose.EXTERNAL,
                active=False,
            )
        )
    if skipped:
        await _update(s, update(HotWallet).where(col(HotWallet.id) == hw.id).values(next_nonce=chain_latest))
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
    await _update(
        s,
        update(NonceAllocation)
        .where(col(NonceAllocation.id) == old.id)
        .values(active=False, purpose=NoncePurpose.EXTERNAL),
    )
    await record_external_nonces(s, hw, chain_latest)
    new = await _take_nonce(s, hw, w.id)
    await _update(
        s,
        update(TxAttempt)
        .where(col(TxAttempt.withdrawal_id) == withdrawal_id, col(TxAttempt.nonce) == old.nonce)
        .values(
            outcome=TxOutcome.FAILED,
            error="nonce used by a transaction sent outside the engine",
            updated_at=utcnow(),
        ),
    )
    return old.nonce, new


async def mark_allocation(
    s: AsyncSession, network: str, hot_wallet: str, nonce: int, *, purpose: NoncePurpose
) -> None:
    await _update(
        s,
        update(NonceAllocation)
        .where(
            col(NonceAllocation.network) == network,
            col(NonceAllocation.hot_wallet) == hot_wallet,
            col(NonceAllocation.nonce) == nonce,
        )
        .values(purpose=purpose, active=False),
    )


async def record_fill(
    s: AsyncSession,
    network: str,
    hot_wallet: str,
    nonce: int,
    *,
    withdrawal_id: str,
    tx_hash: str,
    raw_tx: str,
) -> None:
    """The reconciler's 0-value self-transfer took `nonce`: recorded on the nonce (purpose FILL, no
    longer the withdrawal's), and as the transaction mined at the withdrawal's nonce (its `tx_hash`)."""
    await _update(
        s,
        update(NonceAllocation)
        .where(
            col(NonceAllocation.network) == network,
            col(NonceAllocation.hot_wallet) == hot_wallet,
            col(NonceAllocation.nonce) == nonce,
        )
        .values(purpose=NoncePurpose.FILL, active=False, fill_tx_hash=tx_hash, fill_raw_tx=raw_tx),
    )
    await _update(
        s,
        update(Withdrawal)
        .where(col(Withdrawal.id) == withdrawal_id)
        .values(tx_hash=tx_hash, updated_at=utcnow()),
    )


async def nonce_allocations(
    s: AsyncSession, network: str, hot_wallet: str, *, from_nonce: int = 0
) -> list[NonceAllocation]:
    """The wallet's allocations from `from_nonce` up (the uq_nonce index: the mined ones below are
    never read when they are not asked for)."""
    q = (
        select(NonceAllocation)
        .where(
            NonceAllocation.network == network,
            NonceAllocation.hot_wallet == hot_wallet,
            col(NonceAllocation.nonce) >= from_nonce,
        )
        .order_by(col(NonceAllocation.nonce))
    )
    return await _all(s, q)


# --- transaction attempts ------------------------------------------------------------------------


async def attempts_for(s: AsyncSession, withdrawal_id: str) -> list[TxAttempt]:
    q = select(TxAttempt).where(TxAttempt.withdrawal_id == withdrawal_id).order_by(col(TxAttempt.id))
    return await _all(s, q)


async def attempts_for_many(s: AsyncSession, withdrawal_ids: Sequence[str]) -> dict[str, list[TxAttempt]]:
    q = select(TxAttempt).where(col(TxAttempt.withdrawal_id).in_(withdrawal_ids)).order_by(col(TxAttempt.id))
    out: dict[str, list[TxAttempt]] = {wid: [] for wid in withdrawal_ids}
    for a in await _all(s, q):
        out[a.withdrawal_id].append(a)
    return out


_ATTEMPT_BY_HASH = select(TxAttempt).where(TxAttempt.tx_hash == bindparam("t_hash"))


async def attempt_by_hash(s: AsyncSession, tx_hash: str) -> TxAttempt | None:
    a: TxAttempt | None = (await s.exec(_ATTEMPT_BY_HASH, params={"t_hash": tx_hash})).first()
    return a


async def nonces_ahead(
    s: AsyncSession, network: str, hot_wallet: str, lo: int, hi: int
) -> list[tuple[int, str, str | None, int | None, int | None, int | None, str | None, int | None]]:
    """What the engine knows of the wallet's nonces in [lo, hi): per nonce its allocation's purpose,
    and for a withdrawal's nonce each attempt signed at it (purpose, gas limit, max fee or gas price)
    with the withdrawal's asset and amount; a nonce with no attempt yet has one row of NULLs. Rows are
    (nonce, allocation purpose, attempt purpose, gas_limit, max_fee_per_gas, gas_price, asset,
    amount); a nonce the engine never allocated has no row."""
    q = (
        sa_select(
            col(NonceAllocation.nonce),
            col(NonceAllocation.purpose),
            col(TxAttempt.purpose),
            col(TxAttempt.gas_limit),
            col(TxAttempt.max_fee_per_gas),
            col(TxAttempt.gas_price),
            col(Withdrawal.asset),
            col(Withdrawal.amount),
        )
        .select_from(NonceAllocation)
        .outerjoin(
            TxAttempt,
            (col(TxAttempt.withdrawal_id) == col(NonceAllocation.withdrawal_id))
            & (col(TxAttempt.nonce) == col(NonceAllocation.nonce)),
        )
        .outerjoin(Withdrawal, col(Withdrawal.id) == col(NonceAllocation.withdrawal_id))
        .where(
            col(NonceAllocation.network) == network,
            col(NonceAllocation.hot_wallet) == hot_wallet,
            col(NonceAllocation.nonce) >= lo,
            col(NonceAllocation.nonce) < hi,
        )
    )
    return [
        (
            int(r[0]),
            str(r[1]),
            r[2],
            r[3],
            None if r[4] is None else int(r[4]),
            None if r[5] is None else int(r[5]),
            r[6],
            None if r[7] is None else int(r[7]),
        )
        for r in await _all(s, q)
    ]


async def record_attempt(s: AsyncSession, attempt: TxAttempt) -> None:
    """Record a signed transaction (before it is broadcast) as the withdrawal's latest."""
    s.add(attempt)
    await _set(s, Withdrawal, {"id": attempt.withdrawal_id}, tx_hash=attempt.tx_hash, updated_at=utcnow())


async def mark_attempt(s: AsyncSession, tx_hash: str, outcome: TxOutcome, error: str | None = None) -> None:
    """Move a live (SIGNED or BROADCAST) attempt to `outcome`."""
    live = {"tx_hash": tx_hash, "outcome": _LIVE_ATTEMPT}
    await _set(s, TxAttempt, live, outcome=outcome, error=error, updated_at=utcnow())
