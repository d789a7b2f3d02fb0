"""Security headers on every answer (the routes', the error handlers', the rate limiter's and the body
guard's), pages with policies of their own, HSTS only in prod, CORS off unless origins are configured,
and no `server` banner from the API as the default run starts it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from api.deps import AppState
from api.ratelimit import RateLimiter
from api.routes.dashboard import CONTENT_SECURITY_POLICY as DASHBOARD_POLICY
from api.security_headers import API_CONTENT_SECURITY_POLICY
from devstack import processes
from tests.stack import Harness

API_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": API_CONTENT_SECURITY_POLICY,
    "cache-control": "no-store",
}
ORIGIN = "https://ops.example.com"


def _state(h: Harness) -> AppState:
    transport = h.http._transport
    assert isinstance(transport, httpx.ASGITransport)
    state: AppState = transport.app.state.engine  # type: ignore[attr-defined]
    return state


def _assert_api_headers(r: httpx.Response) -> None:
    for name, value in API_HEADERS.items():
        assert r.headers.get(name) == value, (r.request.url, r.status_code, name, r.headers)
    assert "strict-transport-security" not in r.headers
    assert "server" not in r.headers


@pytest.fixture
async def client_for(harness: Harness) -> AsyncIterator[Any]:
    """An app on the harness's engine with changed settings (and a fresh rate limiter)."""
    clients: list[httpx.AsyncClient] = []

    def make(**settings: Any) -> httpx.AsyncClient:
        state = _state(harness)
        changed = dataclasses.replace(
            state, settings=state.settings.model_copy(update=settings), limiter=RateLimiter()
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(changed)), base_url="http://engine"
        )
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


async def test_every_kind_of_answer_carries_the_headers(harness: Harness, client_for: Any) -> None:
    http, key = harness.http, {"X-API-Key": harness.api_key}
    answers = [
        await http.get("/health"),  # a route
        await http.get("/withdrawal/queue/status", headers=key),  # a route behind an API key
        await http.get("/withdrawal/status/not-a-uuid", headers=key),  # an AppError (404)
        await http.get("/withdrawal/queue/status"),  # 401 from a dependency
        await http.get("/no/such/route"),  # Starlette's 404
        await http.put("/withdrawal/request"),  # 405
        await http.post("/withdrawal/request", headers=key, json={}),  # 400 / 422
        await http.post("/auth/login", content=b"x" * 20_000, headers={"Content-Type": "application/json"}),
        await http.get("/openapi.json"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 404, 401, 404, 405, 400, 413, 200]
    for r in answers:
        _assert_api_headers(r)
    # The per-IP limit answers before any route: its 429 has them too.
    limited = client_for(rate_limit_per_ip_per_minute=1)
    assert (await limited.get("/withdrawal/queue/status", headers=key)).status_code == 200
    refused = await limited.get("/withdrawal/queue/status", headers=key)
    assert refused.status_code == 429 and refused.headers["retry-after"]
    _assert_api_headers(refused)


async def test_pages_keep_their_own_policy(harness: Harness) -> None:
    dashboard = await harness.http.get("/admin")
    assert dashboard.status_code == 200
    assert dashboard.headers["content-security-policy"] == DASHBOARD_POLICY
    assert dashboard.headers["cache-control"] == "no-cache"
    assert dashboard.headers["x-frame-options"] == "DENY"
    assert dashboard.headers["x-content-type-options"] == "nosniff"
    asset = await harness.http.get("/admin/static/app.js")
    assert asset.headers["content-security-policy"] == DASHBOARD_POLICY
    docs = await harness.http.get("/api-docs")
    policy = docs.headers["content-security-policy"]
    assert policy != API_CONTENT_SECURITY_POLICY and "script-src 'self' 'sha256-" in policy
    assert docs.headers["cache-control"] == "no-cache"
    assert docs.headers["referrer-policy"] == "no-referrer"
    bundle = await harness.http.get("/api-docs/static/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["cache-control"] == "no-cache"
    assert bundle.headers["x-content-type-options"] == "nosniff"


async def test_hsts_only_in_prod(harness: Harness, client_for: Any) -> None:
    assert "strict-transport-security" not in (await harness.http.get("/health")).headers
    secret = SecretStr("p" + os.urandom(32).hex())
    prod = client_for(env="prod", jwt_secret=secret, keystore_password=secret, webhook_secret=secret)
    for path in ("/health", "/withdrawal/queue/status", "/admin"):
        r = await prod.get(path)
        assert r.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains", r.url
    assert (await prod.get("/admin")).headers["content-security-policy"] == DASHBOARD_POLICY


async def test_cors_is_off_unless_origins_are_configured(harness: Harness, client_for: Any) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, idempotency-key, content-type",
    }
    off = await harness.http.options("/withdrawal/request", headers=preflight)
    assert "access-control-allow-origin" not in off.headers
    plain = await harness.http.get("/health", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in plain.headers

    on = client_for(cors_origins=[ORIGIN])
    allowed = await on.options("/withdrawal/request", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert {"x-api-key", "idempotency-key", "content-type"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    assert "POST" in allowed.headers["access-control-allow-methods"]
    other = await on.options("/withdrawal/request", headers={**preflight, "Origin": "https://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    read = await on.get("/health", headers={"Origin": ORIGIN})
    assert read.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in read.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in read.headers
    foreign = await on.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers
    _assert_api_headers(read)


async def test_the_api_process_sends_no_server_banner(harness: Harness) -> None:
    """The API as `make run` starts it (devstack.processes.api_command), over real HTTP."""
    port = processes.free_port()
    env = {
        **os.environ,
        "WE_ENV": "test",
        "WE_DATABASE_URL": harness.settings.db_url,
        "WE_TEMPORAL_ADDRESS": harness.stack.temporal_address,
        "WE_CONFIG_FILE": str(harness.config_file()),
        "WE_DATA_DIR": str(harness.stack.tmp),
        "WE_RECONCILE_INTERVAL_SECONDS": "0",
    }
    cmd = processes.api_command("127.0.0.1", port, sys.executable)
    assert "--no-server-header" in cmd
    log = harness.stack.tmp / f"api-{port}.log"
    proc = await asyncio.to_thread(processes.start, cmd, log, env)
    try:
        await asyncio.to_thread(processes.wait_for_port, port, proc, 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for path in ("/health", "/openapi.json", "/no/such/route"):
                r = await http.get(path)
                assert "server" not in r.headers, (path, r.headers)
                _assert_api_headers(r)
    finally:
        await asyncio.to_thread(processes.stop, proc)
