"""Operator accounts, on SQLite and a real MariaDB: login and its JWT, one answer (and the same bcrypt
work) for every failed login, the failed-login throttle per IP and per username, users created, listed,
changed and disabled, the last active ADMIN, and a change that takes effect on the next request."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest

from api.routes import auth as auth_routes
from api.security import JWT_AUDIENCE, JWT_ISSUER, verify_password
from devstack import processes
from devstack.bootstrap import ensure_user, migrate
from models import users
from tests.databases import create_database, start_mariadb
from tests.stack import Harness, Stack, new_sqlite_db, running_harness

pytestmark = pytest.mark.timeout(240)

PASSWORD = "operator-password-123"


@pytest.fixture(scope="module")
def mariadb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield port
    finally:
        processes.stop(proc)


def new_database(request: pytest.FixtureRequest, stack: Stack) -> str:
    """A migrated, empty database of the module's kind (SQLite or a real MariaDB)."""
    if request.param == "sqlite":
        return new_sqlite_db(stack.tmp)
    url = create_database(request.getfixturevalue("mariadb_port"), f"auth_{uuid.uuid4().hex[:12]}")
    migrate(url)
    return url


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def backend(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request


@pytest.fixture(scope="module")
def auth_db(backend: pytest.FixtureRequest, stack: Stack) -> str:
    return new_database(backend, stack)


@pytest.fixture(scope="module")
async def h(stack: Stack, auth_db: str) -> AsyncIterator[Harness]:
    async with running_harness(stack, auth_db, fund_wallets=False, start_worker=False) as harness:
        yield harness


@pytest.fixture(autouse=True)
def _settings(h: Harness) -> Any:
    """Each test starts with the harness's login limit and no trusted proxy."""
    limit, proxies = h.settings.login_attempts_per_minute, h.settings.trusted_proxies
    yield
    h.settings.login_attempts_per_minute, h.settings.trusted_proxies = limit, proxies


async def user(h: Harness, role: str = "VIEWER") -> str:
    name = f"{role.lower()}-{uuid.uuid4().hex[:8]}"
    await ensure_user(h.db, name, PASSWORD, role)
    return name


async def login(h: Harness, name: str, password: str = PASSWORD, ip: str | None = None) -> Any:
    headers = {"X-Forwarded-For": ip} if ip else {}
    return await h.http.post("/auth/login", json={"username": name, "password": password}, headers=headers)


async def bearer(h: Harness, name: str) -> dict[str, str]:
    r = await login(h, name)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_login_answers_a_jwt_with_issuer_audience_and_a_unique_id(h: Harness) -> None:
    name = await user(h, "APPROVER")
    r = await login(h, name)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "role"}
    assert body["token_type"] == "bearer" and body["role"] == "APPROVER"
    assert body["expires_in"] == h.settings.jwt_ttl_seconds
    claims = jwt.decode(
        body["access_token"],
        h.settings.jwt_secret.get_secret_value(),
        algorithms=["HS256"],
        audience=JWT_AUDIENCE,
        issuer=JWT_ISSUER,
    )
    assert claims["sub"] == name and claims["role"] == "APPROVER"
    assert (
        claims["exp"] - claims["iat"] == h.settings.jwt_ttl_seconds and abs(claims["iat"] - time.time()) < 10
    )
    again = jwt.decode((await login(h, name)).json()["access_token"], options={"verify_signature": False})
    assert again["jti"] != claims["jti"]


async def test_failed_logins_answer_the_same_after_the_same_work(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    known, disabled = await user(h), await user(h)
    async with h.db.transaction() as s:
        await users.change(s, disabled, role=None, active=False)
        known_user = await users.get(s, known)
    assert known_user is not None
    known_hash = known_user.password_hash
    checks: list[tuple[str, str, bool]] = []

    def recording_verify(password: str, stored: str) -> bool:
        ok = verify_password(password, stored)
        checks.append((password, stored, ok))
        return ok

    monkeypatch.setattr(auth_routes, "verify_password", recording_verify)
    cases = {
        "wrong password": (known, "not-the-password-1"),
        "unknown user": (f"ghost-{uuid.uuid4().hex[:8]}", PASSWORD),
        "disabled user": (disabled, PASSWORD),
    }
    h.settings.trusted_proxies = ["127.0.0.1/32"]  # each case from its own address (not throttled)
    answers, work = {}, {}
    for i, (why, (name, password)) in enumerate(cases.items()):
        checks.clear()
        r = await login(h, name, password, ip=f"192.0.2.{150 + i}")
        answers[why] = (r.status_code, r.json(), r.headers.get("content-length"))
        work[why] = list(checks)
    expected = (401, {"error": {"code": "UNAUTHORIZED", "message": "invalid username or password"}})
    assert {(a[0], str(a[1])) for a in answers.values()} == {(expected[0], str(expected[1]))}
    assert len({a[2] for a in answers.values()}) == 1
    # Each failure ran exactly one real bcrypt check, at the cost real hashes use (the "$2b$12$"
    # prefix), so an unknown or disabled user takes as long to refuse as a wrong password. (The
    # work is asserted rather than timed: a timing bound flakes on a shared machine.)
    cost = known_hash[:7]
    assert cost == "$2b$12$", known_hash
    for why, done in work.items():
        assert len(done) == 1, (why, done)
        password, stored, ok = done[0]
        assert password == cases[why][1] and stored.startswith(cost), (why, stored)
        # Only the disabled user gave the right password (refused for being disabled).
        assert ok is (why == "disabled user"), (why, ok)
    assert work["unknown user"][0][1] != known_hash


async def test_failed_logins_are_throttled_per_ip(h: Harness) -> None:
    h.settings.login_attempts_per_minute = 3
    h.settings.trusted_proxies = ["127.0.0.1/32"]  # the test client is the proxy; X-Forwarded-For is the IP
    attacker, other = f"198.51.100.{uuid.uuid4().int % 200 + 1}", f"203.0.113.{uuid.uuid4().int % 200 + 1}"
    victim = await user(h)
    for _ in range(3):
        r = await login(h, f"guess-{uuid.uuid4().hex[:6]}", "wrong-password-1", ip=attacker)
        assert r.status_code == 401
    # The limit is reached for that IP: even the right password for another user is refused.
    blocked = await login(h, victim, ip=attacker)
    assert blocked.status_code == 429 and blocked.json()["error"]["code"] == "RATE_LIMITED"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert (await login(h, victim, ip=other)).status_code == 200


async def test_failed_logins_are_throttled_per_username(h: Harness) -> None:
    h.settings.login_attempts_per_minute = 3
    h.settings.trusted_proxies = ["127.0.0.1/32"]
    victim, bystander = await user(h), await user(h)
    for i in range(3):
        r = await login(h, victim, "wrong-password-1", ip=f"192.0.2.{i + 10}")
        assert r.status_code == 401
    # From a fresh IP, with the right password: the username is locked for the window.
    locked = await login(h, victim, ip="192.0.2.99")
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    assert (await login(h, victim.upper(), ip="192.0.2.98")).status_code == 429  # case does not escape it
    assert (await login(h, bystander, ip="192.0.2.99")).status_code == 200


async def test_successful_logins_do_not_count(h: Harness) -> None:
    h.settings.login_attempts_per_minute = 2
    h.settings.trusted_proxies = ["127.0.0.1/32"]
    name = await user(h)
    for _ in range(5):
        assert (await login(h, name, ip="192.0.2.200")).status_code == 200
    assert (await login(h, name, "wrong-password-1", ip="192.0.2.200")).status_code == 401


async def test_a_disabled_user_loses_access_at_once_and_cannot_log_in(h: Harness) -> None:
    admin = await bearer(h, await user(h, "ADMIN"))
    name = await user(h, "OPERATOR")
    token = await bearer(h, name)
    assert (await h.http.get("/admin/transactions", headers=token)).status_code == 200
    r = await h.http.patch(f"/admin/users/{name}", json={"active": False}, headers=admin)
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    refused = await h.http.get("/admin/transactions", headers=token)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
    assert (await login(h, name)).status_code == 401
    assert (
        await h.http.patch(f"/admin/users/{name}", json={"active": True}, headers=admin)
    ).status_code == 200
    assert (await h.http.get("/admin/transactions", headers=token)).status_code == 200


async def test_a_downgraded_user_loses_the_role_at_once(h: Harness) -> None:
    admin = await bearer(h, await user(h, "ADMIN"))
    name = await user(h, "ADMIN")
    token = await bearer(h, name)
    assert (await h.http.get("/admin/audit", headers=token)).status_code == 200
    r = await h.http.patch(f"/admin/users/{name}", json={"role": "VIEWER"}, headers=admin)
    assert r.status_code == 200 and r.json()["role"] == "VIEWER"
    denied = await h.http.get("/admin/audit", headers=token)
    assert denied.status_code == 403 and denied.json()["error"]["message"] == "requires role ADMIN"
    assert (await h.http.get("/admin/transactions", headers=token)).status_code == 200
    # The token's role claim is not trusted: promotion takes effect without a new login as well.
    assert (
        await h.http.patch(f"/admin/users/{name}", json={"role": "OPERATOR"}, headers=admin)
    ).status_code == 200
    assert (await h.http.post("/admin/dlq/reprocess", json={"ids": ["x"]}, headers=token)).status_code == 200


async def test_a_change_made_by_another_process_is_seen_within_two_seconds(h: Harness) -> None:
    name = await user(h, "OPERATOR")
    token = await bearer(h, name)
    assert (await h.http.get("/admin/queues", headers=token)).status_code == 200
    async with h.db.transaction() as s:  # as another API process would: no local cache to clear
        await users.change(s, name, role=None, active=False)
    deadline = time.monotonic() + 2.5
    while (await h.http.get("/admin/queues", headers=token)).status_code != 401:
        assert time.monotonic() < deadline, "a disabled user still had access after 2.5 s"
        await asyncio.sleep(0.1)


async def test_users_are_created_listed_and_changed_by_admins(h: Harness) -> None:
    admin_name = await user(h, "ADMIN")
    admin = await bearer(h, admin_name)
    name = f"carol-{uuid.uuid4().hex[:6]}"
    created = await h.http.post(
        "/admin/users", json={"username": name, "password": PASSWORD, "role": "APPROVER"}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert set(created.json()) == {"username", "role", "active", "created_at", "updated_at"}
    assert created.json()["role"] == "APPROVER" and created.json()["active"] is True
    assert (await login(h, name)).json()["role"] == "APPROVER"
    alias = await h.http.post(
        "/auth/register", json={"username": name + "-2", "password": PASSWORD}, headers=admin
    )
    assert alias.status_code == 201 and alias.json()["role"] == "VIEWER"
    dup = await h.http.post("/admin/users", json={"username": name, "password": PASSWORD}, headers=admin)
    assert dup.status_code == 409 and dup.json()["error"] == {
        "code": "CONFLICT",
        "message": "username already exists",
        "field": "username",
    }
    for body, field in (
        ({"username": "dave-x", "password": "short"}, "password"),
        ({"username": "dave x", "password": PASSWORD}, "username"),
        ({"username": "dave-y", "password": PASSWORD, "role": "ROOT"}, "role"),
        ({"username": "dave-z", "password": PASSWORD, "password_hash": "x"}, "password_hash"),
    ):
        r = await h.http.post("/admin/users", json=body, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)
    # The list: every user once across pages, in username order, no password hashes.
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await h.http.get("/admin/users", params=params, headers=admin)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    names = [u["username"] for u in seen]
    assert names == sorted(names) and len(names) == len(set(names)) == page["total"]
    assert {name, name + "-2", admin_name} <= set(names) and "password_hash" not in str(seen)
    patched = await h.http.patch(
        f"/admin/users/{name}", json={"role": "OPERATOR", "active": False}, headers=admin
    )
    assert patched.json()["role"] == "OPERATOR" and patched.json()["active"] is False
    assert patched.json()["updated_at"] >= created.json()["updated_at"]
    bad_patches: list[tuple[str, dict[str, Any], int, str]] = [
        (f"/admin/users/nobody-{uuid.uuid4().hex[:6]}", {"active": False}, 404, "NOT_FOUND"),
        (f"/admin/users/{name}", {}, 422, "VALIDATION_ERROR"),
        (f"/admin/users/{name}", {"password": PASSWORD}, 422, "VALIDATION_ERROR"),
        (f"/admin/users/{name}", {"role": "GOD"}, 422, "VALIDATION_ERROR"),
        (f"/admin/users/{name}", {"active": "no"}, 422, "VALIDATION_ERROR"),
    ]
    for path, body, status, code in bad_patches:
        r = await h.http.patch(path, json=body, headers=admin)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)


async def test_the_last_active_admin_cannot_be_disabled_or_demoted(
    stack: Stack, backend: pytest.FixtureRequest
) -> None:
    db = await asyncio.to_thread(new_database, backend, stack)
    async with running_harness(stack, db, fund_wallets=False, start_worker=False) as h:
        only = await user(h, "ADMIN")
        me = await bearer(h, only)
        for body in ({"active": False}, {"role": "APPROVER"}, {"role": "VIEWER", "active": True}):
            r = await h.http.patch(f"/admin/users/{only}", json=body, headers=me)
            assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT", (body, r.text)
        # A disabled ADMIN does not count as the other admin.
        spare = await user(h, "ADMIN")
        assert (
            await h.http.patch(f"/admin/users/{spare}", json={"active": False}, headers=me)
        ).status_code == 200
        assert (
            await h.http.patch(f"/admin/users/{only}", json={"role": "OPERATOR"}, headers=me)
        ).status_code == 409
        # With another active admin, stepping down is allowed (and takes effect at once).
        assert (
            await h.http.patch(f"/admin/users/{spare}", json={"active": True}, headers=me)
        ).status_code == 200
        r = await h.http.patch(f"/admin/users/{only}", json={"role": "OPERATOR"}, headers=me)
        assert r.status_code == 200 and r.json()["role"] == "OPERATOR"
        assert (await h.http.get("/admin/users", headers=me)).status_code == 403
        spare_token = await bearer(h, spare)
        last = await h.http.patch(f"/admin/users/{spare}", json={"active": False}, headers=spare_token)
        assert last.status_code == 409
