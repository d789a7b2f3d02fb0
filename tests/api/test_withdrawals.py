"""Native coin and USDT withdrawals on every dev network, end to end through the REST API."""

from __future__ import annotations

import asyncio

import pytest

from devstack import chain, processes
from tests.stack import NETWORKS, Harness, native_body, new_wallet, units


async def _tx(h: Harness, network: str, tx_hash: str) -> dict:
    return processes.rpc(h.stack.rpc_urls[network], "eth_getTransactionByHash", [tx_hash])


@pytest.mark.parametrize("network", list(NETWORKS))
async def test_native_withdrawal_confirms_with_exact_amount(harness: Harness, network: str) -> None:
    to, _ = new_wallet()
    r = await harness.request(native_body(network, to, "1.25", client_reference="ref-1"))
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["status"] in {"PENDING", "PROCESSING", "BROADCAST", "CONFIRMING"}
    assert w["amount"] == "1.25" and w["client_reference"] == "ref-1" and w["to_address"] == to
    final = await harness.wait_status(w["id"], {"CONFIRMED", "FAILED", "NEEDS_ATTENTION"})
    assert final["status"] == "CONFIRMED", final
    assert final["confirmations"] >= 3 and final["required_confirmations"] == 3
    assert final["fee"] is not None and float(final["fee"]) > 0

    url = harness.stack.rpc_urls[network]
    balance = int(processes.rpc(url, "eth_getBalance", [to, "latest"]), 16)
    assert balance == units("1.25", 18)
    tx = await _tx(harness, network, final["tx_hash"])
    assert int(tx["chainId"], 16) == NETWORKS[network][0]
    assert tx["to"].lower() == to.lower()
    if NETWORKS[network][2] == "eip1559":
        assert tx["type"] == "0x2" and "maxFeePerGas" in tx
    else:
        assert tx["type"] == "0x0"
        # EIP-155: v = chain_id * 2 + 35 or 36
        assert int(tx["v"], 16) in (NETWORKS[network][0] * 2 + 35, NETWORKS[network][0] * 2 + 36)


@pytest.mark.parametrize("network", list(NETWORKS))
async def test_usdt_withdrawal_transfers_six_decimal_units(harness: Harness, network: str) -> None:
    to, _ = new_wallet()
    body = {
        "user_id": "user-2",
        "network": network,
        "asset": "USDT",
        "to_address": to,
        "amount": "250.123456",
    }
    r = await harness.request(body)
    assert r.status_code == 201, r.text
    final = await harness.wait_status(r.json()["id"], {"CONFIRMED", "FAILED", "NEEDS_ATTENTION"})
    assert final["status"] == "CONFIRMED", final
    token = harness.stack.tokens[network]["USDT"]
    assert chain.token_balance(harness.stack.rpc_urls[network], token, to) == 250_123_456
    tx = await _tx(harness, network, final["tx_hash"])
    assert tx["to"].lower() == token.lower() and int(tx["value"], 16) == 0
    assert tx["input"].startswith("0xa9059cbb")


async def test_finalized_mode_waits_for_the_finalized_block(stack, db_url) -> None:  # type: ignore[no-untyped-def]
    from tests.stack import close_harness, make_harness

    h = await make_harness(stack, db_url, network_overrides={"finality": "finalized"})
    try:
        network = "polygon"
        to, _ = new_wallet()
        wid = (await h.request(native_body(network, to, "0.2"))).json()["id"]
        confirming = await h.wait_status(wid, {"CONFIRMING"})
        await asyncio.sleep(3)  # well past 3 confirmations, far from anvil's finalized block (64 behind)
        assert (await h.status(wid))["status"] == "CONFIRMING"
        final = await h.wait_status(wid, {"CONFIRMED"}, limit=120)
        url = h.stack.rpc_urls[network]
        finalized = int(processes.rpc(url, "eth_getBlockByNumber", ["finalized", False])["number"], 16)
        receipt = processes.rpc(url, "eth_getTransactionReceipt", [final["tx_hash"]])
        assert int(receipt["blockNumber"], 16) <= finalized and final["confirmations"] >= 64
        assert confirming["tx_hash"] == final["tx_hash"]
    finally:
        await close_harness(h)
