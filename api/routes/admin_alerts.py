"""`GET /admin/alerts`: what alerting raised, newest first (VIEWER)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from api import schemas
from api.deps import StateDep, ViewerDep
from api.routes.admin_common import decode_id_cursor
from models import alerts
from models.alerts import AlertKind, AlertState
from models.tables import Alert

router = APIRouter(tags=["admin"])


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def alert_view(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "dedup_key": a.dedup_key,
        "kind": a.kind,
        "severity": a.severity,
        "state": a.state,
        "summary": a.summary,
        "detail": json.loads(a.detail) if a.detail else None,
        "fired_at": _ts(a.fired_at),
        "updated_at": _ts(a.updated_at),
        "resolved_at": _ts(a.resolved_at),
    }


@router.get(
    "/admin/alerts",
    response_model=schemas.AlertPage,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.QUERY}),
)
async def list_alerts(
    engine: StateDep,
    _: ViewerDep,
    state: AlertState | None = None,
    kind: AlertKind | None = None,
    cursor: str | None = Query(None, max_length=20),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """Alerts newest first, optionally only FIRING or RESOLVED ones, or one kind. `next_cursor` is
    passed back as `cursor` for the next page."""
    before = decode_id_cursor(cursor)
    async with engine.db.read() as s:
        rows = await alerts.listing(s, state=state, kind=kind, before_id=before, limit=limit + 1)
        total = await alerts.count(s, state=state, kind=kind)
    page = rows[:limit]
    more = len(rows) > limit
    return {
        "items": [alert_view(a) for a in page],
        "next_cursor": str(page[-1].id) if more and page else None,
        "total": total,
    }
