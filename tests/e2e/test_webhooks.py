"""Webhooks end to end: a real engine (dev server, anvils, worker) sending to a local receiver, a real
HTTP server on a free loopback port. Every status arrives, signed, in order, at least once: through
a receiver that fails for a while, a worker SIGKILLed mid-delivery, and a lost kick (the sweeper).
One delivery workflow per endpoint: order per withdrawal under failures across many withdrawals, a
failing withdrawal holding up no other, kicks coalesced, the retry window, the idle end; the batch
and the migration on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from alembic import command
from alembic.config import Config
from sqlalchemy import column, insert, table
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from activities.webhooks import (
    WINDOW_CLOSED,
    BatchInput,
    DeliveryPolicy,
    UrlGuard,
    UrlRefused,
    WebhookActivities,
    WebhookKicker,
    delivery_workflow_id,
    ensure_sweeper_schedule,
)
from api.withdrawals import withdrawal_view
from devstack import processes
from devstack.bootstrap import ensure_api_client, migrate
from models import repo, webhooks
from models.db import Database
from models.domain import WithdrawalStatus
from models.tables import WebhookEndpoint, Withdrawal, utcnow
from settings import ROOT, EngineConfig
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
    status: int = 0  # what the receiver answered (0 while unanswered)

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A client's webhook endpoint: records every request it answered 2xx (`accepted`) and every one
    it got (`seen`); can answer 500 for a while (`failing`), to the requests `fail_when` picks, or
    hold requests unanswered (`holding`)."""

    def __init__(self) -> None:
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.accepted: list[Received] = []
        self.seen: list[Received] = []
        self.failing = False
        self.fail_when: Callable[[Received], bool] | None = None
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
        if self.failing or (self.fail_when is not None and self.fail_when(got)):
            got.status = 500
            return PlainTextResponse("receiver down: " + "x" * 1000, 500)
        got.status = 200
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


async def webhook_harness(stack: Stack, settings: dict[str, Any] | None = None, **kw: Any) -> Harness:
    """An engine with a database of its own (the sweeper sees only this test's deliveries)."""
    db_url = await asyncio.to_thread(new_sqlite_db, stack.tmp)
    return await make_harness(stack, db_url, settings_overrides=FAST | (settings or {}), **kw)


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


async def settled_deliveries(
    h: Harness,
    withdrawal_id: str,
    done: Callable[[list[dict[str, Any]]], bool] | None = None,
    limit: float = 10,
) -> list[dict[str, Any]]:
    """The delivery log once `done` holds (default: nothing PENDING). A receiver has a request before
    the batch that sent it commits its outcome, so a log read right after the receiver saw the last
    event may still say PENDING; the log is what is asserted, not how fast it is written."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        log = await deliveries(h, withdrawal_id)
        if (done or _nothing_pending_in)(log) or asyncio.get_running_loop().time() > deadline:
            return log
        await asyncio.sleep(0.05)


def _nothing_pending_in(log: list[dict[str, Any]]) -> bool:
    return all(d["state"] != "PENDING" for d in log)


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

    log = await settled_deliveries(h, wid)
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
    log = await settled_deliveries(h, wid)
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
        log = await settled_deliveries(h, wid)
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
        [d] = await webhooks.due_heads(s, endpoint, utcnow(), 100)
    assert d.withdrawal_id == wid and d.event_type == "withdrawal.pending"
    batch = BatchInput(endpoint_id=endpoint, limit=100, policy=DeliveryPolicy(timeout_seconds=2))
    as_prod = WebhookActivities(h.db, prod, None)
    as_test = WebhookActivities(h.db, UrlGuard.for_env("test"), None)
    try:
        refused = await as_prod.send_due_deliveries(batch)
        # Final at once: FAILED with the refusal as its reason, no retry scheduled, nothing sent.
        assert (refused.attempted, refused.settled, refused.more) == (1, 1, False)
        assert refused.next_due_in_seconds is None
        assert rx.seen == []
        async with h.db.read() as s:
            failed = await webhooks.get_delivery(s, d.id)
            attempts = (await webhooks.attempts_of(s, [d.id]))[d.id]
        assert failed is not None and (failed.state, failed.last_error) == ("FAILED", "url must use https")
        assert [(a.status_code, a.error) for a in attempts] == [(None, "url must use https")]
        again = await as_prod.send_due_deliveries(batch)  # not retried
        assert (again.attempted, again.settled) == (0, 0) and rx.seen == []

        # Redelivered (as POST .../redeliver does) and sent by an engine that runs as test: it goes.
        async with h.db.transaction() as s:
            await webhooks.requeue(s, d.id)
        sent = await as_test.send_due_deliveries(batch)
        assert (sent.attempted, sent.settled, sent.more) == (1, 1, False)
    finally:
        await as_prod.aclose()
        await as_test.aclose()
    assert [r.headers["webhook-id"] for r in rx.accepted] == [d.event_id]
    async with h.db.read() as s:
        delivered = await webhooks.get_delivery(s, d.id)
    assert delivered is not None and delivered.state == "DELIVERED" and delivered.attempts == 2


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
    queued_from = utcnow()
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
        first = await webhooks.due_heads(s, all_events, utcnow(), 100)
        confirmed_first = await webhooks.due_heads(s, confirmed_only, utcnow(), 100)
        stale = await webhooks.stale_endpoints(s, utcnow() + timedelta(seconds=1))
        not_yet = await webhooks.stale_endpoints(s, queued_from - timedelta(seconds=1))
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
    # What a batch sends next: per withdrawal its first PENDING delivery (all are due at once).
    assert [(d.withdrawal_id, d.event_type) for d in first] == [(wid, "withdrawal.pending")]
    assert [(d.withdrawal_id, d.event_type) for d in confirmed_first] == [(wid, "withdrawal.reorged")]
    # The sweeper's query: the endpoints whose next delivery is overdue, once each; none before then.
    assert sorted(stale) == sorted([all_events, confirmed_only])
    assert not_yet == []


async def _endpoint(s: Any, client_id: str, events: str, url: str = "http://127.0.0.1:9/x") -> str:
    """An endpoint row written directly (nothing kicks its deliveries: the test sends them)."""
    e = WebhookEndpoint(
        id=str(uuid.uuid4()), client_id=client_id, url=url, events=events, secret=webhooks.new_secret()
    )
    await webhooks.create_endpoint(s, e)
    return e.id


async def _insert_withdrawal(
    db: Database, client_id: str, config: EngineConfig, kicker: WebhookKicker | None = None
) -> str:
    """A withdrawal row without a workflow: its moves are made by the test through `repo` (and its
    deliveries kicked with `kicker`, as the status activity does after its commit)."""
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
        queued = set(webhooks.queued_in(s))
    if kicker is not None:
        await kicker.kick(queued)
    return wid


# --- one delivery workflow per endpoint ------------------------------------------------------------

LIFE = (S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CONFIRMED)
LIFE_TYPES = ["withdrawal.pending", *(webhooks.status_event_type(s) for s in LIFE)]


async def _move(h: Harness, wid: str, to: WithdrawalStatus, seq: int) -> None:
    """One move of a withdrawal without a workflow, kicked after its commit as `record_transition` is."""
    async with h.db.transaction() as s:
        assert await repo.transition(s, wid, to, seq=seq)
        queued = set(webhooks.queued_in(s))
    await h.engine.kicker.kick(queued)


async def _lives(h: Harness, n: int) -> list[str]:
    """n withdrawals through PENDING ... CONFIRMED, a move of each in turn (their events interleave)."""
    wids = [await _insert_withdrawal(h.db, h.client_id, h.config, h.engine.kicker) for _ in range(n)]
    for seq, to in enumerate(LIFE, start=1):
        for wid in wids:
            await _move(h, wid, to, seq)
    return wids


async def _until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def _none_pending(h: Harness) -> bool:
    async with h.db.read() as s:
        _, total = await webhooks.list_deliveries(s, h.client_id, state="PENDING", limit=1)
    return total == 0


async def _send_order(h: Harness, wids: Iterable[str], endpoint_id: str) -> dict[str, list[str]]:
    """Each withdrawal's event ids for one endpoint, in the order they must arrive."""
    return {
        w: [d["event_id"] for d in await deliveries(h, w) if d["endpoint_id"] == endpoint_id] for w in wids
    }


def _assert_in_order(rx: Receiver, order: dict[str, list[str]]) -> None:
    """Request by request, as they arrived: no event of a withdrawal (of those in `order`) was tried
    before every event before it had been accepted; in the end every event was accepted."""
    accepted: dict[str, set[str]] = {w: set() for w in order}
    for r in rx.seen:
        w, eid = r.event["data"]["id"], r.event["id"]
        if w not in order:
            continue
        earlier = set(order[w][: order[w].index(eid)])
        assert earlier <= accepted[w], (w, r.event["type"], "tried before", earlier - accepted[w])
        if r.status == 200:
            accepted[w].add(eid)
    assert accepted == {w: set(ids) for w, ids in order.items()}


async def _runs(h: Harness, endpoint_id: str) -> list[str]:
    """Run ids of the endpoint's delivery workflow (visibility is eventually consistent: callers poll)."""
    query = f'WorkflowId = "{delivery_workflow_id(endpoint_id)}"'
    return [wf.run_id async for wf in h.client.list_workflows(query)]


async def test_order_per_withdrawal_holds_across_many_withdrawals_while_the_receiver_fails_some(
    stack: Stack, rx: Receiver
) -> None:
    h = await webhook_harness(stack, fund_wallets=False)
    # A new run every 3 batches: order and delivery hold across continue-as-new too.
    h.engine.kicker.policy = dataclasses.replace(h.engine.kicker.policy, batches_per_run=3)
    try:
        endpoint = await register(h, rx.url)
        refusing_until = time.monotonic() + 4
        # Two requests out of three refused for 4 s, whichever events they carry.
        rx.fail_when = lambda _: time.monotonic() < refusing_until and len(rx.seen) % 3 != 0
        wids = await _lives(h, 12)
        await _until(lambda: _none_pending(h), 60, "deliveries still pending")
        order = await _send_order(h, wids, endpoint["id"])
        assert {len(ids) for ids in order.values()} == {5}
        _assert_in_order(rx, order)
        assert len([r for r in rx.seen if r.status == 500]) >= 12, "the receiver refused too little"
        assert {w: rx.types(w) for w in wids} == {w: LIFE_TYPES for w in wids}
        for got in rx.accepted:
            verify(endpoint["secret"], got)
        logs = [d for w in wids for d in await settled_deliveries(h, w)]
        assert {d["state"] for d in logs} == {"DELIVERED"}
        assert sum(len(d["attempts"]) for d in logs) == len(rx.seen)  # every attempt is in the log
        retried = [d for d in logs if len(d["attempts"]) > 1]
        assert retried and all(a["status_code"] == 500 for d in retried for a in d["attempts"][:-1])
        for _ in range(100):
            if len(await _runs(h, endpoint["id"])) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(await _runs(h, endpoint["id"])) >= 3  # it did continue as new, more than once
    finally:
        await close_harness(h)


async def test_a_withdrawal_whose_deliveries_keep_failing_holds_up_no_other_on_the_endpoint(
    stack: Stack, rx: Receiver
) -> None:
    """The failing withdrawal's next try is 30 s away; the others' events all arrive long before."""
    slow_retries = {"webhook_retry_initial_seconds": 30.0, "webhook_retry_max_interval_seconds": 60.0}
    h = await webhook_harness(stack, slow_retries, fund_wallets=False)
    try:
        endpoint = await register(h, rx.url)
        stuck = await _insert_withdrawal(h.db, h.client_id, h.config)  # kicked below, with its moves
        rx.fail_when = lambda r: r.event["data"]["id"] == stuck
        await _move(h, stuck, S.PROCESSING, 1)
        await _move(h, stuck, S.BROADCAST, 2)

        async def tried() -> bool:
            return bool((await deliveries(h, stuck))[0]["attempts"])

        await _until(tried, 30, "the stuck withdrawal's first event was never tried")
        started = time.monotonic()
        others = await _lives(h, 6)
        for w in others:
            await rx.wait_for(w, "withdrawal.confirmed", limit=25)
        assert time.monotonic() - started < 20
        assert {w: rx.types(w) for w in others} == {w: LIFE_TYPES for w in others}
        _assert_in_order(rx, await _send_order(h, others, endpoint["id"]))

        log = await deliveries(h, stuck)
        assert [(d["event_type"], d["state"], len(d["attempts"])) for d in log] == [
            ("withdrawal.pending", "PENDING", 1),  # the kicks of the others did not retry it early
            ("withdrawal.processing", "PENDING", 0),
            ("withdrawal.broadcast", "PENDING", 0),
        ]
        assert [r.event["type"] for r in rx.seen if r.event["data"]["id"] == stuck] == ["withdrawal.pending"]
        async with h.db.read() as s:
            first = await webhooks.get_delivery(s, log[0]["id"])
        assert first is not None
        attempted = (await deliveries(h, stuck))[0]["attempts"][0]["at"]
        assert first.next_attempt_at.isoformat() >= attempted[:19]  # backing off in the row, ...
        assert (first.next_attempt_at - first.created_at) >= timedelta(seconds=29)  # ... by 30 s
    finally:
        await close_harness(h)


async def test_kicks_coalesce_into_one_workflow_per_endpoint_and_each_event_arrives_once(
    stack: Stack, rx: Receiver
) -> None:
    h = await webhook_harness(stack, fund_wallets=False)
    try:
        async with Receiver() as rx2:
            endpoints = [await register(h, rx.url), await register(h, rx2.url)]
            n = 20
            wids = await _lives(h, n)  # n * 5 kicks, each naming both endpoints
            kicks = n * len(LIFE_TYPES)
            await _until(lambda: _none_pending(h), 60, "deliveries still pending")
            for receiver, endpoint in zip((rx, rx2), endpoints, strict=True):
                ids = [r.headers["webhook-id"] for r in receiver.seen]
                assert len(ids) == len(set(ids)) == kicks  # each event once, none refused, none again
                assert all(r.status == 200 for r in receiver.seen)
                _assert_in_order(receiver, await _send_order(h, wids, endpoint["id"]))

            tq = h.settings.task_queue
            query = f'WorkflowType = "WebhookDeliveryWorkflow" AND TaskQueue = "{tq}"'
            expected = {delivery_workflow_id(e["id"]) for e in endpoints}
            for _ in range(100):
                found = [wf.id async for wf in h.client.list_workflows(query)]
                if set(found) == expected:
                    break
                await asyncio.sleep(0.1)
            assert sorted(found) == sorted(expected)  # one per endpoint, one run each
            for endpoint in endpoints:
                handle = h.client.get_workflow_handle(delivery_workflow_id(endpoint["id"]))
                assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
                history = await handle.fetch_history()
                signals = [
                    e
                    for e in history.events
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                ]
                assert 1 <= len(signals) <= kicks // 2, len(signals)

            # A burst: kicks in one window are one signal per endpoint.
            before = [await _signals(h, e["id"]) for e in endpoints]
            pairs = [(e["id"], w) for e in endpoints for w in wids]
            for _ in range(50):
                await h.engine.kicker.kick(pairs)
            await asyncio.sleep(0.5)
            assert [await _signals(h, e["id"]) for e in endpoints] == [b + 1 for b in before]
    finally:
        await close_harness(h)


async def _signals(h: Harness, endpoint_id: str) -> int:
    history = await h.client.get_workflow_handle(delivery_workflow_id(endpoint_id)).fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in history.events)


async def test_the_endpoint_workflow_ends_when_idle_and_the_next_kick_starts_it_again(
    stack: Stack, rx: Receiver
) -> None:
    h = await webhook_harness(stack, fund_wallets=False)
    h.engine.kicker.policy = dataclasses.replace(h.engine.kicker.policy, idle_seconds=1.0)
    try:
        endpoint = await register(h, rx.url)
        wid = await _insert_withdrawal(h.db, h.client_id, h.config, h.engine.kicker)
        await rx.wait_for(wid, "withdrawal.pending", limit=30)
        handle = h.client.get_workflow_handle(delivery_workflow_id(endpoint["id"]))
        assert await asyncio.wait_for(handle.result(), 20) == 1  # one delivery settled, then idle
        first = (await handle.describe()).run_id
        await _move(h, wid, S.PROCESSING, 1)
        await rx.wait_for(wid, "withdrawal.processing", limit=30)
        second = (await handle.describe()).run_id
        assert second != first
        assert rx.types(wid) == LIFE_TYPES[:2]
        assert len(rx.seen) == 2
        for _ in range(100):
            if len(await _runs(h, endpoint["id"])) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(await _runs(h, endpoint["id"])) == sorted([first, second])
    finally:
        await close_harness(h)


async def test_a_delivery_past_its_retry_window_ends_failed_and_the_next_of_its_withdrawal_goes(
    stack: Stack, rx: Receiver
) -> None:
    h = await webhook_harness(stack, {"webhook_retry_window_seconds": 4}, fund_wallets=False)
    try:
        endpoint = await register(h, rx.url)
        rx.fail_when = lambda r: r.event["type"] == "withdrawal.pending"
        wid = await _insert_withdrawal(h.db, h.client_id, h.config, h.engine.kicker)
        await asyncio.sleep(1.5)
        await _move(h, wid, S.PROCESSING, 1)  # queued behind it, with a window of its own
        await _move(h, wid, S.BROADCAST, 2)
        await rx.wait_for(wid, "withdrawal.broadcast", limit=30)
        log = await settled_deliveries(h, wid)
        assert [(d["event_type"], d["state"]) for d in log] == [
            ("withdrawal.pending", "FAILED"),
            ("withdrawal.processing", "DELIVERED"),
            ("withdrawal.broadcast", "DELIVERED"),
        ]
        assert log[0]["last_error"] == WINDOW_CLOSED
        assert len(log[0]["attempts"]) >= 3 and {a["status_code"] for a in log[0]["attempts"]} == {500}
        assert [len(d["attempts"]) for d in log[1:]] == [1, 1]
        seen = [r.event["type"] for r in rx.seen]
        last_try = max(i for i, t in enumerate(seen) if t == "withdrawal.pending")
        assert seen[last_try + 1 :] == ["withdrawal.processing", "withdrawal.broadcast"]

        # A redelivery opens a new window: the same event, now accepted.
        rx.fail_when = None
        r = await h.http.post(
            f"/webhook/deliveries/{log[0]['id']}/redeliver", headers={"X-API-Key": h.api_key}
        )
        assert r.status_code == 202, r.text
        await rx.wait_for(wid, "withdrawal.pending", limit=30)
        assert rx.accepted[-1].headers["webhook-id"] == log[0]["event_id"]
        verify(endpoint["secret"], rx.accepted[-1])
        again = (await settled_deliveries(h, wid))[0]
        assert again["state"] == "DELIVERED" and len(again["attempts"]) == len(log[0]["attempts"]) + 1
    finally:
        await close_harness(h)


async def test_a_batch_sends_each_withdrawals_first_due_delivery_and_keeps_backoff_and_window_in_rows(
    db: Database, stack: Stack, rx: Receiver
) -> None:
    """`send_due_deliveries` itself, batch by batch (SQLite and MariaDB), without Temporal."""
    config = engine_config(stack, [new_wallet()[0]])
    client_id = await ensure_api_client(db, "we_test_" + secrets.token_hex(16), name="batch")
    async with db.transaction() as s:
        endpoint = await _endpoint(s, client_id, "*", url=rx.url)
    slow = await _insert_withdrawal(db, client_id, config)
    fine = await _insert_withdrawal(db, client_id, config)
    for wid in (slow, fine):
        async with db.transaction() as s:
            await repo.transition(s, wid, S.PROCESSING, seq=1)
    rx.fail_when = lambda r: r.event["data"]["id"] == slow
    policy = DeliveryPolicy(
        timeout_seconds=2, retry_initial_seconds=0.4, retry_max_interval_seconds=0.6, window_seconds=3
    )
    batch = BatchInput(endpoint_id=endpoint, limit=100, policy=policy)
    acts = WebhookActivities(db, UrlGuard.for_env("test"), None)

    async def rows(wid: str) -> list[Any]:
        async with db.read() as s:
            found, _ = await webhooks.list_deliveries(s, client_id, withdrawal_id=wid)
            attempts = await webhooks.attempts_of(s, [d.id for d in found])
        return [(d, attempts[d.id]) for d in found]

    def waited(d: Any, attempts: list[Any]) -> float:
        seconds: float = (d.next_attempt_at - attempts[-1].at).total_seconds()
        return seconds

    try:
        first = await acts.send_due_deliveries(batch)  # each withdrawal's first event, nothing more
        assert (first.attempted, first.settled, first.more) == (2, 1, True)
        assert sorted((r.event["data"]["id"], r.event["type"]) for r in rx.seen) == sorted(
            [(slow, "withdrawal.pending"), (fine, "withdrawal.pending")]
        )
        [(head, tries), (behind, none)] = await rows(slow)
        assert head.state == "PENDING" and len(tries) == 1 and not none and behind.state == "PENDING"
        assert 0.4 <= waited(head, tries) < 1.4

        second = await acts.send_due_deliveries(batch)  # fine's second; slow's first is not due
        assert (second.attempted, second.settled, second.more) == (1, 1, False)
        assert second.next_due_in_seconds is not None and 0 < second.next_due_in_seconds <= 0.4
        idle = await acts.send_due_deliveries(batch)  # again at once: nothing due, nothing sent twice
        assert (idle.attempted, idle.settled) == (0, 0) and len(rx.seen) == 3

        await asyncio.sleep(second.next_due_in_seconds + 0.05)
        third = await acts.send_due_deliveries(batch)
        assert (third.attempted, third.settled) == (1, 0)
        [(head, tries), _] = await rows(slow)
        assert len(tries) == 2 and 0.6 <= waited(head, tries) < 1.6  # 0.4 doubled, capped at 0.6

        # Past the window (3 s from when both were queued): the first ends FAILED unsent, then the one
        # behind it, which waited its turn for as long.
        await asyncio.sleep(max(0.0, 3.1 - (utcnow() - head.window_start).total_seconds()))
        expired = await acts.send_due_deliveries(batch)
        assert (expired.attempted, expired.settled, expired.more) == (0, 1, True)
        behind_too = await acts.send_due_deliveries(batch)
        assert (behind_too.attempted, behind_too.settled, behind_too.more) == (0, 1, False)
        assert behind_too.next_due_in_seconds is None
        assert [(d.state, d.last_error, len(a)) for d, a in await rows(slow)] == [
            ("FAILED", WINDOW_CLOSED, 2),
            ("FAILED", WINDOW_CLOSED, 0),
        ]
        assert len(rx.seen) == 4

        # The withdrawal's next event has a window of its own and goes.
        rx.fail_when = None
        async with db.transaction() as s:
            await repo.transition(s, slow, S.BROADCAST, seq=2)
        sent = await acts.send_due_deliveries(batch)
        assert (sent.attempted, sent.settled, sent.more, sent.next_due_in_seconds) == (1, 1, False, None)
        assert rx.accepted[-1].event["type"] == "withdrawal.broadcast"

        # A deleted endpoint: what is pending ends FAILED, and the workflow is told to end.
        async with db.transaction() as s:
            await repo.transition(s, slow, S.CONFIRMING, seq=3)
            assert await webhooks.delete_endpoint(s, endpoint, client_id)
        gone = await acts.send_due_deliveries(batch)
        assert gone.endpoint_gone and gone.settled == 1 and gone.attempted == 0
        last, attempts = (await rows(slow))[-1]
        assert (last.state, last.last_error, attempts) == ("FAILED", "the endpoint was deleted", [])
        assert len(rx.seen) == 5
    finally:
        await acts.aclose()


_COLUMNS_0007 = (
    "id",
    "event_id",
    "endpoint_id",
    "client_id",
    "withdrawal_id",
    "seq",
    "event_type",
    "payload",
    "state",
    "attempts",
    "created_at",
)


def _alembic(url: str, action: str, revision: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    (command.upgrade if action == "upgrade" else command.downgrade)(cfg, revision)


async def test_a_send_that_raises_is_its_own_failed_attempt_and_the_batch_goes_on(
    db: Database, stack: Stack, rx: Receiver
) -> None:
    """Anything one send raises (not only an HTTP error) is that delivery's failed attempt, recorded
    and retried later; the rest of the batch is sent and settled as usual."""
    config = engine_config(stack, [new_wallet()[0]])
    client_id = await ensure_api_client(db, "we_test_" + secrets.token_hex(16), name="raises")
    async with db.transaction() as s:
        endpoint = await _endpoint(s, client_id, "*", url=rx.url)
    broken, fine = (
        await _insert_withdrawal(db, client_id, config),
        await _insert_withdrawal(db, client_id, config),
    )
    acts = WebhookActivities(db, UrlGuard.for_env("test"), None)
    real = acts._attempt
    async with db.read() as s:
        queued, _ = await webhooks.list_deliveries(s, client_id, withdrawal_id=broken)
    doomed = {d.event_id for d in queued}  # the broken withdrawal's events: their sends raise

    async def attempt(target: Any, event_id: str, payload: str, timeout_seconds: float) -> Any:
        if event_id in doomed:
            raise RuntimeError("a bug in one send")
        return await real(target, event_id, payload, timeout_seconds)

    acts._attempt = attempt  # type: ignore[method-assign]
    policy = DeliveryPolicy(timeout_seconds=2, retry_initial_seconds=30, retry_max_interval_seconds=60)
    try:
        result = await acts.send_due_deliveries(BatchInput(endpoint_id=endpoint, limit=100, policy=policy))
        assert (result.attempted, result.settled) == (2, 1)
        async with db.read() as s:
            failed, _ = await webhooks.list_deliveries(s, client_id, withdrawal_id=broken)
            sent, _ = await webhooks.list_deliveries(s, client_id, withdrawal_id=fine)
            attempts = await webhooks.attempts_of(s, [failed[0].id])
        assert failed[0].state == "PENDING" and failed[0].last_error == "RuntimeError"
        assert len(attempts[failed[0].id]) == 1 and failed[0].next_attempt_at > utcnow()
        assert sent[0].state == "DELIVERED" and [r.event["data"]["id"] for r in rx.accepted] == [fine]
    finally:
        await acts.aclose()


async def test_a_redelivery_while_its_batch_is_sending_is_not_ended_by_that_batch(
    db: Database, stack: Stack, rx: Receiver
) -> None:
    """An operator redelivers a delivery while a batch is sending it: the batch's failure (here, the
    old window closing) belongs to the old window, so the delivery stays PENDING and due in the
    window the redelivery opened, and the next batch sends it."""
    config = engine_config(stack, [new_wallet()[0]])
    client_id = await ensure_api_client(db, "we_test_" + secrets.token_hex(16), name="redeliver")
    async with db.transaction() as s:
        endpoint = await _endpoint(s, client_id, "*", url=rx.url)
    wid = await _insert_withdrawal(db, client_id, config)
    async with db.read() as s:
        queued, _ = await webhooks.list_deliveries(s, client_id, withdrawal_id=wid)
    delivery = queued[0].id
    acts = WebhookActivities(db, UrlGuard.for_env("test"), None)
    real = acts._attempt
    redelivered = asyncio.Event()

    async def attempt(target: Any, event_id: str, payload: str, timeout_seconds: float) -> Any:
        if not redelivered.is_set():
            async with db.transaction() as s:  # the operator's POST .../redeliver, mid-send
                await webhooks.requeue(s, delivery)
            redelivered.set()
            raise RuntimeError("the old window's last attempt")
        return await real(target, event_id, payload, timeout_seconds)

    acts._attempt = attempt  # type: ignore[method-assign]
    # A window shorter than the first backoff: the failed attempt would end the delivery FAILED.
    policy = DeliveryPolicy(timeout_seconds=2, retry_initial_seconds=30, window_seconds=5)
    try:
        first = await acts.send_due_deliveries(BatchInput(endpoint_id=endpoint, limit=100, policy=policy))
        assert (first.attempted, first.settled) == (1, 0)
        async with db.read() as s:
            d = await webhooks.get_delivery(s, delivery)
        assert d is not None and d.state == "PENDING" and d.next_attempt_at <= utcnow()
        second = await acts.send_due_deliveries(BatchInput(endpoint_id=endpoint, limit=100, policy=policy))
        assert (second.attempted, second.settled) == (1, 1)
        async with db.read() as s:
            d = await webhooks.get_delivery(s, delivery)
        assert d is not None and d.state == "DELIVERED" and len(rx.accepted) == 1
    finally:
        await acts.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
async def test_migration_0008_makes_queued_deliveries_due_with_a_window_from_when_they_were_queued(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    else:
        url = create_database(request.getfixturevalue("mariadb_port"), f"t_{uuid.uuid4().hex[:12]}")
    await asyncio.to_thread(_alembic, url, "upgrade", "0007")
    queued_at = (utcnow() - timedelta(hours=5)).replace(microsecond=123456)
    endpoint, delivery = str(uuid.uuid4()), str(uuid.uuid4())
    before = Database(url)
    try:
        async with before.transaction() as s:
            # The table as 0007 left it: no next_attempt_at, no window_start.
            old = table("webhook_deliveries", *(column(c) for c in _COLUMNS_0007))
            await s.exec(
                insert(old).values(
                    id=delivery,
                    event_id="evt_1",
                    endpoint_id=endpoint,
                    client_id="c",
                    withdrawal_id="w",
                    seq=0,
                    event_type="withdrawal.pending",
                    payload="{}",
                    state="PENDING",
                    attempts=0,
                    created_at=queued_at,
                )
            )
    finally:
        await before.dispose()
    await asyncio.to_thread(_alembic, url, "upgrade", "head")
    await asyncio.to_thread(_alembic, url, "downgrade", "0007")  # reversible ...
    await asyncio.to_thread(_alembic, url, "upgrade", "head")  # ... and again
    after = Database(url)
    try:
        async with after.read() as s:
            d = await webhooks.get_delivery(s, delivery)
            due = await webhooks.due_heads(s, endpoint, utcnow(), 10)
            stale = await webhooks.stale_endpoints(s, utcnow())
        assert d is not None and d.created_at == d.next_attempt_at == d.window_start == queued_at
        assert [x.id for x in due] == [delivery] and stale == [endpoint]
    finally:
        await after.dispose()
