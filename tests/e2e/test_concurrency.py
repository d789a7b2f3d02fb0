"""30+ concurrent withdrawals from one hot wallet: all confirmed, nonces contiguous, each paid once."""

from __future__ import annotations

import asyncio

from devstack import processes
from models import repo
from tests.invariants import assert_invariants
from tests.stack import Harness, native_body, new_wallet


async def test_many_concurrent_withdrawals_from_one_hot_wallet(harness: Harness) -> None:
    network = "ethereum"
    wallet = harness.config.networks[network].hot_wallets[0]
    url = harness.stack.rpc_urls[network]
    start_nonce = int(processes.rpc(url, "eth_getTransactionCount", [wallet, "latest"]), 16)
    recipients = [new_wallet()[0] for _ in range(32)]
    responses = await asyncio.gather(
        *(harness.request(native_body(network, to, f"0.{i + 1:03d}")) for i, to in enumerate(recipients))
    )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
    ids = [r.json()["id"] for r in responses]
    calls_before = dict(harness.engine.chains[network].calls)
    finals = await asyncio.gather(
        *(harness.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION", "FAILED"}, 180) for wid in ids)
    )
    assert [f["status"] for f in finals] == ["CONFIRMED"] * 32, [
        f for f in finals if f["status"] != "CONFIRMED"
    ]
    for i, to in enumerate(recipients):
        bal = int(processes.rpc(url, "eth_getBalance", [to, "latest"]), 16)
        assert bal == (i + 1) * 10**15, (i, bal)
    async with harness.db.transaction() as s:
        nonces = sorted([a.nonce for a in await repo.nonce_allocations(s, network, wallet)])
    assert nonces == list(range(start_nonce, start_nonce + 32))
    assert int(processes.rpc(url, "eth_getTransactionCount", [wallet, "latest"]), 16) == start_nonce + 32
    await assert_invariants(harness, ids)
    # Block watcher: receipts are read when a block names our transaction, not polled per withdrawal.
    calls = harness.engine.chains[network].calls
    receipts = calls["eth_getTransactionReceipt"] - calls_before.get("eth_getTransactionReceipt", 0)
    assert receipts <= 3 * 32, receipts
