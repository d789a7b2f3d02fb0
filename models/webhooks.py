"""Webhook endpoints and the delivery outbox: every query the webhooks need.

The outbox: `enqueue_event` (`queue_deliveries` for a row already read) runs inside the transaction
that changes a withdrawal's status (`repo.transition`, `repo.insert_withdrawal`, `repo.record_reorg`)
and inserts one `WebhookDelivery`
per active endpoint of the withdrawal's client subscribed to the event, with the exact JSON body that
will be signed. The move and its deliveries commit together or not at all; the delivery workflow of
the endpoint (workflows/webhooks.py) then sends them in batches, in `seq` order per withdrawal:
`due_heads` gives, per withdrawal, only its first PENDING delivery and only once it is due.

An event's id is derived from (withdrawal, seq, type), so the same event has the same id for every
endpoint, on every retry and on every redelivery.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from models import views
from models.lifecycle import WithdrawalStatus
from models.tables import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    Withdrawal,
    utcnow,
)

EVENT_NAMESPACE = uuid.UUID("3d0c5f4e-8a51-5c2e-9b7d-1f6a2e4c8b90")
REORGED = "withdrawal.reorged"
ALL_EVENTS = "*"


def status_event_type(status: WithdrawalStatus | str) -> str:
    return f"withdrawal.{str(status).lower()}"


EVENT_TYPES: tuple[str, ...] = (*(status_event_type(s) for s in WithdrawalStatus), REORGED)


class DeliveryState:
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


def event_id(withdrawal_id: str, seq: int, event_type: str) -> str:
    return "evt_" + uuid.uuid5(EVENT_NAMESPACE, f"{withdrawal_id}\n{seq}\n{event_type}").hex


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes (the HMAC key)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def subscribed(events: str, event_type: str) -> bool:
    names = events.split()
    return ALL_EVENTS in names or event_type in names


# --- the outbox: written with the status change ---------------------------------------------------

_KICK = "webhooks.kick"


def queued_in(s: AsyncSession) -> set[tuple[str, str]]:
    """The (endpoint, withdrawal) pairs that got a delivery in this session's transaction: after it
    commits, their endpoints' delivery workflows are kicked (activities/lifecycle.py)."""
    pairs: set[tuple[str, str]] = s.info.get(_KICK, set())
    return pairs


_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]
_W = Withdrawal.__table__  # type: ignore[attr-defined]
# Built once: the outbox runs in every status move (core statements, no ORM work per call).
_ROW: Any = sa_select(_W).where(_W.c.id == bindparam("w_id"))


async def withdrawal_row(s: AsyncSession, withdrawal_id: str) -> Any:
    """The withdrawal's row as it stands now in this transaction (a core row, attribute access as
    on a `Withdrawal`; not a session object), or None: what an event's `data` is made from."""
    return (await s.exec(_ROW, params={"w_id": withdrawal_id})).first()


_ACTIVE_ENDPOINTS: Any = sa_select(_ENDPOINTS.c.id, _ENDPOINTS.c.events).where(
    _ENDPOINTS.c.client_id == bindparam("client_id"),
    _ENDPOINTS.c.active.is_(True),
    _ENDPOINTS.c.deleted_at.is_(None),
)
_QUEUED: Any = sa_select(_DELIVERIES.c.endpoint_id).where(
    _DELIVERIES.c.event_id == bindparam("event_id"),
    _DELIVERIES.c.endpoint_id.in_(bindparam("endpoint_ids", expanding=True)),
)
_INSERT_DELIVERY = insert(_DELIVERIES)


async def enqueue_event(s: AsyncSession, withdrawal_id: str, *, seq: int, event_type: str) -> int:
    """Insert the event's delivery for each subscribed active endpoint of the withdrawal's client, in
    the caller's transaction. The body's `data` is the withdrawal as the row stands now. An event
    already queued for an endpoint (a repeated call) is not queued twice. Returns how many were."""
    await s.flush()
    w = await withdrawal_row(s, withdrawal_id)
    return 0 if w is None else await queue_deliveries(s, w, seq=seq, event_type=event_type)


async def queue_deliveries(s: AsyncSession, w: Any, *, seq: int, event_type: str, fresh: bool = False) -> int:
    """`enqueue_event` for the withdrawal's row `w` as it stands now in this transaction
    (`withdrawal_row`, read by the caller). `fresh`: the caller knows no delivery of this event
    can exist yet (a move numbered `seq` was made just now for the first time), so none is looked for."""
    endpoints = [
        str(eid)
        for eid, events in (await s.exec(_ACTIVE_ENDPOINTS, params={"client_id": w.client_id})).all()
        if subscribed(events, event_type)
    ]
    if not endpoints:
        return 0
    eid = event_id(w.id, seq, event_type)
    if not fresh:
        queued = await s.exec(_QUEUED, params={"event_id": eid, "endpoint_ids": endpoints})
        have = {str(row[0]) for row in queued.all()}
        endpoints = [e for e in endpoints if e not in have]
        if not endpoints:
            return 0
    created_at = w.updated_at if event_type != REORGED else utcnow()
    body = json.dumps(
        {
            "id": eid,
            "type": event_type,
            "created_at": views.iso(created_at),
            "data": views.withdrawal_object(w),
        },
        separators=(",", ":"),
    )
    now = utcnow()
    rows = [
        {
            "id": str(uuid.uuid4()),
            "event_id": eid,
            "endpoint_id": endpoint,
            "client_id": w.client_id,
            "withdrawal_id": w.id,
            "seq": seq,
            "event_type": event_type,
            "payload": body,
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
            "window_start": now,
        }
        for endpoint in endpoints
    ]
    await s.exec(_INSERT_DELIVERY, params=rows)
    pairs = s.info.setdefault(_KICK, set())
    pairs.update((endpoint, w.id) for endpoint in endpoints)
    return len(rows)


async def enqueue_reorg(s: AsyncSession, withdrawal_id: str) -> int:
    """`withdrawal.reorged`, numbered after the move it follows (the row's current `status_seq`)."""
    seq: int | None = (
        await s.exec(select(Withdrawal.status_seq).where(Withdrawal.id == withdrawal_id))
    ).first()
    if seq is None:
        return 0
    return await enqueue_event(s, withdrawal_id, seq=seq, event_type=REORGED)


# --- endpoints -------------------------------------------------------------------------------------


async def create_endpoint(s: AsyncSession, endpoint: WebhookEndpoint) -> None:
    s.add(endpoint)
    await s.flush()


async def list_endpoints(s: AsyncSession, client_id: str) -> list[WebhookEndpoint]:
    q = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.client_id == client_id, col(WebhookEndpoint.deleted_at).is_(None))
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    return list((await s.exec(q)).all())


async def get_endpoint(s: AsyncSession, endpoint_id: str) -> WebhookEndpoint | None:
    e: WebhookEndpoint | None = (
        await s.exec(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
    ).first()
    return e


async def delete_endpoint(s: AsyncSession, endpoint_id: str, client_id: str) -> bool:
    """Deactivate (the row and its delivery log stay). False: no such live endpoint of the client."""
    result: Any = await s.exec(
        update(WebhookEndpoint)
        .where(
            col(WebhookEndpoint.id) == endpoint_id,
            col(WebhookEndpoint.client_id) == client_id,
            col(WebhookEndpoint.deleted_at).is_(None),
        )
        .values(active=False, deleted_at=utcnow())
    )
    return int(result.rowcount or 0) == 1


# --- the delivery log ------------------------------------------------------------------------------


async def get_delivery(s: AsyncSession, delivery_id: str) -> WebhookDelivery | None:
    d: WebhookDelivery | None = (
        await s.exec(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
    ).first()
    return d


async def list_deliveries(
    s: AsyncSession,
    client_id: str,
    *,
    withdrawal_id: str | None = None,
    endpoint_id: str | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[WebhookDelivery], int]:
    """One client's deliveries: of one withdrawal in the order they are sent, otherwise newest first."""
    where = [col(WebhookDelivery.client_id) == client_id]
    if withdrawal_id is not None:
        where.append(col(WebhookDelivery.withdrawal_id) == withdrawal_id)
    if endpoint_id is not None:
        where.append(col(WebhookDelivery.endpoint_id) == endpoint_id)
    if state is not None:
        where.append(col(WebhookDelivery.state) == state)
    q = select(WebhookDelivery).where(*where)
    if withdrawal_id is not None:
        q = q.order_by(col(WebhookDelivery.endpoint_id), *_SEND_ORDER)
    else:
        q = q.order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
    rows = list((await s.exec(q.limit(limit).offset(offset))).all())
    total = int((await s.exec(select(func.count()).select_from(WebhookDelivery).where(*where))).one())
    return rows, total


async def attempts_of(s: AsyncSession, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    out: dict[str, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return out
    q = (
        select(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id).in_(delivery_ids))
        .order_by(col(WebhookAttempt.delivery_id), col(WebhookAttempt.attempt))
    )
    for a in (await s.exec(q)).all():
        out[a.delivery_id].append(a)
    return out


async def requeue(s: AsyncSession, delivery_id: str) -> None:
    """Redelivery: the same event (same id and body) goes back in its endpoint's queue, due now, with
    a retry window of its own from now."""
    now = utcnow()
    await s.exec(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == delivery_id)
        .values(state=DeliveryState.PENDING, delivered_at=None, next_attempt_at=now, window_start=now)
    )


# --- sending -------------------------------------------------------------------------------------


def _reorg_last(d: Any) -> Any:
    return case((d.event_type == REORGED, 1), else_=0)


# Status events by their move's number; a reorg event after the move it follows (same number); then
# by when it was queued, and by id so that the order is total.
_SEND_ORDER = (
    col(WebhookDelivery.seq),
    _reorg_last(WebhookDelivery),
    col(WebhookDelivery.created_at),
    col(WebhookDelivery.id),
)


def _is_head() -> Any:
    """No PENDING delivery of the same (endpoint, withdrawal) comes before this one in `_SEND_ORDER`:
    it is the one that withdrawal sends next (a seek on `ix_webhook_delivery_queue`)."""
    d, p = WebhookDelivery, aliased(WebhookDelivery)
    p_seq, d_seq = col(p.seq), col(d.seq)
    p_last, d_last = _reorg_last(p), _reorg_last(d)
    p_at, d_at = col(p.created_at), col(d.created_at)
    before = or_(
        p_seq < d_seq,
        and_(
            p_seq == d_seq,
            or_(
                p_last < d_last,
                and_(p_last == d_last, or_(p_at < d_at, and_(p_at == d_at, col(p.id) < col(d.id)))),
            ),
        ),
    )
    earlier = (
        select(col(p.id))
        .where(
            col(p.endpoint_id) == col(d.endpoint_id),
            col(p.withdrawal_id) == col(d.withdrawal_id),
            col(p.state) == DeliveryState.PENDING,
            before,
        )
        .exists()
    )
    return ~earlier


async def due_heads(s: AsyncSession, endpoint_id: str, now: datetime, limit: int) -> list[WebhookDelivery]:
    """The endpoint's next batch: per withdrawal only its first PENDING delivery, and only when it is
    due (`next_attempt_at <= now`), longest due first. A withdrawal whose first delivery is backing
    off sends nothing else meanwhile; the others are not held up by it."""
    q = (
        select(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint_id,
            col(WebhookDelivery.state) == DeliveryState.PENDING,
            col(WebhookDelivery.next_attempt_at) <= now,
            _is_head(),
        )
        .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        .limit(limit)
    )
    return list((await s.exec(q)).all())


async def next_due_at(s: AsyncSession, endpoint_id: str) -> datetime | None:
    """When the endpoint's next delivery may go: the earliest `next_attempt_at` of a withdrawal's first
    PENDING delivery (those queued behind it wait for it, not for their own time). None: nothing."""
    q = (
        select(WebhookDelivery.next_attempt_at)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint_id,
            col(WebhookDelivery.state) == DeliveryState.PENDING,
            _is_head(),
        )
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(1)
    )
    at: datetime | None = (await s.exec(q)).first()
    return at


async def record_attempt(
    s: AsyncSession,
    delivery_id: str,
    *,
    at: datetime,
    status_code: int | None,
    latency_ms: int,
    error: str | None,
    delivered: bool,
) -> int:
    """One HTTP attempt, in the log and on the delivery (DELIVERED on a 2xx). Returns its number."""
    attempts: int = (
        await s.exec(select(WebhookDelivery.attempts).where(WebhookDelivery.id == delivery_id))
    ).one()
    number = attempts + 1
    s.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            attempt=number,
            at=at,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
        )
    )
    values: dict[str, Any] = {
        "attempts": number,
        "last_status_code": status_code,
        "last_latency_ms": latency_ms,
        "last_error": error,
    }
    if delivered:
        values.update(state=DeliveryState.DELIVERED, delivered_at=utcnow())
    await s.exec(update(WebhookDelivery).where(col(WebhookDelivery.id) == delivery_id).values(**values))
    await s.flush()
    return number


async def failures_since(s: AsyncSession, delivery_id: str, since: datetime) -> int:
    """Attempts of the delivery recorded since `since` (its window's start): the backoff's exponent."""
    n: int = (
        await s.exec(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id) == delivery_id, col(WebhookAttempt.at) >= since)
        )
    ).one()
    return int(n)


def _in_window(delivery_id: str, window_start: datetime | None) -> list[Any]:
    """A PENDING delivery, and (given `window_start`) still in the retry window a batch read: a
    redelivery while that batch was sending opened a window of its own, which the batch must not end."""
    where = [col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.state) == DeliveryState.PENDING]
    if window_start is not None:
        where.append(col(WebhookDelivery.window_start) == window_start)
    return where


async def schedule_retry(
    s: AsyncSession, delivery_id: str, at: datetime, *, window_start: datetime | None = None
) -> None:
    """A PENDING delivery whose attempt failed is not due again before `at`."""
    await s.exec(
        update(WebhookDelivery).where(*_in_window(delivery_id, window_start)).values(next_attempt_at=at)
    )


async def fail_pending_of_endpoint(s: AsyncSession, endpoint_id: str, error: str) -> int:
    """Every PENDING delivery of an endpoint that was deleted is given up. Returns how many."""
    result: Any = await s.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint_id,
            col(WebhookDelivery.state) == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.FAILED, last_error=error[:500])
    )
    return int(result.rowcount or 0)


async def mark_failed(
    s: AsyncSession, delivery_id: str, error: str, *, window_start: datetime | None = None
) -> bool:
    """A PENDING delivery given up (its retry window ended, or its endpoint is gone)."""
    result: Any = await s.exec(
        update(WebhookDelivery)
        .where(*_in_window(delivery_id, window_start))
        .values(state=DeliveryState.FAILED, last_error=error[:500])
    )
    return int(result.rowcount or 0) == 1


async def stale_endpoints(s: AsyncSession, due_before: datetime, limit: int = 500) -> list[str]:
    """Endpoints where a withdrawal's next delivery has been due since before `due_before`: a running
    workflow would have sent it, so none is (a lost kick, or it ended too early). Seeks on
    `ix_webhook_delivery_pending` (`next_attempt_at` is never before `created_at`)."""
    q = (
        select(WebhookDelivery.endpoint_id)
        .where(
            col(WebhookDelivery.state) == DeliveryState.PENDING,
            col(WebhookDelivery.created_at) < due_before,
            col(WebhookDelivery.next_attempt_at) < due_before,
            _is_head(),
        )
        .group_by(col(WebhookDelivery.endpoint_id))
        .limit(limit)
    )
    return [str(e) for e in (await s.exec(q)).all()]
