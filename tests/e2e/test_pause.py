"""The kill switch (DESIGN §6.1 pause/resume): while a pause covers a network or hot wallet nothing new
is signed or broadcast there, requests are still accepted, confirmations go on, and the pause holds
across a restart of the worker. Each test has its own database: a pause covers every engine on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from models import pauses, repo
from models.domain import HistoryKind
from tests.invariants import assert_invariants
from tests.stack import Harness, Stack, native_body, new_sqlite_db, new_wallet, running_harness

NETWORK = "ethereum"


@pytest.fixture
async def h(stack: Stack) -> AsyncIterator[Harness]:
    async with running_harness(stack, await asyncio.to_thread(new_sqlite_db, stack.tmp)) as harness:
        yield harness


async def _pause(h: Harness, *, network: str | None = None, hot_wallet: str | None = None) -> None:
    async with h.db.transaction() as s:
        await pauses.pause(s, network=network, hot_wallet=hot_wallet, reason="incident 42", actor="oncall")


async def _resume(h: Harness, *, network: str | None = None, hot_wallet: str | None = None) -> None:
    async with h.db.transaction() as s:
        await pauses.resume(s, network=network, hot_wallet=hot_wallet, actor="oncall")


async def _attempts(h: Harness, wid: str) -> int:
    async with h.db.read() as s:
        return len(await repo.attempts_for(s, wid))


async def test_a_paused_network_accepts_requests_signs_nothing_across_a_worker_restart_then_confirms(
    h: Harness,
) -> None:
    await _pause(h, network=NETWORK)
    r = await h.request(native_body(NETWORK, new_wallet()[0], "0.25"))
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    other = (await h.request(native_body("bsc", new_wallet()[0], "0.25"))).json()["id"]
    await h.wait_status(other, {"CONFIRMED"})  # another network is not held
    await asyncio.sleep(2)
    assert (await h.status(wid))["status"] == "PENDING"
    assert await _attempts(h, wid) == 0
    held = [e for e in await h.history(wid) if e.kind is HistoryKind.HELD]
    assert held and "network ethereum" in (held[0].reason or "") and "incident 42" in (held[0].reason or "")

    await h.stop_worker()  # the pause is in the database: a new worker holds it too
    await h.start_worker()
    await asyncio.sleep(3)
    assert (await h.status(wid))["status"] == "PENDING"
    assert await _attempts(h, wid) == 0

    await _resume(h, network=NETWORK)
    done = await h.wait_status(wid, {"CONFIRMED"}, limit=60)
    assert done["tx_hash"]
    assert any(e.kind is HistoryKind.RELEASED for e in await h.history(wid))
    await assert_invariants(h, [wid, other])


async def test_pausing_a_hot_wallet_lets_confirmations_go_on_and_holds_the_next_withdrawal(
    h: Harness,
) -> None:
    wallet = next(iter(h.keys))
    with h.stack.mining_paused(NETWORK):
        first = (await h.request(native_body(NETWORK, new_wallet()[0], "0.1"))).json()["id"]
        await h.wait_status(first, {"BROADCAST"})
        await _pause(h, hot_wallet=wallet)
        second = (await h.request(native_body(NETWORK, new_wallet()[0], "0.1"))).json()["id"]
        await asyncio.sleep(1.5)
    await h.wait_status(first, {"CONFIRMED"}, limit=60)  # already on chain: confirmed while paused
    assert (await h.status(second))["status"] == "PENDING"
    assert await _attempts(h, second) == 0
    await _resume(h, hot_wallet=wallet)
    await h.wait_status(second, {"CONFIRMED"}, limit=60)
    await assert_invariants(h, [first, second])


async def test_a_network_resume_does_not_lift_a_pause_of_everything(h: Harness) -> None:
    await _pause(h)  # everything
    await _pause(h, network=NETWORK)
    wid = (await h.request(native_body(NETWORK, new_wallet()[0], "0.1"))).json()["id"]
    await _resume(h, network=NETWORK)
    await asyncio.sleep(2.5)
    assert (await h.status(wid))["status"] == "PENDING"
    assert await _attempts(h, wid) == 0
    await _resume(h)
    await h.wait_status(wid, {"CONFIRMED"}, limit=60)
