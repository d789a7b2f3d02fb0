"""Operator accounts: the queries behind login, the per-request role check and the user admin routes.

A user's `role` and `active` flag are read on every authenticated request (the JWT's role claim is
only what the user had at login), so a change here takes effect at once.
"""

from __future__ import annotations

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import User, utcnow

ROLES = ("VIEWER", "OPERATOR", "APPROVER", "ADMIN")  # lowest to highest


async def get(s: AsyncSession, username: str) -> User | None:
    return (await s.exec(select(User).where(User.username == username))).first()


async def lock(s: AsyncSession, username: str) -> User | None:
    """The user's row, locked for the rest of the transaction (MySQL; SQLite writers are serialized)."""
    return (await s.exec(select(User).where(User.username == username).with_for_update())).first()


async def create(s: AsyncSession, user: User) -> None:
    s.add(user)
    await s.flush()


async def page(s: AsyncSession, *, after: str | None, limit: int) -> list[User]:
    """Users in username order; `after` is the cursor (the last username of the previous page)."""
    q = select(User)
    if after is not None:
        q = q.where(col(User.username) > after)
    return list((await s.exec(q.order_by(col(User.username)).limit(limit))).all())


async def count(s: AsyncSession) -> int:
    return int((await s.exec(select(func.count()).select_from(User))).one())


async def active_admins(s: AsyncSession) -> list[str]:
    """Usernames of the active ADMINs, their rows locked: two admins changing each other at the same
    time see each other's committed change, so the last one can never be removed."""
    q = (
        select(User.username)
        .where(User.role == "ADMIN", col(User.active).is_(True))
        .order_by(col(User.username))
        .with_for_update()
    )
    return [str(u) for u in (await s.exec(q)).all()]


async def change(s: AsyncSession, username: str, *, role: str | None, active: bool | None) -> bool:
    values: dict[str, object] = {"updated_at": utcnow()}
    if role is not None:
        values["role"] = role
    if active is not None:
        values["active"] = active
    result = await s.exec(update(User).where(col(User.username) == username).values(**values))
    return int(result.rowcount or 0) == 1
