"""Thousands of withdrawals wait in one worker process: what each wait costs must not grow with how
many there are, nor turn into a flood of requests when the block watcher falls behind."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities import confirmations
from activities.blocks import Receipt
from activities.confirmations import ConfirmationActivities
from activities.rpc import Chains
from models.domain import AwaitInput, Inclusion, InclusionOutcome
from models.tables import TxAttempt, Withdrawal
from settings import AssetLimits, EngineConfig, NetworkConfig


class StaleWatcher:
    """A block watcher that has fallen behind (not healthy): every wait must look for itself."""

    healthy = False
    head = 100

    async def ready(self, within: float) -> bool:
        return False

    def covers(self, tx_hash: str, signed_at: datetime) -> bool:
        return True

    async def wait_next_block(self, at_most: float) -> None:
        await asyncio.sleep(0.005)


def _activities() -> tuple[ConfirmationActivities, Chains]:
    cfg = NetworkConfig(
        chain_id=31337,
        rpc_urls=["http://127.0.0.1:1"],
        native_asset="ETH",
        fee_model="eip1559",
        required_confirmations=1,
        hot_wallets=["0x" + "11" * 20],
        block_time_seconds=1,
        max_fee_per_gas_cap_gwei=Decimal(1),
        limits={
            "ETH": AssetLimits(
                per_transaction=Decimal(1), daily_per_user=Decimal(1), approval_threshold=Decimal(1)
            )
        },
    )
    config = EngineConfig.model_validate({"networks": {"ethereum": cfg.model_dump()}})
    chains = Chains(config.networks)
    return ConfirmationActivities(None, chains, config), chains  # type: ignore[arg-type]


def _waiting(n: int) -> tuple[Withdrawal, list[TxAttempt], AwaitInput]:
    wid = str(uuid.uuid4())
    w = Withdrawal(
        id=wid, client_id="c", idempotency_key=wid, fingerprint="f", user_id="u", network="ethereum",
        asset="ETH", to_address="0x" + "22" * 20, amount=1, decimals=18, status="BROADCAST",
        required_confirmations=1,
    )  # fmt: skip
    attempt = TxAttempt(
        withdrawal_id=wid, purpose="WITHDRAWAL", network="ethereum", hot_wallet="0x" + "11" * 20,
        nonce=n, tx_hash=f"0x{n:064x}", raw_tx="0x", tx_type=2, gas_limit=21_000,
        created_at=datetime.now(UTC),
    )  # fmt: skip
    return w, [attempt], AwaitInput(withdrawal_id=wid, required_confirmations=1, until_included_only=True)


async def test_a_stale_watcher_sends_only_a_few_waits_to_the_node_at_once() -> None:
    acts, chains = _activities()
    in_flight, most, looked = 0, 0, set()

    async def look(rpc: Any, blocks: Any, wid: str, *args: Any) -> Inclusion:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)  # a node answering slowly
        in_flight -= 1
        looked.add(wid)
        return Inclusion(outcome=InclusionOutcome.INCLUDED, tx_hash="0x" + "ab" * 32, block_number=99)

    acts._check_or_none = look  # type: ignore[assignment, method-assign]

    async def wait(n: int) -> Inclusion:
        w, attempts, inp = _waiting(n)
        stale: Any = StaleWatcher()
        return await ActivityEnvironment().run(acts._follow, w, attempts, inp, stale)

    try:
        done = await asyncio.wait_for(asyncio.gather(*(wait(n) for n in range(200))), 60)
    finally:
        await chains.aclose()
    assert len(looked) == 200 and all(d.outcome is InclusionOutcome.INCLUDED for d in done)
    assert 1 <= most <= confirmations.DIRECT_LOOKS, most  # never all 200 at once


class KnowingWatcher(StaleWatcher):
    """A healthy watcher that has the receipt of every transaction it is asked about."""

    healthy = True

    def covers(self, tx_hash: str, signed_at: datetime) -> bool:
        return False  # so a direct look is due at once

    async def inclusion(self, hashes: list[str]) -> tuple[Receipt, bool]:
        return Receipt(
            tx_hash=hashes[0], block_number=99, block_hash="0x" + "cd" * 32, success=True, fee_wei=1
        ), False


async def test_a_wait_whose_direct_look_finds_no_slot_still_hears_from_a_healthy_watcher() -> None:
    """Every direct-look slot busy (other waits at a slow node) and a look due: the wait must still
    take the receipt the watcher holds, not loop until a slot frees."""
    acts, chains = _activities()
    looks = acts._direct_looks.setdefault("ethereum", asyncio.Semaphore(confirmations.DIRECT_LOOKS))
    for _ in range(confirmations.DIRECT_LOOKS):
        await looks.acquire()  # held by others for the whole test

    async def settled(wid: str, attempts: Any, receipt: Receipt, head: int, inp: Any) -> Inclusion:
        return Inclusion(outcome=InclusionOutcome.INCLUDED, tx_hash=receipt.tx_hash, block_number=99)

    acts._settle_seen = settled  # type: ignore[method-assign, assignment]
    w, attempts, inp = _waiting(1)
    knowing: Any = KnowingWatcher()
    try:
        got = await asyncio.wait_for(ActivityEnvironment().run(acts._follow, w, attempts, inp, knowing), 5)
    finally:
        await chains.aclose()
    assert got.outcome is InclusionOutcome.INCLUDED and got.tx_hash == attempts[0].tx_hash
