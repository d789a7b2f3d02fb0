"""Alerting against real servers: the alerts table (idempotent raising), the Slack and PagerDuty sinks
against a local HTTP receiver, the alert workflow on the dev server, and the RPC check on real anvils."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.alerts import (
    SINK_REFUSED,
    SINK_UNAVAILABLE,
    AlertActivities,
    Alerter,
    MonitorActivities,
    PagerDutySink,
    SlackSink,
    alert_workflow_id,
    reconciler_alerts,
    snapshot,
)
from activities.rpc import Chains
from devstack import processes
from models import alerts
from models.alerts import AlertKind, AlertSpec, AlertState, MonitorInput, Severity, Sink
from models.db import Database
from tests.stack import Stack, engine_config, new_sqlite_db, new_wallet
from workflows.alerts import AlertWorkflow

ROUTING_KEY = "R0UTING-KEY-test-0123456789abcdef"


class Receiver:
    """A local stand-in for Slack (`/slack`) and PagerDuty (`/pagerduty`): records what it accepted,
    and can refuse the next requests of a sink with an HTTP status."""

    def __init__(self) -> None:
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: dict[str, list[dict[str, Any]]] = {"slack": [], "pagerduty": []}
        self.refused: dict[str, int] = {"slack": 0, "pagerduty": 0}
        self.fail_next: dict[str, tuple[int, int]] = {}  # sink -> (how many, HTTP status)
        app = Starlette(routes=[Route("/{sink}", self._handle, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._task: asyncio.Task[None] | None = None

    async def _handle(self, request: Request) -> Response:
        sink = request.path_params["sink"]
        body = json.loads(await request.body())
        count, status = self.fail_next.get(sink, (0, 0))
        if count:
            self.fail_next[sink] = (count - 1, status)
            self.refused[sink] += 1
            return PlainTextResponse("unavailable", status)
        self.accepted[sink].append(body)
        if sink == "pagerduty":
            return JSONResponse({"status": "success", "dedup_key": body.get("dedup_key")}, 202)
        return PlainTextResponse("ok")

    def events(self, sink: str, dedup_key: str) -> list[str]:
        """What `sink` accepted for one alert, in order: "trigger" / "resolve" (Slack: FIRING / RESOLVED)."""
        if sink == "pagerduty":
            return [b["event_action"] for b in self.accepted[sink] if b["dedup_key"] == dedup_key]
        return [
            b["text"].split("]")[0].lstrip("[")
            for b in self.accepted[sink]
            if dedup_key in json.dumps(b["blocks"][-1])
        ]

    async def wait_for(self, sink: str, dedup_key: str, events: list[str], limit: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + limit
        while self.events(sink, dedup_key) != events:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"{sink} got {self.events(sink, dedup_key)} for {dedup_key}, not {events}"
                )
            await asyncio.sleep(0.1)

    def settings(self) -> dict[str, Any]:
        return {
            "slack_webhook_url": f"{self.url}/slack",
            "pagerduty_events_url": f"{self.url}/pagerduty",
            "pagerduty_routing_key": ROUTING_KEY,
        }

    async def __aenter__(self) -> Receiver:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)


def spec(key: str, **kw: Any) -> AlertSpec:
    return AlertSpec(
        dedup_key=key,
        kind=kw.pop("kind", AlertKind.HOT_WALLET_LOW),
        severity=kw.pop("severity", Severity.WARNING),
        summary=kw.pop("summary", f"test alert {key}"),
        detail=kw.pop("detail", {"network": "ethereum", "asset": "ETH"}),
    )


@pytest.fixture
async def db(stack: Stack) -> Any:
    database = Database(await asyncio.to_thread(new_sqlite_db, stack.tmp))
    yield database
    await database.dispose()


async def test_raising_is_idempotent_and_a_resolved_cause_fires_again(db: Database) -> None:
    alerter = Alerter(db)
    key = f"test:{uuid.uuid4()}"
    assert await alerter.fire(spec(key)) is True
    assert await alerter.fire(spec(key, summary="raised again")) is False
    async with db.read() as s:
        first = await alerts.get(s, key)
    assert first is not None and first.state == AlertState.FIRING and first.summary == f"test alert {key}"

    assert await alerter.resolve([key, "test:never-raised"]) == [key]
    assert await alerter.resolve([key]) == []
    assert await alerter.fire(spec(key, summary="back")) is True
    async with db.read() as s:
        again = await alerts.get(s, key)
        total = await alerts.count(s)
    assert again is not None and again.id == first.id and total == 1
    assert again.state == AlertState.FIRING and again.resolved_at is None and again.summary == "back"
    assert again.fired_at > first.fired_at


async def test_concurrent_raisers_of_one_cause_fire_it_once(db: Database) -> None:
    alerter = Alerter(db)
    key = f"test:{uuid.uuid4()}"
    results = await asyncio.gather(*(alerter.fire(spec(key)) for _ in range(20)))
    assert results.count(True) == 1


async def test_summaries_are_stored_without_rpc_url_paths(db: Database) -> None:
    alerter = Alerter(db)
    key = f"test:{uuid.uuid4()}"
    secret_url = "https://eth.example.com/v3/PROVIDER-SECRET-KEY"
    await alerter.fire(spec(key, summary=f"down: {secret_url}", detail={"endpoint": secret_url}))
    async with db.read() as s:
        row = await alerts.get(s, key)
    assert row is not None and "PROVIDER-SECRET-KEY" not in row.summary + (row.detail or "")
    assert "https://eth.example.com/***" in row.summary


async def test_sync_fires_new_causes_and_resolves_those_gone(db: Database) -> None:
    alerter = Alerter(db)
    scope = f"test-sync:{uuid.uuid4()}:"
    first = await alerter.sync("t", AlertKind.RPC_DOWN, scope, [spec(scope + "a", kind=AlertKind.RPC_DOWN)])
    assert first.fired == [scope + "a"] and first.resolved == []
    second = await alerter.sync("t", AlertKind.RPC_DOWN, scope, [spec(scope + "b", kind=AlertKind.RPC_DOWN)])
    assert second.fired == [scope + "b"] and second.resolved == [scope + "a"]
    partial = await alerter.sync("t", AlertKind.RPC_DOWN, scope, [], complete=False)
    assert partial.resolved == []  # an incomplete look resolves nothing


async def test_reconciler_findings_are_one_alert_per_nonce(db: Database) -> None:
    wallet = new_wallet()[0]
    findings = [
        "nonces 4..6 used by transactions sent outside the engine",
        "nonce 7: transaction 0xabc unknown to the node, resent",
        "nonce 7 held by withdrawal w-1 for 75 s with nothing signed: later transactions wait",
    ]
    specs = reconciler_alerts("ethereum", wallet, findings)
    assert [s.dedup_key.rsplit(":", 2)[1:] for s in specs] == [["nonce", "4"], ["nonce", "7"]]
    assert specs[0].severity is Severity.CRITICAL and specs[1].severity is Severity.WARNING
    assert specs[1].detail["findings"] == findings[1:]

    alerter = Alerter(db)
    await alerter.reconciler_findings("ethereum", wallet, findings)
    await alerter.reconciler_findings("ethereum", wallet, findings[2:])  # the age in the text changes
    async with db.read() as s:
        live = await alerts.firing(
            s, kind=AlertKind.RECONCILER, prefix=f"reconcile:ethereum:{wallet.lower()}:"
        )
    assert [a.dedup_key for a in live] == [specs[1].dedup_key]


async def test_sinks_send_slack_and_pagerduty_payloads(db: Database) -> None:
    alerter = Alerter(db)
    key = f"test:{uuid.uuid4()}"
    await alerter.fire(spec(key, severity=Severity.CRITICAL, summary="Hot wallet <0xabc> & co is low"))
    async with db.read() as s:
        row = await alerts.get(s, key)
    assert row is not None
    fired = snapshot(row, [Sink.SLACK, Sink.PAGERDUTY])
    async with Receiver() as rx, httpx.AsyncClient() as http:
        await SlackSink(f"{rx.url}/slack", http).send(fired)
        await PagerDutySink(f"{rx.url}/pagerduty", ROUTING_KEY, http).send(fired)
        await alerter.resolve([key])
        async with db.read() as s:
            row = await alerts.get(s, key)
        assert row is not None
        resolved = snapshot(row, [Sink.SLACK, Sink.PAGERDUTY])
        await SlackSink(f"{rx.url}/slack", http).send(resolved)
        await PagerDutySink(f"{rx.url}/pagerduty", ROUTING_KEY, http).send(resolved)

    slack_fired, slack_resolved = rx.accepted["slack"]
    assert slack_fired["text"] == "[FIRING] Hot wallet <0xabc> & co is low"
    assert "Hot wallet &lt;0xabc&gt; &amp; co is low" in slack_fired["blocks"][0]["text"]["text"]
    assert "*FIRING* · critical · HOT_WALLET_LOW" in slack_fired["blocks"][0]["text"]["text"]
    assert {f["text"] for f in slack_fired["blocks"][1]["fields"]} == {"*asset*\nETH", "*network*\nethereum"}
    assert key in slack_fired["blocks"][-1]["elements"][0]["text"]
    assert slack_resolved["text"].startswith("[RESOLVED]")
    assert "resolved" in slack_resolved["blocks"][-1]["elements"][0]["text"]

    trigger, resolve = rx.accepted["pagerduty"]
    assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == key
    payload = trigger["payload"]
    assert payload["summary"] == "Hot wallet <0xabc> & co is low"
    assert payload["source"] == "withdrawal-engine/ethereum" and payload["severity"] == "critical"
    assert payload["custom_details"] == {"network": "ethereum", "asset": "ETH"}
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": key}


async def test_sink_failures_are_classified_and_never_name_the_url_or_key(db: Database) -> None:
    await Alerter(db).fire(spec(key := f"test:{uuid.uuid4()}"))
    async with db.read() as s:
        row = await alerts.get(s, key)
    assert row is not None
    alert = snapshot(row, [Sink.PAGERDUTY])
    async with Receiver() as rx, httpx.AsyncClient() as http:
        sink = PagerDutySink(f"{rx.url}/pagerduty", ROUTING_KEY, http)
        for status, kind, retryable in (
            (503, SINK_UNAVAILABLE, True),
            (429, SINK_UNAVAILABLE, True),
            (400, SINK_REFUSED, False),
        ):
            rx.fail_next["pagerduty"] = (1, status)
            with pytest.raises(ApplicationError) as err:
                await sink.send(alert)
            assert err.value.type == kind and err.value.non_retryable is (not retryable), status
            assert str(status) in err.value.message
            assert rx.url not in err.value.message and ROUTING_KEY not in err.value.message
        dead = PagerDutySink(f"http://127.0.0.1:{processes.free_port()}/x", ROUTING_KEY, http)
        with pytest.raises(ApplicationError) as err:
            await dead.send(alert)
        assert err.value.type == SINK_UNAVAILABLE and not err.value.non_retryable
        assert "127.0.0.1" not in err.value.message and ROUTING_KEY not in err.value.message
    assert rx.accepted["pagerduty"] == []


async def test_alert_workflow_sends_one_trigger_retries_a_sink_that_is_down_then_resolves(
    stack: Stack, db: Database
) -> None:
    client = await Client.connect(stack.temporal_address)
    queue = f"alerts-{uuid.uuid4()}"
    alerter = Alerter(db, client=client, task_queue=queue, deliver=True)
    key = f"test:{uuid.uuid4()}"
    async with Receiver() as rx, httpx.AsyncClient() as http:
        sinks = {
            Sink.SLACK: SlackSink(f"{rx.url}/slack", http),
            Sink.PAGERDUTY: PagerDutySink(f"{rx.url}/pagerduty", ROUTING_KEY, http),
        }
        acts = AlertActivities(db, sinks)  # type: ignore[arg-type]
        rx.fail_next["pagerduty"] = (2, 503)  # down for the first two tries
        async with Worker(
            client, task_queue=queue, workflows=[AlertWorkflow], activities=[acts.load_alert, acts.send_alert]
        ):
            assert await alerter.fire(spec(key))
            await rx.wait_for("slack", key, ["FIRING"])
            await rx.wait_for("pagerduty", key, ["trigger"])
            assert rx.refused["pagerduty"] == 2
            # Raised again, and a duplicate hand-over (as the monitor's sweep may send): nothing more.
            assert not await alerter.fire(spec(key))
            await alerter.dispatch(key)
            await asyncio.sleep(2)
            assert rx.events("slack", key) == ["FIRING"] and rx.events("pagerduty", key) == ["trigger"]

            assert await alerter.resolve([key]) == [key]
            await rx.wait_for("slack", key, ["FIRING", "RESOLVED"])
            await rx.wait_for("pagerduty", key, ["trigger", "resolve"])
            handle = client.get_workflow_handle(alert_workflow_id(key))
            assert await asyncio.wait_for(handle.result(), 30) == AlertState.RESOLVED


async def test_rpc_check_alerts_an_endpoint_down_or_on_another_chain_and_resolves(
    stack: Stack, db: Database
) -> None:
    good, dead, other_chain = (
        stack.rpc_urls["ethereum"],
        f"http://127.0.0.1:{processes.free_port()}",
        stack.rpc_urls["bsc"],
    )
    wallet = new_wallet()[0]
    alerter = Alerter(db)

    async def check(urls: list[str]) -> Any:
        config = engine_config(stack, [wallet], rpc_urls={"ethereum": urls})
        chains = Chains(config.networks)
        async with httpx.AsyncClient() as http:
            monitor = MonitorActivities(db, chains, config, alerter, pending_after_seconds=1800, http=http)
            try:
                return await monitor.check_rpc_endpoints(MonitorInput())
            finally:
                await chains.aclose()

    report = await check([good, dead, other_chain])
    assert len(report.fired) == 2 and all(k.startswith("rpc:ethereum:") for k in report.fired)
    async with db.read() as s:
        rows = {a.dedup_key: a for a in await alerts.firing(s, kind=AlertKind.RPC_DOWN)}
    summaries = sorted(rows[k].summary for k in report.fired)
    assert any("no answer (ConnectError)" in t for t in summaries), summaries
    assert any("serves chain id 31338, expected 31337" in t for t in summaries), summaries
    assert all(rows[k].severity == Severity.WARNING for k in report.fired)  # one endpoint still answers
    assert (await check([good, dead, other_chain])).fired == []
    healed = await check([good])
    assert sorted(healed.resolved) == sorted(report.fired)

    alone = await check([dead])
    async with db.read() as s:
        row = await alerts.get(s, alone.fired[0])
    assert (
        row is not None and row.severity == Severity.CRITICAL and "no endpoint of the network" in row.summary
    )


def test_workflow_ids_are_stable_and_short() -> None:
    key = "needs-attention:" + str(uuid.uuid4())
    assert alert_workflow_id(key) == alert_workflow_id(key) and len(alert_workflow_id(key)) == 38
    assert alert_workflow_id(key) != alert_workflow_id(key + "x")
