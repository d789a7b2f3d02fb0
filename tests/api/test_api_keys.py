"""API keys (DESIGN §6.2) against SQLite and a real MariaDB: the admin routes, scopes, IP allowlists
behind trusted proxies, rotation with an overlap, deactivation, one 401 for every bad key, audit, and
usage counted in memory and flushed in batches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.deps import AppState, KeyCache, TemporalConnector
from api.ratelimit import RateLimiter
from api.security import hash_api_key
from api.usage import UsageRecorder
from devstack import processes
from devstack.bootstrap import migrate
from models import api_keys, audit
from models.tables import ApiClient
from tests.databases import create_database, start_mariadb
from tests.stack import Harness, Stack, new_sqlite_db, running_harness

pytestmark = pytest.mark.timeout(240)

STATUS = "/withdrawal/queue/status"


@pytest.fixture(scope="module")
def mariadb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield port
    finally:
        processes.stop(proc)


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def keys_db(request: pytest.FixtureRequest, stack: Stack) -> str:
    if request.param == "sqlite":
        return new_sqlite_db(stack.tmp)
    url = create_database(request.getfixturevalue("mariadb_port"), f"k_{uuid.uuid4().hex[:12]}")
    migrate(url)
    return url


@pytest.fixture(scope="module")
async def h(stack: Stack, keys_db: str) -> AsyncIterator[Harness]:
    async with running_harness(stack, keys_db, start_worker=False) as harness:
        yield harness


@pytest.fixture
async def admin(h: Harness) -> dict[str, str]:
    return await h.operator_headers("ADMIN")


def make_app(h: Harness, **settings: Any) -> FastAPI:
    s = h.settings.model_copy(update=settings)
    state = AppState(
        settings=s, config=h.config, db=h.db, temporal=TemporalConnector(s, h.client), limiter=RateLimiter()
    )
    return create_app(state)


def via(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose TCP peer address is `ip`."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="http://e")


async def new_key(c: httpx.AsyncClient, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await c.post("/admin/api-keys", json={"name": f"k-{uuid.uuid4().hex[:6]}", **body}, headers=admin)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def key(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


async def test_create_shows_the_secret_once_and_never_the_hash(h: Harness, admin: dict[str, str]) -> None:
    app = make_app(h)
    at = datetime.now(timezone(timedelta(hours=2))) + timedelta(days=30)  # an offset, not Z
    expires = at.isoformat()
    async with via(app) as c:
        created = await new_key(
            c,
            admin,
            scopes=["withdrawals:read", "withdrawals:read", "webhooks:manage"],
            rate_limit_per_minute=30,
            ip_allowlist=["10.1.0.0/16", "2001:db8::/32", "192.0.2.7", "10.1.0.0/16"],
            expires_at=expires,
        )
        secret = created["api_key"]
        assert secret.startswith("we_") and created["key_prefix"] == secret[:10]
        assert created["scopes"] == ["withdrawals:read", "webhooks:manage"]
        assert created["ip_allowlist"] == ["10.1.0.0/16", "2001:db8::/32", "192.0.2.7/32"]
        assert created["expires_at"] == at.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
        assert created["active"] is True and created["revoked_at"] is None and created["last_used_at"] is None
        assert created["created_by"].startswith("admin-") and created["rate_limit_per_minute"] == 30

        one = await c.get(f"/admin/api-keys/{created['id']}", headers=admin)
        listed = await c.get("/admin/api-keys", params={"limit": 500}, headers=admin)
        for r in (one, listed):
            assert r.status_code == 200
            assert secret not in r.text and hash_api_key(secret) not in r.text and "api_key" not in r.text
        assert one.json() == {k: v for k, v in created.items() if k != "api_key"}
        assert created["id"] in [k["id"] for k in listed.json()["items"]]
    async with via(app, "10.1.2.3") as c:
        assert (await c.get(STATUS, headers=key(secret))).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "k", "scopes": []}, "scopes"),
        ({"name": "k", "scopes": ["admin"]}, "scopes.0"),
        ({"name": "k", "rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"name": "k", "ip_allowlist": ["10.0.0.1/8"]}, "ip_allowlist"),  # host bits set: ambiguous
        ({"name": "k", "ip_allowlist": ["10.0.0.0/33"]}, "ip_allowlist"),
        ({"name": "k", "ip_allowlist": ["example.com"]}, "ip_allowlist"),
        ({"name": "k", "ip_allowlist": [167772160]}, "ip_allowlist.0"),
        ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "k", "expires_at": 4102444800}, "expires_at"),
        ({"name": "k", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "k", "expires_at": "9999-12-31T23:59:59-01:00"}, "expires_at"),  # overflows in UTC
    ],
)
async def test_create_refuses_bad_input(
    h: Harness, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    r = await h.http.post("/admin/api-keys", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "VALIDATION_ERROR" and r.json()["error"]["field"] == field


async def test_admin_routes_need_an_admin(h: Harness, admin: dict[str, str]) -> None:
    operator = await h.operator_headers("OPERATOR")
    some = f"/admin/api-keys/{uuid.uuid4()}"
    for method, path in (
        ("POST", "/admin/api-keys"),
        ("GET", "/admin/api-keys"),
        ("GET", some),
        ("POST", f"{some}/rotate"),
        ("DELETE", some),
        ("GET", f"{some}/usage"),
    ):
        body = {"name": "x"} if method == "POST" else None
        r = await h.http.request(method, path, json=body, headers=operator)
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN", (path, r.text)
        r = await h.http.request(method, path, json=body)
        assert r.status_code == 401, (path, r.text)
        if path != "/admin/api-keys":
            r = await h.http.request(method, path, json=None, headers=admin)
            assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", (path, r.text)


async def test_list_pages_with_a_cursor(h: Harness, admin: dict[str, str]) -> None:
    made = [(await new_key(h.http, admin))["id"] for _ in range(3)]
    await h.http.delete(f"/admin/api-keys/{made[0]}", headers=admin)
    seen: list[str] = []
    totals = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await h.http.get("/admin/api-keys", params=params, headers=admin)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [k["id"] for k in page["items"]]
        totals.add(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == totals.pop() and not totals  # every key once; total stable
    assert [i for i in seen if i in made] == made[::-1]  # newest first
    revoked = await h.http.get("/admin/api-keys", params={"active": "false", "limit": 500}, headers=admin)
    assert made[0] in [k["id"] for k in revoked.json()["items"]]
    assert all(not k["active"] for k in revoked.json()["items"])
    r = await h.http.get("/admin/api-keys", params={"cursor": "not-a-cursor"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "cursor"


async def test_scopes_are_enforced_per_route(h: Harness, admin: dict[str, str]) -> None:
    reader = (await new_key(h.http, admin, scopes=["withdrawals:read"]))["api_key"]
    writer = (await new_key(h.http, admin, scopes=["withdrawals:create"]))["api_key"]
    body = {
        "user_id": "u",
        "network": "nowhere",
        "asset": "ETH",
        "to_address": "0x" + "11" * 20,
        "amount": "1",
    }
    post = {"Idempotency-Key": str(uuid.uuid4())}
    r = await h.http.post("/withdrawal/request", json=body, headers=key(reader) | post)
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    r = await h.http.post("/withdrawal/request", json=body, headers=key(writer) | post)
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNSUPPORTED_NETWORK"  # past the scope
    assert (await h.http.get(STATUS, headers=key(reader))).status_code == 200
    for path in (STATUS, f"/withdrawal/status/{uuid.uuid4()}"):
        r = await h.http.get(path, headers=key(writer))
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
    # The webhook routes, the delivery log included, need webhooks:manage (a reader key is refused).
    hooks = (await new_key(h.http, admin, scopes=["webhooks:manage"]))["api_key"]
    for path in ("/webhook/deliveries", "/webhook/endpoints"):
        assert (await h.http.get(path, headers=key(hooks))).status_code == 200, path
        r = await h.http.get(path, headers=key(reader))
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN", path
    r = await h.http.get("/webhook/deliveries", params={"cursor": "9" * 20}, headers=key(hooks))
    assert r.status_code == 422 and r.json()["error"]["field"] == "cursor", r.text


async def test_ip_allowlist_behind_trusted_proxies(h: Harness, admin: dict[str, str]) -> None:
    app = make_app(h, trusted_proxies=["10.9.0.0/24", "fd00::1"])
    async with via(app) as c:
        secret = (await new_key(c, admin, ip_allowlist=["10.1.0.0/16", "2001:db8::/32"]))["api_key"]

    async def answer(peer: str, forwarded: str | None = None) -> int:
        headers = key(secret) | ({"X-Forwarded-For": forwarded} if forwarded is not None else {})
        async with via(app, peer) as c:
            r = await c.get(STATUS, headers=headers)
        if r.status_code == 403:
            assert r.json()["error"] == {
                "code": "FORBIDDEN",
                "message": "this API key may not be used from this address",
            }
        return r.status_code

    assert await answer("10.1.2.3") == 200
    assert await answer("2001:db8::5") == 200
    assert await answer("::ffff:10.1.2.3") == 200  # an IPv4-mapped peer is its IPv4 address
    assert await answer("10.2.0.1") == 403
    assert await answer("2001:db9::5") == 403
    # X-Forwarded-For counts only from a trusted proxy, and then its right-most untrusted hop.
    assert await answer("10.2.0.1", "10.1.2.3") == 403
    assert await answer("10.9.0.5", "10.1.2.3") == 200
    assert await answer("fd00::1", "2001:db8::77") == 200
    assert await answer("10.9.0.5", "10.1.2.3, 10.9.0.7") == 200  # a second trusted hop is skipped
    assert (
        await answer("10.9.0.5", "10.1.2.3, 10.2.0.1") == 403
    )  # what is left of an untrusted hop is forgeable
    assert await answer("10.9.0.5", "10.2.0.1, 10.1.2.3") == 200
    assert await answer("10.9.0.5") == 403  # the proxy itself is not in the allowlist
    assert await answer("10.9.0.5", "garbage") == 403


async def test_per_ip_limit_counts_the_client_behind_a_trusted_proxy(h: Harness) -> None:
    app = make_app(h, trusted_proxies=["10.9.0.0/24"], rate_limit_per_ip_per_minute=2)

    async def codes(peer: str, forwarded: str, n: int) -> list[int]:
        async with via(app, peer) as c:
            return [
                (await c.get(STATUS, headers={"X-Forwarded-For": forwarded})).status_code for _ in range(n)
            ]

    assert await codes("10.9.0.5", "198.51.100.1", 3) == [401, 401, 429]
    assert await codes("10.9.0.6", "198.51.100.2", 2) == [401, 401]  # another client, same proxies
    # An untrusted peer cannot escape its own budget by inventing X-Forwarded-For values.
    assert await codes("203.0.113.9", "198.51.100.3", 2) == [401, 401]
    assert await codes("203.0.113.9", "198.51.100.4", 1) == [429]


async def test_rotation_keeps_the_old_secret_for_the_overlap_only(h: Harness, admin: dict[str, str]) -> None:
    app = make_app(h)
    async with via(app, "10.7.0.1") as c:
        created = await new_key(c, admin)
        old = created["api_key"]
        r = await c.post(
            f"/admin/api-keys/{created['id']}/rotate", json={"overlap_seconds": 2}, headers=admin
        )
        assert r.status_code == 200, r.text
        rotated = r.json()
        new = rotated["api_key"]
        assert new != old and rotated["key_prefix"] == new[:10] and rotated["previous_key_expires_at"]
        assert [(await c.get(STATUS, headers=key(s))).status_code for s in (old, new)] == [200, 200]
        unknown = await c.get(STATUS, headers=key("we_" + uuid.uuid4().hex))
        await asyncio.sleep(2.2)
        after = await c.get(STATUS, headers=key(old))
        assert after.status_code == 401 and after.json() == unknown.json()
        assert (await c.get(STATUS, headers=key(new))).status_code == 200

        # Default overlap 0: the old secret stops at once.
        r = await c.post(f"/admin/api-keys/{created['id']}/rotate", headers=admin)
        third = r.json()["api_key"]
        assert r.json()["previous_key_expires_at"] is None
        assert [(await c.get(STATUS, headers=key(s))).status_code for s in (new, third)] == [401, 200]

        # One previous secret at most: a second rotation within the overlap drops the first one.
        fourth = (
            await c.post(
                f"/admin/api-keys/{created['id']}/rotate", json={"overlap_seconds": 60}, headers=admin
            )
        ).json()["api_key"]
        fifth = (
            await c.post(
                f"/admin/api-keys/{created['id']}/rotate", json={"overlap_seconds": 60}, headers=admin
            )
        ).json()["api_key"]
        codes = [(await c.get(STATUS, headers=key(s))).status_code for s in (third, fourth, fifth)]
        assert codes == [401, 200, 200]

        for overlap in (-1, 7 * 86_400 + 1, "60"):
            r = await c.post(
                f"/admin/api-keys/{created['id']}/rotate", json={"overlap_seconds": overlap}, headers=admin
            )
            assert r.status_code == 422 and r.json()["error"]["field"] == "overlap_seconds", r.text

    async with h.db.read() as s:
        entries = await audit.entries(s, target=created["id"])
    rotations = [e for e in entries if e.action == "api_key.rotate"]
    assert len(rotations) == 4 and {e.action for e in entries} == {"api_key.create", "api_key.rotate"}
    assert all(
        e.actor.startswith("admin-") and e.role == "ADMIN" and e.source_ip == "10.7.0.1" for e in entries
    )
    for e in entries:  # no secret and no hash in the trail
        text = f"{e.before}{e.after}"
        assert all(s not in text and hash_api_key(s) not in text for s in (old, new, third, fourth, fifth))


async def test_deactivation_is_immediate_and_audited(h: Harness, admin: dict[str, str]) -> None:
    app = make_app(h)
    async with via(app, "10.7.0.2") as c:
        created = await new_key(c, admin)
        secret = created["api_key"]
        assert (await c.get(STATUS, headers=key(secret))).status_code == 200
        r = await c.delete(f"/admin/api-keys/{created['id']}", headers=admin)
        assert r.status_code == 200 and r.json()["active"] is False and r.json()["revoked_at"]
        assert (await c.get(STATUS, headers=key(secret))).status_code == 401  # at once, not after a cache
        again = await c.delete(f"/admin/api-keys/{created['id']}", headers=admin)
        assert again.status_code == 200 and again.json() == r.json()
        r = await c.post(f"/admin/api-keys/{created['id']}/rotate", headers=admin)
        assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT"
    async with h.db.read() as s:
        entries = await audit.entries(s, target=created["id"])
    assert [e.action for e in entries] == ["api_key.deactivate", "api_key.create"]
    deactivated = entries[0]
    assert deactivated.source_ip == "10.7.0.2" and deactivated.role == "ADMIN"
    assert '"active": true' in (deactivated.before or "") and '"active": false' in (deactivated.after or "")


async def test_a_key_revoked_in_another_api_process_is_refused_within_the_cache_ttl(
    h: Harness, admin: dict[str, str]
) -> None:
    """Two API processes on one database (two app states, each with its own key cache): a key
    created in one works in the other at once (unknown keys are never cached); revoked in one, the
    other refuses it within `api_key_cache_seconds`."""
    one, other = make_app(h), make_app(h, api_key_cache_seconds=1.0)
    async with via(one) as a, via(other) as b:
        created = await new_key(a, admin)
        secret = created["api_key"]
        assert (await b.get(STATUS, headers=key(secret))).status_code == 200  # at once, and now cached
        assert (await b.get(STATUS, headers=key(secret))).status_code == 200
        assert (await a.delete(f"/admin/api-keys/{created['id']}", headers=admin)).status_code == 200
        assert (await a.get(STATUS, headers=key(secret))).status_code == 401  # its own process: at once
        revoked_at = asyncio.get_running_loop().time()
        while (await b.get(STATUS, headers=key(secret))).status_code == 200:
            assert asyncio.get_running_loop().time() - revoked_at < 1.5, "still accepted after the TTL"
            await asyncio.sleep(0.05)


async def test_every_bad_key_gets_the_same_401(h: Harness, admin: dict[str, str]) -> None:
    revoked = await new_key(h.http, admin)
    await h.http.delete(f"/admin/api-keys/{revoked['id']}", headers=admin)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    expiring = await new_key(h.http, admin, expires_at=soon)
    assert (await h.http.get(STATUS, headers=key(expiring["api_key"]))).status_code == 200
    rotated = await new_key(h.http, admin)
    await h.http.post(f"/admin/api-keys/{rotated['id']}/rotate", headers=admin)
    await asyncio.sleep(1.1)
    bodies = []
    for headers in (
        {},
        key(""),
        key("we_unknown"),
        key("x" * 500),
        key(revoked["api_key"]),
        key(expiring["api_key"]),
        key(rotated["api_key"]),
    ):
        r = await h.http.get(STATUS, headers=headers)
        assert r.status_code == 401
        bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies) and bodies[0]["error"]["code"] == "UNAUTHORIZED"


async def test_usage_is_counted_in_memory_and_flushed_as_upserts(h: Harness, admin: dict[str, str]) -> None:
    app = make_app(h)
    recorder: UsageRecorder = app.state.usage
    async with via(app, "10.8.0.1") as c:
        created = await new_key(c, admin, scopes=["withdrawals:read"], ip_allowlist=["10.8.0.0/24"])
        cid, secret = created["id"], created["api_key"]
        for _ in range(3):
            assert (await c.get(STATUS, headers=key(secret))).status_code == 200
        for _ in range(2):
            assert (await c.get(f"/withdrawal/status/{uuid.uuid4()}", headers=key(secret))).status_code == 404
        r = await c.post("/withdrawal/request", json={}, headers=key(secret) | {"Idempotency-Key": "a"})
        assert r.status_code == 403
        await c.get(STATUS, headers=key("we_nobody"))  # no key: nobody's usage
    async with via(app, "10.9.9.9") as outside:
        assert (await outside.get(STATUS, headers=key(secret))).status_code == 403
    # Nothing was written per request: the counts wait in memory for the flush.
    async with h.db.read() as s:
        assert await api_keys.usage(s, cid, since=datetime.now(UTC).date()) == []
        row = await api_keys.get(s, cid)
        assert row is not None and row.last_used_at is None

    async with via(app, "10.8.0.1") as c:
        r = await c.get(f"/admin/api-keys/{cid}/usage", params={"days": 3}, headers=admin)  # flushes first
        assert r.status_code == 200, r.text
        usage = r.json()
        today = usage["days"][0]
        assert [d["date"] for d in usage["days"]] == [
            (datetime.now(UTC).date() - timedelta(days=n)).isoformat() for n in range(3)
        ]
        assert usage["total"] == today["requests"] == 7 and usage["last_used_at"] is not None
        assert sorted((x["route"], x["status"], x["count"]) for x in today["routes"]) == [
            ("GET /withdrawal/queue/status", 200, 3),
            ("GET /withdrawal/queue/status", 403, 1),
            ("GET /withdrawal/status/{withdrawal_id}", 404, 2),
            ("POST /withdrawal/request", 403, 1),
        ]
        # A later batch adds to the same rows (the upsert), from this or any other API process.
        for _ in range(2):
            await c.get(STATUS, headers=key(secret))
        assert recorder.pending == 2 and await recorder.flush(h.db) == 2 and recorder.pending == 0
        r = await c.get(f"/admin/api-keys/{cid}/usage", headers=admin)
        assert len(r.json()["days"]) == 7
        counts = {(x["route"], x["status"]): x["count"] for x in r.json()["days"][0]["routes"]}
        assert counts[("GET /withdrawal/queue/status", 200)] == 5
        listed = await c.get(f"/admin/api-keys/{cid}", headers=admin)
        assert listed.json()["last_used_at"] == r.json()["last_used_at"]
        for days in (0, 91, "x"):
            r = await c.get(f"/admin/api-keys/{cid}/usage", params={"days": days}, headers=admin)
            assert r.status_code == 422


async def test_flusher_writes_every_interval_and_at_shutdown(h: Harness, admin: dict[str, str]) -> None:
    cid = (await new_key(h.http, admin))["id"]
    recorder = UsageRecorder()
    task = asyncio.create_task(recorder.run(h.db, interval=0.2))
    recorder.record(cid, "GET /withdrawal/queue/status", 200)
    await asyncio.sleep(0.5)
    async with h.db.read() as s:
        assert [(u.route, u.count) for u in await api_keys.usage(s, cid, since=datetime.now(UTC).date())] == [
            ("GET /withdrawal/queue/status", 1)
        ]
    recorder.record(cid, "GET /withdrawal/queue/status", 200)
    recorder.record(cid, "GET /withdrawal/queue/status", 429)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with h.db.read() as s:
        rows = await api_keys.usage(s, cid, since=datetime.now(UTC).date())
        client = await api_keys.get(s, cid)
    assert sorted((u.status, u.count) for u in rows) == [(200, 2), (429, 1)]
    assert client is not None and client.last_used_at is not None


def test_a_lookup_that_read_the_key_before_a_change_does_not_cache_it() -> None:
    """A request reads the key row, the key is revoked and the cache cleared, then that request
    stores what it read: the stale copy must not be served to the requests after the revocation."""
    cache = KeyCache(60.0)
    stale = ApiClient(id="k", name="k", key_hash="h", key_prefix="we_", scopes="withdrawals:read")
    before = cache.generation
    cache.clear()  # the DELETE commits here, between the read and the put
    cache.put("h", stale, before)
    assert cache.get("h") is None
    cache.put("h", stale, cache.generation)  # a lookup that started after the change is kept
    assert cache.get("h") is stale
