"""The audit trail: one row per operator or admin action, added to the caller's transaction so the
record commits (or rolls back) with the action itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.tables import AuditEntry


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


async def record(
    s: AsyncSession,
    *,
    actor: str,
    action: str,
    role: str | None = None,
    target: str | None = None,
    before: Any = None,
    after: Any = None,
    source_ip: str | None = None,
    outcome: str = "ok",
) -> None:
    s.add(
        AuditEntry(
            actor=actor,
            role=role,
            action=action,
            target=target,
            before=_json(before),
            after=_json(after),
            source_ip=source_ip,
            outcome=outcome,
        )
    )
    await s.flush()


@dataclass(frozen=True, kw_only=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _conditions(f: AuditFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if f.actor is not None:
        conds.append(col(AuditEntry.actor) == f.actor)
    if f.action is not None:
        conds.append(col(AuditEntry.action) == f.action)
    if f.target is not None:
        conds.append(col(AuditEntry.target) == f.target)
    if f.since is not None:
        conds.append(col(AuditEntry.at) >= f.since)
    if f.until is not None:
        conds.append(col(AuditEntry.at) < f.until)
    return conds


async def entries(
    s: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    before_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Newest first; `before_id` is the cursor (the last id of the previous page)."""
    f = AuditFilter(actor=actor, action=action, target=target, since=since, until=until)
    q = select(AuditEntry).where(*_conditions(f))
    if before_id is not None:
        q = q.where(col(AuditEntry.id) < before_id)
    q = q.order_by(col(AuditEntry.id).desc()).limit(limit)
    return list((await s.exec(q)).all())


async def count(
    s: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    f = AuditFilter(actor=actor, action=action, target=target, since=since, until=until)
    q = select(func.count()).select_from(AuditEntry).where(*_conditions(f))
    return int((await s.exec(q)).one())


async def for_targets(s: AsyncSession, targets: list[str]) -> list[AuditEntry]:
    """Every entry about any of `targets`, oldest first (a withdrawal's operator actions)."""
    q = select(AuditEntry).where(col(AuditEntry.target).in_(targets)).order_by(col(AuditEntry.id))
    return list((await s.exec(q)).all())


def decoded(value: str | None) -> Any:
    """A before/after column as the JSON value it was recorded from."""
    return None if value is None else json.loads(value)
