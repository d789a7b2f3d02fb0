"""Building transactions against a real anvil: gas limits for native sends to contracts, and the
absolute fee ceiling of cancellations and nonce fills."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from activities.fees import FeeAboveCap
from activities.rpc import ChainRpc
from activities.transactions import fee_cap, quote_fees
from devstack import processes
from models import repo
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
