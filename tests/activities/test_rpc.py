"""The RPC client against real endpoints misbehaving: 429, 5xx, timeouts, wrong chain; failover."""

from __future__ import annotations

import httpx
import pytest

from activities.rpc import ChainIdMismatch, ChainRpc, RpcError, RpcUnavailable
from activities.rpc_errors import RpcErrorKind
from tests.rpc_proxy import RpcProxy
from tests.stack import Stack, new_wallet


@pytest.mark.parametrize(
    ("status", "kind"), [(429, RpcErrorKind.RATE_LIMITED), (502, RpcErrorKind.SERVER_ERROR)]
)
async def test_rate_limited_and_5xx_endpoints_fail_over(
    stack: Stack, status: int, kind: RpcErrorKind
) -> None:
    bad = RpcProxy(stack.rpc_urls["ethereum"])
    await bad.start()
    bad.fail_status = status
    try:
        async with httpx.AsyncClient() as http:
            alone = ChainRpc("ethereum", [bad.url], chain_id=31337, http=http)
            with pytest.raises(RpcUnavailable) as err:
                await alone.block_number()
            assert err.value.kind is kind
            pair = ChainRpc("ethereum", [bad.url, stack.rpc_urls["ethereum"]], chain_id=31337, http=http)
            assert await pair.block_number() > 0
            assert pair._ordered()[0] == stack.rpc_urls["ethereum"]  # the failing one is skipped for a while
    finally:
        await bad.stop()


async def test_a_slow_endpoint_times_out_and_the_next_one_answers(stack: Stack) -> None:
    slow = RpcProxy(stack.rpc_urls["bsc"])
    await slow.start()
    slow.delay = 2.0
    try:
        async with httpx.AsyncClient() as http:
            alone = ChainRpc("bsc", [slow.url], chain_id=31338, timeout=0.5, http=http)
            with pytest.raises(RpcUnavailable) as err:
                await alone.pending_nonce(new_wallet()[0])
            assert err.value.kind is RpcErrorKind.TIMEOUT
            pair = ChainRpc("bsc", [slow.url, stack.rpc_urls["bsc"]], chain_id=31338, timeout=0.5, http=http)
            assert await pair.pending_nonce(new_wallet()[0]) == 0
    finally:
        await slow.stop()


async def test_node_errors_are_classified_not_failed_over(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        rpc = ChainRpc("polygon", [stack.rpc_urls["polygon"]], chain_id=31339, http=http)
        with pytest.raises(RpcError) as err:
            await rpc.send_raw("0x02deadbeef")
        assert err.value.kind is RpcErrorKind.UNKNOWN and err.value.message
        wrong = ChainRpc("polygon", [stack.rpc_urls["bsc"]], chain_id=31339, http=http)
        with pytest.raises(ChainIdMismatch):
            await wrong.block_number()


async def test_resending_is_answered_already_known_or_nonce_too_low_and_both_count_as_sent(harness) -> None:  # type: ignore[no-untyped-def]
    from models.domain import BroadcastInput
    from tests.stack import native_body

    network = "ethereum"
    with harness.stack.mining_paused(network):
        wid = (await harness.request(native_body(network, new_wallet()[0], "0.01"))).json()["id"]
        w = await harness.wait_status(wid, {"BROADCAST"})
        again = BroadcastInput(withdrawal_id=wid, tx_hash=w["tx_hash"])
        assert await harness.engine.broadcast.broadcast_transaction(again) == w["tx_hash"]  # "already known"
    await harness.wait_status(wid, {"CONFIRMED"})
    assert (
        await harness.engine.broadcast.broadcast_transaction(again) == w["tx_hash"]
    )  # "nonce too low", ours mined


async def test_insufficient_funds_at_broadcast_waits_for_funds(stack: Stack, db_url: str) -> None:
    from devstack import chain
    from tests.invariants import assert_invariants
    from tests.stack import close_harness, make_harness, native_body

    network = "polygon"
    proxy = RpcProxy(stack.rpc_urls[network])
    await proxy.start()
    h = await make_harness(stack, db_url, rpc_urls={network: [proxy.url]})
    wallet = h.config.networks[network].hot_wallets[0]
    try:
        proxy.hold_sends()
        wid = (await h.request(native_body(network, new_wallet()[0], "5"))).json()["id"]
        while not proxy.held:
            await __import__("asyncio").sleep(0.05)
        chain.set_balance(stack.rpc_urls[network], wallet, 10**15)  # the wallet is drained behind our back
        proxy.release_sends()
        waiting = await h.wait_status(wid, {"WAITING_FOR_FUNDS", "NEEDS_ATTENTION", "CONFIRMED"})
        assert (
            waiting["status"] == "WAITING_FOR_FUNDS"
            and waiting["error"]["code"] == "INSUFFICIENT_HOT_WALLET_FUNDS"
        )
        chain.set_balance(stack.rpc_urls[network], wallet, 1000 * 10**18)
        assert (await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION"}))["status"] == "CONFIRMED"
        await assert_invariants(h, [wid])
    finally:
        await close_harness(h)
        await proxy.stop()


async def _broadcast_crafted(harness, network: str, wid: str, **tx_fields: object) -> str:  # type: ignore[no-untyped-def]
    """Sign a transaction at the withdrawal's nonce with the given fields, record it, broadcast it."""
    from temporalio.exceptions import ApplicationError

    from models import repo
    from models.domain import BroadcastInput
    from models.tables import TxAttempt

    async with harness.db.read() as s:
        w = await repo.get_withdrawal(s, wid)
        seq = len(await repo.attempts_for(s, wid))
    assert w is not None and w.hot_wallet is not None and w.nonce is not None
    cfg = harness.config.networks[network]
    tx = {
        "to": w.hot_wallet,
        "value": 0,
        "nonce": w.nonce,
        "chainId": cfg.chain_id,
        "gas": 21_000,
        **tx_fields,
    }
    raw, tx_hash = harness.engine.signer.sign(w.hot_wallet, tx)
    async with harness.db.transaction() as s:
        s.add(
            TxAttempt(
                withdrawal_id=wid,
                purpose="WITHDRAWAL",
                seq=100 + seq,
                network=network,
                hot_wallet=w.hot_wallet,
                nonce=w.nonce,
                tx_hash=tx_hash,
                raw_tx=raw,
                tx_type=2,
                gas_limit=int(tx["gas"]),
            )
        )
    try:
        await harness.engine.broadcast.broadcast_transaction(
            BroadcastInput(withdrawal_id=wid, tx_hash=tx_hash)
        )
    except ApplicationError as e:
        return str(e.type)
    return "sent"


async def test_broadcast_maps_node_refusals_to_their_handling(harness) -> None:  # type: ignore[no-untyped-def]
    """replacement underpriced / fee below base fee → UNDERPRICED (the workflow bumps fees);
    intrinsic gas too low → BROADCAST_REJECTED (NEEDS_ATTENTION)."""
    from devstack import processes
    from tests.stack import native_body

    network = "ethereum"
    url = harness.stack.rpc_urls[network]
    with harness.stack.mining_paused(network):
        wid = (await harness.request(native_body(network, new_wallet()[0], "0.01"))).json()["id"]
        w = await harness.wait_status(wid, {"BROADCAST"})
        pending = processes.rpc(url, "eth_getTransactionByHash", [w["tx_hash"]])
        same_fees = {
            "maxFeePerGas": int(pending["maxFeePerGas"], 16),
            "maxPriorityFeePerGas": int(pending["maxPriorityFeePerGas"], 16),
            "type": 2,
        }
        assert await _broadcast_crafted(harness, network, wid, **same_fees) == "UNDERPRICED"
        assert (
            await _broadcast_crafted(harness, network, wid, maxFeePerGas=1, maxPriorityFeePerGas=1, type=2)
            == "UNDERPRICED"
        )
        assert (
            await _broadcast_crafted(
                harness,
                network,
                wid,
                gas=20_000,
                **{
                    **same_fees,
                    "maxFeePerGas": same_fees["maxFeePerGas"] * 2,
                    "maxPriorityFeePerGas": same_fees["maxPriorityFeePerGas"] * 2,
                },
            )
            == "BROADCAST_REJECTED"
        )
    assert (await harness.wait_status(wid, {"CONFIRMED"}))["tx_hash"] == w["tx_hash"]
