"""Rate limits in layers: per client IP before authentication, per API key, per (key, user_id) for
withdrawal creation.

Every layer is the same GCRA (generic cell rate algorithm): a limit of N per minute lets a burst of N
through at once and then one request every 60/N s; nothing resets at a window's edge, so there is no
double burst across a boundary. With Redis (`WE_REDIS_URL`) the check is one Lua script, atomic and
shared by every API process, timed by the Redis server's clock. Without Redis each process keeps its
own state.

Redis configured but unreachable: **fail open to the in-process limiter**, with one warning log per
`redis_retry_seconds` while it lasts, and Redis is tried again after that pause (so a dead Redis costs
one timeout per pause, not one per request). The limits keep holding per process (N API processes
admit at most N times the limit); failing closed would turn a cache outage into an outage of
withdrawals, and no money rule depends on these limits (the per-transaction and daily limits are
checked in the database).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import RateLimited, error_body
from models.errors import ErrorCode
from settings import Settings

log = structlog.get_logger()

PERIOD_SECONDS = 60

# KEYS[1]: the bucket; ARGV[1]: microseconds per request; ARGV[2]: microseconds of burst (limit times the
# former). Stores the theoretical arrival time (TAT) in µs. Returns {allowed, TAT - now, retry µs}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst
if now < allow_at then
  return {0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, new_tat - now, 0}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the full limit is available again
    retry_after: float  # seconds until the next request would pass (0 when allowed)

    def headers(self) -> dict[str, str]:
        """RateLimit-* (draft-ietf-httpapi-ratelimit-headers) and, when refused, Retry-After."""
        h = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return h


def _decide(limit: int, allowed: bool, used_s: float, retry_s: float) -> Decision:
    interval = PERIOD_SECONDS / limit
    remaining = max(0, math.floor((PERIOD_SECONDS - used_s) / interval + 1e-9)) if allowed else 0
    return Decision(allowed, limit, remaining, max(0.0, used_s), max(0.0, retry_s))


class RateLimiter:
    """`hit(key, limit)`: count one request against `limit` per minute for `key`."""

    def __init__(self, redis: Any | None = None, *, redis_retry_seconds: float = 5.0) -> None:
        self.redis = redis
        self.window = PERIOD_SECONDS  # the period every limit is "per" (the login throttle reads it)
        self.redis_retry_seconds = redis_retry_seconds
        self._script = redis.register_script(_GCRA) if redis is not None else None
        self._redis_down_until = 0.0
        self._tat: dict[str, float] = {}  # in-process: key -> theoretical arrival time (monotonic s)

    async def hit(self, key: str, limit: int) -> Decision:
        limit = max(1, limit)
        if self._script is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await self._hit_redis(key, limit)
            except Exception as e:  # any failure of the shared store: fall back (see the module docstring)
                self._redis_down_until = time.monotonic() + self.redis_retry_seconds
                log.warning(
                    "ratelimit.redis_unavailable",
                    fallback="in-process",
                    retry_in_s=self.redis_retry_seconds,
                    error_type=type(e).__name__,
                )
        return self._hit_local(key, limit)

    async def _hit_redis(self, key: str, limit: int) -> Decision:
        assert self._script is not None
        interval_us = max(1, round(PERIOD_SECONDS * 1_000_000 / limit))
        allowed, used_us, retry_us = await asyncio.wait_for(
            self._script(keys=[f"we:rl:{key}"], args=[interval_us, interval_us * limit]), timeout=1.0
        )
        return _decide(limit, bool(allowed), int(used_us) / 1e6, int(retry_us) / 1e6)

    def _hit_local(self, key: str, limit: int) -> Decision:
        now = time.monotonic()
        if len(self._tat) > 50_000:  # drop buckets that are full again (they equal a fresh one)
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        interval = PERIOD_SECONDS / limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval
        allow_at = new_tat - interval * limit
        if now < allow_at:
            return _decide(limit, False, tat - now, allow_at - now)
        self._tat[key] = new_tat
        return _decide(limit, True, new_tat - now, 0.0)


def _decisions(scope: Scope) -> list[Decision]:
    state: dict[str, Any] = scope.setdefault("state", {})
    found: list[Decision] = state.setdefault("ratelimit", [])
    return found


async def enforce(scope: Scope, limiter: RateLimiter, key: str, limit: int) -> None:
    """One layer's check for this request: remembered for the RateLimit-* headers of the answer, and
    429 RATE_LIMITED (with Retry-After) when over."""
    decision = await limiter.hit(key, limit)
    _decisions(scope).append(decision)
    if not decision.allowed:
        raise RateLimited("rate limit exceeded; retry later", headers=decision.headers())


# (limiter, bucket key, limit per minute) of a request's pre-authentication layer; None: not limited.
PreAuthPolicy = Callable[[Scope], "tuple[RateLimiter, str, int] | None"]


class PreAuthLimit:
    """Outermost middleware: the per-IP layer, before body checks, routing and authentication (so
    floods of bad keys and login guesses are limited too). It also puts the RateLimit-* headers of the
    tightest layer that ran (least remaining) on every answer that has none yet."""

    def __init__(self, app: ASGIApp, policy: PreAuthPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.policy(scope)
        if rule is not None:
            limiter, key, limit = rule
            decision = await limiter.hit(key, limit)
            _decisions(scope).append(decision)
            if not decision.allowed:
                await _refuse(send, decision)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                found = _decisions(scope)
                headers = list(message.get("headers", []))
                if found and not any(k.lower() == b"ratelimit-limit" for k, _ in headers):
                    tightest = min(found, key=lambda d: (d.remaining, -d.reset_after))
                    headers += [(k.lower().encode(), v.encode()) for k, v in tightest.headers().items()]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, decision: Decision) -> None:
    body = json.dumps(error_body(ErrorCode.RATE_LIMITED, "rate limit exceeded; retry later")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def per_ip_limit(settings: Settings) -> int:
    return settings.rate_limit_per_ip_per_minute or 5 * settings.rate_limit_per_minute


def per_user_limit(settings: Settings) -> int:
    return settings.rate_limit_per_user_per_minute or max(1, settings.rate_limit_per_minute // 10)
