"""The admin API of DESIGN §6.1 against the real stack: every route for every role, cursor pages and
filters, the detail view, the DLQ, stats, task queues, the kill switch and the health check (also with
every component down)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from temporalio.client import ScheduleActionExecutionStartWorkflow

from activities import approvals
from api.app import create_app
from api.deps import AppState, TemporalConnector
from api.ratelimit import RateLimiter
from api.security import issue_jwt
from devstack import chain, processes
from devstack.bootstrap import ensure_user, migrate
from models.db import Database
from models.domain import OperatorInput, WithdrawalStatus
from models.tables import StatusEvent, Withdrawal, utcnow
from tests.databases import create_database, start_mariadb, start_redis
from tests.invariants import assert_invariants
from tests.stack import Harness, Stack, native_body, new_sqlite_db, new_wallet, running_harness
from worker import ensure_reconcile_schedules

pytestmark = pytest.mark.timeout(300)

ROLES = ("VIEWER", "OPERATOR", "APPROVER", "ADMIN")
PASSWORD = "operator-password-123"


async def login(h: Harness, role: str) -> tuple[str, dict[str, str]]:
    name = f"{role.lower()}-{uuid.uuid4().hex[:8]}"
    await ensure_user(h.db, name, PASSWORD, role)
    r = await h.http.post("/auth/login", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return name, {"Authorization": f"Bearer {r.json()['access_token']}"}


def row(client_id: str, created_at: datetime, **kw: Any) -> Withdrawal:
    """A withdrawal row as the engine writes it (for list, filter and stats figures)."""
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "client_id": client_id,
        "idempotency_key": uuid.uuid4().hex,
        "fingerprint": "0" * 64,
        "user_id": "user-1",
        "network": "ethereum",
        "asset": "ETH",
        "to_address": new_wallet()[0],
        "amount": 10**18,
        "decimals": 18,
        "status": "PENDING",
        "required_confirmations": 3,
        "created_at": created_at,
        "updated_at": created_at,
    }
    fields.update(kw)
    return Withdrawal(**fields)


async def seed(db: Database, rows: list[Withdrawal], events: list[StatusEvent] | None = None) -> None:
    async with db.transaction() as s:
        for r in rows:
            s.add(r)
        for e in events or []:
            s.add(e)


@pytest.fixture(scope="module")
def module_db(stack: Stack) -> str:
    return new_sqlite_db(stack.tmp)


@pytest.fixture(scope="module")
async def h(stack: Stack, module_db: str) -> AsyncIterator[Harness]:
    """A harness with its own database, so totals and figures are this module's alone."""
    async with running_harness(stack, module_db) as harness:
        yield harness


async def fresh_db(stack: Stack) -> str:
    return await asyncio.to_thread(new_sqlite_db, stack.tmp)


# --- every route, every role ------------------------------------------------------------------------


async def test_every_route_answers_its_role_and_refuses_the_others(h: Harness) -> None:
    tokens = {role: (await login(h, role))[1] for role in ROLES}
    target_user, _ = await login(h, "VIEWER")
    wallet = h.config.networks["bsc"].hot_wallets[0]
    unknown = str(uuid.uuid4())

    def fresh_user() -> dict[str, Any]:
        return {"username": f"new-{uuid.uuid4().hex[:8]}", "password": PASSWORD, "role": "VIEWER"}

    # (method, path, body or body factory, lowest role allowed, status that role gets)
    table: list[tuple[str, str, Any, str, int]] = [
        ("GET", "/admin/transactions", None, "VIEWER", 200),
        ("GET", f"/admin/transactions/{unknown}", None, "VIEWER", 404),
        ("POST", f"/admin/transactions/{unknown}/retry", {}, "OPERATOR", 404),
        ("POST", f"/admin/transactions/{unknown}/cancel", {}, "OPERATOR", 404),
        ("POST", f"/admin/transactions/{unknown}/approve", {}, "APPROVER", 404),
        ("POST", f"/admin/transactions/{unknown}/reject", {}, "APPROVER", 404),
        ("GET", "/admin/stats/daily?days=7", None, "VIEWER", 200),
        ("GET", "/admin/stats/network", None, "VIEWER", 200),
        ("GET", "/admin/stats/status", None, "VIEWER", 200),
        ("GET", "/admin/queues", None, "VIEWER", 200),
        (
            "POST",
            "/admin/queues/pause",
            {"network": "bsc", "hot_wallet": wallet, "reason": "t"},
            "OPERATOR",
            200,
        ),
        (
            "POST",
            "/admin/queues/resume",
            {"network": "bsc", "hot_wallet": wallet, "reason": "t"},
            "OPERATOR",
            200,
        ),
        ("GET", "/admin/health", None, "VIEWER", 200),
        ("GET", "/admin/dlq/messages", None, "VIEWER", 200),
        ("POST", "/admin/dlq/reprocess", {"ids": [unknown]}, "OPERATOR", 200),
        ("DELETE", f"/admin/dlq/messages/{unknown}", None, "OPERATOR", 404),
        ("GET", "/admin/audit", None, "ADMIN", 200),
        ("GET", "/admin/users", None, "ADMIN", 200),
        ("POST", "/admin/users", fresh_user, "ADMIN", 201),
        ("POST", "/auth/register", fresh_user, "ADMIN", 201),
        ("PATCH", f"/admin/users/{target_user}", {"role": "VIEWER"}, "ADMIN", 200),
    ]
    garbage = {"Authorization": "Bearer not-a-token"}
    for method, path, body, lowest, status in table:
        for headers in ({}, garbage):
            r = await h.http.request(method, path, json=_body(body), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED", (
                method,
                path,
                r.text,
            )
        for role in ROLES:
            r = await h.http.request(method, path, json=_body(body), headers=tokens[role])
            if ROLES.index(role) < ROLES.index(lowest):
                assert r.status_code == 403, (method, path, role, r.text)
                assert r.json()["error"] == {"code": "FORBIDDEN", "message": f"requires role {lowest}"}
            else:
                assert r.status_code == status, (method, path, role, r.text)


def _body(body: Any) -> Any:
    return body() if isinstance(body, Callable) else body  # type: ignore[arg-type]


async def test_tokens_that_are_not_valid_operator_sessions_are_refused(h: Harness) -> None:
    name, headers = await login(h, "ADMIN")
    secret = h.settings.jwt_secret.get_secret_value()
    refused = {
        "expired": issue_jwt(name, "ADMIN", secret, -60),
        "another secret": issue_jwt(name, "ADMIN", secrets.token_urlsafe(32), 60),
        "unknown user": issue_jwt(f"ghost-{uuid.uuid4().hex[:6]}", "ADMIN", secret, 60),
        # An approval token is signed with the same secret, for another audience.
        "approval token": approvals.issue(
            secret,
            withdrawal_id=str(uuid.uuid4()),
            action="approve",
            operator=name,
            role="ADMIN",
            ttl_seconds=60,
        ),
    }
    for why, token in refused.items():
        r = await h.http.get("/admin/audit", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED", why
    assert (await h.http.get("/admin/audit", headers=headers)).status_code == 200


# --- lists: cursor pages and filters ------------------------------------------------------------------


async def test_a_cursor_walk_sees_every_withdrawal_once_newest_first(h: Harness) -> None:
    client_id = str(uuid.uuid4())
    base = utcnow() - timedelta(hours=1)
    # 23 rows, several sharing a timestamp: the page order must still be total.
    rows = [row(client_id, base + timedelta(seconds=i // 3)) for i in range(23)]
    await seed(h.db, rows)
    _, headers = await login(h, "VIEWER")
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"client_id": client_id, "limit": 5}
        if cursor:
            params["cursor"] = cursor
        r = await h.http.get("/admin/transactions", params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next_cursor", "total"} and page["total"] == 23
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 23
    assert [w["id"] for w in seen] == [
        w.id for w in sorted(rows, key=lambda w: (w.created_at, w.id), reverse=True)
    ]
    item = seen[0]
    assert item["client_id"] == client_id and {"hot_wallet", "nonce", "status", "amount"} <= set(item)
    assert item["amount"] == "1"
    # The default page is 50 and a page holds at most 500.
    assert (
        len(
            (
                await h.http.get("/admin/transactions", params={"client_id": client_id}, headers=headers)
            ).json()["items"]
        )
        == 23
    )
    for bad in ({"limit": 501}, {"limit": 0}, {"cursor": "not-a-cursor"}):
        r = await h.http.get("/admin/transactions", params=bad, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "VALIDATION_ERROR", (bad, r.text)
        assert r.json()["error"]["field"] == next(iter(bad))


async def test_filters_select_what_they_name_and_bad_values_are_422(h: Harness) -> None:
    client_id = str(uuid.uuid4())
    now = utcnow()
    tx = "0x" + secrets.token_hex(32)
    rows = [
        row(client_id, now - timedelta(days=3), status="CONFIRMED", tx_hash=tx),
        row(client_id, now - timedelta(days=2), status="NEEDS_ATTENTION", network="bsc", asset="BNB"),
        row(client_id, now - timedelta(days=1), status="PENDING", asset="USDT", decimals=6, amount=5_000_000),
        row(client_id, now - timedelta(hours=1), status="BROADCAST", user_id="user-2"),
    ]
    await seed(h.db, rows)
    _, headers = await login(h, "VIEWER")

    async def ids(**params: Any) -> list[str]:
        r = await h.http.get(
            "/admin/transactions", params={"client_id": client_id, **params}, headers=headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["total"] == len(r.json()["items"])
        return [w["id"] for w in r.json()["items"]]

    a, b, c, d = (w.id for w in rows)
    assert await ids() == [d, c, b, a]
    assert await ids(status="CONFIRMED") == [a]
    assert await ids(status="PENDING,BROADCAST") == [d, c]
    assert await ids(network="bsc") == [b]
    assert await ids(asset="USDT") == [c]
    assert await ids(network="ethereum", asset="ETH") == [d, a]
    assert await ids(user_id="user-2") == [d]
    assert await ids(tx_hash=tx.upper().replace("0X", "0x")) == [a]
    assert await ids(created_from=(now - timedelta(days=2, minutes=1)).isoformat() + "Z") == [d, c, b]
    assert await ids(created_to=(now - timedelta(days=2)).isoformat()) == [a]
    window = {
        "created_from": (now - timedelta(days=2, hours=1)).isoformat(),
        "created_to": (now - timedelta(hours=2)).isoformat() + "+00:00",
    }
    assert await ids(**window) == [c, b]
    assert await ids(client_id=str(uuid.uuid4())) == []
    bad = {
        "status": "SHIPPED",
        "network": "mars",
        "asset": "DOGE",
        "tx_hash": "0x1234",
        "created_from": "yesterday",
        "created_to": "2024-13-01",
    }
    for field, value in bad.items():
        r = await h.http.get("/admin/transactions", params={field: value}, headers=headers)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["error"]["code"] == "VALIDATION_ERROR" and r.json()["error"]["field"] == field
    r = await h.http.get(
        "/admin/transactions",
        params={"created_from": "2025-01-02", "created_to": "2025-01-01"},
        headers=headers,
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "created_to"
    r = await h.http.get("/admin/transactions", params={"network": "bsc", "asset": "ETH"}, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "asset"


# --- the detail view ----------------------------------------------------------------------------------


async def test_detail_has_attempts_history_with_operator_actions_and_the_web_ui_link(h: Harness) -> None:
    r = await h.request(native_body("ethereum", new_wallet()[0], "0.03"))
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    await h.wait_status(wid, {"CONFIRMED"})
    operator, op_headers = await login(h, "OPERATOR")
    late = await h.http.post(
        f"/admin/transactions/{wid}/cancel", json={"reason": "too late"}, headers=op_headers
    )
    assert late.status_code == 409 and late.json()["error"]["code"] == "INVALID_STATE"
    detail = (await h.http.get(f"/admin/transactions/{wid}", headers=op_headers)).json()
    assert detail["temporal_url"] == f"http://127.0.0.1:8233/namespaces/default/workflows/withdrawal-{wid}"
    assert (
        detail["client_id"] == h.client_id
        and detail["hot_wallet"] == h.config.networks["ethereum"].hot_wallets[0]
    )
    assert detail["nonce"] is not None and detail["status"] == "CONFIRMED"
    [attempt] = detail["attempts"]
    assert attempt["tx_hash"] == detail["tx_hash"] and attempt["nonce"] == detail["nonce"]
    assert attempt["purpose"] == "WITHDRAWAL" and attempt["outcome"] == "MINED"
    assert int(attempt["max_fee_per_gas"]) > 0 and int(attempt["max_priority_fee_per_gas"]) > 0
    statuses = [e["status"] for e in detail["history"] if e["kind"] == "status"]
    assert statuses[0] == "PENDING" and statuses[-1] == "CONFIRMED" and "BROADCAST" in statuses
    [action] = [e for e in detail["history"] if e["kind"] == "action"]
    assert action["action"] == "cancel" and action["actor"] == operator and action["outcome"] == "refused"
    assert action["role"] == "OPERATOR" and action["reason"] == "too late" and action["source_ip"]
    times = [e["at"] for e in detail["history"]]
    assert times == sorted(times)
    missing = await h.http.get(f"/admin/transactions/{uuid.uuid4()}", headers=op_headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


# --- the DLQ ---------------------------------------------------------------------------------------------


async def test_dlq_lists_parked_withdrawals_reprocesses_and_deletes_them(h: Harness) -> None:
    network = "polygon"
    url, token = h.stack.rpc_urls[network], h.stack.tokens[network]["USDT"]
    to_a, to_b = new_wallet()[0], new_wallet()[0]
    for to in (to_a, to_b):
        await asyncio.to_thread(chain.blacklist, url, token, to)
    body = {"user_id": "u", "network": network, "asset": "USDT", "amount": "3"}
    a = (await h.request(body | {"to_address": to_a})).json()["id"]
    b = (await h.request(body | {"to_address": to_b})).json()["id"]
    for wid in (a, b):
        await h.wait_status(wid, {"NEEDS_ATTENTION"})
    _, viewer = await login(h, "VIEWER")
    _, operator = await login(h, "OPERATOR")
    listed = (await h.http.get("/admin/dlq/messages", params={"limit": 500}, headers=viewer)).json()
    parked = {m["id"]: m for m in listed["items"]}
    assert {a, b} <= set(parked) and listed["total"] == len(listed["items"])
    assert all(m["status"] == "NEEDS_ATTENTION" for m in listed["items"])
    assert (
        parked[a]["reason"]["code"] == "EXECUTION_REVERTED"
        and "blacklisted" in parked[a]["reason"]["message"]
    )
    assert "retry" in parked[a]["next_action"] and "cancel" in parked[a]["next_action"]
    await asyncio.to_thread(chain.blacklist, url, token, to_a, False)
    unknown = str(uuid.uuid4())
    # (on another network: this wallet's next nonces wait behind the two parked ones)
    confirmed = (await h.request(native_body("bsc", new_wallet()[0], "0.01"))).json()["id"]
    await h.wait_status(confirmed, {"CONFIRMED"})
    r = await h.http.post("/admin/dlq/reprocess", json={"ids": [a, unknown, confirmed, a]}, headers=operator)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == [a, unknown, confirmed]
    assert results[0] == {"id": a, "accepted": True}
    assert results[1] == {"id": unknown, "accepted": False, "reason": "withdrawal not found"}
    assert results[2]["accepted"] is False and "ended" in results[2]["reason"]
    assert (await h.wait_status(a, {"CONFIRMED"}))["status"] == "CONFIRMED"
    # Delete = cancel and acknowledge: b leaves the DLQ as CANCELLED; something not parked is refused.
    gone = await h.http.delete(
        f"/admin/dlq/messages/{b}", params={"reason": "bad recipient"}, headers=operator
    )
    assert gone.status_code == 200 and gone.json()["accepted"] is True, gone.text
    cancelled = await h.wait_status(b, {"CANCELLED"})
    assert cancelled["error"]["message"] == "bad recipient"
    not_parked = await h.http.delete(f"/admin/dlq/messages/{a}", headers=operator)
    assert not_parked.status_code == 409 and not_parked.json()["error"]["code"] == "INVALID_STATE"
    after = (await h.http.get("/admin/dlq/messages", params={"limit": 500}, headers=viewer)).json()
    assert not {a, b} & {m["id"] for m in after["items"]}
    assert (await h.http.post("/admin/dlq/reprocess", json={"ids": []}, headers=operator)).status_code == 422
    await assert_invariants(h, [a, b, confirmed])


# --- approve / reject: the contract of the routes ----------------------------------------------------------


async def test_approve_and_reject_answer_200_or_409_and_need_an_approver(h: Harness) -> None:
    a = (await h.request(native_body("polygon", new_wallet()[0], "150"))).json()["id"]
    b = (await h.request(native_body("polygon", new_wallet()[0], "130"))).json()["id"]
    for wid in (a, b):
        await h.wait_status(wid, {"AWAITING_APPROVAL"})
    _, operator = await login(h, "OPERATOR")
    approver_user, approver = await login(h, "APPROVER")
    _, admin = await login(h, "ADMIN")
    assert (await h.http.post(f"/admin/transactions/{a}/approve", headers=operator)).status_code == 403
    # An anonymous approve from the Web UI or CLI (a signal without proof) is recorded and refused.
    await h.client.get_workflow_handle(f"withdrawal-{a}").signal("approve", OperatorInput(reason="ui"))
    for _ in range(50):
        detail = (await h.http.get(f"/admin/transactions/{a}", headers=operator)).json()
        from_workflow = [e for e in detail["history"] if e.get("source") == "workflow"]
        if from_workflow:
            break
        await asyncio.sleep(0.1)
    assert [(e["action"], e["outcome"], e["reason"] is not None) for e in from_workflow] == [
        ("approve", "refused", True)
    ]
    assert detail["status"] == "AWAITING_APPROVAL"
    approver_name = approver_user
    ok = await h.http.post(f"/admin/transactions/{a}/approve", json={"reason": "known"}, headers=approver)
    assert ok.status_code == 200 and ok.json()["accepted"] is True and ok.json()["withdrawal"]["id"] == a
    again = await h.http.post(f"/admin/transactions/{a}/reject", headers=approver)
    assert again.status_code == 409 and again.json()["error"]["code"] == "INVALID_STATE"
    rejected = await h.http.post(f"/admin/transactions/{b}/reject", json={"reason": "no"}, headers=admin)
    assert rejected.status_code == 200, rejected.text
    assert (await h.wait_status(a, {"CONFIRMED"}))["status"] == "CONFIRMED"
    assert (await h.wait_status(b, {"REJECTED"}))["error"]["code"] == "APPROVAL_REJECTED"
    # The approval sent through the API is in the history once: the audit entry, with role and IP.
    history = (await h.http.get(f"/admin/transactions/{a}", headers=operator)).json()["history"]
    approvals_ok = [e for e in history if e["kind"] == "action" and e["outcome"] == "ok"]
    assert [(e["action"], e["actor"], e["role"], e["source"]) for e in approvals_ok] == [
        ("approve", approver_name, "APPROVER", "admin-api")
    ]
    too_long = await h.http.post(f"/admin/transactions/{a}/retry", json={"reason": "x" * 501}, headers=admin)
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "reason"


# --- stats -------------------------------------------------------------------------------------------------


async def test_stats_daily_network_and_status(stack: Stack) -> None:
    async with running_harness(stack, await fresh_db(stack), fund_wallets=False, start_worker=False) as h:
        now = utcnow()
        # "Today"'s rows are in the past and outside the last hour (the `since` query below), whatever
        # the time of day the test runs at; before 02:00 UTC they fall on yesterday's date.
        today = (now - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
        c = str(uuid.uuid4())
        recent = row(
            c, now - timedelta(minutes=5), status="CONFIRMED", amount=2 * 10**18, fee_wei=21_000 * 10**9
        )
        rows = [
            recent,
            row(c, today, status="FAILED", fee_wei=10**15),
            row(c, today, status="PENDING", asset="USDT", decimals=6, amount=1_500_000),
            row(c, today - timedelta(days=2), status="CONFIRMED", asset="USDT", decimals=6, amount=2_250_000),
            row(c, today - timedelta(days=2), status="AWAITING_APPROVAL", network="bsc", asset="BNB"),
            row(c, today - timedelta(days=30), status="CONFIRMED"),  # outside the window
        ]
        events = [
            StatusEvent(
                withdrawal_id=recent.id, seq=5, status="CONFIRMED", created_at=now - timedelta(minutes=1)
            )
        ]
        await seed(h.db, rows, events)
        _, headers = await login(h, "VIEWER")
        daily = (await h.http.get("/admin/stats/daily", params={"days": 7}, headers=headers)).json()["days"]
        day0, day2 = today.date().isoformat(), (today - timedelta(days=2)).date().isoformat()
        recent_day = recent.created_at.date().isoformat()
        assert {
            "date": day2,
            "network": "bsc",
            "asset": "BNB",
            "count": 1,
            "confirmed": 0,
            "volume": "0",
            "fees": "0",
        } in daily
        assert {
            "date": day2,
            "network": "ethereum",
            "asset": "USDT",
            "count": 1,
            "confirmed": 1,
            "volume": "2.25",
            "fees": "0",
        } in daily
        assert {
            "date": day0,
            "network": "ethereum",
            "asset": "USDT",
            "count": 1,
            "confirmed": 0,
            "volume": "0",
            "fees": "0",
        } in daily
        eth_today = [d for d in daily if d["date"] == recent_day and d["asset"] == "ETH"]
        if recent_day == day0:
            assert eth_today == [
                {
                    "date": day0,
                    "network": "ethereum",
                    "asset": "ETH",
                    "count": 2,
                    "confirmed": 1,
                    "volume": "2",
                    "fees": "0.001021",
                }
            ]
        assert sum(d["count"] for d in daily) == 5 and daily == sorted(daily, key=lambda d: d["date"])
        assert (
            len((await h.http.get("/admin/stats/daily", params={"days": 1}, headers=headers)).json()["days"])
            >= 1
        )
        for bad in (0, 367, "x"):
            assert (
                await h.http.get("/admin/stats/daily", params={"days": bad}, headers=headers)
            ).status_code == 422

        nets = (await h.http.get("/admin/stats/network", headers=headers)).json()["networks"]
        assert set(nets) == {"ethereum", "bsc", "polygon"}
        eth = nets["ethereum"]
        assert (
            eth["by_status"]["CONFIRMED"] == 3
            and eth["by_status"]["FAILED"] == 1
            and eth["by_status"]["REJECTED"] == 0
        )
        assert eth["volume_24h"] == {"ETH": "2", "USDT": "0", "USDC": "0"}
        assert isinstance(eth["head"], int) and eth["head"] > 0 and eth["paused"] is False
        assert nets["bsc"]["by_status"]["AWAITING_APPROVAL"] == 1
        _, operator = await login(h, "OPERATOR")
        assert (
            await h.http.post("/admin/queues/pause", json={"network": "bsc", "reason": "t"}, headers=operator)
        ).status_code == 200
        nets = (await h.http.get("/admin/stats/network", headers=headers)).json()["networks"]
        assert nets["bsc"]["paused"] is True and nets["ethereum"]["paused"] is False
        await h.http.post("/admin/queues/resume", json={"network": "bsc", "reason": "t"}, headers=operator)

        by_status = (await h.http.get("/admin/stats/status", headers=headers)).json()
        assert by_status["by_status"]["CONFIRMED"] == 3 and by_status["total"] == 6
        assert set(by_status["by_status"]) == {st.value for st in WithdrawalStatus}
        since = (
            await h.http.get(
                "/admin/stats/status",
                params={"since": (now - timedelta(hours=1)).isoformat()},
                headers=headers,
            )
        ).json()
        assert since["total"] == 1 and since["by_status"]["CONFIRMED"] == 1
        for bad in (
            "soon",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
        ):  # the last two overflow
            soon = await h.http.get("/admin/stats/status", params={"since": bad}, headers=headers)
            assert soon.status_code == 422 and soon.json()["error"]["field"] == "since", (bad, soon.text)


# --- queues and the kill switch ---------------------------------------------------------------------


async def test_queues_show_pollers_backlog_in_flight_and_pauses(h: Harness) -> None:
    _, viewer = await login(h, "VIEWER")
    _, operator = await login(h, "OPERATOR")
    c = str(uuid.uuid4())
    await seed(h.db, [row(c, utcnow(), status="WAITING_FOR_FUNDS", network="bsc", asset="BNB")])
    q = (await h.http.get("/admin/queues", headers=viewer)).json()
    kinds = {(t["name"], t["type"]): t for t in q["task_queues"]}
    tq = h.settings.task_queue
    assert set(kinds) == {(tq, "workflow"), (tq, "activity"), (f"{tq}-waits", "activity")}
    for t in kinds.values():
        assert len(t["pollers"]) >= 1, t  # the harness's workers poll all three
        assert isinstance(t["backlog"], int) and t["backlog"] >= 0
    assert q["in_flight"]["by_network"]["bsc"].get("WAITING_FOR_FUNDS", 0) >= 1
    assert q["in_flight"]["total"] == sum(q["in_flight"]["by_status"].values())
    assert "CONFIRMED" not in q["in_flight"]["by_status"]
    wallet = h.config.networks["ethereum"].hot_wallets[0]
    paused = await h.http.post(
        "/admin/queues/pause",
        json={"network": "ethereum", "hot_wallet": wallet.lower(), "reason": "rotate key"},
        headers=operator,
    )
    assert paused.status_code == 200 and paused.json()["changed"] is True
    [p] = [x for x in paused.json()["paused"] if x["hot_wallet"] == wallet]
    assert p["network"] == "ethereum" and p["reason"] == "rotate key" and p["paused_by"]
    again = await h.http.post(
        "/admin/queues/pause",
        json={"network": "ethereum", "hot_wallet": wallet, "reason": "x"},
        headers=operator,
    )
    assert again.json()["changed"] is False
    assert any(
        x["hot_wallet"] == wallet
        for x in (await h.http.get("/admin/queues", headers=viewer)).json()["paused"]
    )
    # While paused nothing is signed for the wallet; the request is still accepted.
    wid = (await h.request(native_body("ethereum", new_wallet()[0], "0.01"))).json()["id"]
    await asyncio.sleep(3)
    held = await h.operator_view(wid)
    assert held["tx_hash"] is None and held["status"] in ("PENDING", "PROCESSING"), held
    resumed = await h.http.post(
        "/admin/queues/resume",
        json={"network": "ethereum", "hot_wallet": wallet, "reason": "done"},
        headers=operator,
    )
    assert resumed.json()["changed"] is True and not any(
        x["hot_wallet"] == wallet for x in resumed.json()["paused"]
    )
    assert (await h.wait_status(wid, {"CONFIRMED"}))["status"] == "CONFIRMED"
    for body, field in (
        ({"network": "mars", "reason": "x"}, "network"),
        ({"hot_wallet": new_wallet()[0], "reason": "x"}, "hot_wallet"),
        ({"hot_wallet": "0x12", "reason": "x"}, "hot_wallet"),
        ({"network": "bsc"}, "reason"),
        ({"network": "bsc", "reason": ""}, "reason"),
    ):
        r = await h.http.post("/admin/queues/pause", json=body, headers=operator)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)


# --- health -------------------------------------------------------------------------------------------------


async def test_health_checks_every_component(h: Harness) -> None:
    _, viewer = await login(h, "VIEWER")
    health = (await h.http.get("/admin/health", headers=viewer)).json()
    c = health["components"]
    assert c["database"] == "ok" and c["temporal"] == "ok" and c["redis"] == "not configured"
    for network, endpoints in c["rpc"].items():
        [e] = endpoints
        cfg = h.config.networks[network]
        assert e["healthy"] is True and e["chain_id"] == cfg.chain_id and e["head"] > 0
        assert 0 <= e["lag_s"] < 30 and e["endpoint"] == h.stack.rpc_urls[network]
    for network, wallets in c["hot_wallets"].items():
        [w] = wallets
        cfg = h.config.networks[network]
        assert w["address"] == cfg.hot_wallets[0] and w["asset"] == cfg.native_asset
        assert (
            float(w["balance"]) > 0
            and w["reserved"] is not None
            and w["min_balance"] is None
            and w["low"] is False
        )
    # No reconcile schedule exists for this harness's wallets yet: the reconciler is degraded.
    assert c["reconciler"]["status"] == "degraded" and health["status"] == "degraded"
    assert {s["state"] for s in c["reconciler"]["schedules"]} == {"missing"}
    await ensure_reconcile_schedules(h.client, h.engine, h.settings)
    sids = [s["id"] for s in c["reconciler"]["schedules"]]
    try:
        for sid in sids:
            await h.client.get_schedule_handle(sid).trigger()
        for _ in range(100):
            health = (await h.http.get("/admin/health", headers=viewer)).json()
            if all(s["last_result"] == "COMPLETED" for s in health["components"]["reconciler"]["schedules"]):
                break
            await asyncio.sleep(0.3)
        rec = health["components"]["reconciler"]
        assert rec["status"] == "ok", rec
        assert all(s["last_run_at"] and s["ok"] for s in rec["schedules"])
        assert health["status"] == "ok", health
        desc = await h.client.get_schedule_handle(sids[0]).describe()
        assert isinstance(desc.info.recent_actions[-1].action, ScheduleActionExecutionStartWorkflow)
    finally:
        for sid in sids:
            await h.client.get_schedule_handle(sid).delete()


async def test_health_reports_components_that_are_down_without_failing(stack: Stack, tmp_path: Any) -> None:
    """A dead RPC endpoint (with a key in its URL), a low hot wallet, Redis, Temporal and the database
    down: every one is reported, the answer is still a 200."""
    dead_port = processes.free_port()
    dead = f"http://user:pw@127.0.0.1:{dead_port}/v3/secret-key"
    rpc_urls = {n: [u, dead] for n, u in stack.rpc_urls.items()}
    minimum = {"min_hot_wallet_balance": {"ETH": "5000", "BNB": "5000", "POL": "5000"}}
    proc, port = start_redis(tmp_path)
    try:
        async with running_harness(
            stack, await fresh_db(stack), rpc_urls=rpc_urls, network_overrides=minimum, start_worker=False
        ) as h:
            _, viewer = await login(h, "VIEWER")
            _, operator = await login(h, "OPERATOR")
            redis = Redis(host="127.0.0.1", port=port)
            settings = h.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
            state = AppState(
                settings=settings,
                config=h.config,
                db=h.db,
                temporal=TemporalConnector(settings, h.client),
                limiter=RateLimiter(redis),
            )
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(state)), base_url="http://engine"
            ) as http:
                health = (await http.get("/admin/health", headers=viewer)).json()
                c = health["components"]
                assert c["redis"] == "ok" and c["database"] == "ok" and c["temporal"] == "ok"
                for good, bad in c["rpc"].values():
                    assert good["healthy"] is True
                    assert bad == {
                        "endpoint": f"http://127.0.0.1:{dead_port}/***",
                        "chain_id": None,
                        "head": None,
                        "lag_s": None,
                        "healthy": False,
                        "error": "unreachable",
                    }
                for wallets in c["hot_wallets"].values():
                    assert wallets[0]["low"] is True and wallets[0]["min_balance"] == "5000"
                assert health["status"] == "degraded"
                assert "secret-key" not in str(health) and "pw@" not in str(health)
                processes.stop(proc)
                assert (await http.get("/admin/health", headers=viewer)).json()["components"][
                    "redis"
                ] == "unavailable"
                await redis.aclose()

            # Temporal and the database unreachable: still a 200 that says so (a VIEWER token is
            # accepted on its signature while accounts cannot be read; higher roles get 503).
            broken_db = Database(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/engine.db")
            down = settings.model_copy(
                update={"temporal_address": f"127.0.0.1:{processes.free_port()}", "redis_url": None}
            )
            state = AppState(
                settings=down,
                config=h.config,
                db=broken_db,
                temporal=TemporalConnector(down),
                limiter=RateLimiter(),
            )
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(state)), base_url="http://engine"
            ) as http:
                r = await http.get("/admin/health", headers=viewer)
                assert r.status_code == 200, r.text
                c = r.json()["components"]
                assert (
                    c["database"] == "unavailable"
                    and c["temporal"] == "unavailable"
                    and r.json()["status"] == "degraded"
                )
                assert all(w["reserved"] is None for ws in c["hot_wallets"].values() for w in ws)
                assert c["reconciler"]["status"] == "degraded"
                q = await http.get("/admin/queues", headers=viewer)
                assert q.status_code == 200, q.text
                assert q.json()["in_flight"] == {"error": "the database is unreachable"}
                assert {t["error"] for t in q.json()["task_queues"]} == {"Temporal is unreachable"}
                paused = await http.post("/admin/queues/pause", json={"reason": "x"}, headers=operator)
                assert paused.status_code == 503 and paused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
                assert paused.headers["Retry-After"]
            await broken_db.dispose()
    finally:
        processes.stop(proc)


# --- the same queries on MariaDB ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mariadb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        url = create_database(port, f"admin_{uuid.uuid4().hex[:12]}")
        migrate(url)
        yield url
    finally:
        processes.stop(proc)


async def test_pages_filters_and_figures_on_mariadb(stack: Stack, mariadb_url: str) -> None:
    """Keyset pages over DATETIME(6) with ties, filters and the stats sums on MySQL's types."""
    async with running_harness(stack, mariadb_url, fund_wallets=False, start_worker=False) as m:
        c = str(uuid.uuid4())
        base = utcnow() - timedelta(minutes=30)
        tx = "0x" + secrets.token_hex(32)
        rows = [
            row(c, base + timedelta(microseconds=i // 4), status="CONFIRMED", fee_wei=10**15)
            for i in range(17)
        ]
        rows.append(
            row(c, base - timedelta(hours=1), status="NEEDS_ATTENTION", asset="USDT", decimals=6, tx_hash=tx)
        )
        big = row(c, base - timedelta(hours=2), status="CONFIRMED", amount=10**40)  # beyond BIGINT
        await seed(m.db, [*rows, big])
        _, headers = await login(m, "ADMIN")
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"client_id": c, "limit": 4} | ({"cursor": cursor} if cursor else {})
            page = (await m.http.get("/admin/transactions", params=params, headers=headers)).json()
            assert page["total"] == 19
            seen += [w["id"] for w in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = sorted([*rows, big], key=lambda w: (w.created_at, w.id), reverse=True)
        assert seen == [w.id for w in expected]
        one = await m.http.get("/admin/transactions", params={"client_id": c, "tx_hash": tx}, headers=headers)
        assert [w["id"] for w in one.json()["items"]] == [rows[-1].id]
        dlq = (await m.http.get("/admin/dlq/messages", headers=headers)).json()
        assert dlq["total"] == 1 and dlq["items"][0]["id"] == rows[-1].id
        daily = (await m.http.get("/admin/stats/daily", headers=headers)).json()["days"]
        eth = [d for d in daily if d["asset"] == "ETH"]
        assert sum(d["count"] for d in eth) == 18 and sum(d["confirmed"] for d in eth) == 18
        total_volume = sum(Decimal(d["volume"]) for d in eth)
        assert total_volume == Decimal(17) + Decimal(10**22)
        assert sum(Decimal(d["fees"]) for d in eth) == Decimal("0.017")
        by_status = (await m.http.get("/admin/stats/status", headers=headers)).json()["by_status"]
        assert by_status["CONFIRMED"] == 18 and by_status["NEEDS_ATTENTION"] == 1
