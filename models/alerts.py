"""Alerts: one row per cause (`dedup_key`), FIRING until the cause clears, then RESOLVED.

The types at the top are standard library only (the alert workflow imports them). The queries below
are the only SQL of alerting. Raising is idempotent: `fire` on a FIRING row changes nothing and says
so, which is how a cause raised again and again (every retry of a step, every monitor run) reaches
people once. A row that was RESOLVED fires again as a new incident (new `fired_at`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models.lifecycle import TERMINAL, WithdrawalStatus
from models.tables import Alert, Withdrawal, utcnow


class AlertKind(StrEnum):
    NEEDS_ATTENTION = "NEEDS_ATTENTION"  # a withdrawal parked for an operator
    WITHDRAWAL_OVERDUE = "WITHDRAWAL_OVERDUE"  # not final after `alert_pending_after_seconds`
    HOT_WALLET_LOW = "HOT_WALLET_LOW"  # below the network's `min_hot_wallet_balance` for an asset
    RECONCILER = "RECONCILER"  # a nonce the reconciler found wrong (external use, resent, filled, held)
    FEE_CAP = "FEE_CAP"  # the network's fee cap holds a withdrawal's transaction
    RPC_DOWN = "RPC_DOWN"  # an RPC endpoint does not answer, or serves another chain


class AlertState(StrEnum):
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Sink(StrEnum):
    SLACK = "slack"
    PAGERDUTY = "pagerduty"


@dataclass(frozen=True, kw_only=True)
class AlertSpec:
    """A cause to raise: what `fire` records when the row is not already FIRING."""

    dedup_key: str
    kind: AlertKind
    severity: Severity
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AlertInput:
    """`AlertWorkflow` input: the alert's key, and what its sinks were last told (continue-as-new)."""

    dedup_key: str
    delivered: AlertState | None = None


@dataclass(frozen=True, kw_only=True)
class AlertRef:
    dedup_key: str


@dataclass(frozen=True, kw_only=True)
class AlertSnapshot:
    """Activity `load_alert`: the row as it is now, and the sinks configured on the worker."""

    dedup_key: str
    kind: str
    severity: str
    summary: str
    detail: str | None  # JSON
    state: AlertState
    fired_at: datetime
    resolved_at: datetime | None
    sinks: list[Sink]


@dataclass(frozen=True, kw_only=True)
class SendAlertInput:
    """Activity `send_alert`: tell one sink that the alert fired (`trigger`) or cleared (`resolve`)."""

    sink: Sink
    alert: AlertSnapshot


@dataclass(frozen=True, kw_only=True)
class MonitorInput:
    """`AlertMonitorWorkflow` input (its thresholds are the worker's settings)."""


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """What one monitor check changed; `errors` lists the scopes it could not check (left as they were)."""

    check: str
    fired: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- queries -----------------------------------------------------------------------------------------


async def get(s: AsyncSession, dedup_key: str) -> Alert | None:
    row: Alert | None = (await s.exec(select(Alert).where(Alert.dedup_key == dedup_key))).first()
    return row


async def fire(s: AsyncSession, spec: AlertSpec) -> bool:
    """Record the cause as FIRING; True when it fired now (new, or again after it was resolved),
    False when it was already FIRING (nothing is written). Concurrent raisers of one key: one wins."""
    now = utcnow()
    values: dict[str, Any] = {
        "kind": spec.kind,
        "severity": spec.severity,
        "summary": spec.summary,
        "detail": json.dumps(spec.detail, sort_keys=True, default=str) if spec.detail else None,
    }
    refired: Any = await s.exec(
        update(Alert)
        .where(col(Alert.dedup_key) == spec.dedup_key, col(Alert.state) == AlertState.RESOLVED)
        .values(state=AlertState.FIRING, fired_at=now, updated_at=now, resolved_at=None, **values)
    )
    if refired.rowcount:
        return True
    if await get(s, spec.dedup_key) is not None:
        return False
    try:
        async with s.begin_nested():  # a concurrent insert of the same key loses only this savepoint
            s.add(
                Alert(
                    dedup_key=spec.dedup_key, state=AlertState.FIRING, fired_at=now, updated_at=now, **values
                )
            )
            await s.flush()
    except IntegrityError:
        return False
    return True


async def resolve(s: AsyncSession, dedup_key: str) -> bool:
    """FIRING → RESOLVED; True when this call resolved it."""
    now = utcnow()
    result: Any = await s.exec(
        update(Alert)
        .where(col(Alert.dedup_key) == dedup_key, col(Alert.state) == AlertState.FIRING)
        .values(state=AlertState.RESOLVED, resolved_at=now, updated_at=now)
    )
    return bool(result.rowcount)


async def firing_keys(s: AsyncSession, keys: Sequence[str]) -> list[str]:
    """Those of `keys` that are FIRING."""
    if not keys:
        return []
    return [str(k) for k in (await s.exec(_FIRING_KEYS, params={"keys": list(keys)})).all()]


# Built once: every status move asks (activities/lifecycle.py).
_FIRING_KEYS = select(Alert.dedup_key).where(
    col(Alert.dedup_key).in_(bindparam("keys", expanding=True)), Alert.state == AlertState.FIRING
)


async def firing(s: AsyncSession, *, kind: AlertKind | None = None, prefix: str | None = None) -> list[Alert]:
    """FIRING alerts, of one kind and under one key prefix (a check's scope) if given."""
    q = select(Alert).where(Alert.state == AlertState.FIRING)
    if kind is not None:
        q = q.where(Alert.kind == kind)
    if prefix:
        q = q.where(col(Alert.dedup_key).startswith(prefix, autoescape=True))
    return list((await s.exec(q.order_by(col(Alert.id)))).all())


def _filtered(q: Any, state: AlertState | None, kind: AlertKind | None) -> Any:
    if state is not None:
        q = q.where(Alert.state == state)
    if kind is not None:
        q = q.where(Alert.kind == kind)
    return q


async def listing(
    s: AsyncSession,
    *,
    state: AlertState | None = None,
    kind: AlertKind | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Alert]:
    """Newest first; `before_id` is the cursor (the last id of the previous page)."""
    q = _filtered(select(Alert), state, kind)
    if before_id is not None:
        q = q.where(col(Alert.id) < before_id)
    return list((await s.exec(q.order_by(col(Alert.id).desc()).limit(limit))).all())


async def count(s: AsyncSession, *, state: AlertState | None = None, kind: AlertKind | None = None) -> int:
    q = _filtered(select(func.count()).select_from(Alert), state, kind)
    return int((await s.exec(q)).one())


# --- what the monitor looks at ----------------------------------------------------------------------


async def withdrawals_in(s: AsyncSession, status: WithdrawalStatus, *, limit: int) -> list[Withdrawal]:
    q = (
        select(Withdrawal)
        .where(Withdrawal.status == status)
        .order_by(col(Withdrawal.created_at))
        .limit(limit)
    )
    return list((await s.exec(q)).all())


async def overdue_withdrawals(s: AsyncSession, created_before: datetime, *, limit: int) -> list[Withdrawal]:
    """Withdrawals created before `created_before` and not final, oldest first. NEEDS_ATTENTION is left
    out: it has an alert of its own."""
    open_statuses = [
        st for st in WithdrawalStatus if st not in TERMINAL and st is not WithdrawalStatus.NEEDS_ATTENTION
    ]
    q = (
        select(Withdrawal)
        .where(col(Withdrawal.status).in_(open_statuses), col(Withdrawal.created_at) < created_before)
        .order_by(col(Withdrawal.created_at))
        .limit(limit)
    )
    return list((await s.exec(q)).all())


async def withdrawal_statuses(s: AsyncSession, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    q = select(Withdrawal.id, Withdrawal.status).where(col(Withdrawal.id).in_(ids))
    return {str(i): str(st) for i, st in (await s.exec(q)).all()}
