"""Dependencies shared by the routes, as `Annotated` aliases."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import jwt
from fastapi import Depends, Header, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Scope
from temporalio.client import Client

from api import ratelimit
from api.errors import (
    Forbidden,
    MissingIdempotencyKey,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from api.ratelimit import RateLimiter
from api.security import decode_jwt, hash_api_key
from models import api_keys, users
from models.db import Database
from models.tables import ApiClient, utcnow
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


class KeyCache:
    """API keys found by the hash of their secret, kept `ttl` seconds: a key revoked, rotated or
    changed in another API process is refused within `ttl`; in this one at once (the routes that
    change a key call `clear`). Only found keys are kept: an unknown secret is looked up every time,
    so a key created anywhere works at once and guessing gains nothing."""

    def __init__(self, ttl: float, *, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._found: dict[str, tuple[float, ApiClient]] = {}
        # Bumped by `clear`: a lookup that read the row before a change must not cache what it read.
        self.generation = 0

    def get(self, key_hash: str) -> ApiClient | None:
        hit = self._found.get(key_hash)
        if hit is None or time.monotonic() - hit[0] > self.ttl:
            return None
        return hit[1]

    def put(self, key_hash: str, client: ApiClient, generation: int) -> None:
        """Keep `client`, read while the cache was at `generation`, unless a change cleared it since."""
        if self.ttl <= 0 or generation != self.generation:
            return
        if len(self._found) >= self.size:
            self._found.clear()
        self._found[key_hash] = (time.monotonic(), client)

    def clear(self) -> None:
        self.generation += 1
        self._found.clear()


@dataclass
class AppState:
    settings: Settings
    config: EngineConfig
    db: Database
    temporal: TemporalConnector
    limiter: RateLimiter
    keys: KeyCache = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyCache(self.settings.api_key_cache_seconds)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.engine
    return state


StateDep = Annotated[AppState, Depends(get_state)]


PRE_AUTH_EXEMPT = frozenset({"/health"})  # liveness probes are never rate limited


def pre_auth_policy(scope: Scope) -> tuple[RateLimiter, str, int] | None:
    """The per-IP layer (`api.ratelimit.PreAuthLimit`), before authentication: every route but
    /health, one bucket per client address (an IPv6 client per /64, which one host usually holds)."""
    state: AppState | None = getattr(scope["app"].state, "engine", None)
    if state is None or scope.get("path") in PRE_AUTH_EXEMPT:
        return None
    ip = client_address(Request(scope), state.settings.trusted_proxies)
    if ip is None:
        bucket = "unknown"
    elif ip.version == 6:
        bucket = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    else:
        bucket = str(ip)
    return state.limiter, f"ip:{bucket}", ratelimit.per_ip_limit(state.settings)


def client_address(request: Request, trusted_proxies: Sequence[str]) -> api_keys.IPAddress | None:
    """`client_ip` as an address (an IPv4-mapped IPv6 address as its IPv4 one); None if unknown."""
    text = client_ip(request, trusted_proxies)
    try:
        ip = ipaddress.ip_address(text) if text else None
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# The security schemes of the OpenAPI document. `auto_error=False`: they only read the header; the
# dependencies below decide, so every refusal is the same 401 envelope.
api_key_scheme = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", description="an API client's key", auto_error=False
)
bearer_scheme = HTTPBearer(
    scheme_name="Bearer",
    bearerFormat="JWT",
    description="an operator's access token from POST /auth/login",
    auto_error=False,
)


async def authenticate_client(
    request: Request,
    state: StateDep,
    x_api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> ApiClient:
    """The API key of the request. One 401 for a missing, unknown, revoked or expired key and for an
    old secret after its rotation overlap; 403 from an address outside the key's allowlist (checked
    before the key's rate limit, so requests from elsewhere never spend the owner's quota); then the
    per-key limit. The key is read from the database at most every `api_key_cache_seconds`
    (`KeyCache`): a key revoked elsewhere is refused within that; expiry and the rotation overlap are
    checked on every request."""
    denied = Unauthorized("missing or invalid API key")
    if not x_api_key or len(x_api_key) > 200:
        raise denied
    key_hash = hash_api_key(x_api_key)
    client = state.keys.get(key_hash)
    if client is None:
        generation = state.keys.generation
        async with state.db.read() as s:
            client = await api_keys.find_by_hash(s, key_hash)
        if client is not None:
            state.keys.put(key_hash, client, generation)
    if client is None or not api_keys.usable(client, key_hash, utcnow()):
        raise denied
    request.state.api_client_id = client.id  # from here on the request counts in the key's usage
    if not api_keys.address_allowed(client, client_address(request, state.settings.trusted_proxies)):
        raise Forbidden("this API key may not be used from this address")
    limit = client.rate_limit_per_minute or state.settings.rate_limit_per_minute
    await ratelimit.enforce(request.scope, state.limiter, f"key:{client.id}", limit)
    return client


ApiClientDep = Annotated[ApiClient, Depends(authenticate_client)]


def require_scope(scope: str):
    async def _check(client: ApiClientDep) -> ApiClient:
        if scope not in client.scopes.split():
            raise Forbidden(f"this API key may not use {scope}")
        return client

    return _check


async def withdrawal_creator(
    request: Request,
    state: StateDep,
    client: Annotated[ApiClient, Depends(require_scope("withdrawals:create"))],
) -> ApiClient:
    """Scope withdrawals:create, then the per-user layer: requests per (key, `user_id`) of the body.
    FastAPI has already read and parsed the body; a body without a usable `user_id` is left to the
    body's own validation (422)."""
    try:
        body = await request.json()
    except ValueError:
        return client
    user_id = body.get("user_id") if isinstance(body, dict) else None
    if isinstance(user_id, str) and 0 < len(user_id) <= 255:
        user = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        limit = ratelimit.per_user_limit(state.settings)
        await ratelimit.enforce(request.scope, state.limiter, f"user:{client.id}:{user}", limit)
    return client


WriterDep = Annotated[ApiClient, Depends(withdrawal_creator)]
ReaderDep = Annotated[ApiClient, Depends(require_scope("withdrawals:read"))]
WebhooksDep = Annotated[ApiClient, Depends(require_scope("webhooks:manage"))]


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
    """The operator of a request: the role is the one the database holds now, not the token's."""

    username: str
    role: str
    source_ip: str | None = None


ROLE_RANK = {"VIEWER": 0, "OPERATOR": 1, "APPROVER": 2, "ADMIN": 3}
ROLES = tuple(ROLE_RANK)


def client_ip(request: Request, trusted_proxies: Sequence[str]) -> str | None:
    """The caller's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost
    `X-Forwarded-For` hop that is not one (hops left of an untrusted one could be forged)."""
    peer = request.client.host if request.client else None
    if peer is None or not trusted_proxies:
        return peer
    trusted = _networks(tuple(trusted_proxies))
    if not _in(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    candidate = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        candidate = hop
        if not _in(hop, trusted):
            break
    return candidate


@functools.lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _in(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


# username -> (read at, role, active), per database: each request re-checks the account, and this
# cache spares the read for at most ACCOUNT_CACHE_SECONDS (a change made through this process is
# seen at once: `forget_account`).
ACCOUNT_CACHE_SECONDS = 2.0
ACCOUNT_READ_TIMEOUT = 5.0
_accounts: dict[tuple[str, str], tuple[float, str, bool]] = {}


def forget_account(db: Database, username: str) -> None:
    _accounts.pop((db.url, username), None)


async def _account(db: Database, username: str) -> tuple[str, bool] | None:
    key, now = (db.url, username), time.monotonic()
    hit = _accounts.get(key)
    if hit is not None and now - hit[0] < ACCOUNT_CACHE_SECONDS:
        return hit[1], hit[2]
    async with db.read() as s:
        user = await users.get(s, username)
    if user is None:
        _accounts.pop(key, None)
        return None
    if len(_accounts) > 10_000:
        _accounts.clear()
    _accounts[key] = (now, user.role, user.active)
    return user.role, user.active


def require_role(role: str):
    """A dependency: the request's operator, with at least `role`. 401 for a missing, invalid or
    expired token and for a disabled or unknown user; 403 when the user's current role is lower."""
    needed = ROLE_RANK[role]

    async def _check(
        request: Request,
        state: StateDep,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> Operator:
        denied = Unauthorized("missing or invalid bearer token")
        authorization = request.headers.get("authorization")
        if not authorization or not authorization.lower().startswith("bearer ") or len(authorization) > 4096:
            raise denied
        try:
            claims = decode_jwt(authorization[7:].strip(), state.settings.jwt_secret.get_secret_value())
        except jwt.PyJWTError as e:
            raise denied from e
        username = str(claims["sub"])
        try:
            account = await asyncio.wait_for(_account(state.db, username), ACCOUNT_READ_TIMEOUT)
        except Exception as e:
            # The database is down: a signed token still proves who this is, but not the current role
            # or active flag, so it is good for reading (VIEWER routes such as /admin/health) only.
            if needed > ROLE_RANK["VIEWER"]:
                raise ServiceUnavailable(
                    "operator accounts cannot be checked now; retry later", headers={"Retry-After": "5"}
                ) from e
            account = ("VIEWER", True)
        if account is None or not account[1]:
            raise denied
        current = account[0]
        if ROLE_RANK.get(current, -1) < needed:
            raise Forbidden(f"requires role {role}")
        return Operator(
            username=username, role=current, source_ip=client_ip(request, state.settings.trusted_proxies)
        )

    return _check


ViewerDep = Annotated[Operator, Depends(require_role("VIEWER"))]
OperatorDep = Annotated[Operator, Depends(require_role("OPERATOR"))]
ApproverDep = Annotated[Operator, Depends(require_role("APPROVER"))]
AdminDep = Annotated[Operator, Depends(require_role("ADMIN"))]
