"""A seeded chaos run: withdrawals on real anvils and a real dev server while faults are injected at
random points, then checks from the chain and the database alone.

    .venv/bin/python -m tests.e2e.chaos --faults 1000 --seed 7     # the long run (docs/reliability.md)

`tests/e2e/test_chaos.py` runs a short one (~50 faults) in `make test`. Faults, chosen by a
`random.Random(seed)`: the RPC proxy in front of every network answers 502, delays, lies (null for
every receipt and transaction lookup) or answers a head a few blocks behind; mining pauses; a pending
transaction is dropped from the node's mempool; the last one or two blocks are reorganised away
(`anvil_reorg`); the worker process, the API process and the Temporal dev server are killed (SIGKILL)
and restarted. Requests go to the API process over HTTP and are retried with the
same key while it is down (a refused connection) or while Temporal is (503). Afterwards every
withdrawal must be terminal or parked with a reason; the recipient of each has exactly its amount
when CONFIRMED and nothing otherwise (one payment at most); the DESIGN invariants hold
(`tests.invariants`: one mined transaction per withdrawal, contiguous nonces none abandoned,
reservations settled once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from activities.signer import write_keystore
from devstack import processes
from settings import ROOT
from tests.invariants import assert_invariants
from tests.rpc_proxy import RpcProxy
from tests.stack import (
    NETWORKS,
    Harness,
    Stack,
    close_harness,
    make_harness,
    native_body,
    new_sqlite_db,
    new_wallet,
    start_stack,
)

FAULTS = (
    "rpc_502",
    "rpc_delay",
    "rpc_lie",
    "rpc_stale_head",
    "pause_mining",
    "drop_pending",
    "reorg",
    "worker_kill",
    "api_kill",
    "temporal_kill",
)
KEYSTORE_PASSWORD = "chaos-keystore-password"
SETTLED = {"CONFIRMED", "REJECTED", "CANCELLED", "FAILED", "NEEDS_ATTENTION"}


@dataclass
class ChaosReport:
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    withdrawals: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    paid_once: int = 0
    lost: int = 0  # paid but not CONFIRMED, or CONFIRMED and not paid
    duplicates: int = 0  # paid more than the amount
    seconds: float = 0.0

    def line(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "faults": sum(self.faults.values()),
                "by_kind": dict(sorted(self.faults.items())),
                "withdrawals": self.withdrawals,
                "statuses": dict(sorted(self.statuses.items())),
                "lost": self.lost,
                "duplicates": self.duplicates,
                "seconds": round(self.seconds, 1),
            }
        )


async def _heal(proxies: dict[str, RpcProxy], stack: Stack) -> None:
    for proxy in proxies.values():
        proxy.fail_status, proxy.delay, proxy.hide_transactions, proxy.stale_blocks = None, 0.0, False, 0
    for url in stack.rpc_urls.values():
        processes.rpc(url, "evm_setIntervalMining", [1])


class EngineProcess:
    """The API (uvicorn) or the worker as a process of its own, so that a fault can SIGKILL it; a
    process that died (killed, or failed to start while a fault was on) is started again."""

    def __init__(self, h: Harness, log: Path, *, worker: bool = False) -> None:
        self.worker = worker
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "WE_ENV": "test",
            "WE_DATABASE_URL": h.settings.db_url,
            "WE_TEMPORAL_ADDRESS": h.stack.temporal_address,
            "WE_TASK_QUEUE": h.settings.task_queue,
            "WE_CONFIG_FILE": str(h.config_file()),
            "WE_RATE_LIMIT_PER_MINUTE": "1000000",
            "WE_RECONCILE_INTERVAL_SECONDS": "0",
            "WE_DATA_DIR": str(log.parent),
        }
        if worker:
            keystore = log.parent / f"keystore-{h.settings.task_queue}"
            for key in h.keys.values():
                write_keystore(keystore, key, KEYSTORE_PASSWORD, iterations=2048)
            self.env |= {"WE_KEYSTORE_DIR": str(keystore), "WE_KEYSTORE_PASSWORD": KEYSTORE_PASSWORD}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.worker:
            cmd = [sys.executable, str(ROOT / "worker.py")]
        else:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "api.app:create_app",
                "--factory",
                "--port",
                str(self.port),
            ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=out, cwd=ROOT)
        if not self.worker:
            processes.wait_for_port(self.port, self.proc, timeout=60)

    def ensure_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill_and_restart(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)


async def _fault(
    kind: str,
    rng: random.Random,
    h: Harness,
    proxies: dict[str, RpcProxy],
    api: EngineProcess,
    worker: EngineProcess,
) -> None:
    network = rng.choice(list(NETWORKS))
    proxy, url = proxies[network], h.stack.rpc_urls[network]
    hold = rng.uniform(0.3, 1.5)
    if kind == "rpc_502":
        proxy.fail_status = 502
        await asyncio.sleep(hold)
        proxy.fail_status = None
    elif kind == "rpc_delay":
        proxy.delay = rng.uniform(0.2, 1.0)
        await asyncio.sleep(hold)
        proxy.delay = 0.0
    elif kind == "rpc_lie":
        proxy.hide_transactions = True
        await asyncio.sleep(hold * 3)
        proxy.hide_transactions = False
    elif kind == "rpc_stale_head":
        proxy.stale_blocks = rng.randint(1, 4)
        await asyncio.sleep(hold * 2)
        proxy.stale_blocks = 0
    elif kind == "pause_mining":
        processes.rpc(url, "evm_setIntervalMining", [0])
        await asyncio.sleep(hold * 2)
        processes.rpc(url, "evm_setIntervalMining", [1])
    elif kind == "drop_pending":
        pool = processes.rpc(url, "txpool_content", [])
        hashes = [tx["hash"] for by_nonce in pool.get("pending", {}).values() for tx in by_nonce.values()]
        if hashes:
            processes.rpc(url, "anvil_dropTransaction", [rng.choice(hashes)])
    elif kind == "reorg":  # the last one or two blocks replaced (fewer than the confirmations needed)
        processes.rpc(url, "anvil_reorg", [rng.choice((1, 2)), []])
    elif kind == "worker_kill":
        await asyncio.to_thread(worker.kill_and_restart)
    elif kind == "temporal_kill":
        await asyncio.to_thread(h.stack.restart_temporal)
    elif kind == "api_kill":
        await asyncio.to_thread(api.kill_and_restart)


async def run_chaos(stack: Stack, db_url: str, *, faults: int, seed: int, withdrawals: int) -> ChaosReport:
    rng = random.Random(seed)
    report = ChaosReport(seed=seed)
    started = time.monotonic()
    proxies = {n: RpcProxy(stack.rpc_urls[n]) for n in NETWORKS}
    for proxy in proxies.values():
        await proxy.start()
    h = await make_harness(
        stack,
        db_url,
        rpc_urls={n: [p.url] for n, p in proxies.items()},
        network_overrides={"stuck_after_blocks": 4, "rpc_timeout_seconds": 3.0},
        start_worker=False,
    )
    sent: dict[str, tuple[str, str, int]] = {}  # withdrawal id -> (network, recipient, wei)
    api = EngineProcess(h, stack.tmp / f"api-chaos-{seed}.log")
    worker = EngineProcess(h, stack.tmp / f"worker-chaos-{seed}.log", worker=True)
    await asyncio.to_thread(api.start)
    await asyncio.to_thread(worker.start)
    client = httpx.AsyncClient(base_url=api.url, timeout=30)
    try:

        async def submit(i: int) -> None:
            network = rng.choice(list(NETWORKS))
            to, wei = new_wallet()[0], 10**15 * (i + 1)
            body = native_body(network, to, f"{wei / 10**18:.3f}")
            for _ in range(60):  # a valid request is retried until answered (503 only while down)
                try:
                    r = await client.post(
                        "/withdrawal/request", json=body, headers=h.headers(f"chaos-{seed}-{i}")
                    )
                except httpx.HTTPError:  # the API process is down (killed) or restarting
                    r = None
                if r is not None and r.status_code in (200, 201):
                    sent[r.json()["id"]] = (network, to, wei)
                    return
                assert r is None or r.status_code == 503, (r.status_code, r.text)
                await asyncio.sleep(1)
            raise AssertionError(f"withdrawal {i} never accepted")

        # Withdrawals arrive all through the run (a first batch at once), so every one meets faults.
        first = max(1, withdrawals // 3)
        pending_submits = [asyncio.create_task(submit(i)) for i in range(first)]
        later = list(range(first, withdrawals))
        for n in range(faults):
            while later and later[0] - first < (n + 1) * (withdrawals - first) / faults:
                pending_submits.append(asyncio.create_task(submit(later.pop(0))))
            kind = rng.choice(FAULTS)
            report.faults[kind] += 1
            await _fault(kind, rng, h, proxies, api, worker)
            await asyncio.to_thread(worker.ensure_alive)
            await asyncio.to_thread(api.ensure_alive)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
        pending_submits += [asyncio.create_task(submit(i)) for i in later]
        await asyncio.gather(*pending_submits)
        await _heal(proxies, stack)
        await asyncio.to_thread(worker.ensure_alive)
        finals = await asyncio.gather(*(h.wait_status(wid, SETTLED, limit=300) for wid in sent))
        report.withdrawals = len(finals)
        for final in finals:
            network, to, wei = sent[final["id"]]
            report.statuses[final["status"]] += 1
            paid = int(processes.rpc(h.stack.rpc_urls[network], "eth_getBalance", [to, "latest"]), 16)
            if paid > wei:
                report.duplicates += 1
            elif (paid == wei) != (final["status"] == "CONFIRMED"):
                report.lost += 1
            elif paid == wei:
                report.paid_once += 1
            if final["status"] == "NEEDS_ATTENTION":
                assert final["error"] and final["error"]["code"], final  # parked with a reason
        await assert_invariants(h, list(sent))
    finally:
        await _heal(proxies, stack)
        await client.aclose()
        await asyncio.to_thread(api.stop)
        await asyncio.to_thread(worker.stop)
        await close_harness(h)
        for proxy in proxies.values():
            await proxy.stop()
    report.seconds = time.monotonic() - started
    return report


async def _main(args: argparse.Namespace) -> int:
    stack = start_stack(Path(tempfile.mkdtemp(prefix="chaos-")))
    try:
        db_url = await asyncio.to_thread(new_sqlite_db, stack.tmp)
        report = await run_chaos(
            stack, db_url, faults=args.faults, seed=args.seed, withdrawals=args.withdrawals
        )
    finally:
        stack.stop_all()
    print(report.line())  # noqa: T201
    return 0 if report.lost == 0 and report.duplicates == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--faults", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--withdrawals", type=int, default=60)
    return asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
