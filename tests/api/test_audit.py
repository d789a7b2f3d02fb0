"""The audit trail: every operator and admin action is a row (who, role, action, target, before/after,
source IP, when, outcome); DB actions are audited in their own transaction; the source IP comes from
`X-Forwarded-For` only behind a trusted proxy; `GET /admin/audit` filters and pages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devstack.bootstrap import ensure_user
from models import audit, pauses, users
from tests.stack import Harness, Stack, native_body, new_sqlite_db, new_wallet, running_harness

pytestmark = pytest.mark.timeout(240)

PASSWORD = "operator-password-123"


@pytest.fixture(scope="module")
def audit_db(stack: Stack) -> str:
    return new_sqlite_db(stack.tmp)


@pytest.fixture(scope="module")
async def h(stack: Stack, audit_db: str) -> AsyncIterator[Harness]:
    async with running_harness(stack, audit_db) as harness:
        harness.settings.trusted_proxies = ["127.0.0.1/32"]  # the test client is the proxy
        yield harness


async def user(h: Harness, role: str) -> str:
    name = f"{role.lower()}-{uuid.uuid4().hex[:8]}"
    await ensure_user(h.db, name, PASSWORD, role)
    return name


async def bearer(h: Harness, name: str, ip: str) -> dict[str, str]:
    r = await h.http.post(
        "/auth/login", json={"username": name, "password": PASSWORD}, headers={"X-Forwarded-For": ip}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}", "X-Forwarded-For": ip}


async def rows(h: Harness, actor: str) -> list[dict[str, Any]]:
    """The actor's audit entries through the API, oldest first."""
    admin = await bearer(h, await user(h, "ADMIN"), "192.0.2.250")
    r = await h.http.get("/admin/audit", params={"actor": actor, "limit": 500}, headers=admin)
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))


async def test_every_action_is_audited_with_actor_role_target_and_source_ip(h: Harness) -> None:
    ip = "203.0.113.21"
    approver = await user(h, "APPROVER")
    wrong = await h.http.post(
        "/auth/login",
        json={"username": approver, "password": "wrong-password-1"},
        headers={"X-Forwarded-For": ip},
    )
    assert wrong.status_code == 401
    headers = await bearer(h, approver, ip)
    created = [await h.request(native_body("polygon", new_wallet()[0], n)) for n in ("150", "140", "130")]
    a, b, c = (str(r.json()["id"]) for r in created)
    for wid in (a, b, c):
        await h.wait_status(wid, {"AWAITING_APPROVAL"})
    assert (
        await h.http.post(f"/admin/transactions/{a}/approve", json={"reason": "ok"}, headers=headers)
    ).status_code == 200
    assert (
        await h.http.post(f"/admin/transactions/{b}/reject", json={"reason": "no"}, headers=headers)
    ).status_code == 200
    assert (
        await h.http.post(f"/admin/transactions/{c}/cancel", json={"reason": "asked"}, headers=headers)
    ).status_code == 200
    assert (await h.http.post(f"/admin/transactions/{a}/retry", headers=headers)).status_code == 409
    assert (await h.http.post("/admin/dlq/reprocess", json={"ids": [b]}, headers=headers)).status_code == 200
    assert (await h.http.delete(f"/admin/dlq/messages/{a}", headers=headers)).status_code == 409
    wallet = h.config.networks["bsc"].hot_wallets[0]
    scope = {"network": "bsc", "hot_wallet": wallet}
    assert (
        await h.http.post("/admin/queues/pause", json=scope | {"reason": "audit"}, headers=headers)
    ).status_code == 200
    assert (
        await h.http.post("/admin/queues/resume", json=scope | {"reason": "done"}, headers=headers)
    ).status_code == 200

    entries = await rows(h, approver)
    assert all(e["source_ip"] == ip and e["actor"] == approver for e in entries), entries
    assert all(e["at"] and e["id"] for e in entries)
    seen = [(e["action"], e["target"], e["outcome"]) for e in entries]
    assert seen == [
        ("login.failed", f"user:{approver}", "refused"),
        ("login.ok", f"user:{approver}", "ok"),
        ("withdrawal.approve", a, "ok"),
        ("withdrawal.reject", b, "ok"),
        ("withdrawal.cancel", c, "ok"),
        ("withdrawal.retry", a, "refused"),
        ("dlq.reprocess", b, "refused"),
        ("dlq.delete", a, "refused"),
        ("queues.pause", f"pause:bsc/{wallet}", "ok"),
        ("queues.resume", f"pause:bsc/{wallet}", "ok"),
    ]
    by_action = {e["action"]: e for e in entries}
    assert by_action["login.failed"]["after"] == {"reason": "wrong_password"}
    assert all(e["role"] == "APPROVER" for e in entries)
    approve = by_action["withdrawal.approve"]
    assert approve["before"] == {"status": "AWAITING_APPROVAL"} and approve["after"]["reason"] == "ok"
    retry = by_action["withdrawal.retry"]
    assert "retry" in retry["after"]["refusal"]  # the workflow's reason (wrong status, or ended)
    assert by_action["queues.pause"]["after"] == {
        "network": "bsc",
        "hot_wallet": wallet,
        "reason": "audit",
        "created": True,
    }
    assert by_action["queues.resume"]["after"]["lifted"] == 1
    assert (await h.wait_status(c, {"CANCELLED"}))["status"] == "CANCELLED"

    # User administration: who created and changed whom, with the values before and after.
    admin = await user(h, "ADMIN")
    admin_headers = await bearer(h, admin, "198.51.100.7")
    name = f"erin-{uuid.uuid4().hex[:6]}"
    await h.http.post(
        "/admin/users",
        json={"username": name, "password": PASSWORD, "role": "OPERATOR"},
        headers=admin_headers,
    )
    await h.http.patch(
        f"/admin/users/{name}", json={"role": "APPROVER", "active": False}, headers=admin_headers
    )
    admin_entries = await rows(h, admin)
    assert [(e["action"], e["target"]) for e in admin_entries] == [
        ("login.ok", f"user:{admin}"),
        ("user.create", f"user:{name}"),
        ("user.update", f"user:{name}"),
    ]
    create, update = admin_entries[1], admin_entries[2]
    assert create["after"] == {"role": "OPERATOR", "active": True} and "password" not in str(create)
    assert update["before"] == {"role": "OPERATOR", "active": True}
    assert update["after"] == {"role": "APPROVER", "active": False}
    assert {e["source_ip"] for e in admin_entries} == {"198.51.100.7"} and {
        e["role"] for e in admin_entries
    } == {"ADMIN"}


async def test_the_audit_list_filters_pages_and_is_for_admins(h: Harness) -> None:
    actor = await user(h, "OPERATOR")
    for i in range(7):  # seven failed logins of one actor, from seven addresses
        await h.http.post(
            "/auth/login",
            json={"username": actor, "password": "wrong-password-1"},
            headers={"X-Forwarded-For": f"192.0.2.{i + 1}"},
        )
    admin = await bearer(h, await user(h, "ADMIN"), "192.0.2.240")
    seen, cursor, total = [], None, None
    while True:
        params: dict[str, Any] = {"actor": actor, "action": "login.failed", "limit": 3} | (
            {"cursor": cursor} if cursor else {}
        )
        page = (await h.http.get("/admin/audit", params=params, headers=admin)).json()
        total = page["total"]
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert total == 7 and len(seen) == 7 and len({e["id"] for e in seen}) == 7
    assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), reverse=True)  # newest first
    assert [e["source_ip"] for e in seen] == [f"192.0.2.{i}" for i in range(7, 0, -1)]
    by_target = (await h.http.get("/admin/audit", params={"target": f"user:{actor}"}, headers=admin)).json()
    assert by_target["total"] == 7
    first_at = seen[-1]["at"]
    since = (
        await h.http.get("/admin/audit", params={"actor": actor, "since": first_at}, headers=admin)
    ).json()
    assert since["total"] == 7
    until = (
        await h.http.get("/admin/audit", params={"actor": actor, "until": first_at}, headers=admin)
    ).json()
    assert until["total"] == 0
    for params in ({"cursor": "abc"}, {"limit": 501}, {"since": "later"}):
        r = await h.http.get("/admin/audit", params=params, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == next(iter(params)), params
    for role in ("VIEWER", "OPERATOR", "APPROVER"):
        low = await bearer(h, await user(h, role), "192.0.2.241")
        assert (await h.http.get("/admin/audit", headers=low)).status_code == 403


async def test_a_db_action_and_its_audit_row_commit_or_fail_together(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = await bearer(h, await user(h, "OPERATOR"), "192.0.2.242")
    admin = await bearer(h, await user(h, "ADMIN"), "192.0.2.243")
    wallet = h.config.networks["ethereum"].hot_wallets[0]
    name = f"frank-{uuid.uuid4().hex[:6]}"

    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(audit, "record", broken)
    # As a server answers (the ASGI test transport would re-raise what the app's handler answered).
    transport = httpx.ASGITransport(app=h.http._transport.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as http:
        r = await http.post(
            "/admin/queues/pause", json={"hot_wallet": wallet, "reason": "x"}, headers=operator
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        r = await http.post("/admin/users", json={"username": name, "password": PASSWORD}, headers=admin)
        assert r.status_code == 503
    async with h.db.read() as s:
        assert not [p for p in await pauses.active(s) if p.hot_wallet == wallet]
        assert await users.get(s, name) is None
    monkeypatch.undo()
    r = await h.http.post("/admin/queues/pause", json={"hot_wallet": wallet, "reason": "x"}, headers=operator)
    assert r.status_code == 200 and r.json()["changed"] is True
    await h.http.post("/admin/queues/resume", json={"hot_wallet": wallet, "reason": "x"}, headers=operator)


async def test_the_source_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(h: Harness) -> None:
    name = await user(h, "VIEWER")
    cases = [
        ([], "203.0.113.9", "127.0.0.1"),  # no trusted proxy: the header is ignored
        (["127.0.0.1/32"], "203.0.113.9", "203.0.113.9"),
        (["127.0.0.1/32", "203.0.113.0/24"], "198.51.100.1, 10.0.0.5, 203.0.113.7", "10.0.0.5"),
        (["127.0.0.1/32"], "not-an-address", "127.0.0.1"),
    ]
    proxies = h.settings.trusted_proxies
    try:
        for trusted, forwarded, expected in cases:
            h.settings.trusted_proxies = trusted
            await h.http.post(
                "/auth/login",
                json={"username": name, "password": "wrong-password-1"},
                headers={"X-Forwarded-For": forwarded},
            )
            async with h.db.read() as s:
                [latest] = await audit.entries(s, actor=name, limit=1)
            assert latest.source_ip == expected, (trusted, forwarded)
    finally:
        h.settings.trusted_proxies = proxies
