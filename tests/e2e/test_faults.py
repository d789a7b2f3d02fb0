"""Fault injection on real anvils and a real dev server. Every scenario ends with the DESIGN §5 checks:
one mined transaction per withdrawal, contiguous nonces with none abandoned, reservations consumed or
released exactly once, every withdrawal in a correct final state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devstack import processes
from models import repo
from models.domain import HistoryKind as K
from models.domain import WithdrawalStatus as S
from tests.invariants import assert_invariants
from tests.stack import (
    NETWORKS,
    Harness,
    Stack,
    close_harness,
    make_harness,
    native_body,
    new_wallet,
    running_harness,
)

GWEI = 10**9


def rpc(h: Harness, network: str, method: str, *params: Any) -> Any:
    return processes.rpc(h.stack.rpc_urls[network], method, list(params))


def balance(h: Harness, network: str, address: str) -> int:
    return int(rpc(h, network, "eth_getBalance", address, "latest"), 16)


async def attempts(h: Harness, wid: str) -> list[Any]:
    async with h.db.read() as s:
        return await repo.attempts_for(s, wid)


async def wait_until(predicate: Any, limit: float = 60, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def fast_stuck(stack: Stack, db_url: str) -> AsyncIterator[Harness]:
    """Stuck after 2 blocks; ethereum capped at 40 gwei."""
    async with running_harness(stack, db_url, network_overrides={"stuck_after_blocks": 2}) as h:
        yield h


async def test_base_fee_spike_leaves_it_stuck_and_the_replacement_is_mined(fast_stuck: Harness) -> None:
    h, network = fast_stuck, "ethereum"
    to = new_wallet()[0]
    with h.stack.mining_paused(network):
        wid = (await h.request(native_body(network, to, "0.4"))).json()["id"]
        await h.wait_status(wid, {"BROADCAST"})
        rpc(h, network, "anvil_setNextBlockBaseFeePerGas", hex(200 * GWEI))  # far above what it offered
    final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=90)
    await _assert_bumped_once_mined(h, network, wid, final, to, 4 * 10**17, {"FAILED", "REPLACED"})


async def test_transaction_stuck_in_the_mempool_is_replaced(fast_stuck: Harness) -> None:
    h, network = fast_stuck, "polygon"
    to = new_wallet()[0]
    with h.stack.mining_paused(network):
        wid = (await h.request(native_body(network, to, "0.7"))).json()["id"]

        async def replaced() -> bool:
            return len(await attempts(h, wid)) >= 2

        await wait_until(replaced, what="a replacement of the stuck transaction")
    final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=90)
    await _assert_bumped_once_mined(h, network, wid, final, to, 7 * 10**17, {"REPLACED"})


async def _assert_bumped_once_mined(
    h: Harness, network: str, wid: str, final: dict[str, Any], to: str, amount: int, others: set[str]
) -> None:
    assert final["status"] == "CONFIRMED", final
    tried = await attempts(h, wid)
    assert len(tried) >= 2, [a.outcome for a in tried]
    first, second = tried[0], tried[1]
    assert first.nonce == second.nonce
    assert second.max_fee_per_gas * 8 >= first.max_fee_per_gas * 9  # both fields >= +12.5%
    assert second.max_priority_fee_per_gas * 8 >= first.max_priority_fee_per_gas * 9
    mined = [a for a in tried if a.outcome == "MINED"]
    assert len(mined) == 1 and mined[0].tx_hash == final["tx_hash"]
    assert {a.outcome for a in tried if a is not mined[0]} <= others
    assert balance(h, network, to) == amount
    await assert_invariants(h, [wid])


async def test_fee_cap_waits_instead_of_overpaying(stack: Stack, db_url: str) -> None:
    h = await make_harness(
        stack, db_url, network_overrides={"stuck_after_blocks": 2, "max_fee_per_gas_cap_gwei": 30}
    )
    try:
        network = "polygon"
        with h.stack.mining_paused(network):
            wid = (await h.request(native_body(network, new_wallet()[0], "0.1"))).json()["id"]
            await h.wait_status(wid, {"BROADCAST"})
            rpc(h, network, "anvil_setNextBlockBaseFeePerGas", hex(60 * GWEI))  # twice the cap
        final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=120)
        assert final["status"] == "CONFIRMED", final
        tried = await attempts(h, wid)
        cap = 30 * GWEI
        assert all((a.max_fee_per_gas or 0) <= cap for a in tried)
        history = await h.history(wid)
        assert any(e.kind is K.FEE_BUMP_SKIPPED for e in history), history
        await assert_invariants(h, [wid])
    finally:
        await close_harness(h)


async def test_dropped_transaction_is_broadcast_again(harness: Harness) -> None:
    network = "bsc"
    to = new_wallet()[0]
    with harness.stack.mining_paused(network):
        r = await harness.request(native_body(network, to, "0.2"))
        wid = r.json()["id"]
        w = await harness.wait_status(wid, {"BROADCAST"})
        rpc(harness, network, "anvil_dropTransaction", w["tx_hash"])
        pending = rpc(harness, network, "eth_getTransactionByHash", w["tx_hash"])
        assert pending is None, "the node forgot the transaction"
        await wait_until(
            lambda: asyncio.to_thread(
                lambda: rpc(harness, network, "eth_getTransactionByHash", w["tx_hash"]) is not None
            ),
            what="the engine to broadcast the dropped transaction again",
        )
    final = await harness.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"})
    assert final["status"] == "CONFIRMED" and balance(harness, network, to) == 2 * 10**17
    await assert_invariants(harness, [wid])


async def test_cancel_after_broadcast_replaces_with_a_self_transfer(harness: Harness) -> None:
    network = "ethereum"
    wallet = harness.config.networks[network].hot_wallets[0]
    to = new_wallet()[0]

    async def cancel_sent() -> bool:
        return any(a.purpose == "CANCEL" for a in await attempts(harness, wid))

    with harness.stack.mining_paused(network):
        wid = (await harness.request(native_body(network, to, "0.3"))).json()["id"]
        await harness.wait_status(wid, {"BROADCAST"})
        await harness.client.get_workflow_handle(f"withdrawal-{wid}").signal(
            "cancel", {"reason": "fraud check"}
        )
        await wait_until(cancel_sent, what="the cancel replacement")
    final = await harness.wait_status(wid, {"CANCELLED", "CONFIRMED"})
    assert final["status"] == "CANCELLED" and final["error"]["message"] == "fraud check"
    tx = rpc(harness, network, "eth_getTransactionByHash", final["tx_hash"])
    assert tx["to"].lower() == wallet.lower() and int(tx["value"], 16) == 0
    assert balance(harness, network, to) == 0
    tried = await attempts(harness, wid)
    cancel = next(a for a in tried if a.purpose == "CANCEL")
    original = next(a for a in tried if a.purpose == "WITHDRAWAL")
    assert cancel.max_fee_per_gas * 8 >= original.max_fee_per_gas * 9
    assert original.outcome == "REPLACED"
    await assert_invariants(harness, [wid])


async def test_cancel_once_in_a_block_is_refused_and_the_withdrawal_completes(harness: Harness) -> None:
    network = "polygon"
    to = new_wallet()[0]
    wid = (await harness.request(native_body(network, to, "0.05"))).json()["id"]
    await harness.wait_status(wid, {"CONFIRMING", "CONFIRMED"})
    handle = harness.client.get_workflow_handle(f"withdrawal-{wid}")
    await handle.signal("cancel")
    final = await harness.wait_status(wid, {"CONFIRMED", "CANCELLED"})
    assert final["status"] == "CONFIRMED" and balance(harness, network, to) == 5 * 10**16
    history = await harness.history(wid)
    assert any(e.kind is K.REFUSED and e.action is K.CANCEL for e in history), history


@pytest.fixture
async def deep_confirmations(stack: Stack, db_url: str) -> AsyncIterator[Harness]:
    async with running_harness(stack, db_url, network_overrides={"required_confirmations": 8}) as h:
        yield h


async def test_reorg_before_final_confirmation_goes_back_to_broadcast(deep_confirmations: Harness) -> None:
    h, network = deep_confirmations, "ethereum"
    to = new_wallet()[0]
    snapshot = rpc(h, network, "evm_snapshot")
    wid = (await h.request(native_body(network, to, "0.6"))).json()["id"]
    included = await h.wait_status(wid, {"CONFIRMING"})
    assert rpc(h, network, "evm_revert", snapshot) is True  # the block with our transaction is gone
    final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=90)
    assert final["status"] == "CONFIRMED" and final["confirmations"] >= 8
    history = await h.history(wid)
    assert any(e.kind is K.REORG for e in history), history
    statuses = [e.status for e in history if e.kind is K.STATUS]
    assert statuses.index(S.CONFIRMING) < max(i for i, st in enumerate(statuses) if st is S.BROADCAST)
    assert balance(h, network, to) == 6 * 10**17
    receipt = rpc(h, network, "eth_getTransactionReceipt", final["tx_hash"])
    block = rpc(h, network, "eth_getBlockByNumber", receipt["blockNumber"], False)
    assert block["hash"] == receipt["blockHash"]
    assert included["tx_hash"] == final["tx_hash"]
    await assert_invariants(h, [wid])


async def test_rpc_failover_and_wrong_chain_endpoints(stack: Stack, db_url: str) -> None:
    """First endpoint down, second serving another chain: both skipped, the third one is used."""
    dead = f"http://127.0.0.1:{processes.free_port()}"
    urls = {
        "ethereum": [dead, stack.rpc_urls["polygon"], stack.rpc_urls["ethereum"]],
        "bsc": [dead, stack.rpc_urls["ethereum"], stack.rpc_urls["bsc"]],
    }
    h = await make_harness(stack, db_url, rpc_urls=urls)
    try:
        ids = []
        for name in urls:
            r = await h.request(native_body(name, new_wallet()[0], "0.01"))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        for wid in ids:
            assert (await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}))["status"] == "CONFIRMED"
        for name, (_, wrong, good) in urls.items():
            chain_rpc = h.engine.chains[name]
            assert wrong in chain_rpc._wrong_chain and good not in chain_rpc._wrong_chain
            assert chain_rpc.calls["eth_sendRawTransaction"] >= 1
        await assert_invariants(h, ids)
    finally:
        await close_harness(h)


async def test_only_wrong_chain_endpoints_refuse_to_sign(stack: Stack, db_url: str) -> None:
    from activities.rpc import ChainIdMismatch, ChainRpc

    async with httpx.AsyncClient() as http:
        rpc_client = ChainRpc("ethereum", [stack.rpc_urls["bsc"]], chain_id=31337, http=http)
        with pytest.raises(ChainIdMismatch):
            await rpc_client.pending_nonce(new_wallet()[0])


async def test_temporal_dev_server_killed_and_restarted_mid_flight(harness: Harness) -> None:
    recipients = [new_wallet()[0] for _ in range(6)]
    rs = await asyncio.gather(*(harness.request(native_body("polygon", to, "0.02")) for to in recipients))
    ids = [r.json()["id"] for r in rs]
    assert all(r.status_code == 201 for r in rs)
    await asyncio.to_thread(harness.stack.restart_temporal)
    finals = await asyncio.gather(
        *(harness.wait_status(w, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=120) for w in ids)
    )
    assert {f["status"] for f in finals} == {"CONFIRMED"}
    assert all(balance(harness, "polygon", to) == 2 * 10**16 for to in recipients)
    await assert_invariants(harness, ids)


async def test_hot_wallet_pool_spreads_load(stack: Stack, db_url: str) -> None:
    h = await make_harness(stack, db_url, wallets=4)
    try:
        rs = await asyncio.gather(
            *(h.request(native_body("bsc", new_wallet()[0], "0.01")) for _ in range(24))
        )
        ids = [r.json()["id"] for r in rs]
        for wid in ids:
            assert (await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}, limit=120))[
                "status"
            ] == "CONFIRMED"
        async with h.db.read() as s:
            used = [(await repo.get_withdrawal(s, wid)).hot_wallet for wid in ids]  # type: ignore[union-attr]
        counts = {w: used.count(w) for w in h.config.networks["bsc"].hot_wallets}
        assert all(c >= 3 for c in counts.values()), counts
        await assert_invariants(h, ids)
    finally:
        await close_harness(h)


assert set(NETWORKS) == {"ethereum", "bsc", "polygon"}


async def test_one_of_two_rpc_endpoints_stopped_mid_flight(stack: Stack, db_url: str) -> None:
    from tests.rpc_proxy import RpcProxy

    network = "ethereum"
    first = RpcProxy(stack.rpc_urls[network])
    await first.start()
    h = await make_harness(stack, db_url, rpc_urls={network: [first.url, stack.rpc_urls[network]]})
    try:
        rs = [await h.request(native_body(network, new_wallet()[0], "0.01")) for _ in range(3)]
        ids = [r.json()["id"] for r in rs]
        await h.wait_status(ids[-1], {"BROADCAST", "CONFIRMING", "CONFIRMED"})
        await first.stop()  # the preferred endpoint goes away mid-flight
        rs = [await h.request(native_body(network, new_wallet()[0], "0.01")) for _ in range(3)]
        ids += [r.json()["id"] for r in rs]
        for wid in ids:
            assert (await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}))["status"] == "CONFIRMED"
        await assert_invariants(h, ids)
    finally:
        await close_harness(h)
        await first.stop()
