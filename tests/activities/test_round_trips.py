"""RPC cost of confirmed native withdrawals, counted by the engine's own ChainRpc against real anvils:
each withdrawal's own round trips (one batch to sign, one send) plus what the block watcher reads once
per block, never a receipt poll per withdrawal. And the watcher's view of a reorg, which is what lets
a withdrawal wait without calls of its own."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from activities.blocks import BlockWatcher, Receipt
from activities.rpc import ChainRpc
from devstack import processes
from tests.invariants import assert_invariants
from tests.stack import BLOCK_TIME, NETWORKS, Harness, Stack, native_body, new_wallet

NETWORK = "ethereum"
T = TypeVar("T")


@dataclass
class Cost:
    n: int
    calls: Counter[str]  # JSON-RPC methods the engine called on the network
    requests: int  # HTTP round trips (a batch is one)
    blocks: int  # blocks mined meanwhile

    @property
    def per_withdrawal(self) -> tuple[float, float]:
        return self.requests / self.n, sum(self.calls.values()) / self.n


def _head(url: str) -> int:
    return int(processes.rpc(url, "eth_blockNumber", []), 16)


async def _confirm(h: Harness, n: int) -> Cost:
    """POST `n` native withdrawals at once and count the engine's calls until all are CONFIRMED."""
    rpc, url = h.engine.chains[NETWORK], h.stack.rpc_urls[NETWORK]
    before, requests, head = Counter(rpc.calls), rpc.requests, _head(url)
    bodies = [native_body(NETWORK, new_wallet()[0], f"0.0{i + 1:02d}") for i in range(n)]
    responses = await asyncio.gather(*(h.request(b) for b in bodies))
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    ids = [r.json()["id"] for r in responses]
    finals = await asyncio.gather(
        *(h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION", "FAILED"}, 120) for wid in ids)
    )
    assert [f["status"] for f in finals] == ["CONFIRMED"] * n, finals
    calls = Counter(rpc.calls)
    calls.subtract(before)
    cost = Cost(n=n, calls=+calls, requests=rpc.requests - requests, blocks=_head(url) - head)
    await assert_invariants(h, ids)
    return cost


def _assert_per_block_shape(cost: Cost) -> None:
    """What a withdrawal calls itself (the recipient's code, in a batch with what the head block
    needs; one send) and what is read once per block whatever the number of withdrawals."""
    n, c, blocks = cost.n, cost.calls, max(cost.blocks, 1)
    assert c["eth_sendRawTransaction"] == n, c  # no resend: each was mined at once
    assert c["eth_getCode"] <= n, c
    for own in ("eth_getTransactionReceipt", "eth_blockNumber"):
        assert c[own] == 0, (own, c)  # no receipt poll, no head read per withdrawal
    # The balance (admission's, and signing's with the wallet's count, read together) at each head
    # block: once per block each, not once per withdrawal.
    assert c["eth_getBalance"] <= 2 * (blocks + 1), c
    assert c["eth_getTransactionCount"] <= blocks + 1, c
    assert c["eth_maxPriorityFeePerGas"] <= blocks + 1, c  # one fee quote per block
    assert c["eth_getBlockReceipts"] <= 2 * (blocks + 1), c  # inclusion and depth, per block
    assert c["eth_getBlockByNumber"] <= 3 * (blocks + 1), c  # the watcher's polls
    assert cost.requests <= 2 * n + 4 * (blocks + 1), cost


async def test_one_confirmed_withdrawal_costs_its_send_a_batch_and_a_share_of_each_block(
    harness: Harness,
) -> None:
    cost = await _confirm(harness, 1)
    _assert_per_block_shape(cost)
    # Besides following the head: the balances at admission, one batch to sign (fee quote, the
    # recipient's code, the balance and count at the head block), the send, the receipts when mined
    # and at depth. Before the watcher answered receipts and quotes: 9 such calls, each its own round
    # trip (21 in all).
    polls = cost.calls["eth_getBlockByNumber"]
    assert sum(cost.calls.values()) - polls <= 8, cost
    assert cost.requests - polls <= 6, cost


async def test_twenty_concurrent_withdrawals_cost_about_three_round_trips_each(harness: Harness) -> None:
    cost = await _confirm(harness, 20)
    _assert_per_block_shape(cost)
    requests, calls = cost.per_withdrawal
    # Before: 11.2 calls per withdrawal (224 for 20), each its own round trip.
    assert requests <= 4.0, cost
    assert calls <= 6.0, cost


async def _until(probe: Callable[[], Awaitable[T | None]], limit: float = 20) -> T:
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = await probe()
        if value is not None:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {probe.__name__}"
        await asyncio.sleep(0.05)


async def test_the_watcher_follows_a_reorg_and_then_cannot_confirm(stack: Stack) -> None:
    """A block replaced under a waiting confirmation: the watcher holds the new block at that height
    and answers "check directly" (the direct check proves the reorg), never a confirmation."""
    network = "polygon"  # anvil_reorg drops the transactions of the blocks it replaces: ours only
    url = stack.rpc_urls[network]
    async with httpx.AsyncClient() as http:
        rpc = ChainRpc(network, [url], chain_id=NETWORKS[network][0], http=http)
        sender = processes.rpc(url, "eth_accounts")[0]
        watcher = BlockWatcher(rpc, BLOCK_TIME, senders=[sender])
        try:
            tx = processes.rpc(
                url, "eth_sendTransaction", [{"from": sender, "to": new_wallet()[0], "value": "0x1"}]
            )

            async def included() -> Receipt | None:
                return (await watcher.inclusion([tx]))[0] if watcher.healthy else None

            with watcher.watching([tx]):
                receipt = await _until(included)
            number, block_hash, target = receipt.block_number, receipt.block_hash, receipt.block_number + 2
            receipts_read = rpc.calls["eth_getBlockReceipts"]

            async def confirmed() -> Receipt | None:
                return (await watcher.confirmation([tx], number, block_hash, target))[0]

            with watcher.watching([tx], confirm=(number, target)):
                assert (await _until(confirmed)).block_hash == block_hash
                # One read when it was mined, one more at the required depth: no receipt by hash.
                assert rpc.calls["eth_getBlockReceipts"] == receipts_read + 1, rpc.calls
                assert rpc.calls["eth_getTransactionReceipt"] == 0, rpc.calls
                depth = _head(url) - number + 3  # blocks may come between the two calls
                processes.rpc(url, "anvil_reorg", [depth, []])

                async def replaced() -> str | None:
                    seen = watcher.hash_at(number)
                    return seen if seen is not None and seen != block_hash else None

                await _until(replaced)
                assert await watcher.confirmation([tx], number, block_hash, target) == (None, True)
                assert await watcher.inclusion([tx]) == (None, False)  # dropped: in no block it holds
        finally:
            await watcher.aclose()
