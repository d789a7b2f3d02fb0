"""Rate limits against a real Redis (shared by several API processes) and the in-process fallback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from api.ratelimit import RateLimiter
from devstack import processes
from tests.databases import start_redis


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[Redis]:
    proc, port = start_redis(tmp_path)
    client = Redis(host="127.0.0.1", port=port)
    try:
        yield client
    finally:
        await client.aclose()
        processes.stop(proc)


async def test_redis_limit_is_shared_between_api_processes(redis: Redis) -> None:
    a, b = RateLimiter(redis), RateLimiter(redis)  # two API instances, one Redis
    key = f"client:{uuid.uuid4()}"
    results = await asyncio.gather(*(lim.hit(key, 10) for lim in (a, b) for _ in range(8)))
    assert sum(r is None for r in results) == 10
    assert all(r is None or 1 <= r <= 60 for r in results)
    assert await redis.ttl(next(iter(await redis.keys(f"we:rl:{key}:*")))) > 0


async def test_in_process_fallback_limits_per_key() -> None:
    lim = RateLimiter()
    assert [await lim.hit("a", 2) is None for _ in range(3)] == [True, True, False]
    assert await lim.hit("b", 2) is None
