"""A node that answers null for mined transactions (a lagging or pruned node behind a load balancer)
can delay a withdrawal, never make it pay twice: the engine proves from blocks who holds the nonce
and that the including block is unchanged, instead of re-signing or declaring a reorg."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devstack import processes
from models import repo
from models.domain import HistoryKind, WithdrawalStatus
from tests.invariants import assert_invariants
from tests.rpc_proxy import RpcProxy
from tests.stack import Harness, Stack, close_harness, make_harness, native_body, new_wallet

NETWORK = "ethereum"
LIE_SECONDS = 15


@pytest.fixture
async def lying(stack: Stack, db_url: str) -> AsyncIterator[tuple[Harness, RpcProxy]]:
    proxy = RpcProxy(stack.rpc_urls[NETWORK])
    await proxy.start()
    h = await make_harness(
        stack,
        db_url,
        rpc_urls={NETWORK: [proxy.url]},
        network_overrides={"stuck_after_blocks": 2, "required_confirmations": 6},
    )
    try:
        yield h, proxy
    finally:
        await close_harness(h)
        await proxy.stop()


def _balance(h: Harness, address: str) -> int:
    return int(processes.rpc(h.stack.rpc_urls[NETWORK], "eth_getBalance", [address, "latest"]), 16)


async def _paid_once(h: Harness, wid: str, to: str, amount: int) -> list[Any]:
    final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION", "FAILED", "CANCELLED"}, limit=120)
    assert final["status"] == "CONFIRMED", final
    assert _balance(h, to) == amount, "paid more than once (or not at all)"
    async with h.db.read() as s:
        attempts = await repo.attempts_for(s, wid)
        allocs = [
            a for a in await repo.nonce_allocations(s, NETWORK, h.config.networks[NETWORK].hot_wallets[0])
        ]
    assert {a.nonce for a in attempts} == {final_nonce(allocs, wid)}, "signed at more than one nonce"
    history = await h.history(wid)
    assert not any(e.kind in (HistoryKind.NONCE_REALIGNED, HistoryKind.REORG) for e in history), history
    await assert_invariants(h, [wid])
    return history


def final_nonce(allocs: list[Any], wid: str) -> int:
    mine = [a.nonce for a in allocs if a.withdrawal_id == wid]
    assert len(mine) == 1, mine
    return int(mine[0])


async def test_null_receipts_at_inclusion_do_not_pay_twice(lying: tuple[Harness, RpcProxy]) -> None:
    h, proxy = lying
    to = new_wallet()[0]
    with h.stack.mining_paused(NETWORK):
        wid = (await h.request(native_body(NETWORK, to, "0.25"))).json()["id"]
        await h.wait_status(wid, {"BROADCAST"})
        proxy.hide_transactions = True  # from now on no node admits knowing any transaction
        await asyncio.sleep(2.5)  # stuck while nothing is mined: a replacement at the same nonce
    await asyncio.sleep(LIE_SECONDS)  # mined now, but receipts and lookups answer null
    assert proxy.hidden > 0
    during = await h.status(wid)
    assert during["status"] in {"BROADCAST", "CONFIRMING"}, during
    assert _balance(h, to) == 25 * 10**16
    proxy.hide_transactions = False
    history = await _paid_once(h, wid, to, 25 * 10**16)
    statuses = [e.status for e in history if e.kind is HistoryKind.STATUS]
    assert WithdrawalStatus.CONFIRMING in statuses


async def test_null_receipts_during_confirmation_are_not_a_reorg(lying: tuple[Harness, RpcProxy]) -> None:
    h, proxy = lying
    to = new_wallet()[0]
    wid = (await h.request(native_body(NETWORK, to, "0.4"))).json()["id"]
    await h.wait_status(wid, {"CONFIRMING"})
    proxy.hide_transactions = True
    await asyncio.sleep(LIE_SECONDS)
    assert proxy.hidden > 0
    assert (await h.status(wid))["status"] == "CONFIRMING"  # waits: a null receipt proves nothing
    proxy.hide_transactions = False
    await _paid_once(h, wid, to, 4 * 10**17)


async def test_a_node_behind_the_including_block_is_not_a_reorg(lying: tuple[Harness, RpcProxy]) -> None:
    """A node that has neither the receipt nor the block that included it (one lagging behind, e.g.
    a failover endpoint) proves nothing: the withdrawal keeps waiting, no reorg is recorded, no
    `withdrawal.reorged`, and it confirms once the node has caught up."""
    h, proxy = lying
    to = new_wallet()[0]
    wid = (await h.request(native_body(NETWORK, to, "0.45"))).json()["id"]
    mined = await h.wait_status(wid, {"CONFIRMING"})
    async with h.db.read() as s:
        w = await repo.get_withdrawal(s, wid)
    assert w is not None and w.block_number is not None
    proxy.hide_transactions, proxy.hide_blocks_from = True, w.block_number
    await asyncio.sleep(LIE_SECONDS)
    assert proxy.hidden > 0
    assert (await h.status(wid))["status"] == "CONFIRMING", mined
    proxy.hide_transactions, proxy.hide_blocks_from = False, None
    history = await _paid_once(h, wid, to, 45 * 10**16)
    statuses = [e.status for e in history if e.kind is HistoryKind.STATUS]
    assert WithdrawalStatus.BROADCAST not in statuses[statuses.index(WithdrawalStatus.CONFIRMING) :]


async def test_the_nonce_holder_is_proven_from_blocks_or_unproven(stack: Stack) -> None:
    """`find_nonce_holder` against a real node: the sender and nonce in a block decide, at depth."""
    from eth_account import Account

    from activities.proof import find_nonce_holder
    from activities.rpc import ChainRpc
    from devstack import chain
    from models.domain import NonceHolderOutcome
    from models.tables import TxAttempt
    from tests.stack import NETWORKS, new_wallet

    url = stack.rpc_urls["polygon"]
    wallet, key = new_wallet()
    await asyncio.to_thread(chain.set_balance, url, wallet, 10**18)
    w3 = chain.web3_for(url)
    tx = {"to": new_wallet()[0], "value": 1, "gas": 21_000, "gasPrice": w3.eth.gas_price * 2, "nonce": 0}
    signed = Account.sign_transaction(tx | {"chainId": NETWORKS["polygon"][0]}, key)
    sent = w3.eth.send_raw_transaction(signed.raw_transaction)
    await asyncio.to_thread(w3.eth.wait_for_transaction_receipt, sent, 30, 0.1)
    tx_hash = "0x" + sent.hex().removeprefix("0x")
    async with httpx.AsyncClient() as http:
        rpc = ChainRpc("polygon", [url], chain_id=NETWORKS["polygon"][0], http=http)
        unused = await find_nonce_holder(rpc, wallet, 1, [], required_depth=1)
        assert unused.outcome is NonceHolderOutcome.UNPROVEN  # the chain has not used nonce 1
        shallow = await find_nonce_holder(rpc, wallet, 0, [], required_depth=10_000)
        assert shallow.outcome is NonceHolderOutcome.UNPROVEN and tx_hash in shallow.detail
        external = await find_nonce_holder(rpc, wallet, 0, [], required_depth=1)
        assert external.outcome is NonceHolderOutcome.EXTERNAL and external.tx_hash == tx_hash
        ours = TxAttempt(
            withdrawal_id="w", purpose="WITHDRAWAL", network="polygon", hot_wallet=wallet, nonce=0,
            tx_hash=tx_hash, raw_tx="0x", tx_type=0, gas_limit=21_000,
        )  # fmt: skip
        mine = await find_nonce_holder(rpc, wallet, 0, [ours], required_depth=10_000)  # ours: any depth
        assert mine.outcome is NonceHolderOutcome.OURS and mine.block_number > 0 and mine.block_hash
