"""Webhooks end to end: a real engine (dev server, anvils, worker) sending to a local receiver, a real
HTTP server on a free loopback port. Every status arrives, signed, in order, at least once: through
a receiver that fails for a while, a worker SIGKILLed mid-delivery, and a lost kick (the sweeper)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from temporalio.exceptions import ApplicationError

from activities.webhooks import (
    WEBHOOK_URL_REFUSED,
    SendInput,
    UrlGuard,
    UrlRefused,
    WebhookActivities,
    ensure_sweeper_schedule,
)
from api.withdrawals import withdrawal_view
from devstack import processes
from devstack.bootstrap import ensure_api_client, migrate
from models import repo, webhooks
from models.db import Database
from models.domain import WithdrawalStatus
from models.tables import WebhookEndpoint, Withdrawal, utcnow
from settings import EngineConfig
from tests.databases import create_database, start_mariadb
from tests.e2e.test_crash import start_worker_process, stop_worker_process
from tests.stack import (
    Harness,
    Stack,
    close_harness,
    engine_config,
    make_harness,
    native_body,
    new_sqlite_db,
    new_wallet,
)

S = WithdrawalStatus
FAST = {
    "webhook_timeout_seconds": 2.0,
    "webhook_retry_initial_seconds": 0.2,
    "webhook_retry_max_interval_seconds": 1.0,
    "webhook_sweep_interval_seconds": 0,
    "webhook_sweep_after_seconds": 1,
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A client's webhook endpoint: records every request it answered 2xx (`accepted`) and every one
    it got (`seen`); can answer 500 for a while (`failing`) or hold requests unanswered (`holding`)."""

    def __init__(self) -> None:
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.accepted: list[Received] = []
        self.seen: list[Received] = []
        self.failing = False
        self.holding = False
        self.release = asyncio.Event()
        app = Starlette(routes=[Route("/hooks", self._handle, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._task: asyncio.Task[None] | None = None

    async def _handle(self, request: Request) -> Response:
        got = Received({k.lower(): v for k, v in request.headers.items()}, await request.body(), time.time())
        self.seen.append(got)
        if self.holding:
            await self.release.wait()
        if self.failing:
            return PlainTextResponse("receiver down: " + "x" * 1000, 500)
        self.accepted.append(got)
        return PlainTextResponse("ok")

    def types(self, withdrawal_id: str) -> list[str]:
        """Event types accepted for a withdrawal, first arrival of each event id, in arrival order."""
        first: dict[str, str] = {}
        for r in self.accepted:
            e = r.event
            if e["data"]["id"] == withdrawal_id:
                first.setdefault(e["id"], e["type"])
        return list(first.values())

    async def wait_for(self, withdrawal_id: str, event_type: str, limit: float = 90) -> None:
        deadline = asyncio.get_running_loop().time() + limit
        while event_type not in self.types(withdrawal_id):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {event_type} for {withdrawal_id}: got {self.types(withdrawal_id)}")
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Receiver:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release.set()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


async def webhook_harness(stack: Stack, **kw: Any) -> Harness:
    """An engine with a database of its own (the sweeper sees only this test's deliveries)."""
    db_url = await asyncio.to_thread(new_sqlite_db, stack.tmp)
    return await make_harness(stack, db_url, settings_overrides=FAST, **kw)


@pytest.fixture
async def h(stack: Stack) -> AsyncIterator[Harness]:
    harness = await webhook_harness(stack)
    try:
        yield harness
    finally:
        await close_harness(harness)


async def register(
    h: Harness, url: str, events: list[str] | None = None, key: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url} | ({"events": events} if events is not None else {})
    r = await h.http.post("/webhook/endpoints", json=body, headers={"X-API-Key": key or h.api_key})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def deliveries(h: Harness, withdrawal_id: str) -> list[dict[str, Any]]:
    r = await h.http.get(
        "/webhook/deliveries", params={"withdrawal_id": withdrawal_id}, headers={"X-API-Key": h.api_key}
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def expected_types(h: Harness, withdrawal_id: str) -> list[str]:
    """The withdrawal's status events as the database recorded them, as webhook event types."""
    async with h.db.read() as s:
        events = await repo.status_events(s, withdrawal_id)
    return [webhooks.status_event_type(e.status) for e in events]


def verify(secret: str, r: Received) -> None:
    """Both ways a receiver would: the standardwebhooks package and the HMAC by hand."""
    Webhook(secret).verify(r.body, r.headers)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{r.headers['webhook-id']}.{r.headers['webhook-timestamp']}.".encode() + r.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert r.headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(r.headers["webhook-timestamp"]) - r.at) < 60


async def test_every_status_arrives_signed_in_order_and_a_redelivery_keeps_its_id(
    h: Harness, rx: Receiver
) -> None:
    endpoint = await register(h, rx.url)
    assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["*"]
    listed = (await h.http.get("/webhook/endpoints", headers={"X-API-Key": h.api_key})).json()
    assert [e["id"] for e in listed["items"]] == [endpoint["id"]]
    assert "secret" not in listed["items"][0]

    r = await h.request(native_body("polygon", new_wallet()[0], "0.01"))
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    final = await h.wait_status(wid, {"CONFIRMED"})
    await rx.wait_for(wid, "withdrawal.confirmed")

    expected = await expected_types(h, wid)
    assert expected[0] == "withdrawal.pending" and expected[-1] == "withdrawal.confirmed"
    assert "withdrawal.broadcast" in expected and "withdrawal.confirming" in expected
    assert rx.types(wid) == expected
    for got in rx.accepted:
        verify(endpoint["secret"], got)
        assert got.headers["webhook-id"] == got.event["id"]
        assert got.headers["content-type"] == "application/json"
    last = rx.accepted[-1].event
    assert last["type"] == "withdrawal.confirmed"
    assert last["data"] == final  # exactly what GET /withdrawal/status answers
    assert [e.event["data"]["status"] for e in rx.accepted] == [t.split(".")[1].upper() for t in expected]

    log = await deliveries(h, wid)
    assert [d["event_type"] for d in log] == expected
    assert {d["state"] for d in log} == {"DELIVERED"}
    for d in log:
        assert d["attempts"] and d["attempts"][-1]["status_code"] == 200
        assert d["attempts"][-1]["latency_ms"] >= 0 and d["last_status_code"] == 200

    # Redelivery: the same event id and body, signed afresh.
    confirmed = log[-1]
    before = len(rx.accepted)
    r = await h.http.post(
        f"/webhook/deliveries/{confirmed['id']}/redeliver", headers={"X-API-Key": h.api_key}
    )
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while len(rx.accepted) == before:
        assert time.monotonic() < deadline, "the redelivery never arrived"
        await asyncio.sleep(0.1)
    again = rx.accepted[-1]
    verify(endpoint["secret"], again)
    assert again.headers["webhook-id"] == confirmed["event_id"] == last["id"]
    assert again.body == rx.accepted[before - 1].body
    for _ in range(50):
        log = await deliveries(h, wid)
        if log[-1]["state"] == "DELIVERED" and len(log[-1]["attempts"]) == 2:
            break
        await asyncio.sleep(0.1)
    assert log[-1]["state"] == "DELIVERED" and len(log[-1]["attempts"]) == 2, log[-1]

    # A deleted endpoint gets nothing more.
    r = await h.http.delete(f"/webhook/endpoints/{endpoint['id']}", headers={"X-API-Key": h.api_key})
    assert r.status_code == 204
    listed = (await h.http.get("/webhook/endpoints", headers={"X-API-Key": h.api_key})).json()
    assert listed["items"] == []
    r2 = await h.request(native_body("polygon", new_wallet()[0], "0.01"))
    wid2 = r2.json()["id"]
    await h.wait_status(wid2, {"CONFIRMED"})
    assert await deliveries(h, wid2) == []


async def test_a_receiver_failing_for_a_while_gets_everything_in_order_after_it_recovers(
    h: Harness, rx: Receiver
) -> None:
    endpoint = await register(h, rx.url)
    rx.failing = True
    r = await h.request(native_body("polygon", new_wallet()[0], "0.01"))
    wid = r.json()["id"]
    await h.wait_status(wid, {"CONFIRMED"})
    await asyncio.sleep(2)
    log = await deliveries(h, wid)
    assert log[0]["state"] == "PENDING" and len(log[0]["attempts"]) >= 2, log[0]
    assert {a["status_code"] for a in log[0]["attempts"]} == {500}
    assert log[0]["last_error"].startswith("HTTP 500: receiver down: x")
    assert len(log[0]["last_error"]) <= len("HTTP 500: ") + 200
    # In order: nothing after the first event was tried while the first one was failing.
    assert all(not d["attempts"] for d in log[1:]), log
    assert len({r.event["id"] for r in rx.seen}) == 1

    rx.failing = False
    await rx.wait_for(wid, "withdrawal.confirmed", limit=60)
    assert rx.types(wid) == await expected_types(h, wid)
    for got in rx.accepted:
        verify(endpoint["secret"], got)
    log = await deliveries(h, wid)
    assert {d["state"] for d in log} == {"DELIVERED"}


async def test_a_worker_sigkilled_mid_delivery_loses_nothing(
    stack: Stack, rx: Receiver, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in FAST.items():
        monkeypatch.setenv(f"WE_{name.upper()}", str(value))
    h = await webhook_harness(stack, start_worker=False)
    proc = start_worker_process(h, tmp)
    try:
        await register(h, rx.url)
        rx.holding = True  # the first request is never answered: the worker dies waiting for it
        r = await h.request(native_body("polygon", new_wallet()[0], "0.01"))
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        deadline = time.monotonic() + 60
        while not rx.seen:
            assert time.monotonic() < deadline, "no delivery was attempted"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rx.holding = False
        rx.release.set()  # the held request now fails: its answer has nobody to read it
        await asyncio.sleep(1.0)
        proc = start_worker_process(h, tmp)
        await h.wait_status(wid, {"CONFIRMED"}, 120)
        await rx.wait_for(wid, "withdrawal.confirmed", limit=90)
        assert rx.types(wid) == await expected_types(h, wid)
        log = await deliveries(h, wid)
        assert {d["state"] for d in log} == {"DELIVERED"}
        # The event in flight at the kill was sent again (at least once), under the same id.
        first = [r.headers["webhook-id"] for r in rx.seen if r.event["type"] == "withdrawal.pending"]
        assert len(first) >= 2 and len(set(first)) == 1
    finally:
        stop_worker_process(proc)
        await close_harness(h)


async def test_deliveries_whose_kick_was_lost_are_swept(stack: Stack, rx: Receiver) -> None:
    """Admission writes PENDING and WAITING_FOR_FUNDS and its kick is lost (as in a crash between the
    commit and the kick; nothing moves after, the hot wallet is empty): only the sweeper's Schedule can
    get those events out."""
    h = await webhook_harness(stack, fund_wallets=False)
    sid = f"webhook-sweeper-{h.settings.task_queue}"
    h.engine.funds.webhooks = None  # the admission's kick never happens
    try:
        await register(h, rx.url)
        r = await h.request(native_body("polygon", new_wallet()[0], "0.01"))
        assert r.status_code == 201 and r.json()["status"] == "WAITING_FOR_FUNDS", r.text
        wid = r.json()["id"]
        await asyncio.sleep(1.5)
        assert rx.types(wid) == []  # nothing kicked
        sweeping = h.settings.model_copy(update={"webhook_sweep_interval_seconds": 1})
        await ensure_sweeper_schedule(h.client, sweeping)
        await rx.wait_for(wid, "withdrawal.waiting_for_funds", limit=30)
        assert rx.types(wid) == ["withdrawal.pending", "withdrawal.waiting_for_funds"]
    finally:
        with contextlib.suppress(Exception):
            await h.client.get_schedule_handle(sid).delete()
        await close_harness(h)


async def test_a_client_sees_only_its_own_endpoints_and_deliveries(h: Harness, rx: Receiver) -> None:
    endpoint = await register(h, rx.url, events=["withdrawal.confirmed"])
    assert endpoint["events"] == ["withdrawal.confirmed"]
    r = await h.request(native_body("polygon", new_wallet()[0], "0.01"))
    wid = r.json()["id"]
    await h.wait_status(wid, {"CONFIRMED"})
    await rx.wait_for(wid, "withdrawal.confirmed")
    assert rx.types(wid) == ["withdrawal.confirmed"]  # subscribed to one event only
    [mine] = await deliveries(h, wid)

    other = "we_test_" + secrets.token_hex(16)
    await ensure_api_client(h.db, other, name="other")
    theirs = {"X-API-Key": other}
    for method, path, params in (
        ("POST", f"/webhook/deliveries/{mine['id']}/redeliver", {}),
        ("DELETE", f"/webhook/endpoints/{endpoint['id']}", {}),
        ("GET", "/webhook/deliveries", {"withdrawal_id": wid}),
        ("GET", "/webhook/deliveries", {"endpoint_id": endpoint["id"]}),
        ("POST", f"/webhook/deliveries/{uuid.uuid4()}/redeliver", {}),
        ("POST", "/webhook/deliveries/not-an-id/redeliver", {}),
    ):
        r = await h.http.request(method, path, params=params, headers=theirs)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "NOT_FOUND"
    r = await h.http.get("/webhook/deliveries", headers=theirs)
    assert r.status_code == 200 and r.json()["items"] == [] and r.json()["total"] == 0
    assert (await h.http.get("/webhook/endpoints", headers=theirs)).json()["items"] == []
    assert [
        e["id"]
        for e in (await h.http.get("/webhook/endpoints", headers={"X-API-Key": h.api_key})).json()["items"]
    ] == [endpoint["id"]]

    reader = "we_test_" + secrets.token_hex(16)
    await ensure_api_client(h.db, reader, name="reader", scopes="withdrawals:read")
    r = await h.http.post("/webhook/endpoints", json={"url": rx.url}, headers={"X-API-Key": reader})
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"


async def test_registration_refuses_bad_urls_and_unknown_events(h: Harness) -> None:
    headers = {"X-API-Key": h.api_key}
    for body, field in (
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "url"),
        ({"url": "http://127.0.0.1/x", "events": ["withdrawal.sent"]}, "events"),
        ({"url": "http://127.0.0.1/x", "events": []}, "events"),
        ({"url": "http://" + "a" * 2000 + ".com/"}, "url"),
        ({"events": ["*"]}, "url"),
    ):
        r = await h.http.post("/webhook/endpoints", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "VALIDATION_ERROR" and r.json()["error"].get("field") == field, (
            r.text
        )


async def test_outside_dev_private_addresses_are_refused_at_registration_and_at_send_time(
    h: Harness, rx: Receiver
) -> None:
    prod = UrlGuard.for_env("prod")
    for url in (
        "http://93.184.215.14/hooks",  # https only
        "https://127.0.0.1/hooks",
        "https://localhost/hooks",
        "https://10.1.2.3/hooks",
        "https://192.168.0.10/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hooks",
        "https://[::ffff:127.0.0.1]/hooks",
        "https://[fe80::1]/hooks",
        "https://224.0.0.1/hooks",
        "https://0.0.0.0/hooks",
        "https://100.64.0.1/hooks",
        "https://no-such-host.invalid/hooks",
    ):
        with pytest.raises(UrlRefused):
            await prod.check_registration(url)
    assert await prod.check_registration("https://93.184.215.14/hooks") == "https://93.184.215.14/hooks"
    assert await UrlGuard.for_env("test").check_registration(rx.url) == rx.url

    # A delivery to the receiver (loopback), sent by an engine that runs as prod: refused for good.
    async with h.db.transaction() as s:
        endpoint = await _endpoint(s, h.client_id, "*", url=rx.url)
    wid = await _insert_withdrawal(h.db, h.client_id, h.config)
    async with h.db.read() as s:
        d = await webhooks.next_pending(s, endpoint, wid)
    assert d is not None and d.event_type == "withdrawal.pending"
    as_prod = WebhookActivities(h.db, prod, None)
    as_test = WebhookActivities(h.db, UrlGuard.for_env("test"), None)
    try:
        with pytest.raises(ApplicationError) as refused:
            await as_prod.send_delivery(SendInput(delivery_id=d.id, timeout_seconds=2))
        assert refused.value.type == WEBHOOK_URL_REFUSED and refused.value.non_retryable
        assert rx.seen == []
        async with h.db.read() as s:
            attempts = (await webhooks.attempts_of(s, [d.id]))[d.id]
        assert [(a.status_code, a.error) for a in attempts] == [(None, "url must use https")]
        await as_test.send_delivery(SendInput(delivery_id=d.id, timeout_seconds=2))
    finally:
        await as_prod.aclose()
        await as_test.aclose()
    assert [r.headers["webhook-id"] for r in rx.accepted] == [d.event_id]
    async with h.db.read() as s:
        sent = await webhooks.get_delivery(s, d.id)
    assert sent is not None and sent.state == "DELIVERED" and sent.attempts == 2


@pytest.fixture(scope="module")
def mariadb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield port
    finally:
        processes.stop(proc)


@pytest.fixture(params=["sqlite", "mariadb"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"
    else:
        url = create_database(request.getfixturevalue("mariadb_port"), f"t_{uuid.uuid4().hex[:12]}")
    await asyncio.to_thread(migrate, url)
    database = Database(url)
    try:
        yield database
    finally:
        await database.dispose()


async def test_the_outbox_queues_each_move_once_with_a_reorg_after_the_move_it_follows(
    db: Database, stack: Stack
) -> None:
    """The status writers themselves queue the deliveries, in order, once each (SQLite and MariaDB)."""
    config = engine_config(stack, [new_wallet()[0]])
    client_id = await ensure_api_client(db, "we_test_" + secrets.token_hex(16), name="outbox")
    async with db.transaction() as s:
        all_events = await _endpoint(s, client_id, "*")
        confirmed_only = await _endpoint(s, client_id, "withdrawal.confirmed withdrawal.reorged")
        gone = await _endpoint(s, client_id, "*")
        assert await webhooks.delete_endpoint(s, gone, client_id)
    wid = await _insert_withdrawal(db, client_id, config)
    for seq, to in enumerate((S.PROCESSING, S.BROADCAST, S.CONFIRMING), start=1):
        async with db.transaction() as s:
            assert await repo.transition(s, wid, to, seq=seq)
        async with db.transaction() as s:
            assert not await repo.transition(s, wid, to, seq=seq)  # a repeat queues nothing
            assert webhooks.queued_in(s) == set()
    tx, fee = "0x" + "ab" * 32, 21_000 * 10**9
    async with db.transaction() as s:
        await repo.record_inclusion(s, wid, tx_hash=tx, block_number=7, confirmations=1, fee_wei=fee)
    for _ in range(2):  # the reorg recorded twice (an activity retried): one event
        async with db.transaction() as s:
            await repo.record_reorg(s, wid)
    async with db.transaction() as s:
        await repo.transition(s, wid, S.BROADCAST, seq=4)
        await repo.transition(s, wid, S.CONFIRMING, seq=5)
        await repo.record_inclusion(s, wid, tx_hash=tx, block_number=8, confirmations=3, fee_wei=fee)
        await repo.transition(s, wid, S.CONFIRMED, seq=6)
        assert webhooks.queued_in(s) == {(all_events, wid), (confirmed_only, wid)}
        w = await repo.get_withdrawal(s, wid)
        assert w is not None
        final = withdrawal_view(w, config)
    async with db.read() as s:
        rows, total = await webhooks.list_deliveries(s, client_id, withdrawal_id=wid, limit=100)
        first = await webhooks.next_pending(s, all_events, wid)
        stale = await webhooks.stale_pending(s, utcnow() + timedelta(seconds=1))
    assert total == len(rows) == 10
    by_endpoint: dict[str, list[str]] = {}
    for d in rows:
        by_endpoint.setdefault(d.endpoint_id, []).append(d.event_type)
    assert by_endpoint[all_events] == [
        "withdrawal.pending",
        "withdrawal.processing",
        "withdrawal.broadcast",
        "withdrawal.confirming",
        "withdrawal.reorged",
        "withdrawal.broadcast",
        "withdrawal.confirming",
        "withdrawal.confirmed",
    ]
    assert by_endpoint[confirmed_only] == ["withdrawal.reorged", "withdrawal.confirmed"]
    assert gone not in by_endpoint
    # One event, one id, for every endpoint it goes to; ids differ between events.
    assert len({d.event_id for d in rows}) == 8
    assert {d.event_id for d in rows if d.event_type == "withdrawal.confirmed"} == {
        webhooks.event_id(wid, 6, "withdrawal.confirmed")
    }
    last = json.loads(next(d.payload for d in rows if d.event_type == "withdrawal.confirmed"))
    assert list(last) == ["id", "type", "created_at", "data"]
    assert last["data"] == final and last["data"]["fee"] == "0.000021"
    reorged = json.loads(next(d.payload for d in rows if d.event_type == "withdrawal.reorged"))
    assert reorged["data"]["status"] == "CONFIRMING" and reorged["data"]["tx_hash"] == tx
    assert first is not None and first.event_type == "withdrawal.pending"
    assert sorted(stale) == sorted([(all_events, wid), (confirmed_only, wid)])


async def _endpoint(s: Any, client_id: str, events: str, url: str = "http://127.0.0.1:9/x") -> str:
    """An endpoint row written directly (nothing kicks its deliveries: the test sends them)."""
    e = WebhookEndpoint(
        id=str(uuid.uuid4()), client_id=client_id, url=url, events=events, secret=webhooks.new_secret()
    )
    await webhooks.create_endpoint(s, e)
    return e.id


async def _insert_withdrawal(db: Database, client_id: str, config: EngineConfig) -> str:
    """A withdrawal row without a workflow: its moves are made by the test through `repo`."""
    wid = str(uuid.uuid4())
    row = Withdrawal(
        id=wid,
        client_id=client_id,
        idempotency_key=wid,
        fingerprint="f" * 64,
        user_id="u",
        network="polygon",
        asset="USDT",
        to_address=new_wallet()[0],
        amount=2_500_000,
        decimals=6,
        status=S.PENDING,
        required_confirmations=config.networks["polygon"].required_confirmations,
    )
    async with db.transaction() as s:
        await repo.insert_withdrawal(s, row)
    return wid
