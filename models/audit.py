"""The audit trail: one row per operator or admin action, added to the caller's transaction so the
record commits (or rolls back) with the action itself."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

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


async def entries(
    s: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    before_id: int | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Newest first; `before_id` is the cursor (the last id of the previous page)."""
    q = select(AuditEntry)
    if actor is not None:
        q = q.where(AuditEntry.actor == actor)
    if action is not None:
        q = q.where(AuditEntry.action == action)
    if target is not None:
        q = q.where(AuditEntry.target == target)
    if before_id is not None:
        q = q.where(col(AuditEntry.id) < before_id)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    q = q.order_by(col(AuditEntry.id).desc()).limit(limit)
    return list((await s.exec(q)).all())
