"""Operator accounts: login (JWT), and the ADMIN routes that create, list and change users.

Login answers the same 401, after the same bcrypt work, for an unknown user, a wrong password and a
disabled account. Failed logins are counted per source IP and per username; once either reaches
`WE_LOGIN_ATTEMPTS_PER_MINUTE` in the current minute, every attempt from it (even with the right
password) gets 429 until the window ends. Every login, user creation and change is audited in the
transaction that makes it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from api import schemas
from api.deps import AdminDep, StateDep, client_ip, forget_account
from api.errors import Conflict, NotFound, RateLimited, Unauthorized, ValidationFailed
from api.ratelimit import RateLimiter
from api.security import dummy_password_hash, hash_password, issue_jwt, verify_password
from models import audit, users
from models.tables import User

log = structlog.get_logger()
router = APIRouter(tags=["auth"])

Role = Literal["VIEWER", "OPERATOR", "APPROVER", "ADMIN"]
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,119}$"


class LoginBody(BaseModel):
    username: StrictStr = Field(min_length=1, max_length=120)
    password: StrictStr = Field(min_length=1, max_length=200)


class NewUserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: StrictStr = Field(pattern=USERNAME_PATTERN, examples=["alice"])
    password: StrictStr = Field(min_length=12, max_length=200)
    role: Role = "VIEWER"


class UserPatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    active: StrictBool | None = None


_NEW_USER_EXAMPLES = {
    "viewer": {"value": {"username": "alice", "password": "correct-horse-battery", "role": "VIEWER"}}
}
_NEW_USER_ERRORS = schemas.errors(
    {
        **schemas.COMMON,
        **schemas.BEARER,
        **schemas.BODY,
        409: "CONFLICT: the username exists already (`field`: username)",
    }
)


class LoginThrottle:
    """Failed logins per key in fixed one-minute windows: in Redis when the API's rate limiter has
    one (shared by every API process), and always in process (what holds while Redis is down).
    Unlike `RateLimiter.hit`, checking does not count: only failures do, so operators who log in
    successfully never lock each other out."""

    def __init__(self, redis: Any | None, window_seconds: int = 60) -> None:
        self.redis = redis
        self.window = window_seconds
        self._local: dict[tuple[str, int], int] = {}

    def _now(self) -> tuple[int, int]:
        now = time.time()
        window = int(now // self.window)
        return window, max(1, int((window + 1) * self.window - now))

    async def blocked(self, key: str, limit: int) -> int | None:
        """Seconds until the window ends when `key` has `limit` failures in it, else None."""
        window, retry_after = self._now()
        count = self._local.get((key, window), 0)
        if self.redis is not None:
            try:
                count = max(count, int(await self.redis.get(f"we:login-failed:{key}:{window}") or 0))
            except Exception as e:  # Redis down: this process's own count still holds
                log.warning("auth.login.throttle_redis_failed", error_type=type(e).__name__)
        return retry_after if count >= limit else None

    async def failed(self, key: str) -> None:
        window, _ = self._now()
        if len(self._local) > 10_000:
            self._local = {k: v for k, v in self._local.items() if k[1] >= window}
        self._local[(key, window)] = self._local.get((key, window), 0) + 1
        if self.redis is not None:
            rkey = f"we:login-failed:{key}:{window}"
            try:
                if await self.redis.incr(rkey) == 1:
                    await self.redis.expire(rkey, self.window + 1)
            except Exception as e:
                log.warning("auth.login.throttle_redis_failed", error_type=type(e).__name__)


_throttles: weakref.WeakKeyDictionary[RateLimiter, LoginThrottle] = weakref.WeakKeyDictionary()


def login_throttle(limiter: RateLimiter) -> LoginThrottle:
    throttle = _throttles.get(limiter)
    if throttle is None:
        throttle = _throttles[limiter] = LoginThrottle(limiter.redis, limiter.window)
    return throttle


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat(timespec="milliseconds") + "Z"


def user_view(u: User) -> dict[str, Any]:
    return {
        "username": u.username,
        "role": u.role,
        "active": u.active,
        "created_at": _iso(u.created_at),
        "updated_at": _iso(u.updated_at),
    }


@router.post(
    "/auth/login",
    response_model=schemas.Token,
    responses=schemas.errors(
        {
            **schemas.COMMON,
            **schemas.BODY,
            401: "UNAUTHORIZED: unknown user, wrong password or disabled account (one answer for all)",
            429: "RATE_LIMITED: too many failed logins from this address or for this username in the "
            "current minute, or too many requests from this address (see Retry-After)",
        }
    ),
)
async def login(
    body: Annotated[
        LoginBody, Body(openapi_examples={"admin": {"value": {"username": "admin", "password": "…"}}})
    ],
    request: Request,
    state: StateDep,
) -> dict[str, Any]:
    """A bearer token (JWT) for the admin routes; send it as `Authorization: Bearer <access_token>`."""
    settings = state.settings
    ip = client_ip(request, settings.trusted_proxies) or "unknown"
    keys = (f"ip:{ip}", f"user:{body.username.casefold()}")
    throttle = login_throttle(state.limiter)
    for key in keys:
        retry_after = await throttle.blocked(key, settings.login_attempts_per_minute)
        if retry_after is not None:
            log.warning("auth.login.throttled", source_ip=ip, scope=key.split(":", 1)[0])
            raise RateLimited(
                "too many failed logins; retry later", headers={"Retry-After": str(retry_after)}
            )
    async with state.db.read() as s:
        user = await users.get(s, body.username)
    # The same bcrypt work whether or not the user exists or is active.
    # (The dummy hash is made once, at bcrypt cost, so off the event loop.)
    stored = user.password_hash if user is not None else await asyncio.to_thread(dummy_password_hash)
    password_ok = await asyncio.to_thread(verify_password, body.password, stored)
    if user is None or not password_ok or not user.active:
        reason = "unknown_user" if user is None else ("wrong_password" if not password_ok else "disabled")
        for key in keys:
            await throttle.failed(key)
        async with state.db.transaction() as s:
            await audit.record(
                s,
                actor=body.username,
                role=user.role if user else None,
                action="login.failed",
                target=f"user:{body.username}",
                after={"reason": reason},
                source_ip=ip,
                outcome="refused",
            )
        raise Unauthorized("invalid username or password")
    ttl = settings.jwt_ttl_seconds
    token = issue_jwt(user.username, user.role, settings.jwt_secret.get_secret_value(), ttl)
    async with state.db.transaction() as s:
        await audit.record(
            s,
            actor=user.username,
            role=user.role,
            action="login.ok",
            target=f"user:{user.username}",
            source_ip=ip,
        )
    return {"access_token": token, "token_type": "bearer", "expires_in": ttl, "role": user.role}


@router.post("/admin/users", status_code=201, response_model=schemas.UserView, responses=_NEW_USER_ERRORS)
async def create_user(
    body: Annotated[NewUserBody, Body(openapi_examples=_NEW_USER_EXAMPLES)], state: StateDep, op: AdminDep
) -> dict[str, Any]:
    password_hash = await asyncio.to_thread(hash_password, body.password)
    async with state.db.transaction() as s:
        if await users.get(s, body.username) is not None:
            raise Conflict("username already exists", field="username")
        user = User(id=str(uuid.uuid4()), username=body.username, password_hash=password_hash, role=body.role)
        await users.create(s, user)
        await audit.record(
            s,
            actor=op.username,
            role=op.role,
            action="user.create",
            target=f"user:{body.username}",
            after={"role": body.role, "active": True},
            source_ip=op.source_ip,
        )
    return user_view(user)


@router.post("/auth/register", status_code=201, response_model=schemas.UserView, responses=_NEW_USER_ERRORS)
async def register(
    body: Annotated[NewUserBody, Body(openapi_examples=_NEW_USER_EXAMPLES)], state: StateDep, op: AdminDep
) -> dict[str, Any]:
    """An alias of `POST /admin/users`."""
    return await create_user(body, state, op)


@router.get(
    "/admin/users",
    response_model=schemas.UserPage,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.QUERY}),
)
async def list_users(
    state: StateDep,
    _: AdminDep,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, max_length=120),
) -> dict[str, Any]:
    async with state.db.read() as s:
        rows = await users.page(s, after=cursor, limit=limit + 1)
        total = await users.count(s)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [user_view(u) for u in rows],
        "next_cursor": rows[-1].username if more else None,
        "total": total,
    }


@router.patch(
    "/admin/users/{username}",
    response_model=schemas.UserView,
    responses=schemas.errors(
        {
            **schemas.COMMON,
            **schemas.BEARER,
            **schemas.BODY,
            404: "NOT_FOUND: no such user",
            409: "CONFLICT: the change would leave no active ADMIN",
        }
    ),
)
async def change_user(
    username: str,
    body: Annotated[
        UserPatchBody,
        Body(
            openapi_examples={
                "disable": {"value": {"active": False}},
                "role": {"value": {"role": "OPERATOR"}},
            }
        ),
    ],
    state: StateDep,
    op: AdminDep,
) -> dict[str, Any]:
    """Change a user's role or disable (or re-enable) them; effective on their next request. No change
    may leave the engine without an active ADMIN (409 CONFLICT)."""
    if body.role is None and body.active is None:
        raise ValidationFailed("nothing to change: give role and/or active", field="role")
    async with state.db.transaction() as s:
        admins = await users.active_admins(s)
        user = await users.lock(s, username)
        if user is None:
            raise NotFound("user not found")
        before = {"role": user.role, "active": user.active}
        after = {
            "role": body.role or user.role,
            "active": user.active if body.active is None else body.active,
        }
        stays_admin = after["role"] == "ADMIN" and after["active"]
        if username in admins and not stays_admin and len(admins) == 1:
            raise Conflict("the last active ADMIN cannot be disabled or demoted", field="role")
        await users.change(s, username, role=body.role, active=body.active)
        await audit.record(
            s,
            actor=op.username,
            role=op.role,
            action="user.update",
            target=f"user:{username}",
            before=before,
            after=after,
            source_ip=op.source_ip,
        )
        await s.refresh(user)
    forget_account(state.db, username)
    return user_view(user)
