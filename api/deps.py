"""Dependencies shared by the routes, as `Annotated` aliases."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import jwt
from fastapi import Depends, Header, Request
from temporalio.client import Client

from api.errors import (
    Forbidden,
    MissingIdempotencyKey,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from api.ratelimit import RateLimiter
from api.security import api_key_matches, decode_jwt, hash_api_key
from models import repo
from models.db import Database
from models.tables import ApiClient
from settings import EngineConfig, Settings
from telemetry import interceptors


class TemporalConnector:
    """Connects lazily and reconnects: the API starts and serves reads while Temporal is down."""

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self.settings = settings
        self._client = client
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.wait_for(
                    Client.connect(
                        self.settings.temporal_address,
                        namespace=self.settings.temporal_namespace,
                        interceptors=interceptors(self.settings.otel_exporter),
                    ),
                    timeout=5,
                )
        return self._client


@dataclass
class AppState:
    settings: Settings
    config: EngineConfig
    db: Database
    temporal: TemporalConnector
    limiter: RateLimiter


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.engine
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def authenticate_client(
    state: StateDep, x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None
) -> ApiClient:
    """One 401 for a missing, unknown, revoked or expired key."""
    denied = Unauthorized("missing or invalid API key")
    if not x_api_key or len(x_api_key) > 200:
        raise denied
    key_hash = hash_api_key(x_api_key)
    async with state.db.read() as s:
        client = await repo.find_api_client_by_hash(s, key_hash)
    if client is None or not api_key_matches(x_api_key, client.key_hash) or not client.active:
        raise denied
    if client.expires_at is not None and client.expires_at <= datetime.now(UTC).replace(tzinfo=None):
        raise denied
    limit = client.rate_limit_per_minute or state.settings.rate_limit_per_minute
    retry_after = await state.limiter.hit(f"client:{client.id}", limit)
    if retry_after is not None:
        raise RateLimited("rate limit exceeded", headers={"Retry-After": str(retry_after)})
    return client


ApiClientDep = Annotated[ApiClient, Depends(authenticate_client)]


def require_scope(scope: str):
    async def _check(client: ApiClientDep) -> ApiClient:
        if scope not in client.scopes.split():
            raise Forbidden(f"this API key may not use {scope}")
        return client

    return _check


WriterDep = Annotated[ApiClient, Depends(require_scope("withdrawals:create"))]
ReaderDep = Annotated[ApiClient, Depends(require_scope("withdrawals:read"))]


async def idempotency_key(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str:
    if idempotency_key is None or idempotency_key.strip() == "":
        raise MissingIdempotencyKey("the Idempotency-Key header is required")
    if len(idempotency_key) > 255:
        raise ValidationFailed("Idempotency-Key must be 1-255 characters", field="Idempotency-Key")
    return idempotency_key


IdempotencyKeyDep = Annotated[str, Depends(idempotency_key)]


@dataclass(frozen=True)
class Operator:
    username: str
    role: str


ROLE_RANK = {"VIEWER": 0, "OPERATOR": 1, "ADMIN": 2}


def require_role(role: str):
    async def _check(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> Operator:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing or invalid bearer token")
        try:
            claims = decode_jwt(authorization[7:].strip(), state.settings.jwt_secret.get_secret_value())
        except jwt.PyJWTError as e:
            raise Unauthorized("missing or invalid bearer token") from e
        op = Operator(username=str(claims["sub"]), role=str(claims.get("role", "VIEWER")))
        if ROLE_RANK.get(op.role, -1) < ROLE_RANK[role]:
            raise Forbidden(f"requires role {role}")
        return op

    return _check


ViewerDep = Annotated[Operator, Depends(require_role("VIEWER"))]
OperatorDep = Annotated[Operator, Depends(require_role("OPERATOR"))]
AdminDep = Annotated[Operator, Depends(require_role("ADMIN"))]
