"""Alerts end to end: a real engine (dev server, anvils, worker) with Slack and PagerDuty pointed at a
local receiver. Each cause reaches each sink once, however often it is raised, and resolves when the
cause clears."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from eth_account import Account

from activities.alerts import ATTENTION_NEXT_ACTION, attention_alert
from devstack import chain, processes
from models.alerts import CheckReport, MonitorInput
from models.domain import ReconcileInput, ReconcileReport
from models.tables import Withdrawal
from tests.activities.test_alerts import ROUTING_KEY, Receiver
from tests.stack import Harness, Stack, close_harness, make_harness, native_body, new_sqlite_db, new_wallet
from workflows.alerts import AlertMonitorWorkflow
from workflows.reconcile import NonceReconcilerWorkflow

GWEI = 10**9


async def alerting_harness(stack: Stack, rx: Receiver, **kw: Any) -> Harness:
    """An engine of its own (own database: alerts of other tests stay out) with both sinks on `rx`."""
    db_url = await asyncio.to_thread(new_sqlite_db, stack.tmp)
    return await make_harness(stack, db_url, settings_overrides=rx.settings(), **kw)


async def monitor(h: Harness) -> list[CheckReport]:
    reports: list[CheckReport] = await h.client.execute_workflow(
        AlertMonitorWorkflow.run,
        MonitorInput(),
        id=f"alert-monitor-test-{uuid.uuid4()}",
        task_queue=h.settings.task_queue,
    )
    assert [r.errors for r in reports] == [[], [], [], []], reports
    return reports


def fired(reports: list[CheckReport]) -> list[str]:
    return [k for r in reports if r.check != "deliveries" for k in r.fired]


def resolved(reports: list[CheckReport]) -> list[str]:
    return [k for r in reports if r.check != "deliveries" for k in r.resolved]


async def alert_list(h: Harness, **params: Any) -> dict[str, Any]:
    r = await h.http.get("/admin/alerts", params=params, headers=await h.operator_headers("VIEWER"))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_a_parked_withdrawal_pages_once_and_resolves_after_the_retry(stack: Stack) -> None:
    async with Receiver() as rx:
        h = await alerting_harness(stack, rx)
        try:
            network = "ethereum"
            url, token = h.stack.rpc_urls[network], h.stack.tokens[network]["USDT"]
            to = new_wallet()[0]
            await asyncio.to_thread(chain.blacklist, url, token, to)
            rx.fail_next["pagerduty"] = (2, 502)  # PagerDuty is down for the first two sends
            body = {"user_id": "u", "network": network, "asset": "USDT", "to_address": to, "amount": "5"}
            wid = (await h.request(body)).json()["id"]
            await h.wait_status(wid, {"NEEDS_ATTENTION"})
            key = f"needs-attention:{wid}"
            await rx.wait_for("slack", key, ["FIRING"])
            await rx.wait_for("pagerduty", key, ["trigger"])
            assert rx.refused["pagerduty"] == 2

            # The cause raised again: by the monitor (it re-checks every parked withdrawal) and directly.
            assert key not in fired(await monitor(h))
            async with h.db.read() as s:
                row = await s.get(Withdrawal, wid)
            assert row is not None
            assert not await h.engine.alerting.alerter.fire(attention_alert(row))
            await asyncio.sleep(2)
            assert rx.events("slack", key) == ["FIRING"] and rx.events("pagerduty", key) == ["trigger"]

            trigger = next(b for b in rx.accepted["pagerduty"] if b["dedup_key"] == key)
            assert trigger["routing_key"] == ROUTING_KEY and trigger["event_action"] == "trigger"
            payload = trigger["payload"]
            assert payload["severity"] == "critical" and payload["source"] == "withdrawal-engine/ethereum"
            assert "EXECUTION_REVERTED" in payload["summary"] and ATTENTION_NEXT_ACTION in payload["summary"]
            details = payload["custom_details"]
            assert details["withdrawal_id"] == wid and details["next_action"] == ATTENTION_NEXT_ACTION
            assert "blacklisted" in details["reason"]  # operators see what the node answered
            slack = next(b for b in rx.accepted["slack"] if key in str(b["blocks"]))
            assert wid in slack["text"] and ATTENTION_NEXT_ACTION in slack["text"]
            assert ROUTING_KEY not in str(slack)

            listed = await alert_list(h, state="FIRING")
            assert [a["dedup_key"] for a in listed["items"]] == [key] and listed["total"] == 1
            assert listed["items"][0]["detail"]["withdrawal_id"] == wid
            assert (await h.http.get("/admin/alerts")).status_code == 401
            bad = await h.http.get(
                "/admin/alerts", params={"state": "LOUD"}, headers=await h.operator_headers("VIEWER")
            )
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "VALIDATION_ERROR"

            await asyncio.to_thread(chain.blacklist, url, token, to, False)
            r = await h.http.post(
                f"/admin/transactions/{wid}/retry", json={}, headers=await h.operator_headers("OPERATOR")
            )
            assert r.status_code == 200, r.text
            await rx.wait_for("slack", key, ["FIRING", "RESOLVED"])
            await rx.wait_for("pagerduty", key, ["trigger", "resolve"])
            assert (await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}))["status"] == "CONFIRMED"
            assert (await alert_list(h, state="FIRING"))["items"] == []
            done = (await alert_list(h, state="RESOLVED"))["items"]
            assert [a["dedup_key"] for a in done] == [key] and done[0]["resolved_at"] is not None
            await asyncio.sleep(1)
            assert rx.events("pagerduty", key) == ["trigger", "resolve"]
        finally:
            await close_harness(h)


def send_behind_the_engines_back(h: Harness, network: str) -> None:
    wallet, key = next(iter(h.keys.items()))
    w3 = chain.web3_for(h.stack.rpc_urls[network])
    tx = {
        "to": new_wallet()[0],
        "value": 1,
        "gas": 21_000,
        "gasPrice": w3.eth.gas_price * 2,
        "nonce": w3.eth.get_transaction_count(wallet, "pending"),  # type: ignore[arg-type]
        "chainId": w3.eth.chain_id,
    }
    tx_hash = w3.eth.send_raw_transaction(Account.sign_transaction(tx, key).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.1)["status"] == 1


async def test_low_hot_wallet_rpc_down_and_reconciler_findings_alert_and_resolve(stack: Stack) -> None:
    dead = f"http://127.0.0.1:{processes.free_port()}"
    async with Receiver() as rx:
        h = await alerting_harness(
            stack,
            rx,
            network_overrides={"min_hot_wallet_balance": {"ETH": "2000"}},  # it holds 1000
            rpc_urls={"ethereum": [stack.rpc_urls["ethereum"], dead]},
        )
        try:
            wallet = h.config.networks["ethereum"].hot_wallets[0]
            low = f"hot-wallet-low:ethereum:{wallet.lower()}:ETH"
            first = await monitor(h)
            assert sorted(fired(first))[0] == low and len(fired(first)) == 2, first
            down = next(k for k in fired(first) if k.startswith("rpc:ethereum:"))
            for key in (low, down):
                await rx.wait_for("slack", key, ["FIRING"])
                await rx.wait_for("pagerduty", key, ["trigger"])
            rows = {a["dedup_key"]: a for a in (await alert_list(h))["items"]}
            assert "below its minimum of 2000 ETH" in rows[low]["summary"], rows[low]
            assert rows[low]["detail"]["balance"] == "1000"
            assert "no answer" in rows[down]["summary"] and rows[down]["severity"] == "warning"

            page = await alert_list(h, limit=1)
            assert len(page["items"]) == 1 and page["total"] == 2 and page["next_cursor"]
            rest = await alert_list(h, limit=1, cursor=page["next_cursor"])
            assert rest["next_cursor"] is None
            assert {page["items"][0]["dedup_key"], rest["items"][0]["dedup_key"]} == {low, down}

            assert fired(await monitor(h)) == []  # the same causes, nothing new
            await asyncio.to_thread(chain.set_balance, stack.rpc_urls["ethereum"], wallet, 3000 * 10**18)
            healed = await monitor(h)
            assert resolved(healed) == [low] and fired(healed) == []
            await rx.wait_for("slack", low, ["FIRING", "RESOLVED"])
            await rx.wait_for("pagerduty", low, ["trigger", "resolve"])
            assert rx.events("pagerduty", down) == ["trigger"]  # still down

            await asyncio.to_thread(send_behind_the_engines_back, h, "ethereum")
            found = await reconcile(h, "ethereum")
            assert found.external, found
            finding = f"reconcile:ethereum:{wallet.lower()}:nonce:{found.external[0]}"
            await rx.wait_for("pagerduty", finding, ["trigger"])
            page = next(b for b in rx.accepted["pagerduty"] if b["dedup_key"] == finding)
            assert page["payload"]["severity"] == "critical"
            assert "outside the engine" in page["payload"]["summary"]
            assert (await reconcile(h, "ethereum")).alerts == []  # recorded: the next run finds nothing
            await rx.wait_for("pagerduty", finding, ["trigger", "resolve"])
        finally:
            await close_harness(h)


async def reconcile(h: Harness, network: str) -> ReconcileReport:
    report: ReconcileReport = await h.client.execute_workflow(
        NonceReconcilerWorkflow.run,
        ReconcileInput(network=network, hot_wallet=h.config.networks[network].hot_wallets[0]),
        id=f"reconcile-test-{uuid.uuid4()}",
        task_queue=h.settings.task_queue,
    )
    return report


async def test_the_fee_cap_holding_a_withdrawal_alerts_until_it_is_signed(stack: Stack) -> None:
    network = "polygon"
    async with Receiver() as rx:
        h = await alerting_harness(stack, rx, network_overrides={"max_fee_per_gas_cap_gwei": 30})
        try:
            url = stack.rpc_urls[network]
            processes.rpc(url, "anvil_setNextBlockBaseFeePerGas", [hex(200 * GWEI)])

            async def base_fee() -> int:
                head = await asyncio.to_thread(processes.rpc, url, "eth_getBlockByNumber", ["latest", False])
                return int(head["baseFeePerGas"], 16)

            while await base_fee() < 100 * GWEI:  # noqa: ASYNC110  (a block at the spiked fee, then -12.5%/block)
                await asyncio.sleep(0.1)
            wid = (await h.request(native_body(network, new_wallet()[0], "0.1"))).json()["id"]
            key = f"fee-cap:{wid}"
            await rx.wait_for("pagerduty", key, ["trigger"], limit=30)
            held = next(b for b in rx.accepted["pagerduty"] if b["dedup_key"] == key)
            assert "fee cap holds withdrawal" in held["payload"]["summary"]
            assert held["payload"]["custom_details"]["status"] == "PROCESSING"
            final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=120)
            assert final["status"] == "CONFIRMED", final
            await rx.wait_for("pagerduty", key, ["trigger", "resolve"])
            await rx.wait_for("slack", key, ["FIRING", "RESOLVED"])
        finally:
            await close_harness(h)
