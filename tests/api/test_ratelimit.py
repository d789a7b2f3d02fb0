"""Rate limits in layers (per IP before authentication, per API key, per user_id of withdrawal creation)
against a real Redis shared by several API processes, without Redis, and with Redis gone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from api.app import create_app
from api.deps import AppState, TemporalConnector
from api.ratelimit import RateLimiter
from devstack import processes
from devstack.bootstrap import ensure_api_client
from tests.databases import start_redis
from tests.stack import Harness, Stack, new_wallet, running_harness

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield port
    finally:
        processes.stop(proc)


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=redis_port, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
async def harness(stack: Stack, db_url: str) -> AsyncIterator[Harness]:
    async with running_harness(stack, db_url) as h:
        yield h


# --- the limiter ---------------------------------------------------------------------------------


async def test_redis_limit_is_atomic_and_shared_between_api_processes(redis: Redis) -> None:
    a, b = RateLimiter(redis), RateLimiter(redis)  # two API instances, one Redis
    key = f"client:{uuid.uuid4()}"
    decisions = await asyncio.gather(*(lim.hit(key, 10) for lim in (a, b) for _ in range(8)))
    allowed = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert len(allowed) == 10 and len(refused) == 6
    assert sorted(d.remaining for d in allowed) == list(range(10))
    # GCRA: the next request is allowed one interval (60 s / 10) after the burst, not at a window's end.
    assert all(5 <= d.retry_after <= 6 and d.headers()["Retry-After"] == "6" for d in refused)
    assert all(d.headers()["RateLimit-Limit"] == "10" for d in decisions)
    assert 0 < await redis.pttl(f"we:rl:{key}") <= 61_000


async def test_in_process_limiter_allows_a_burst_then_one_per_interval() -> None:
    lim = RateLimiter()
    assert [(await lim.hit("a", 120)).allowed for _ in range(121)] == [True] * 120 + [False]
    assert (await lim.hit("b", 120)).allowed  # buckets are per key
    await asyncio.sleep(0.55)  # 60 s / 120 = 0.5 s per request
    assert (await lim.hit("a", 120)).allowed
    assert not (await lim.hit("a", 120)).allowed


async def test_redis_down_falls_back_to_the_in_process_limiter_and_recovers(tmp_path: Path) -> None:
    proc, port = start_redis(tmp_path)
    restart = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]
    redis = Redis(host="127.0.0.1", port=port, socket_timeout=0.3, socket_connect_timeout=0.3)
    lim = RateLimiter(redis, redis_retry_seconds=0.5)
    try:
        assert (await lim.hit("k", 3)).allowed
        assert await redis.exists("we:rl:k") == 1
        processes.stop(proc)
        with capture_logs() as logs:
            started = time.monotonic()
            decisions = [await lim.hit("k", 3) for _ in range(4)]
            elapsed = time.monotonic() - started
        # Fail open to the in-process limiter: it still limits (3 per minute here), one warning, and
        # only the first call waited for the dead Redis.
        assert [d.allowed for d in decisions] == [True, True, True, False]
        warnings = [e for e in logs if e["event"] == "ratelimit.redis_unavailable"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        assert elapsed < 1.5
        proc = processes.start(restart, tmp_path / "redis-2.log")
        processes.wait_for_port(port, proc, timeout=30)
        await asyncio.sleep(0.6)  # the pause after a failure is over: Redis is asked again
        assert (await lim.hit("fresh", 3)).allowed
        assert await redis.exists("we:rl:fresh") == 1
    finally:
        await redis.aclose()
        processes.stop(proc)


# --- the layers, through the API -----------------------------------------------------------------


def _app(h: Harness, limiter: RateLimiter, **settings: Any) -> Any:
    s = h.settings.model_copy(update=settings)
    state = AppState(
        settings=s, config=h.config, db=h.db, temporal=TemporalConnector(s, h.client), limiter=limiter
    )
    return create_app(state)


def _client(app: Any, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://engine")


def _limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "RATE_LIMITED"
    assert int(r.headers["Retry-After"]) >= 1
    assert r.headers["RateLimit-Remaining"] == "0" and int(r.headers["RateLimit-Limit"]) >= 1


@pytest.fixture(params=["redis", "in-process"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def limiter(store: str, redis: Redis) -> RateLimiter:
    return RateLimiter(redis) if store == "redis" else RateLimiter()


async def test_per_ip_layer_limits_before_authentication(harness: Harness, limiter: RateLimiter) -> None:
    app = _app(harness, limiter, rate_limit_per_ip_per_minute=3)
    ip = f"10.{uuid.uuid4().int % 250}.7.7"  # a fresh address: Redis outlives the test
    async with _client(app, ip) as c, _client(app, "10.251.0.1") as other:
        codes = [
            (await c.get("/withdrawal/queue/status", headers={"X-API-Key": "we_guess"})) for _ in range(3)
        ]
        assert [r.status_code for r in codes] == [401, 401, 401]
        assert [r.headers["RateLimit-Remaining"] for r in codes] == ["2", "1", "0"]
        _limited(await c.get("/withdrawal/queue/status", headers={"X-API-Key": harness.api_key}))
        _limited(await c.post("/auth/login", json={"username": "admin", "password": "guess"}))
        _limited(await c.get("/no/such/route"))
        # Another address has its own budget; liveness probes are never limited.
        assert (
            await other.get("/withdrawal/queue/status", headers={"X-API-Key": "we_guess"})
        ).status_code == 401
        assert (await c.get("/health")).status_code == 200


async def test_per_key_layer(harness: Harness, limiter: RateLimiter) -> None:
    app = _app(harness, limiter)
    key = "we_rl_" + uuid.uuid4().hex
    await ensure_api_client(harness.db, key, name="rl", rate_limit_per_minute=2)
    async with _client(app, "10.3.0.1") as c, _client(app, "10.3.0.2") as elsewhere:
        ok = [await c.get("/withdrawal/queue/status", headers={"X-API-Key": key}) for _ in range(2)]
        assert [r.status_code for r in ok] == [200, 200]
        assert [(r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"]) for r in ok] == [
            ("2", "1"),
            ("2", "0"),
        ]
        _limited(await c.get("/withdrawal/queue/status", headers={"X-API-Key": key}))
        # The limit is the key's, wherever it is used from; other keys are not affected.
        _limited(await elsewhere.get("/withdrawal/queue/status", headers={"X-API-Key": key}))
        r = await c.get("/withdrawal/queue/status", headers={"X-API-Key": harness.api_key})
        assert r.status_code == 200


async def test_per_user_layer_of_withdrawal_creation(harness: Harness, limiter: RateLimiter) -> None:
    app = _app(harness, limiter, rate_limit_per_user_per_minute=2)
    to, _ = new_wallet()
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"

    async def post(user: str, amount: str) -> httpx.Response:
        body = {"user_id": user, "network": "ethereum", "asset": "ETH", "to_address": to, "amount": amount}
        headers = {"X-API-Key": harness.api_key, "Idempotency-Key": str(uuid.uuid4())}
        return await c.post("/withdrawal/request", json=body, headers=headers)

    async with _client(app, "10.4.0.1") as c:
        first, second = await post(alice, "0.001"), await post(alice, "0.002")
        assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
        _limited(refused := await post(alice, "0.003"))
        assert refused.headers["RateLimit-Limit"] == "2"  # the user's layer, not the key's
        assert (await post(bob, "0.004")).status_code == 201  # per user_id
        # Reads by the same key are not held by the user's limit.
        r = await c.get(f"/withdrawal/status/{first.json()['id']}", headers={"X-API-Key": harness.api_key})
        assert r.status_code == 200
    await harness.wait_status(first.json()["id"], {"CONFIRMED"})


async def test_api_keeps_answering_and_limiting_with_redis_down(harness: Harness, tmp_path: Path) -> None:
    proc, port = start_redis(tmp_path)
    redis = Redis(host="127.0.0.1", port=port, socket_timeout=0.3, socket_connect_timeout=0.3)
    key = "we_down_" + uuid.uuid4().hex
    await ensure_api_client(harness.db, key, name="down", rate_limit_per_minute=2)
    app = _app(harness, RateLimiter(redis))
    try:
        async with _client(app, "10.5.0.1") as c:
            assert (await c.get("/withdrawal/queue/status", headers={"X-API-Key": key})).status_code == 200
            processes.stop(proc)
            with capture_logs() as logs:
                # Fail open: no 5xx because the cache is gone, and the in-process limiter (a fresh
                # bucket of 2 in this process) holds the key to its limit.
                codes = [
                    (await c.get("/withdrawal/queue/status", headers={"X-API-Key": key})).status_code
                    for _ in range(2)
                ]
                assert codes == [200, 200]
                _limited(await c.get("/withdrawal/queue/status", headers={"X-API-Key": key}))
            assert any(e["event"] == "ratelimit.redis_unavailable" for e in logs)
    finally:
        await redis.aclose()
        processes.stop(proc)
