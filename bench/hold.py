"""Withdrawals in flight: N of them held BROADCAST with mining paused (DESIGN §7, worker memory and
CPU per 1,000 in-flight withdrawals).

    .venv/bin/python bench/hold.py [--n 10000] [--concurrency 50] [--sample 30] [--rpc-sniff]
    .venv/bin/python bench/throughput.py --hold 10000          # the same

Needs `make run` started with limits that let 10,000 POSTs through (docs/benchmarks.md, "Rate
limits"): `WE_RATE_LIMIT_PER_MINUTE=1000000 WE_ALERT_PENDING_AFTER_SECONDS=86400 make run`.

1. CPU of every `make run` process with nothing submitted (`--idle-sample`), the worker's RSS.
2. Pauses the network's mining (anvil `evm_setIntervalMining 0`, as tests/stack.py `mining_paused`).
3. Submits N withdrawals of a tiny amount (`--amount`, default 0.000001) spread over `--users`
   user_ids (the per-user daily limit and rate limit), at most `--concurrency` POSTs in flight.
4. Waits until every accepted one is BROADCAST: signed, sent, in anvil's pool, its
   await_transaction scheduled. It counts them in the engine's SQLite database (read only, one
   `GROUP BY status` query every `--poll` seconds over the run's user_ids): no status reads, no
   webhooks, nothing that loads the engine.
5. Samples for `--sample` seconds: CPU of each process, the worker's RSS every second, and with
   `--rpc-sniff` the RPC calls per second the held withdrawals cost.
6. Resumes mining (`evm_setIntervalMining <block time>`; also on any failure or Ctrl-C) and waits
   until all are CONFIRMED: the time to drain, and the drain's steady rate from the rows'
   `updated_at`.

Exit status: 0 when every withdrawal was accepted and CONFIRMED, 1 when not, 2 on a setup problem.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from eth_utils import to_checksum_address  # noqa: E402

from bench.rpc_sniff import SnifferProcess  # noqa: E402
from bench.throughput import (  # noqa: E402
    BenchError,
    PhaseMeter,
    check_stack,
    counts,
    figure,
    idle_sample,
    load_credentials,
    note,
    percentile,
    report_attempts,
    rss_mb,
    stack_processes,
    steady_rate,
)

IN_FLIGHT = "BROADCAST"
# Statuses a withdrawal can still leave without the chain mining anything.
ON_THE_WAY = frozenset({"PENDING", "PROCESSING", "WAITING_FOR_FUNDS"})


def rpc(url: str, method: str, params: list[Any]) -> Any:
    body = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30)
    answer = body.json()
    if answer.get("error"):
        raise BenchError(f"{method} on {url}: {answer['error']}")
    return answer.get("result")


class Rows:
    """The run's withdrawals in the engine's SQLite database, read only (WAL: never blocks a writer)."""

    def __init__(self, path: Path, network: str, asset: str, users: list[str]) -> None:
        if not path.exists():
            raise BenchError(
                f"no engine database at {path}: --hold counts its withdrawals in the default run's "
                "SQLite store (a stack on MariaDB is not supported)"
            )
        self.path, self.network, self.asset, self.users = path, network, asset, users
        marks = ",".join("?" * len(users))
        self._where = f"network = ? AND asset = ? AND user_id IN ({marks})"

    def _query(self, select: str, tail: str = "") -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            sql = f"SELECT {select} FROM withdrawals WHERE {self._where} {tail}"  # noqa: S608
            return conn.execute(sql, [self.network, self.asset, *self.users]).fetchall()
        finally:
            conn.close()

    async def statuses(self) -> Counter[str]:
        rows = await asyncio.to_thread(self._query, "status, COUNT(*)", "GROUP BY status")
        return Counter({str(s): int(c) for s, c in rows})

    async def confirmed_times(self) -> list[float]:
        rows = await asyncio.to_thread(self._query, "updated_at", "AND status = 'CONFIRMED'")
        return [datetime.fromisoformat(str(at)).replace(tzinfo=UTC).timestamp() for (at,) in rows]

    async def ids(self) -> list[str]:
        return [str(i) for (i,) in await asyncio.to_thread(self._query, "id")]


async def submit(args: argparse.Namespace, creds: dict[str, Any], users: list[str], run_id: str) -> int:
    """N POSTs, at most --concurrency in flight; 429/503 waited out (Retry-After) with the same key."""
    api, key = str(creds["api_url"]).rstrip("/"), str(creds["api_key"])
    gate = asyncio.Semaphore(args.concurrency)
    codes: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    took: list[float] = []
    deadline = time.monotonic() + args.timeout
    limits = httpx.Limits(
        max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8
    )

    async def one(http: httpx.AsyncClient, i: int) -> None:
        body = {
            "user_id": users[i % len(users)],
            "network": args.network,
            "asset": args.asset,
            "to_address": to_checksum_address("0x" + secrets.token_hex(20)),
            "amount": args.amount,
            "client_reference": f"hold-{run_id}-{i}",
        }
        headers = {"X-API-Key": key, "Idempotency-Key": f"hold-{run_id}-{i}"}
        async with gate:
            started = time.monotonic()
            while time.monotonic() < deadline:
                try:
                    r = await http.post(f"{api}/withdrawal/request", json=body, headers=headers)
                except httpx.HTTPError as e:
                    retried[type(e).__name__] += 1
                    await asyncio.sleep(1.0)
                    continue
                if r.status_code in (429, 503):
                    retried[str(r.status_code)] += 1
                    try:
                        wait = float(r.headers.get("Retry-After", "1"))
                    except ValueError:
                        wait = 1.0
                    await asyncio.sleep(min(max(wait, 0.2), 30.0))
                    continue
                if r.status_code == 401:
                    raise BenchError(f"the API refused the key in the credentials file (401): {r.text[:200]}")
                codes[str(r.status_code)] += 1
                took.append(time.monotonic() - started)
                return
            codes["timed out"] += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(15)
            note(f"submitted {sum(codes.values())} of {args.n}")

    t0 = time.monotonic()
    reporter = asyncio.create_task(progress())
    try:
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as http:
            await asyncio.gather(*(one(http, i) for i in range(args.n)))
    finally:
        reporter.cancel()
    elapsed = time.monotonic() - t0
    accepted = codes.get("200", 0) + codes.get("201", 0)
    figure("accepted", accepted)
    figure("post_answers", counts(codes.elements()))
    figure("accepted_per_s", accepted / elapsed if elapsed > 0 else float("nan"))
    figure("post_p50_s", percentile(took, 50))
    figure("post_p99_s", percentile(took, 99))
    figure("http_retried", counts(retried.elements()))
    if retried.get("429"):
        note("the API rate-limited the bench (429): see docs/benchmarks.md, Rate limits")
    return accepted


async def wait_until(
    rows: Rows, done: Any, what: str, limit_s: float, poll: float
) -> tuple[bool, Counter[str], float]:
    """Polls the rows until `done(statuses)`; returns (done, statuses, seconds waited)."""
    t0 = time.monotonic()
    told = t0
    while True:
        found = await rows.statuses()
        if done(found):
            return True, found, time.monotonic() - t0
        if time.monotonic() - t0 > limit_s:
            return False, found, time.monotonic() - t0
        if time.monotonic() - told > 15:
            note(f"waiting for {what}: {counts(found.elements())}")
            told = time.monotonic()
        await asyncio.sleep(poll)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--n", type=int, default=10_000, help="withdrawals to hold in flight")
    p.add_argument("--concurrency", type=int, default=50, help="POSTs in flight at most")
    p.add_argument("--network", default="ethereum")
    p.add_argument("--asset", default="ETH", help="the network's native asset (one transfer, 21,000 gas)")
    p.add_argument("--amount", default="0.000001", help="per withdrawal, in the asset's units")
    p.add_argument("--users", type=int, default=1000, help="user_ids the withdrawals are spread over")
    p.add_argument("--credentials", type=Path, default=ROOT / ".data" / "dev-credentials.json")
    p.add_argument(
        "--config", type=Path, default=ROOT / "config" / "dev.toml", help="the stack's config (block time)"
    )
    p.add_argument("--sample", type=float, default=30.0, help="seconds of sampling while held")
    p.add_argument("--idle-sample", type=float, default=10.0, help="seconds of sampling before submitting")
    p.add_argument("--settle", type=float, default=5.0, help="seconds between all BROADCAST and the sample")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between counts in the database")
    p.add_argument(
        "--timeout", type=float, default=7200.0, help="limit of each wait (submit, broadcast, drain)"
    )
    p.add_argument(
        "--rpc-sniff",
        action="store_true",
        help="count JSON-RPC calls to the network's anvil while held (root or CAP_NET_RAW)",
    )
    args = p.parse_args(argv)
    if min(args.n, args.concurrency, args.users) < 1 or args.sample <= 0 or args.poll <= 0:
        p.error("--n, --concurrency, --users, --sample and --poll must be positive")
    return args


def block_time(config: Path, network: str) -> int:
    """Interval mining to restore, in whole seconds (anvil's unit); 1 when the config has none."""
    try:
        from settings import EngineConfig

        seconds = EngineConfig.load(config).networks[network].block_time_seconds
    except Exception as e:
        note(f"block time of {network} not read from {config} ({type(e).__name__}): mining resumes at 1 s")
        return 1
    return max(1, round(seconds))


async def main(args: argparse.Namespace) -> int:
    creds = load_credentials(args.credentials)
    await check_stack(creds, args.credentials, args)
    rpc_url = str(creds["networks"][args.network]["rpc_url"])
    rpc_port = urlsplit(rpc_url).port
    run_id = uuid.uuid4().hex[:10]
    users = [f"hold-{run_id}-{k}" for k in range(min(args.users, args.n))]
    data = args.credentials.resolve().parent
    rows = Rows(data / "engine.db", args.network, args.asset, users)
    pids = stack_processes(urlsplit(creds["api_url"]).port or 80, rpc_port)
    if "worker" not in pids:
        raise BenchError("the `make run` worker was not found in /proc: nothing to measure")
    interval = block_time(args.config, args.network)
    for name, value in (
        ("n", args.n),
        ("concurrency", args.concurrency),
        ("users", len(users)),
        ("network", args.network),
        ("asset", args.asset),
        ("amount", args.amount),
        ("block_time_s", interval),
    ):
        figure(name, value)

    idle = await idle_sample(pids, args.idle_sample)
    rss_before = rss_mb(pids["worker"]) or 0.0
    figure("worker_rss_mb_before", f"{rss_before:.0f}")
    await asyncio.to_thread(rpc, rpc_url, "evm_setIntervalMining", [0])
    note(f"mining paused on {args.network}")
    try:
        t0 = time.monotonic()
        accepted = await submit(args, creds, users, run_id)
        if accepted == 0:
            return 1
        _, found, _ = await wait_until(
            rows,
            lambda s: s.get(IN_FLIGHT, 0) >= accepted or not any(s.get(x) for x in ON_THE_WAY),
            "every withdrawal BROADCAST",
            args.timeout,
            args.poll,
        )
        held = found.get(IN_FLIGHT, 0)
        figure("first_post_to_all_broadcast_s", time.monotonic() - t0)
        figure("statuses_when_held", counts(found.elements()))
        figure("in_flight", held)
        if held < accepted:
            note(f"only {held} of {accepted} are BROADCAST; sampling them anyway")
        pool = await asyncio.to_thread(rpc, rpc_url, "txpool_status", [])
        figure("anvil_txpool", f"pending={int(pool['pending'], 16)} queued={int(pool['queued'], 16)}")

        await asyncio.sleep(args.settle)  # the last awaits start, the last writes land
        sniffer = SnifferProcess(rpc_port) if args.rpc_sniff and rpc_port else None
        if sniffer is not None:
            await asyncio.to_thread(sniffer.start)
        try:
            async with PhaseMeter(pids, rss_of=("worker",)) as meter:
                await asyncio.sleep(args.sample)
        finally:
            sniffed = await asyncio.to_thread(sniffer.stop) if sniffer is not None else None
        figure("phase", f"held: {held} in flight for {meter.elapsed:.1f} s")
        meter.report("held_", 0, "", idle)
        cores = meter.cores()
        if held:
            rss_max = meter.rss_max.get("worker", rss_before)
            figure("worker_rss_mb_per_1000_in_flight", (rss_max - rss_before) / held * 1000)
            net = cores.get("worker", 0.0) - idle.get("worker", 0.0)
            figure("worker_cpu_cores_per_1000_in_flight", f"{net / held * 1000:.4f} (net of idle)")
            figure("worker_cpu_ms_per_s_per_in_flight", 1000 * net / held)
        if sniffed is not None:
            total = sum(sniffed.values())
            figure("held_rpc_calls_per_s", total / meter.elapsed)
            figure(
                "held_rpc_calls_by_method", " ".join(f"{m}={c}" for m, c in sniffed.most_common()) or "none"
            )
    finally:
        await asyncio.to_thread(rpc, rpc_url, "evm_setIntervalMining", [interval])
        note(f"mining resumed on {args.network} (every {interval} s)")
    figure("phase", "drain")
    resumed_at = time.time()
    ok, found, drained = await wait_until(
        rows,
        lambda s: s.get("CONFIRMED", 0) >= accepted,
        "every withdrawal CONFIRMED",
        args.timeout,
        args.poll,
    )
    times = await rows.confirmed_times()
    figure("final_statuses", counts(found.elements()))
    figure("drain_s", f"{drained:.1f} (resume to the count that found every withdrawal CONFIRMED)")
    if times:
        figure("resume_to_last_confirmed_s", max(times) - resumed_at)
        figure("drain_confirmed_per_s_whole", len(times) / max(1e-9, max(times) - resumed_at))
        steady, lo, hi = steady_rate(times)
        figure("drain_confirmed_per_s_steady", steady if steady is not None else "n/a (too few)")
        if steady is not None:
            figure(
                "drain_steady_window_s", f"{lo - resumed_at:.1f} .. {hi - resumed_at:.1f} after the resume"
            )
    report_attempts(data / "engine.db", await rows.ids())
    return 0 if ok and accepted == args.n and found.get("CONFIRMED", 0) == accepted else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except BenchError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
