"""The kill switch: durable pauses of everything, one network, or one hot wallet.

While a pause covers a withdrawal's network or hot wallet, nothing new is signed or broadcast for it
(`activities.transactions` and `activities.broadcast` ask `covering` first); requests are still
accepted and confirmations of what is already on chain go on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import Pause, utcnow


def _scope(network: str | None, hot_wallet: str | None) -> list[Any]:
    return [
        col(Pause.network).is_(None) if network is None else Pause.network == network,
        col(Pause.hot_wallet).is_(None) if hot_wallet is None else Pause.hot_wallet == hot_wallet,
    ]


async def active(s: AsyncSession) -> list[Pause]:
    q = select(Pause).where(col(Pause.resumed_at).is_(None)).order_by(col(Pause.id))
    return list((await s.exec(q)).all())


async def covering(s: AsyncSession, network: str, hot_wallet: str | None) -> Pause | None:
    """The oldest active pause that covers (network, hot_wallet): everything, the network, or the
    wallet (on this network or on every network)."""
    if hot_wallet is None:
        return (await s.exec(_COVERING_NETWORK, params={"network": network})).first()
    return (await s.exec(_COVERING_WALLET, params={"network": network, "hot_wallet": hot_wallet})).first()


# Built once: every withdrawal asks before it takes a nonce and before it signs.
_ACTIVE_ON_NETWORK = (
    select(Pause)
    .where(col(Pause.resumed_at).is_(None))
    .where(or_(col(Pause.network).is_(None), col(Pause.network) == bindparam("network")))
    .order_by(col(Pause.id))
    .limit(1)
)
_COVERING_NETWORK = _ACTIVE_ON_NETWORK.where(col(Pause.hot_wallet).is_(None))
_COVERING_WALLET = _ACTIVE_ON_NETWORK.where(
    or_(col(Pause.hot_wallet).is_(None), col(Pause.hot_wallet) == bindparam("hot_wallet"))
)


async def pause(
    s: AsyncSession, *, network: str | None, hot_wallet: str | None, reason: str, actor: str
) -> tuple[Pause, bool]:
    """Pause the scope; (the active pause, created). Pausing what is already paused changes nothing."""
    q = select(Pause).where(col(Pause.resumed_at).is_(None)).where(and_(*_scope(network, hot_wallet)))
    existing = (await s.exec(q)).first()
    if existing is not None:
        return existing, False
    p = Pause(network=network, hot_wallet=hot_wallet, reason=reason, paused_by=actor)
    s.add(p)
    await s.flush()
    return p, True


async def resume(s: AsyncSession, *, network: str | None, hot_wallet: str | None, actor: str) -> int:
    """Resume exactly that scope (a network's resume does not lift a pause of everything); the
    number of pauses lifted."""
    stmt = (
        update(Pause)
        .where(col(Pause.resumed_at).is_(None))
        .where(and_(*_scope(network, hot_wallet)))
        .values(resumed_at=utcnow(), resumed_by=actor)
    )
    result: Any = await s.exec(stmt)
    return int(result.rowcount or 0)
