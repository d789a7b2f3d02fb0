"""SIGKILL of the worker mid-flight, then restart: every withdrawal completes, none is paid twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from activities.signer import write_keystore
from devstack import processes
from models import repo
from settings import ROOT
from tests.invariants import assert_invariants
from tests.rpc_proxy import RpcProxy
from tests.stack import Harness, Stack, close_harness, make_harness, native_body, new_wallet

PASSWORD = "crash-test-password"


@pytest.fixture
async def subprocess_harness(stack: Stack, db_url: str) -> AsyncIterator[Harness]:
    h = await make_harness(stack, db_url, start_worker=False)
    try:
        yield h
    finally:
        await close_harness(h)


def start_worker_process(h: Harness, tmp: Path) -> subprocess.Popen[bytes]:
    keystore = tmp / "keystore"
    for key in h.keys.values():
        write_keystore(keystore, key, PASSWORD, iterations=2048)
    env = {
        **os.environ,
        "WE_ENV": "test",
        "WE_DATABASE_URL": h.settings.db_url,
        "WE_TEMPORAL_ADDRESS": h.stack.temporal_address,
        "WE_TASK_QUEUE": h.settings.task_queue,
        "WE_CONFIG_FILE": str(h.config_file()),
        "WE_KEYSTORE_DIR": str(keystore),
        "WE_KEYSTORE_PASSWORD": PASSWORD,
        "WE_DATA_DIR": str(tmp),
    }
    log = open(tmp / "worker.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")], env=env, stdout=log, stderr=log, cwd=ROOT
    )


def stop_worker_process(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _statuses(h: Harness, ids: list[str]) -> list[str]:
    return [(await h.status(wid))["status"] for wid in ids]


async def test_sigkill_worker_mid_flight_loses_nothing_and_pays_once(
    subprocess_harness: Harness, tmp: Path
) -> None:
    h = subprocess_harness
    network = "polygon"
    url = h.stack.rpc_urls[network]
    proc = start_worker_process(h, tmp)
    recipients = [new_wallet()[0] for _ in range(12)]
    try:
        first = await asyncio.gather(*(h.request(native_body(network, to, "0.01")) for to in recipients[:6]))
        assert all(r.status_code == 201 for r in first), [r.text for r in first]
        # Kill while the first batch is between broadcast and confirmation.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_worker_process(h, tmp)
        second = await asyncio.gather(*(h.request(native_body(network, to, "0.01")) for to in recipients[6:]))
        assert all(r.status_code == 201 for r in second), [r.text for r in second]
        ids = [r.json()["id"] for r in first + second]
        # Kill again as soon as anything is confirming, and once more while others still are.
        for _ in range(2):
            for _ in range(100):
                if "CONFIRMING" in await _statuses(h, ids) or "BROADCAST" in await _statuses(h, ids):
                    break
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            await asyncio.sleep(1.0)
            proc = start_worker_process(h, tmp)
        finals = await asyncio.gather(
            *(h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION", "FAILED"}, 180) for wid in ids)
        )
        assert {f["status"] for f in finals} == {"CONFIRMED"}, finals
        for to in recipients:
            assert int(processes.rpc(url, "eth_getBalance", [to, "latest"]), 16) == 10**16
        await assert_invariants(h, ids)
    finally:
        stop_worker_process(proc)


async def test_sigkill_between_signing_and_broadcast_sends_the_recorded_bytes_once(
    stack: Stack, db_url: str, tmp: Path
) -> None:
    network = "polygon"
    proxy = RpcProxy(stack.rpc_urls[network])
    await proxy.start()
    h = await make_harness(stack, db_url, start_worker=False, rpc_urls={network: [proxy.url]})
    proxy.hold_sends()
    proc = start_worker_process(h, tmp)
    try:
        to = new_wallet()[0]
        r = await h.request(native_body(network, to, "0.05"))
        assert r.status_code == 201, r.text
        wid = r.json()["id"]
        for _ in range(200):  # signed and recorded, the send held at the proxy
            async with h.db.read() as s:
                signed = await repo.attempts_for(s, wid)
            if signed and proxy.held:
                break
            await asyncio.sleep(0.05)
        assert signed and proxy.held, "the worker never got to broadcast"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proxy.release_sends()
        proc = start_worker_process(h, tmp)
        final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION", "FAILED"}, limit=120)
        assert final["status"] == "CONFIRMED", final
        async with h.db.read() as s:
            attempts = await repo.attempts_for(s, wid)
        assert [a.tx_hash for a in attempts] == [signed[0].tx_hash], "re-signed instead of resending"
        assert int(processes.rpc(stack.rpc_urls[network], "eth_getBalance", [to, "latest"]), 16) == 5 * 10**16
        await assert_invariants(h, [wid])
    finally:
        stop_worker_process(proc)
        await close_harness(h)
        await proxy.stop()
