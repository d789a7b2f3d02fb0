"""Read-only queries of the admin API: filtered, keyset-paginated withdrawal lists and the figures of
the stats routes.

Pages are newest first by (created_at, id), a total order, so a cursor walk sees every row once even
while new ones arrive (they land before the first page). Amounts are U256 (exact text on SQLite), so
sums are done in Python, never by the database.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, and_, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.lifecycle import WithdrawalStatus
from models.tables import StatusEvent, TxAttempt, Withdrawal

IN_FLIGHT = tuple(s.value for s in WithdrawalStatus if not s.terminal)


@dataclass(frozen=True, kw_only=True)
class WithdrawalFilter:
    statuses: tuple[str, ...] = ()
    network: str | None = None
    asset: str | None = None
    user_id: str | None = None
    client_id: str | None = None
    tx_hash: str | None = None  # the withdrawal's hash or that of any of its attempts (replaced ones too)
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive


@dataclass(frozen=True)
class Position:
    """A cursor: the (created_at, id) of the last row of the previous page."""

    created_at: datetime
    id: str


def _conditions(f: WithdrawalFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if f.statuses:
        conds.append(col(Withdrawal.status).in_(f.statuses))
    if f.network is not None:
        conds.append(col(Withdrawal.network) == f.network)
    if f.asset is not None:
        conds.append(col(Withdrawal.asset) == f.asset)
    if f.user_id is not None:
        conds.append(col(Withdrawal.user_id) == f.user_id)
    if f.client_id is not None:
        conds.append(col(Withdrawal.client_id) == f.client_id)
    if f.tx_hash is not None:
        by_attempt = select(TxAttempt.withdrawal_id).where(TxAttempt.tx_hash == f.tx_hash)
        conds.append(or_(col(Withdrawal.tx_hash) == f.tx_hash, col(Withdrawal.id).in_(by_attempt)))
    if f.created_from is not None:
        conds.append(col(Withdrawal.created_at) >= f.created_from)
    if f.created_to is not None:
        conds.append(col(Withdrawal.created_at) < f.created_to)
    return conds


async def withdrawals_page(
    s: AsyncSession, f: WithdrawalFilter, *, after: Position | None, limit: int
) -> list[Withdrawal]:
    q = select(Withdrawal).where(*_conditions(f))
    if after is not None:
        q = q.where(
            or_(
                col(Withdrawal.created_at) < after.created_at,
                and_(col(Withdrawal.created_at) == after.created_at, col(Withdrawal.id) < after.id),
            )
        )
    q = q.order_by(col(Withdrawal.created_at).desc(), col(Withdrawal.id).desc()).limit(limit)
    return list((await s.exec(q)).all())


async def count_withdrawals(s: AsyncSession, f: WithdrawalFilter) -> int:
    q = select(func.count()).select_from(Withdrawal).where(*_conditions(f))
    return int((await s.exec(q)).one())


async def by_status(s: AsyncSession, *, since: datetime | None = None) -> dict[str, int]:
    """Withdrawals per status (created at or after `since`), every status present."""
    q = select(Withdrawal.status, func.count()).group_by(Withdrawal.status)
    if since is not None:
        q = q.where(col(Withdrawal.created_at) >= since)
    counts = {st.value: 0 for st in WithdrawalStatus}
    for status, n in (await s.exec(q)).all():
        counts[str(status)] = int(n)
    return counts


async def by_network_and_status(
    s: AsyncSession, statuses: Collection[str] | None = None
) -> dict[str, dict[str, int]]:
    """network -> status -> count (only the statuses given, when given)."""
    q = select(Withdrawal.network, Withdrawal.status, func.count()).group_by(
        Withdrawal.network, Withdrawal.status
    )
    if statuses is not None:
        q = q.where(col(Withdrawal.status).in_(list(statuses)))
    out: dict[str, dict[str, int]] = {}
    for network, status, n in (await s.exec(q)).all():
        out.setdefault(str(network), {})[str(status)] = int(n)
    return out


async def confirmed_since(s: AsyncSession, since: datetime) -> dict[tuple[str, str], tuple[int, int]]:
    """(network, asset) -> (base units, decimals) of the withdrawals that reached CONFIRMED since
    `since` (by the time of that status event, not of the request)."""
    q = (
        select(Withdrawal.network, Withdrawal.asset, Withdrawal.amount, Withdrawal.decimals)
        .join(StatusEvent, col(StatusEvent.withdrawal_id) == col(Withdrawal.id))
        .where(StatusEvent.status == WithdrawalStatus.CONFIRMED, col(StatusEvent.created_at) >= since)
    )
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for network, asset, amount, decimals in (await s.exec(q)).all():
        key = (str(network), str(asset))
        out[key] = (out.get(key, (0, int(decimals)))[0] + int(amount), int(decimals))
    return out


@dataclass(kw_only=True)
class DailyFigures:
    day: date
    network: str
    asset: str
    decimals: int
    count: int = 0
    confirmed: int = 0
    volume: int = 0  # base units of the asset, CONFIRMED withdrawals
    fees: int = 0  # wei of the network's native coin, every withdrawal whose transaction was mined


async def daily(s: AsyncSession, since: datetime) -> list[DailyFigures]:
    """Per UTC day of the request, network and asset, for withdrawals created at or after `since`;
    oldest day first."""
    q = select(Withdrawal).where(col(Withdrawal.created_at) >= since)
    groups: dict[tuple[date, str, str], DailyFigures] = {}
    for w in (await s.exec(q)).all():
        key = (w.created_at.date(), w.network, w.asset)
        g = groups.get(key)
        if g is None:
            g = groups[key] = DailyFigures(day=key[0], network=w.network, asset=w.asset, decimals=w.decimals)
        g.count += 1
        if w.status == WithdrawalStatus.CONFIRMED:
            g.confirmed += 1
            g.volume += w.amount
        if w.fee_wei is not None:
            g.fees += w.fee_wei
    return [groups[k] for k in sorted(groups)]
