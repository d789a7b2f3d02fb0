"""Building transactions against a real anvil: gas limits for native sends to contracts, the
absolute fee ceiling of cancellations and nonce fills, and the funds check right before signing."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from temporalio.exceptions import ApplicationError

from activities.broadcast import resendable
from activities.fees import FeeAboveCap
from activities.rpc import ChainRpc
from activities.transactions import Funds, fee_cap, quote_fees
from devstack import processes
from models import repo
from models.domain import NoncePurpose, TxOutcome, TxPurpose, WithdrawalStatus
from models.tables import NonceAllocation, Withdrawal
from tests.rows import attempt_row, withdrawal_row
from tests.stack import Harness, Stack, native_body, new_wallet

# A contract whose fallback writes three fresh storage slots (~66k gas): more than the native cap.
HUNGRY = "0x60016000556001600155600160025500"
CHEAP = "0x00"  # STOP: accepts plain transfers


async def test_native_send_to_a_contract_is_gas_capped_or_refused(harness: Harness) -> None:
    # Two networks: the refused one keeps its nonce (parked), which would hold the next one back.
    hungry, cheap = new_wallet()[0], new_wallet()[0]
    processes.rpc(harness.stack.rpc_urls["ethereum"], "anvil_setCode", [hungry, HUNGRY])
    url = harness.stack.rpc_urls["bsc"]
    processes.rpc(url, "anvil_setCode", [cheap, CHEAP])
    refused = (await harness.request(native_body("ethereum", hungry, "0.01"))).json()["id"]
    parked = await harness.wait_status(refused, {"NEEDS_ATTENTION", "CONFIRMED"})
    assert parked["status"] == "NEEDS_ATTENTION" and parked["error"]["code"] == "GAS_ABOVE_CAP", parked
    ok = (await harness.request(native_body("bsc", cheap, "0.01"))).json()["id"]
    assert (await harness.wait_status(ok, {"CONFIRMED", "NEEDS_ATTENTION"}))["status"] == "CONFIRMED"
    cap = harness.config.networks["bsc"].native_contract_gas_limit_cap
    async with harness.db.read() as s:
        assert await repo.attempts_for(s, refused) == []
        (attempt,) = await repo.attempts_for(s, ok)
    assert 21_000 < attempt.gas_limit <= cap
    assert int(processes.rpc(url, "eth_getBalance", [cheap, "latest"]), 16) == 10**16


async def test_cancellations_have_an_absolute_fee_ceiling(stack: Stack, harness: Harness) -> None:
    cfg = harness.config.networks["polygon"]
    async with httpx.AsyncClient() as http:
        rpc = ChainRpc("polygon", [stack.rpc_urls["polygon"]], chain_id=cfg.chain_id, http=http)
        base = int((await rpc.block("latest") or {})["baseFeePerGas"], 16)
        priority = await rpc.max_priority_fee() or int(cfg.priority_fee_gwei * 10**9)
        need = Decimal(base + priority) / 10**9  # gwei: what an EIP-1559 quote needs per gas
        # A cap so low that even the ceiling (cap x multiple) is below what a quote needs: no quote.
        low = cfg.model_copy(update={"max_fee_per_gas_cap_gwei": need / 10})
        with pytest.raises(FeeAboveCap):
            await quote_fees(low, rpc, capped=False)
        # Half of what is needed: a withdrawal waits, a cancel pays above the cap, within the ceiling.
        mid = cfg.model_copy(update={"max_fee_per_gas_cap_gwei": need / 2})
        with pytest.raises(FeeAboveCap):
            await quote_fees(mid, rpc, capped=True)
        fees = await quote_fees(mid, rpc, capped=False)
        assert fee_cap(mid) < fees.per_gas_ceiling <= fee_cap(mid) * mid.cancel_fee_cap_multiple


def _withdrawal_at(wallet: str, nonce: int, asset: str, amount: int) -> Withdrawal:
    return withdrawal_row(
        amount,
        to_address=new_wallet()[0],
        asset=asset,
        status=WithdrawalStatus.BROADCAST,
        required_confirmations=1,
        hot_wallet=wallet,
        nonce=nonce,
    )


async def test_funds_read_at_a_block_count_what_the_engine_signed_at_the_nonces_in_between(
    harness: Harness,
) -> None:
    """Balances read at a block (shared by every signature at that head) are what the wallet had with
    its nonces below the block's count sent. Only its own transactions can take from it, so the nonces
    between that count and this one are charged at their costliest attempt (value + gas x fee
    ceiling; a cancellation's value is 0; tokens only for the same token), one with nothing signed
    at its amount and the most its fee may be. That bound decides; only when a nonce in between is
    not the engine's to bound (sent outside it, a fill, not allocated) does the node's pending
    balance. The wallet here has nothing on chain, so a check passes only if the block read passes
    it, until the chain says otherwise."""
    cfg = harness.config.networks["ethereum"]
    acts, rpc = harness.engine.transactions, harness.engine.chains["ethereum"]
    url = harness.stack.rpc_urls["ethereum"]
    wallet, gwei = new_wallet()[0], 10**9
    a = _withdrawal_at(wallet, 10, "ETH", 5 * 10**18)  # replaced once: its costlier attempt counts
    b = _withdrawal_at(wallet, 11, "USDT", 7 * 10**6)  # a token transfer: its fee in coins, 7 USDT
    c = _withdrawal_at(wallet, 12, "ETH", 2 * 10**18)  # cancelled: only the cancellation's fee
    d = _withdrawal_at(wallet, 13, "ETH", 10**18)  # nothing signed yet: its amount and most fee
    mine = _withdrawal_at(wallet, 14, "ETH", 10**18)
    token = _withdrawal_at(wallet, 14, "USDT", 3 * 10**6)
    async with harness.db.transaction() as s:
        for w, nonce in ((a, 10), (b, 11), (c, 12), (d, 13), (mine, 14)):
            s.add(w)
            s.add(NonceAllocation(network="ethereum", hot_wallet=wallet, nonce=nonce, withdrawal_id=w.id))
        s.add_all(
            [
                attempt_row(a, TxPurpose.WITHDRAWAL, 0, 21_000, 100 * gwei),
                attempt_row(a, TxPurpose.WITHDRAWAL, 1, 21_000, 200 * gwei),
                attempt_row(b, TxPurpose.WITHDRAWAL, 0, 60_000, 100 * gwei),
                attempt_row(c, TxPurpose.CANCEL, 0, 21_000, 300 * gwei),
            ]
        )
    spent = 5 * 10**18 + 21_000 * 200 * gwei + 60_000 * 100 * gwei + 21_000 * 300 * gwei
    spent += d.amount + cfg.fee_allowance_wei("ETH")
    fee = 21_000 * 100 * gwei
    need = spent + mine.amount + fee

    async def check(w: Withdrawal, coins: int, tokens: int | None = None, count: int = 10) -> bool:
        try:
            await acts._check_funds(w, cfg, rpc, Funds(coins, tokens, count=count), fee)
        except ApplicationError as e:
            assert e.type == "INSUFFICIENT_HOT_WALLET_FUNDS", e
            return False
        return True

    assert await check(mine, need)
    assert not await check(mine, need - 1)  # short by one wei at the block; nothing on chain either
    assert await check(mine, mine.amount + fee, count=14)  # nothing in between: the balance alone
    assert not await check(mine, mine.amount + fee - 1, count=14)
    assert not await check(mine, need, count=9)  # nonce 9 is not the engine's: the chain decides
    assert await check(token, spent + fee, 10 * 10**6)  # a token transfer pays only its fee in coins
    assert not await check(token, spent + fee - 1, 10 * 10**6)
    assert not await check(token, 10**30, 10 * 10**6 - 1)  # 7 of the 10 USDT are taken by nonce 11
    # The bound decides: the node's pending balance, which does not see what the engine signed and
    # has not sent yet, is not asked even when it would say yes.
    processes.rpc(url, "anvil_setBalance", [wallet, hex(need)])
    assert not await check(mine, need - 1)
    async with harness.db.transaction() as s:  # nonce 12 was taken by a transaction outside the engine
        await repo.mark_allocation(s, "ethereum", wallet, 12, purpose=NoncePurpose.EXTERNAL)
    # Now nothing bounds nonce 12: the pending balance decides, whatever was read at the block.
    assert await check(mine, 0)
    processes.rpc(url, "anvil_setBalance", [wallet, "0x0"])
    assert not await check(mine, 10**30)


def test_once_a_cancellation_is_signed_only_cancellations_are_sent_again() -> None:
    """A cancel accepted after signing but before the broadcast: if a node then loses the
    cancellation, a resend must not put the withdrawal's own bytes on it (they would pay out)."""
    w = _withdrawal_at(new_wallet()[0], 3, "ETH", 10**18)
    original = attempt_row(w, TxPurpose.WITHDRAWAL, 0, 21_000, 10)
    bumped = attempt_row(w, TxPurpose.WITHDRAWAL, 1, 21_000, 12)
    assert resendable([original, bumped]) == [original, bumped]
    bumped.outcome = TxOutcome.FAILED
    assert resendable([original, bumped]) == [original]
    cancel = attempt_row(w, TxPurpose.CANCEL, 0, 21_000, 20)
    assert resendable([original, bumped, cancel]) == [cancel]
    cancel.outcome = TxOutcome.FAILED  # e.g. the node refused the cancellation: still never the original
    assert resendable([original, bumped, cancel]) == []
