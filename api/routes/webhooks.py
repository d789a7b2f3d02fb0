"""Client routes for webhooks (DESIGN §6.3): endpoints (scope `webhooks:manage`), the delivery log
(`withdrawals:read`) and redelivery (`webhooks:manage`). A client sees only its own endpoints and
deliveries; anything else is 404. An endpoint's secret is shown once, when it is created."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from pydantic import BaseModel, Field, StrictStr, field_validator

from activities.webhooks import UrlGuard, UrlRefused, WebhookKicker
from api import schemas
from api.deps import StateDep, require_scope
from api.errors import Conflict, LimitExceeded, NotFound, ServiceUnavailable, ValidationFailed
from models import audit, repo, webhooks
from models.tables import ApiClient, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from models.views import iso
from models.webhooks import ALL_EVENTS, EVENT_TYPES, DeliveryState

router = APIRouter(tags=["webhooks"])

ManagerDep = Annotated[ApiClient, Depends(require_scope("webhooks:manage"))]

MAX_ENDPOINTS = 20
MAX_PAGE = 500

UuidPath = Annotated[str, Path(json_schema_extra={"format": "uuid"})]
_CREATE_ERRORS = schemas.errors(
    {
        **schemas.COMMON,
        **schemas.API_KEY,
        413: schemas.BODY[413],
        422: "VALIDATION_ERROR: a malformed body, or a URL refused (not http(s), credentials or a "
        "fragment in it; outside dev: not https, or a host that does not resolve to public addresses); "
        f"LIMIT_EXCEEDED: the client has {MAX_ENDPOINTS} endpoints already",
    }
)
_LIST_ERRORS = schemas.errors({**schemas.COMMON, **schemas.API_KEY})
_DELIVERIES_ERRORS = schemas.errors(
    {
        **schemas.COMMON,
        **schemas.API_KEY,
        **schemas.QUERY,
        404: "NOT_FOUND: no such withdrawal or endpoint of this client",
    }
)
_ENDPOINT_EXAMPLES = {
    "some": {
        "summary": "final statuses only",
        "value": {
            "url": "https://example.com/webhooks/withdrawals",
            "events": ["withdrawal.confirmed", "withdrawal.failed"],
        },
    },
    "all": {"summary": "every event", "value": {"url": "https://example.com/webhooks/withdrawals"}},
}


class EndpointBody(BaseModel):
    url: StrictStr = Field(
        min_length=1, max_length=2000, examples=["https://example.com/webhooks/withdrawals"]
    )
    events: list[StrictStr] | None = Field(
        default=None,
        min_length=1,
        max_length=len(EVENT_TYPES) + 1,
        description='event types, or ["*"] (the default) for all',
        examples=[["withdrawal.confirmed", "withdrawal.failed"]],
    )

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        unknown = [e for e in v if e != ALL_EVENTS and e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type; known: *, {', '.join(EVENT_TYPES)}")
        if ALL_EVENTS in v:
            return [ALL_EVENTS]
        return [e for e in EVENT_TYPES if e in v]  # once each, in lifecycle order


def _endpoint_view(e: WebhookEndpoint) -> dict[str, Any]:
    return {"id": e.id, "url": e.url, "events": e.events.split(), "created_at": iso(e.created_at)}


def _attempt_view(a: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "at": iso(a.at),
        "status_code": a.status_code,
        "latency_ms": a.latency_ms,
        "error": a.error,
    }


def _delivery_view(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "endpoint_id": d.endpoint_id,
        "withdrawal_id": d.withdrawal_id,
        "seq": d.seq,
        "state": d.state,
        "last_status_code": d.last_status_code,
        "last_latency_ms": d.last_latency_ms,
        "last_error": d.last_error,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at) if d.delivered_at else None,
        "attempts": [_attempt_view(a) for a in attempts],
    }


def _uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@router.post(
    "/webhook/endpoints",
    status_code=201,
    response_model=schemas.WebhookEndpointCreated,
    responses=_CREATE_ERRORS,
)
async def create_endpoint(
    body: Annotated[EndpointBody, Body(openapi_examples=_ENDPOINT_EXAMPLES)],
    client: ManagerDep,
    state: StateDep,
) -> dict[str, Any]:
    """Register an endpoint. The answer carries its signing secret, which is never shown again."""
    guard = UrlGuard.for_env(state.settings.env)
    try:
        url = await guard.check_registration(body.url)
    except UrlRefused as e:
        raise ValidationFailed(str(e), field="url") from e
    endpoint = WebhookEndpoint(
        id=str(uuid.uuid4()),
        client_id=client.id,
        url=url,
        events=" ".join(body.events or [ALL_EVENTS]),
        secret=webhooks.new_secret(),
    )
    async with state.db.transaction() as s:
        if len(await webhooks.list_endpoints(s, client.id)) >= MAX_ENDPOINTS:
            raise LimitExceeded(f"at most {MAX_ENDPOINTS} webhook endpoints per API client")
        await webhooks.create_endpoint(s, endpoint)
        await audit.record(
            s,
            actor=f"api-key:{client.id}",
            action="webhook_endpoint.create",
            target=endpoint.id,
            after={"url": endpoint.url, "events": endpoint.events},
        )
    return _endpoint_view(endpoint) | {"secret": endpoint.secret}


@router.get("/webhook/endpoints", response_model=schemas.WebhookEndpointPage, responses=_LIST_ERRORS)
async def list_endpoints(client: ManagerDep, state: StateDep) -> dict[str, Any]:
    async with state.db.read() as s:
        rows = await webhooks.list_endpoints(s, client.id)
    return {"items": [_endpoint_view(e) for e in rows], "next_cursor": None, "total": len(rows)}


@router.delete(
    "/webhook/endpoints/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "deleted"},
        **schemas.errors(
            {**schemas.COMMON, **schemas.API_KEY, 404: "NOT_FOUND: no such endpoint of this client"}
        ),
    },
)
async def delete_endpoint(endpoint_id: UuidPath, client: ManagerDep, state: StateDep) -> Response:
    """Stop sending to the endpoint; its pending deliveries end FAILED, its delivery log stays."""
    if not _uuid(endpoint_id):
        raise NotFound("webhook endpoint not found")
    async with state.db.transaction() as s:
        if not await webhooks.delete_endpoint(s, endpoint_id, client.id):
            raise NotFound("webhook endpoint not found")
        await audit.record(
            s, actor=f"api-key:{client.id}", action="webhook_endpoint.delete", target=endpoint_id
        )
    return Response(status_code=204)


@router.get("/webhook/deliveries", response_model=schemas.WebhookDeliveryPage, responses=_DELIVERIES_ERRORS)
async def list_deliveries(
    client: ManagerDep,
    state: StateDep,
    withdrawal_id: Annotated[str | None, Query(max_length=36, json_schema_extra={"format": "uuid"})] = None,
    endpoint_id: Annotated[str | None, Query(max_length=36, json_schema_extra={"format": "uuid"})] = None,
    delivery_state: Annotated[
        str | None, Query(alias="state", pattern="^(PENDING|DELIVERED|FAILED)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, Any]:
    """The delivery log: every event queued for this client's endpoints, with each attempt's status
    code and latency. For one withdrawal, in the order they are sent; otherwise newest first."""
    offset = 0
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
            raise ValidationFailed("cursor is not one this API returned", field="cursor")
        offset = int(cursor)
    async with state.db.read() as s:
        if withdrawal_id is not None and (
            not _uuid(withdrawal_id)
            or await repo.get_withdrawal(s, withdrawal_id, client_id=client.id) is None
        ):
            raise NotFound("withdrawal not found")
        if endpoint_id is not None:
            endpoint = await webhooks.get_endpoint(s, endpoint_id) if _uuid(endpoint_id) else None
            if endpoint is None or endpoint.client_id != client.id:
                raise NotFound("webhook endpoint not found")
        rows, total = await webhooks.list_deliveries(
            s,
            client.id,
            withdrawal_id=withdrawal_id,
            endpoint_id=endpoint_id,
            state=delivery_state,
            limit=limit,
            offset=offset,
        )
        attempts = await webhooks.attempts_of(s, [d.id for d in rows])
    more = offset + len(rows) < total
    return {
        "items": [_delivery_view(d, attempts[d.id]) for d in rows],
        "next_cursor": str(offset + len(rows)) if more else None,
        "total": total,
    }


@router.post(
    "/webhook/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=schemas.Redelivery,
    responses=schemas.errors(
        {
            **schemas.COMMON,
            **schemas.API_KEY,
            404: "NOT_FOUND: no such delivery of this client",
            409: "CONFLICT: the delivery's endpoint was deleted",
        }
    ),
)
async def redeliver(delivery_id: UuidPath, client: ManagerDep, state: StateDep) -> dict[str, Any]:
    """Queue the event again for its endpoint: the same event id and body, with a fresh signature,
    sent in order after what is already pending for that withdrawal."""
    if not _uuid(delivery_id):
        raise NotFound("webhook delivery not found")
    async with state.db.transaction() as s:
        d = await webhooks.get_delivery(s, delivery_id)
        if d is None or d.client_id != client.id:
            raise NotFound("webhook delivery not found")
        endpoint = await webhooks.get_endpoint(s, d.endpoint_id)
        if endpoint is None or endpoint.deleted_at is not None or not endpoint.active:
            raise Conflict("the delivery's endpoint was deleted")
        await webhooks.requeue(s, delivery_id)
        await audit.record(
            s,
            actor=f"api-key:{client.id}",
            action="webhook_delivery.redeliver",
            target=delivery_id,
            before={"state": d.state},
            after={"state": DeliveryState.PENDING},
        )
    try:
        kicker = WebhookKicker(await state.temporal.get(), state.settings)
        await kicker.kick([(d.endpoint_id, d.withdrawal_id)], redelivered=delivery_id)
    except Exception as e:
        raise ServiceUnavailable(
            "the delivery is queued but could not be started; retry", headers={"Retry-After": "5"}
        ) from e
    async with state.db.read() as s:
        row = await webhooks.get_delivery(s, delivery_id)
        attempts = await webhooks.attempts_of(s, [delivery_id])
    assert row is not None
    return {"accepted": True, "delivery": _delivery_view(row, attempts[delivery_id])}
