"""API keys (DESIGN §6.2): ADMIN routes to create, list, rotate and deactivate the keys API clients
use, and to read their usage. A secret is shown once (create, rotate); only its SHA-256 is stored and
no answer carries the hash. Every change is audited in the transaction that makes it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field, StrictInt, StrictStr, field_validator

from api import schemas
from api.deps import AdminDep, Operator, StateDep
from api.errors import Conflict, NotFound, ValidationFailed
from api.security import generate_api_key, hash_api_key
from api.usage import UsageRecorder
from models import api_keys, audit
from models.tables import ApiClient, utcnow

router = APIRouter(tags=["api-keys"])

Scope = Literal["withdrawals:create", "withdrawals:read", "webhooks:manage"]
PREFIX_CHARS = 10  # "we_" and 7 characters of the secret: enough to tell keys apart, useless to guess
MAX_OVERLAP_SECONDS = 7 * 86_400
MAX_USAGE_DAYS = 90

_NOT_FOUND = {404: "NOT_FOUND: no such API key"}
_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.QUERY})
_KEY_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER, **_NOT_FOUND})
_CREATE_EXAMPLES = {
    "client": {
        "summary": "a client that requests and reads withdrawals",
        "value": {
            "name": "treasury-service",
            "scopes": ["withdrawals:create", "withdrawals:read"],
            "rate_limit_per_minute": 600,
            "ip_allowlist": ["10.0.0.0/8"],
            "expires_at": "2027-01-01T00:00:00Z",
        },
    }
}


class ApiKeyBody(BaseModel):
    name: StrictStr = Field(min_length=1, max_length=120)
    scopes: list[Scope] = Field(default=["withdrawals:create", "withdrawals:read"], min_length=1)
    rate_limit_per_minute: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    ip_allowlist: list[StrictStr] | None = Field(default=None, max_length=100)
    expires_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must not be blank")
        return v.strip()

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        return [s for s in api_keys.SCOPES if s in v]  # once each, in a fixed order

    @field_validator("ip_allowlist")
    @classmethod
    def _allowlist(cls, v: list[str] | None) -> list[str] | None:
        return api_keys.parse_allowlist(v) or None if v is not None else None

    @field_validator("expires_at", mode="before")
    @classmethod
    def _expires_text(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError("expires_at must be an ISO 8601 string")
        return v

    @field_validator("expires_at")
    @classmethod
    def _expires_future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        try:
            at = v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v  # naive: UTC
        except OverflowError as e:  # out of range in UTC (e.g. year 9999 at -01:00)
            raise ValueError("expires_at is out of range") from e
        if at <= utcnow():
            raise ValueError("expires_at must be in the future")
        return at


class RotateBody(BaseModel):
    overlap_seconds: StrictInt = Field(default=0, ge=0, le=MAX_OVERLAP_SECONDS)


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat(timespec="milliseconds") + "Z"


def key_view(c: ApiClient) -> dict[str, Any]:
    """A key as the admin routes show it: never the secret or its hash."""
    now = utcnow()
    overlap = c.previous_key_expires_at if c.previous_key_hash else None
    return {
        "id": c.id,
        "name": c.name,
        "key_prefix": c.key_prefix,
        "scopes": c.scopes.split(),
        "rate_limit_per_minute": c.rate_limit_per_minute,
        "ip_allowlist": api_keys.allowlist(c),
        "active": c.active and c.revoked_at is None,
        "expired": c.expires_at is not None and c.expires_at <= now,
        "expires_at": _iso(c.expires_at),
        "previous_key_expires_at": _iso(overlap) if overlap is not None and overlap > now else None,
        "created_by": c.created_by,
        "last_used_at": _iso(c.last_used_at),
        "created_at": _iso(c.created_at),
        "updated_at": _iso(c.updated_at),
        "revoked_at": _iso(c.revoked_at),
    }


def _audit_fields(op: Operator) -> dict[str, Any]:
    return {"actor": op.username, "role": op.role, "source_ip": op.source_ip}


@router.post(
    "/admin/api-keys",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.BODY}),
)
async def create_api_key(
    body: Annotated[ApiKeyBody, Body(openapi_examples=_CREATE_EXAMPLES)], state: StateDep, op: AdminDep
) -> dict[str, Any]:
    """A new key; `api_key` (the secret) is in this answer only."""
    secret = generate_api_key()
    client = ApiClient(
        id=str(uuid.uuid4()),
        name=body.name,
        key_hash=hash_api_key(secret),
        key_prefix=secret[:PREFIX_CHARS],
        rate_limit_per_minute=body.rate_limit_per_minute,
        scopes=" ".join(body.scopes),
        ip_allowlist=api_keys.json_allowlist(body.ip_allowlist),
        expires_at=body.expires_at,
        created_by=op.username,
    )
    async with state.db.transaction() as s:
        await api_keys.create(s, client)
        view = key_view(client)
        await audit.record(s, action="api_key.create", target=client.id, after=view, **_audit_fields(op))
    return view | {"api_key": secret}


@router.get("/admin/api-keys", response_model=schemas.ApiKeyPage, responses=_ERRORS)
async def list_api_keys(
    state: StateDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    active: bool | None = None,
) -> dict[str, Any]:
    """Newest first; `next_cursor` fetches the next page (null on the last)."""
    try:
        after = api_keys.Cursor.decode(cursor) if cursor else None
    except ValueError as e:
        raise ValidationFailed("invalid cursor", field="cursor") from e
    async with state.db.read() as s:
        rows, next_cursor, total = await api_keys.page(s, limit=limit, after=after, active=active)
    return {
        "items": [key_view(c) for c in rows],
        "next_cursor": next_cursor.encode() if next_cursor else None,
        "total": total,
    }


@router.get("/admin/api-keys/{client_id}", response_model=schemas.ApiKeyView, responses=_KEY_ERRORS)
async def get_api_key(client_id: str, state: StateDep, _: AdminDep) -> dict[str, Any]:
    async with state.db.read() as s:
        client = await api_keys.get(s, client_id)
    if client is None:
        raise NotFound("API key not found")
    return key_view(client)


@router.post(
    "/admin/api-keys/{client_id}/rotate",
    response_model=schemas.ApiKeyCreated,
    responses=schemas.errors(
        {
            **schemas.COMMON,
            **schemas.BEARER,
            **schemas.BODY,
            **_NOT_FOUND,
            409: "CONFLICT: the key is deactivated, or changed meanwhile",
        }
    ),
)
async def rotate_api_key(
    client_id: str,
    state: StateDep,
    op: AdminDep,
    body: Annotated[
        RotateBody | None, Body(openapi_examples={"overlap": {"value": {"overlap_seconds": 3600}}})
    ] = None,
) -> dict[str, Any]:
    """A new secret (in this answer only). The old one keeps working for `overlap_seconds` (default 0:
    it stops at once; at most 7 days); a secret from an earlier rotation stops now."""
    overlap = (body or RotateBody()).overlap_seconds
    secret = generate_api_key()
    async with state.db.transaction() as s:
        client = await api_keys.get(s, client_id, for_update=True)
        if client is None:
            raise NotFound("API key not found")
        before = key_view(client)
        if not before["active"]:
            raise Conflict("a deactivated API key cannot be rotated")
        until = utcnow() + timedelta(seconds=overlap) if overlap else None
        rotated = await api_keys.rotate(
            s, client, key_hash=hash_api_key(secret), key_prefix=secret[:PREFIX_CHARS], overlap_until=until
        )
        if not rotated:
            raise Conflict("the API key changed meanwhile; retry")
        after = await api_keys.get(s, client_id)
        assert after is not None
        view = key_view(after)
        await audit.record(
            s,
            action="api_key.rotate",
            target=client_id,
            before=before,
            after=view | {"overlap_seconds": overlap},
            **_audit_fields(op),
        )
    state.keys.clear()  # this process refuses a stopped secret at once (others within the cache's TTL)
    return view | {"api_key": secret}


@router.delete("/admin/api-keys/{client_id}", response_model=schemas.ApiKeyView, responses=_KEY_ERRORS)
async def deactivate_api_key(client_id: str, state: StateDep, op: AdminDep) -> dict[str, Any]:
    """Deactivate (revoke) the key: refused from the next request on. Deactivating again changes nothing."""
    async with state.db.transaction() as s:
        client = await api_keys.get(s, client_id, for_update=True)
        if client is None:
            raise NotFound("API key not found")
        before = key_view(client)  # now: the UPDATE below also refreshes `client` in this session
        if not await api_keys.deactivate(s, client_id, at=utcnow()):
            state.keys.clear()
            return before
        after = await api_keys.get(s, client_id)
        assert after is not None
        view = key_view(after)
        await audit.record(
            s, action="api_key.deactivate", target=client_id, before=before, after=view, **_audit_fields(op)
        )
    state.keys.clear()  # refused from the next request on in this process (others within the TTL)
    return view


@router.get(
    "/admin/api-keys/{client_id}/usage",
    response_model=schemas.ApiKeyUsage,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.QUERY, **_NOT_FOUND}),
)
async def api_key_usage(
    client_id: str,
    request: Request,
    state: StateDep,
    _: AdminDep,
    days: Annotated[int, Query(ge=1, le=MAX_USAGE_DAYS)] = 7,
) -> dict[str, Any]:
    """Requests per UTC day (newest first, every day of the range), by route template and status.
    This process's pending counts are flushed first; other API processes' within their flush interval."""
    recorder: UsageRecorder = request.app.state.usage
    await recorder.flush(state.db)
    today = utcnow().date()
    since = today - timedelta(days=days - 1)
    async with state.db.read() as s:
        client = await api_keys.get(s, client_id)
        rows = await api_keys.usage(s, client_id, since=since) if client else []
    if client is None:
        raise NotFound("API key not found")
    by_day: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_day.setdefault(r.day, []).append({"route": r.route, "status": r.status, "count": r.count})
    out = []
    for n in range(days):
        day = (today - timedelta(days=n)).isoformat()
        routes = by_day.get(day, [])
        out.append({"date": day, "requests": sum(r["count"] for r in routes), "routes": routes})
    return {
        "id": client_id,
        "from": since.isoformat(),
        "to": today.isoformat(),
        "total": sum(d["requests"] for d in out),
        "last_used_at": _iso(client.last_used_at),
        "days": out,
    }
