"""Nonce reconciliation against real anvils: transactions sent behind the engine's back, orphaned
nonces of a terminated workflow, transactions no node knows any more."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from eth_account import Account

from devstack import chain, processes
from models import repo
from models.domain import HistoryKind, NoncePurpose, ReconcileInput, ReconcileReport
from tests.invariants import assert_invariants
from tests.stack import Harness, native_body, new_wallet
from workflows.reconcile import NonceReconcilerWorkflow


def rpc(h: Harness, network: str, method: str, *params: Any) -> Any:
    return processes.rpc(h.stack.rpc_urls[network], method, list(params))


def send_behind_the_engines_back(h: Harness, network: str) -> str:
    """A transfer signed with the hot wallet's key outside the engine, waited until mined."""
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
    signed = Account.sign_transaction(tx, key)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.1)["status"] == 1
    return tx_hash.hex()


async def reconcile(h: Harness, network: str) -> ReconcileReport:
    wallet = h.config.networks[network].hot_wallets[0]
    return await h.client.execute_workflow(
        NonceReconcilerWorkflow.run,
        ReconcileInput(network=network, hot_wallet=wallet, orphan_after_seconds=1),
        id=f"reconcile-test-{uuid.uuid4()}",
        task_queue=h.settings.task_queue,
    )


async def allocations(h: Harness, network: str) -> list[Any]:
    async with h.db.read() as s:
        return await repo.nonce_allocations(s, network, h.config.networks[network].hot_wallets[0])


async def test_a_nonce_used_outside_is_proven_then_moved_only_by_an_operator(harness: Harness) -> None:
    network = "ethereum"
    first = (await harness.request(native_body(network, new_wallet()[0], "0.01"))).json()["id"]
    await harness.wait_status(first, {"CONFIRMED"})
    external = await asyncio.to_thread(send_behind_the_engines_back, harness, network)  # the next nonce
    to = new_wallet()[0]
    wid = (await harness.request(native_body(network, to, "0.02"))).json()["id"]
    parked = await harness.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"})
    # Proven from the chain (the block holding nonce 1 and its sender), not assumed from a null receipt;
    # the engine does not re-sign at another nonce on its own.
    assert parked["status"] == "NEEDS_ATTENTION" and parked["error"]["code"] == "NONCE_CONFLICT", parked
    detail = (await harness.operator_view(wid))["error"]["message"]
    assert external.lower().removeprefix("0x") in detail  # the proof, for the operator
    assert (
        external.lower().removeprefix("0x") not in parked["error"]["message"]
    )  # a fixed text for the client
    assert int(rpc(harness, network, "eth_getBalance", to, "latest"), 16) == 0
    assert [(a.nonce, a.purpose) for a in await allocations(harness, network)] == [
        (0, "WITHDRAWAL"),
        (1, "WITHDRAWAL"),
    ]
    await harness.client.get_workflow_handle(f"withdrawal-{wid}").signal("retry")
    final = await harness.wait_status(wid, {"CONFIRMED", "FAILED"})
    assert final["status"] == "CONFIRMED", final
    assert int(rpc(harness, network, "eth_getBalance", to, "latest"), 16) == 2 * 10**16
    history = await harness.history(wid)
    assert any(e.kind is HistoryKind.NONCE_REALIGNED for e in history), history
    purposes = [(a.nonce, a.purpose) for a in await allocations(harness, network)]
    assert purposes == [(0, "WITHDRAWAL"), (1, "EXTERNAL"), (2, "WITHDRAWAL")], purposes
    await assert_invariants(harness, [first, wid])


async def test_reconciler_records_external_nonces_so_new_withdrawals_skip_them(harness: Harness) -> None:
    network = "bsc"
    for _ in range(2):
        await asyncio.to_thread(send_behind_the_engines_back, harness, network)
    report = await reconcile(harness, network)
    assert report.external == [0, 1] and report.next_nonce == 2 and report.alerts
    wid = (await harness.request(native_body(network, new_wallet()[0], "0.01"))).json()["id"]
    final = await harness.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"})
    assert final["status"] == "CONFIRMED"
    history = await harness.history(wid)
    assert not any(e.kind is HistoryKind.NONCE_REALIGNED for e in history)  # it got nonce 2 directly
    await assert_invariants(harness, [wid])


async def test_nonce_of_a_terminated_workflow_is_filled_and_later_withdrawals_proceed(
    harness: Harness,
) -> None:
    network = "polygon"
    with harness.signing_key_missing(network):
        orphan = (await harness.request(native_body(network, new_wallet()[0], "0.02"))).json()["id"]
        await harness.wait_status(orphan, {"NEEDS_ATTENTION"})  # nonce 0 allocated, nothing signed
    await harness.client.get_workflow_handle(f"withdrawal-{orphan}").terminate("operator gave up")
    later = (await harness.request(native_body(network, new_wallet()[0], "0.01"))).json()["id"]  # nonce 1
    await asyncio.sleep(1.5)
    report = await reconcile(harness, network)
    assert report.filled == [0], report
    assert (await harness.wait_status(later, {"CONFIRMED"}))["status"] == "CONFIRMED"
    cancelled = await harness.status(orphan)
    assert cancelled["status"] == "CANCELLED" and "filled" in cancelled["error"]["message"]
    async with harness.db.read() as s:
        assert {r.state for r in await repo.reservations_for(s, orphan)} == {"RELEASED"}
        # A fill of the nonce, not an attempt of the withdrawal; its tx_hash is what holds its nonce.
        assert await repo.attempts_for(s, orphan) == []
        (fill,) = [a for a in await allocations(harness, network) if a.nonce == 0]
    assert fill.purpose == "FILL" and not fill.active and fill.fill_tx_hash == cancelled["tx_hash"]
    tx = rpc(harness, network, "eth_getTransactionByHash", cancelled["tx_hash"])
    assert int(tx["value"], 16) == 0 and tx["to"].lower() == tx["from"].lower() and int(tx["nonce"], 16) == 0
    await assert_invariants(harness, [later])


async def test_reconciler_rebroadcasts_a_transaction_no_node_knows(harness: Harness) -> None:
    network = "ethereum"
    with harness.stack.mining_paused(network):
        wid = (await harness.request(native_body(network, new_wallet()[0], "0.03"))).json()["id"]
        w = await harness.wait_status(wid, {"BROADCAST"})
        rpc(harness, network, "anvil_dropTransaction", w["tx_hash"])
        report = await reconcile(harness, network)
        assert w["tx_hash"] in report.rebroadcast
        assert rpc(harness, network, "eth_getTransactionByHash", w["tx_hash"]) is not None
    assert (await harness.wait_status(wid, {"CONFIRMED"}))["status"] == "CONFIRMED"
    await assert_invariants(harness, [wid])


async def test_reconciler_looks_up_only_from_the_nodes_first_gap(harness: Harness) -> None:
    """Three held in the pool, the middle one dropped: the node's pending nonce stops at the gap. The
    one below it is not looked up at all; from the gap up each is looked up and resent when the node
    does not know it (anvil drops the one queued behind the gap too)."""
    network = "bsc"
    engine_rpc = harness.engine.chains[network]
    looked_up: list[str] = []
    real = engine_rpc.call

    async def counting(method: str, params: list[Any] | None = None) -> Any:
        if method == "eth_getTransactionByHash" and params:
            looked_up.append(params[0])
        return await real(method, params)

    with harness.stack.mining_paused(network):
        ids = []
        for _ in range(3):  # one at a time: nonces in this order
            ids.append((await harness.request(native_body(network, new_wallet()[0], "0.01"))).json()["id"])
            await harness.wait_status(ids[-1], {"BROADCAST"})
        low, dropped, queued = [(await harness.status(i))["tx_hash"] for i in ids]
        rpc(harness, network, "anvil_dropTransaction", dropped)
        engine_rpc.call = counting  # type: ignore[method-assign]
        try:
            report = await reconcile(harness, network)
        finally:
            del engine_rpc.call
        assert report.rebroadcast[0] == dropped and set(report.rebroadcast) <= {dropped, queued}, report
        assert low not in looked_up and dropped in looked_up and queued in looked_up, looked_up
        assert all(rpc(harness, network, "eth_getTransactionByHash", h) for h in (low, dropped, queued))
    for i in ids:
        assert (await harness.wait_status(i, {"CONFIRMED"}))["status"] == "CONFIRMED"
    await assert_invariants(harness, ids)


async def test_signing_refuses_a_nonce_that_is_no_longer_the_withdrawals(harness: Harness) -> None:
    """The nonce of a parked withdrawal was filled meanwhile (e.g. by the reconciler): a retry must not
    sign a second transaction at it; the withdrawal parks again, nothing is signed."""
    network = "bsc"
    wallet = harness.config.networks[network].hot_wallets[0]
    to = new_wallet()[0]
    with harness.signing_key_missing(network):
        wid = (await harness.request(native_body(network, to, "0.04"))).json()["id"]
        parked = await harness.wait_status(wid, {"NEEDS_ATTENTION"})
    assert parked["error"]["code"] == "SIGNER_UNAVAILABLE"
    nonce = (await harness.operator_view(wid))["nonce"]
    async with harness.db.transaction() as s:
        await repo.mark_allocation(s, network, wallet, nonce, purpose=NoncePurpose.FILL)
    await harness.client.get_workflow_handle(f"withdrawal-{wid}").signal("retry")
    for _ in range(100):
        detail = await harness.operator_view(wid)
        if detail["status"] == "NEEDS_ATTENTION" and detail["error"]["code"] == "NONCE_CONFLICT":
            break
        await asyncio.sleep(0.2)
    assert detail["error"]["code"] == "NONCE_CONFLICT" and "no longer allocated" in detail["error"]["message"]
    assert detail["attempts"] == [] and int(rpc(harness, network, "eth_getBalance", to, "latest"), 16) == 0


async def test_only_not_found_or_a_closed_workflow_means_not_running(harness: Harness) -> None:
    from temporalio.service import RPCError, RPCStatusCode

    from activities.nonces import TemporalWorkflowProbe

    probe = TemporalWorkflowProbe(harness.client)
    assert await probe.running(str(uuid.uuid4())) is False  # NOT_FOUND
    with harness.stack.mining_paused("ethereum"):
        wid = (await harness.request(native_body("ethereum", new_wallet()[0], "0.01"))).json()["id"]
        assert await probe.running(wid) is True
    await harness.wait_status(wid, {"CONFIRMED"})
    assert await probe.running(wid) is False  # closed

    class Unreachable:
        def get_workflow_handle(self, _: str) -> Any:
            raise RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")

    assert await TemporalWorkflowProbe(Unreachable()).running(wid) is None  # type: ignore[arg-type]
