"""End-to-end throughput of the running stack, and the bare-Temporal ceiling on the same server.

    .venv/bin/python bench/throughput.py [--n 1000] [--concurrency 50] [--rounds 1] [--network ethereum]
        [--asset ETH] [--credentials .data/dev-credentials.json] [--observe auto|webhooks|status]
        [--no-ceiling] [--breakdown] [--rpc-sniff | --rpc-proxy] [--hold N]

Needs `make run` (for unthrottled figures: `WE_RATE_LIMIT_PER_MINUTE=1000000 make run`). Prints one
`name: value` line per figure (DESIGN §7); see docs/benchmarks.md for what each one means and how it
is measured.

Each round runs two phases, in alternating order (round 1 engine then ceiling, round 2 ceiling then
engine, ...), and the ratio of their steady-state rates (completions per second between the 10th and
90th percentile of completion times) is computed per round.

The engine phase drives N withdrawals through the REST API: `POST /withdrawal/request` with at most
`--concurrency` POSTs in flight. It observes them through webhooks when the stack has them (a
receiver of its own on a free loopback port, an endpoint registered for the phase and deleted after
it; no status reads at all), else by `GET /withdrawal/status/{id}` at a bounded rate. Completion
times are the rows' `updated_at` of CONFIRMED either way.
The ceiling phase starts N `bench.noop_workflow.NoopWithdrawalWorkflow`s by update-with-start with
the same concurrency, on the same Temporal server, served by `python -m bench.noop_worker` (a process
of its own, the engine worker's limits) on its own task queue; each runs the same activities as a
happy-path native withdrawal as no-ops. Completion times are the workflows' close times, read from
the server's visibility store after the phase (while it runs, one count query every 0.5 s).

`--hold N` runs bench/hold.py instead: N withdrawals in flight with mining paused.

Exit status: 0 when every withdrawal was accepted and CONFIRMED (and the ceiling ran), 1 when some
were not, 2 when the stack is not reachable or the bench is misused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench.*` importable (the sandbox re-imports it)
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from eth_utils import to_checksum_address  # noqa: E402
from temporalio.client import Client, WithStartWorkflowOperation  # noqa: E402
from temporalio.common import WorkflowIDConflictPolicy  # noqa: E402

from bench.noop_workflow import (  # noqa: E402
    CEILING_MIXES,
    LOCAL,
    REGULAR_KINDS,
    TIMER,
    NoopWithdrawalWorkflow,
    mix_input,
)
from bench.rpc_proxy import ProxyProcess, ProxyStats, proxied_config  # noqa: E402
from bench.rpc_sniff import SnifferProcess  # noqa: E402

TERMINAL = frozenset({"CONFIRMED", "REJECTED", "CANCELLED", "FAILED"})
BROADCAST_OR_LATER = frozenset({"BROADCAST", "CONFIRMING", "CONFIRMED"})


class BenchError(Exception):
    """A setup problem reported as one clear line (exit status 2)."""


def report_attempts(db_path: Path, withdrawal_ids: list[str]) -> None:
    """Signed transactions per withdrawal, from the default run's SQLite store (read only): every
    attempt beyond a withdrawal's first is a replacement (fee bump, cancel or nonce move)."""
    import sqlite3

    if not db_path.exists() or not withdrawal_ids:
        note(f"no attempts figure: {db_path} not found")
        return
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(withdrawal_ids))
        (attempts,) = conn.execute(
            f"SELECT COUNT(*) FROM tx_attempts WHERE withdrawal_id IN ({marks})",  # noqa: S608
            withdrawal_ids,
        ).fetchone()
    finally:
        conn.close()
    replacements = max(0, int(attempts) - len(withdrawal_ids))
    figure("signed_attempts", attempts)
    figure("replacements", replacements)
    figure("replacements_per_withdrawal", round(replacements / len(withdrawal_ids), 4))


def figure(name: str, value: object) -> None:
    if isinstance(value, float):
        value = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    sys.stdout.write(f"{name}: {value}\n")
    sys.stdout.flush()


def note(message: str) -> None:
    sys.stderr.write(f"# {message}\n")
    sys.stderr.flush()


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p99 of 10 samples is the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def counts(items: Iterable[object]) -> str:
    c = Counter(str(i) for i in items)
    return " ".join(f"{k}={v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def server_time(iso: str | None) -> float | None:
    """The API's timestamps are naive UTC with a `Z` suffix; same machine, same clock as ours."""
    if not iso:
        return None
    try:
        ts = datetime.fromisoformat(iso.removesuffix("Z"))
    except ValueError:
        return None
    return ts.replace(tzinfo=UTC).timestamp()


def steady_rate(times: Iterable[float]) -> tuple[float | None, float, float]:
    """Completions per second between the 10th and 90th percentile of completion times (DESIGN §7):
    (completions after the 10th up to the 90th) / (their time span). The ramp-up and the tail, e.g.
    the seconds a chain needs for its confirmations, do not count. Returns (rate or None when the
    window is empty, window start, window end)."""
    t = sorted(times)
    if len(t) < 2:
        return None, 0.0, 0.0
    lo = max(0, math.ceil(0.1 * len(t)) - 1)
    hi = max(0, math.ceil(0.9 * len(t)) - 1)
    if hi <= lo or t[hi] <= t[lo]:
        return None, t[lo], t[hi]
    return (hi - lo) / (t[hi] - t[lo]), t[lo], t[hi]


# --- the stack's processes: CPU seconds from /proc ------------------------------------------------


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def stack_processes(api_port: int, rpc_port: int | None) -> dict[str, int]:
    """The children of the `make run` supervisor serving `api_port`: worker, api, temporal, anvil."""
    if not Path("/proc").is_dir():
        return {}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    supervisors = {p for p in pids if "devstack.run" in _proc_cmdline(p)}
    by_parent: dict[int, dict[str, int]] = {}
    for pid in pids:
        parent = _proc_ppid(pid)
        if parent not in supervisors:
            continue
        assert parent is not None
        cmd = _proc_cmdline(pid)
        joined = " ".join(cmd)
        found = by_parent.setdefault(parent, {})
        if any(c.endswith("worker.py") for c in cmd):
            found["worker"] = pid
        elif "uvicorn" in joined and str(api_port) in cmd:
            found["api"] = pid
        elif "start-dev" in cmd:
            found["temporal"] = pid
        elif "anvil" in joined and rpc_port is not None and str(rpc_port) in cmd:
            found["anvil"] = pid
    for found in by_parent.values():
        if "api" in found:
            return found
    return {}


class LoopLag:
    """How late this process's event loop wakes up (it serves the bench's client and, with
    --rpc-proxy, the proxy: a late loop shows up in their latencies, not the engine's)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.interval)
            self.lags.append(time.monotonic() - t - self.interval)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


class PhaseMeter:
    """CPU seconds of each process over a phase (from /proc, user + system, threads included), this
    process's own as `bench`, and the resident memory of `rss_of` sampled every second."""

    def __init__(self, pids: dict[str, int], rss_of: Iterable[str] = ("worker",)) -> None:
        self.pids = pids
        self.rss_of = [name for name in rss_of if name in pids]
        self.used: dict[str, float] = {}
        self.rss_max: dict[str, float] = {}
        self.rss_end: dict[str, float] = {}
        self.elapsed = 0.0
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _sample_rss(self) -> None:
        for name in self.rss_of:
            if (rss := rss_mb(self.pids[name])) is not None:
                self.rss_end[name] = rss
                self.rss_max[name] = max(rss, self.rss_max.get(name, 0.0))

    async def _sampler(self) -> None:
        while True:
            self._sample_rss()
            await asyncio.sleep(1.0)

    async def __aenter__(self) -> PhaseMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["bench"] = sum(os.times()[:2])
        self._t0 = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._sampler())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self._t0
        if self._task is not None:
            self._task.cancel()
        self._sample_rss()
        for name, pid in self.pids.items():
            before, after = self._start.get(name), cpu_seconds(pid)
            if before is not None and after is not None:
                self.used[name] = after - before
        self.used["bench"] = sum(os.times()[:2]) - (self._start["bench"] or 0.0)

    def cores(self) -> dict[str, float]:
        return {name: used / self.elapsed for name, used in self.used.items()} if self.elapsed > 0 else {}

    def report(
        self, prefix: str, per: int, unit: str, idle: dict[str, float] | None = None
    ) -> dict[str, float]:
        """`cpu_cores_<p>`, `cpu_ms_per_<unit>_<p>` and, given idle cores per process, the same net
        of what the process burns anyway over the phase's length. Returns ms per unit."""
        per_unit: dict[str, float] = {}
        for name, used in self.used.items():
            if self.elapsed <= 0:
                continue
            figure(
                f"{prefix}cpu_cores_{name}",
                f"{used / self.elapsed:.2f} ({used:.1f} s over {self.elapsed:.1f} s)",
            )
            if per > 0:
                per_unit[name] = 1000 * used / per
                figure(f"{prefix}cpu_ms_per_{unit}_{name}", per_unit[name])
                if idle is not None and name in idle:
                    net = 1000 * max(0.0, used - idle[name] * self.elapsed) / per
                    figure(f"{prefix}cpu_ms_per_{unit}_{name}_net_of_idle", net)
        for name in self.rss_of:
            if name in self.rss_end:
                figure(f"{prefix}{name}_rss_mb", f"{self.rss_end[name]:.0f} (max {self.rss_max[name]:.0f})")
        return per_unit


async def idle_sample(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU cores each process uses with nothing submitted (block watchers, schedules, mining, the
    dev server's own timers): subtracted in the `_net_of_idle` figures."""
    if seconds <= 0:
        return {}
    async with PhaseMeter(pids, rss_of=()) as meter:
        await asyncio.sleep(seconds)
    cores = meter.cores()
    for name, c in cores.items():
        figure(f"idle_cpu_cores_{name}", f"{c:.3f} (over {meter.elapsed:.1f} s before the first phase)")
    return cores


# --- the engine phase: withdrawals through the REST API --------------------------------------------


class RateGate:
    """Spaces requests at most `rate` per second (the status polls), first come first served."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            at = max(now, self.next)
            self.next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


@dataclass
class Track:
    """What the bench saw of one withdrawal. Times are `time.time()` seconds."""

    index: int
    key: str
    id: str | None = None
    http_status: int | None = None
    post_started: float = 0.0
    post_returned: float = 0.0
    post_status: str | None = None
    status: str | None = None
    broadcast_seen: float | None = None
    broadcast_at: float | None = None  # the row's updated_at when it was seen BROADCAST (its move's time)
    broadcast_gap: float | None = None  # how long before `broadcast_seen` we last looked (status reads only)
    terminal_seen: float | None = None
    terminal_at: float | None = None  # the row's updated_at when it turned terminal
    last_look: float = 0.0
    error: str | None = None

    def observe(self, w: dict[str, Any], now: float) -> None:
        self.status = str(w.get("status"))
        if self.broadcast_seen is None and self.status in BROADCAST_OR_LATER:
            self.broadcast_seen = now
            self.broadcast_gap = now - self.last_look
            if self.status == "BROADCAST":
                self.broadcast_at = server_time(w.get("updated_at"))
        if self.terminal_seen is None and self.status in TERMINAL:
            self.terminal_seen = now
            self.terminal_at = server_time(w.get("updated_at")) or now
        self.last_look = now


class WebhookReceiver:
    """--webhooks: the bench's own endpoint. It verifies every signature, keeps the first arrival of
    each event id (delivery is at least once) and hands each withdrawal's events, in arrival order, to
    the track that waits for them."""

    EVENTS = (
        "withdrawal.broadcast",
        "withdrawal.confirmed",
        "withdrawal.rejected",
        "withdrawal.cancelled",
        "withdrawal.failed",
    )

    def __init__(self) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/bench-webhooks"
        self.secret: str | None = None
        self.endpoint_id: str | None = None
        self.events: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.ids: set[str] = set()
        self.duplicates = 0
        self.bad_signatures = 0
        self.lags: list[float] = []  # received - the status change's time (the event's created_at)
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    async def _handle(self, request: Any) -> Any:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError
        from starlette.responses import Response

        body, now = await request.body(), time.time()
        if self.secret is None:
            return Response(status_code=503)
        try:
            event = Webhook(self.secret).verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError):
            self.bad_signatures += 1
            return Response(status_code=400)
        if event["id"] in self.ids:
            self.duplicates += 1
            return Response(status_code=204)
        self.ids.add(event["id"])
        wid = str(event["data"]["id"])
        self.events.setdefault(wid, []).append((now, event))
        if (created := server_time(event.get("created_at"))) is not None:
            self.lags.append(now - created)
        self.arrived.setdefault(wid, asyncio.Event()).set()
        return Response(status_code=204)

    async def start(self, http: httpx.AsyncClient, api: str, api_key: str) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        app = Starlette(routes=[Route("/bench-webhooks", self._handle, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        r = await http.post(
            f"{api}/webhook/endpoints",
            json={"url": self.url, "events": list(self.EVENTS)},
            headers={"X-API-Key": api_key},
        )
        if r.status_code != 201:
            raise BenchError(
                f"--webhooks: the API refused the endpoint (HTTP {r.status_code}): {r.text[:200]}"
            )
        self.endpoint_id, self.secret = r.json()["id"], r.json()["secret"]

    async def stop(self, http: httpx.AsyncClient, api: str, api_key: str) -> None:
        if self.endpoint_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(
                    f"{api}/webhook/endpoints/{self.endpoint_id}", headers={"X-API-Key": api_key}
                )
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    async def follow(self, t: Track, deadline: float) -> None:
        """Observe the withdrawal's events as they arrive, until a final one or the deadline."""
        assert t.id is not None
        arrived = self.arrived.setdefault(t.id, asyncio.Event())
        done = 0
        while t.status not in TERMINAL:
            events = self.events.get(t.id, [])
            for received, event in events[done:]:
                t.observe(event["data"], received)
                t.broadcast_gap = None  # pushed, not polled: the delay is in webhook_lag_s
            done = len(events)
            if t.status in TERMINAL or time.monotonic() >= deadline:
                break
            arrived.clear()
            if len(self.events.get(t.id, [])) == done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), max(0.0, deadline - time.monotonic()))

    def report(self) -> None:
        figure("webhook_events_received", len(self.ids))
        figure("webhook_duplicates", self.duplicates)
        figure("webhook_bad_signatures", self.bad_signatures)
        figure("webhook_lag_s", f"{p50_p90(self.lags)} p99 {percentile(self.lags, 99) or 0.0:.3f}")


@dataclass
class PhaseResult:
    """What the summary needs of one phase."""

    kind: str  # "engine" or "ceiling"
    steady: float | None = None
    whole_run: float | None = None
    completed: int = 0
    ok: bool = False
    cpu_ms: dict[str, float] = field(default_factory=dict)


class EngineRun:
    def __init__(self, args: argparse.Namespace, creds: dict[str, Any]) -> None:
        self.args = args
        self.api = str(creds["api_url"]).rstrip("/")
        self.api_key = str(creds["api_key"])
        self.run_id = uuid.uuid4().hex[:10]
        self.deadline = 0.0
        self.post_gate = asyncio.Semaphore(args.concurrency)
        self.poll_gate = RateGate(args.poll_rps)
        self.http_codes: Counter[str] = Counter()
        self.status_gets = 0
        self.http: httpx.AsyncClient | None = None
        self.result = PhaseResult("engine")
        self.withdrawal_ids: list[str] = []
        self.confirmed_at: dict[str, float] = {}
        self.hooks = WebhookReceiver() if args.observe != "status" else None
        self.observed_by = "status reads"

    async def _send(self, method: str, url: str, **kw: Any) -> httpx.Response | None:
        """One request; waits out 429/503 (Retry-After) and transport errors until the deadline."""
        assert self.http is not None
        while time.monotonic() < self.deadline:
            try:
                r = await self.http.request(method, url, **kw)
            except httpx.HTTPError as e:
                self.http_codes[type(e).__name__] += 1
                await asyncio.sleep(1.0)
                continue
            if r.status_code in (429, 503):
                self.http_codes[str(r.status_code)] += 1
                try:
                    wait = float(r.headers.get("Retry-After", "1"))
                except ValueError:
                    wait = 1.0
                await asyncio.sleep(min(max(wait, 0.2), max(0.0, self.deadline - time.monotonic())))
                continue
            return r
        return None

    def _body(self, i: int) -> dict[str, str]:
        return {
            "user_id": f"bench-{self.run_id}-{i % self.args.users}",
            "network": self.args.network,
            "asset": self.args.asset,
            "to_address": to_checksum_address("0x" + secrets.token_hex(20)),
            "amount": self.args.amount,
            "client_reference": f"bench-{self.run_id}-{i}",
        }

    async def _drive(self, t: Track) -> None:
        headers = {"X-API-Key": self.api_key, "Idempotency-Key": t.key}
        async with self.post_gate:
            t.post_started = t.last_look = time.time()
            r = await self._send(
                "POST", f"{self.api}/withdrawal/request", json=self._body(t.index), headers=headers
            )
            t.post_returned = time.time()
        if r is None:
            t.error = "POST timed out"
            return
        t.http_status = r.status_code
        if r.status_code not in (200, 201):
            t.error = f"HTTP {r.status_code}: {r.text[:200]}"
            if r.status_code == 401:
                raise BenchError(f"the API refused the key in the credentials file (401): {r.text[:200]}")
            return
        w = r.json()
        t.id, t.post_status = str(w["id"]), str(w["status"])
        t.observe(w, t.post_returned)
        t.broadcast_gap = None  # seen in the POST's own answer: no polling delay in the figure
        if self.hooks is not None:
            await self.hooks.follow(t, self.deadline)
            if t.status not in TERMINAL and t.error is None:
                t.error = f"no final webhook within --timeout ({t.status})"
            return
        url = f"{self.api}/withdrawal/status/{t.id}"
        get_headers = {"X-API-Key": self.api_key}
        while t.status not in TERMINAL and time.monotonic() < self.deadline:
            early = t.broadcast_seen is None
            await asyncio.sleep(self.args.poll_interval if early else self.args.poll_interval_after)
            await self.poll_gate.wait()
            self.status_gets += 1
            r = await self._send("GET", url, headers=get_headers)
            now = time.time()
            if r is None:
                break
            if r.status_code != 200:
                t.error = f"status HTTP {r.status_code}: {r.text[:200]}"
                continue
            t.observe(r.json(), now)
        if t.status not in TERMINAL and t.error is None:
            t.error = f"not terminal after --timeout ({t.status})"

    async def _start_hooks(self) -> None:
        """Webhooks when the stack has them (`--observe auto`), else status reads."""
        if self.hooks is None:
            return
        assert self.http is not None
        try:
            await self.hooks.start(self.http, self.api, self.api_key)
        except BenchError as e:
            await self.hooks.stop(self.http, self.api, self.api_key)
            self.hooks = None
            if self.args.observe == "webhooks":
                raise
            note(f"{e}: observing by status reads instead")
            return
        self.observed_by = "webhooks"

    async def run(
        self,
        proxy: ProxyProcess | None,
        pids: dict[str, int],
        idle: dict[str, float],
        sniff_port: int | None = None,
    ) -> PhaseResult:
        a = self.args
        self.deadline = time.monotonic() + a.timeout
        tracks = [Track(index=i, key=f"bench-{self.run_id}-{i}") for i in range(a.n)]
        limits = httpx.Limits(
            max_connections=a.concurrency + 32, max_keepalive_connections=a.concurrency + 32
        )
        before = await proxy.stats() if proxy else ProxyStats()
        if proxy is not None and proxy.pid is not None:
            pids = {**pids, "rpc_proxy": proxy.pid}
        sniffer = SnifferProcess(sniff_port) if sniff_port is not None else None
        if sniffer is not None:
            await asyncio.to_thread(sniffer.start)
            if sniffer.pid is not None:
                pids = {**pids, "rpc_sniff": sniffer.pid}
        meter = PhaseMeter(pids)
        try:
            with LoopLag() as lag:
                async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as self.http:
                    await self._start_hooks()
                    try:
                        async with meter:
                            await asyncio.gather(*(self._drive(t) for t in tracks))
                    finally:
                        if self.hooks is not None:
                            await self.hooks.stop(self.http, self.api, self.api_key)
        finally:
            sniffed = await asyncio.to_thread(sniffer.stop) if sniffer is not None else None
        after = await proxy.stats() if proxy else None
        rpc_used = (after.calls - before.calls) if after else sniffed
        self.withdrawal_ids = [t.id for t in tracks if t.id is not None]
        self.confirmed_at = {
            t.id: t.terminal_at for t in tracks if t.id and t.status == "CONFIRMED" and t.terminal_at
        }
        self._report(tracks, rpc_used)
        if after is not None:
            upstream = after.upstream_s[len(before.upstream_s) :]
            errors = after.errors - before.errors
            p99 = percentile(upstream, 99) or 0.0
            figure("rpc_proxy_upstream_s", f"{p50_p90(upstream)} p99 {p99:.3f}")
            figure("rpc_proxy_upstream_errors", counts(errors.elements()))
        figure("bench_loop_lag_s", f"{p50_p90(lag.lags)} max {max(lag.lags, default=0.0):.3f}")
        self.result.cpu_ms = meter.report("", self.result.completed, "confirmed", idle)
        self.result.ok = all(t.status == "CONFIRMED" for t in tracks)
        return self.result

    def _report(self, tracks: list[Track], rpc_used: Counter[str] | None) -> None:
        accepted = [t for t in tracks if t.http_status in (200, 201)]
        confirmed = [t for t in tracks if t.status == "CONFIRMED"]
        first_post = min(t.post_started for t in tracks)
        figure("submitted", len(tracks))
        figure("accepted", len(accepted))
        if len(accepted) < len(tracks):
            figure("refused", counts(t.error for t in tracks if t.http_status not in (200, 201)))
        if accepted:
            post_span = max(t.post_returned for t in accepted) - first_post
            figure("accepted_per_s", len(accepted) / post_span if post_span > 0 else float("nan"))
            figure("post_p50_s", percentile([t.post_returned - t.post_started for t in accepted], 50))
            figure("post_p99_s", percentile([t.post_returned - t.post_started for t in accepted], 99))
            figure("post_answered_status", counts(t.post_status for t in accepted))
        # POST → the row's move to BROADCAST (its updated_at in the first BROADCAST answer or event);
        # a withdrawal first seen past BROADCAST counts from when it was seen. `_seen`: when the bench
        # learned it (adds the webhook delivery or the polling gap).
        to_broadcast = [
            (t.broadcast_at or t.broadcast_seen) - t.post_started
            for t in accepted
            if t.broadcast_seen is not None
        ]
        seen = [t.broadcast_seen - t.post_started for t in accepted if t.broadcast_seen is not None]
        figure("post_to_broadcast_p50_s", percentile(to_broadcast, 50))
        figure("post_to_broadcast_p99_s", percentile(to_broadcast, 99))
        figure("post_to_broadcast_seen_p50_s", percentile(seen, 50))
        gaps = [t.broadcast_gap for t in accepted if t.broadcast_gap is not None]
        if self.hooks is not None:
            figure("broadcast_observation_gap_p50_s", "n/a (observed by webhooks: see webhook_lag_s)")
        else:
            figure(
                "broadcast_observation_gap_p50_s",
                percentile(gaps, 50) if gaps else "n/a (every BROADCAST was already in the POST's answer)",
            )
        figure("confirmed", len(confirmed))
        self.result.completed = len(confirmed)
        if confirmed:
            times = [t.terminal_at or 0.0 for t in confirmed]
            last = max(times)
            steady, lo, hi = steady_rate(times)
            whole = len(confirmed) / (last - first_post) if last > first_post else None
            self.result.steady, self.result.whole_run = steady, whole
            figure("confirmed_per_s_steady", steady if steady is not None else "n/a (too few confirmed)")
            if steady is not None:
                figure(
                    "steady_window_s", f"{lo - first_post:.1f} .. {hi - first_post:.1f} after the first POST"
                )
            figure("confirmed_per_s_whole_run", whole if whole is not None else "n/a")
            figure("first_post_to_last_confirmed_s", last - first_post)
            to_confirmed = [(t.terminal_at or 0.0) - t.post_started for t in confirmed]
            figure("post_to_confirmed_p50_s", percentile(to_confirmed, 50))
            figure("post_to_confirmed_p99_s", percentile(to_confirmed, 99))
        figure("final_statuses", counts(t.status for t in accepted))
        if len(confirmed) < len(accepted):
            figure("errors", counts(t.error for t in accepted if t.status != "CONFIRMED"))
        figure("observed_by", self.observed_by)
        figure("status_gets", self.status_gets)
        if self.hooks is not None:
            self.hooks.report()
        figure("http_retried", " ".join(f"{k}={v}" for k, v in self.http_codes.most_common()) or "none")
        if self.http_codes.get("429"):
            note(
                "the API rate-limited the bench (429): figures are bounded by WE_RATE_LIMIT_PER_MINUTE, "
                "not by the engine; restart the stack with WE_RATE_LIMIT_PER_MINUTE=1000000 make run"
            )
        if rpc_used is None:
            figure(
                "rpc_calls_per_confirmed", "n/a (needs --rpc-sniff or --rpc-proxy, see docs/benchmarks.md)"
            )
        else:
            total = sum(rpc_used.values())
            figure("rpc_calls", total)
            figure("rpc_calls_per_confirmed", total / len(confirmed) if confirmed else float("nan"))
            figure("rpc_calls_by_method", " ".join(f"{m}={c}" for m, c in rpc_used.most_common()) or "none")


# --- breakdown: where a withdrawal's time goes ----------------------------------------------------

# The worker's log events on the happy path of a native withdrawal, in order (activities/*.py), and
# the step that ends with each. Every status move is a record_transition that logs
# `withdrawal.status`. Engines that folded the status writes into other activities (d92e909) logged
# no BROADCAST or CONFIRMED event: the row's CONFIRMED time (updated_at, as seen by the bench) then
# stands in for the last one. A step whose event is missing is measured from the previous event
# that is there.
CONFIRMED_ROW = "row:CONFIRMED"
LOG_STEPS = (
    ("withdrawal.admitted", "admit"),
    ("withdrawal.nonce.allocated", "allocate_nonce"),
    ("withdrawal.status:PROCESSING", "record_transition_processing"),
    ("withdrawal.signed", "sign_transaction"),
    ("withdrawal.broadcast.sent", "broadcast_transaction"),
    ("withdrawal.status:BROADCAST", "record_transition_broadcast"),
    ("withdrawal.status:CONFIRMING", "await_included_and_record_transition_confirming"),
    ("withdrawal.status:CONFIRMED", "await_confirmed_and_record_transition_confirmed"),
    (CONFIRMED_ROW, "awaits_to_confirmed"),
)


def p50_p90(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {percentile(values, 50):.3f} p90 {percentile(values, 90):.3f} (n={len(values)})"


async def history_breakdown(client: Client, workflow_ids: list[str]) -> None:
    """Workflow-task timings from each withdrawal's Temporal history.

    The API's update (the POST) is answered when the first workflow task completes: at HEAD that task
    runs admit and schedules allocate_nonce (a regular activity); in the older shapes it ran every
    local activity up to record_status BROADCAST (5734199) or up to the 1 ms timer (7046ff5)."""
    from temporalio.api.enums.v1 import EventType

    def ts(event: Any) -> float:
        return float(event.event_time.ToDatetime().replace(tzinfo=UTC).timestamp())

    gate = asyncio.Semaphore(10)

    async def one(wid: str) -> dict[str, Any] | None:
        async with gate:
            try:
                history = await client.get_workflow_handle(wid).fetch_history()
            except Exception as e:
                note(f"breakdown: no history for {wid}: {e}")
                return None
        tasks: list[dict[str, float]] = []
        acts: list[dict[str, float]] = []
        failed = 0
        for ev in history.events:
            t = ev.event_type
            if t == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                tasks.append({"scheduled": ts(ev)})
            elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and tasks:
                tasks[-1]["started"] = ts(ev)
            elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and tasks:
                tasks[-1]["ended"] = ts(ev)
            elif t in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
                EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            ):
                failed += 1
            elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                name = ev.activity_task_scheduled_event_attributes.activity_type.name
                acts.append({"scheduled": ts(ev), "name": name})  # type: ignore[dict-item]
            elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and acts:
                acts[-1]["started"] = ts(ev)
            elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED and acts:
                acts[-1]["ended"] = ts(ev)
        markers = sum(  # local activities; `workflow.patched` records a `core_patch` marker too
            1
            for ev in history.events
            if ev.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and ev.marker_recorded_event_attributes.marker_name == "core_local_activity"
        )
        timers = [ev for ev in history.events if ev.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
        timer_started = [ev for ev in history.events if ev.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
        timer_s = [ts(f) - ts(st) for st, f in zip(timer_started, timers, strict=False)]
        start = ts(history.events[0])
        return {
            "start": start,
            "tasks": tasks,
            "acts": acts,
            "failed": failed,
            "markers": markers,
            "timer_s": timer_s,
        }

    found = [h for h in await asyncio.gather(*(one(w) for w in workflow_ids)) if h is not None]
    if not found:
        return
    first = [(h["start"], h["tasks"][0]) for h in found if h["tasks"]]
    figure("wf_first_task_wait_s", p50_p90([t["started"] - start for start, t in first if "started" in t]))
    figure(
        "wf_first_task_run_s",
        p50_p90([t["ended"] - t["started"] for _, t in first if "started" in t and "ended" in t]),
    )
    later = [t for h in found for t in h["tasks"][1:] if "started" in t and "ended" in t]
    figure("wf_later_task_wait_s", p50_p90([t["started"] - t["scheduled"] for t in later]))
    figure("wf_later_task_run_s", p50_p90([t["ended"] - t["started"] for t in later]))
    acts = [a for h in found for a in h["acts"] if "started" in a and "ended" in a]
    names = sorted({str(a["name"]) for a in acts})
    for name in names:  # regular activities: allocate_nonce (HEAD) and await_transaction
        mine = [a for a in acts if a["name"] == name]
        figure(f"wf_{name}_wait_s", p50_p90([a["started"] - a["scheduled"] for a in mine]))
        figure(f"wf_{name}_run_s", p50_p90([a["ended"] - a["started"] for a in mine]))
    figure("wf_timer_start_to_fired_s", p50_p90([x for h in found for x in h["timer_s"]]))
    figure(
        "wf_per_withdrawal",
        f"{counts(len(h['tasks']) for h in found)} workflow tasks, {counts(h['markers'] for h in found)} "
        f"local activities, {counts(len(h['acts']) for h in found)} activities, "
        f"{sum(h['failed'] for h in found)} failed or timed-out tasks in all",
    )


def log_breakdown(
    log_path: Path, withdrawal_ids: list[str], since: float, confirmed_at: dict[str, float] | None = None
) -> None:
    """Time between consecutive happy-path log events of each withdrawal: how long each local
    activity took, waiting included (each event is logged when its activity's work is done)."""
    if not log_path.exists():
        note(f"breakdown: no worker log at {log_path} (--worker-log)")
        return
    wanted = set(withdrawal_ids)
    seen: dict[str, dict[str, float]] = {}
    with log_path.open(errors="replace") as f:
        for line in f:
            if '"withdrawal_id"' not in line:
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue
            wid = d.get("withdrawal_id")
            if wid not in wanted:
                continue
            when = server_time(str(d.get("timestamp", "")))
            if when is None or when < since:
                continue
            event = str(d.get("event"))
            if event == "withdrawal.status":
                event = f"{event}:{d.get('status')}"
            seen.setdefault(wid, {}).setdefault(event, when)
    for wid, when in (confirmed_at or {}).items():
        if wid in seen and "withdrawal.status:CONFIRMED" not in seen[wid]:
            seen[wid][CONFIRMED_ROW] = when
    gaps: dict[str, list[float]] = {step: [] for _, step in LOG_STEPS[1:]}
    for events in seen.values():
        previous: float | None = None
        for event, step in LOG_STEPS:
            if event not in events:
                continue
            if previous is not None and step in gaps:
                gaps[step].append(events[event] - previous)
            previous = events[event]
    for step, values in gaps.items():
        if values:
            figure(f"step_{step}_s", p50_p90(values))


async def report_breakdown(
    client: Client,
    withdrawal_ids: list[str],
    log_path: Path,
    since: float,
    confirmed_at: dict[str, float] | None = None,
) -> None:
    await history_breakdown(client, [f"withdrawal-{w}" for w in withdrawal_ids])
    log_breakdown(log_path, withdrawal_ids, since, confirmed_at)


# --- the ceiling -----------------------------------------------------------------------------------


class CeilingWorker:
    """`python -m bench.noop_worker` as a child process: started for a ceiling phase, stopped after."""

    def __init__(self, creds: dict[str, Any], task_queue: str, log_path: Path) -> None:
        self.creds, self.task_queue, self.log_path = creds, task_queue, log_path
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as devstack starts the engine's worker
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.noop_worker",
                "--address",
                str(self.creds["temporal_address"]),
                "--namespace",
                str(self.creds.get("temporal_namespace", "default")),
                "--task-queue",
                self.task_queue,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        try:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode().strip()
        except TimeoutError:
            line = ""
        if not line.startswith("ready"):
            await self.stop()
            raise BenchError(f"the ceiling's worker did not start (see {self.log_path})")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the worker stops when its stdin closes
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def closed_workflows(client: Client, task_queue: str) -> int:
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus != 'Running'"
    return (await client.count_workflows(query)).count


async def run_ceiling(
    client: Client,
    args: argparse.Namespace,
    creds: dict[str, Any],
    pids: dict[str, int],
    idle: dict[str, float],
) -> PhaseResult:
    """N no-op withdrawals on a task queue of their own, served by their own worker process."""
    result = PhaseResult("ceiling")
    inp = mix_input(args.ceiling_mix)
    kinds = inp.kinds
    task_queue = f"bench-ceiling-{uuid.uuid4().hex[:10]}"
    gate = asyncio.Semaphore(args.concurrency)
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + args.timeout

    async def one(i: int) -> tuple[str, float, float]:
        wid = f"{task_queue}-{i}"
        op = WithStartWorkflowOperation(
            NoopWithdrawalWorkflow.run,
            inp,
            id=wid,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        async with gate:
            started = time.time()
            while True:
                try:
                    await client.execute_update_with_start_workflow(
                        NoopWithdrawalWorkflow.submit, start_workflow_operation=op
                    )
                    break
                except Exception as e:  # a busy server: retried like a POST's 503
                    errors[type(e).__name__] += 1
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(1.0)
            return wid, started, time.time()

    worker = CeilingWorker(creds, task_queue, args.credentials.resolve().parent / "logs" / "noop-worker.log")
    await worker.start()
    try:
        assert worker.pid is not None
        measured = {"noop_worker": worker.pid, **{k: v for k, v in pids.items() if k == "temporal"}}
        meter = PhaseMeter(measured, rss_of=("noop_worker",))
        deadline = time.monotonic() + args.timeout  # from the worker's start, not its launch
        async with meter:
            starts = await asyncio.gather(*(one(i) for i in range(args.n)))
            # one count query per 0.5 s, not one long poll per workflow
            while (closed := await closed_workflows(client, task_queue)) < args.n:
                if time.monotonic() > deadline:
                    raise BenchError(f"ceiling: {closed} of {args.n} workflows closed within --timeout")
                await asyncio.sleep(0.5)
    finally:
        await worker.stop()
    closes: dict[str, float] = {}
    statuses: Counter[str] = Counter()
    async for wf in client.list_workflows(f"TaskQueue = '{task_queue}'"):
        statuses[wf.status.name if wf.status else "UNKNOWN"] += 1
        if wf.close_time is not None:
            closes[wf.id] = wf.close_time.timestamp()
    first = min(s for _, s, _ in starts)
    done = [closes[w] for w, _, _ in starts if w in closes]
    steady, lo, hi = steady_rate(done)
    result.completed = statuses.get("COMPLETED", 0)
    result.ok = result.completed == args.n
    result.steady = steady
    result.whole_run = len(done) / (max(done) - first) if done and max(done) > first else None
    figure(
        "ceiling_activities_per_workflow",
        f"{kinds.count(LOCAL)} local + {sum(k in REGULAR_KINDS for k in kinds)} regular + "
        f"{kinds.count(TIMER)} timer (a happy-path native withdrawal, --ceiling-mix {args.ceiling_mix})",
    )
    figure("ceiling_final_statuses", counts(statuses.elements()))
    figure("ceiling_start_retried", counts(errors.elements()))
    figure("ceiling_accepted_per_s", len(starts) / (max(a for _, _, a in starts) - first))
    figure("ceiling_workflow_p50_s", percentile([closes[w] - s for w, s, _ in starts if w in closes], 50))
    figure("ceiling_per_s_steady", steady if steady is not None else "n/a (too few workflows)")
    if steady is not None:
        figure("ceiling_steady_window_s", f"{lo - first:.1f} .. {hi - first:.1f} after the first start")
    figure("ceiling_per_s_whole_run", result.whole_run if result.whole_run is not None else "n/a")
    result.cpu_ms = meter.report("ceiling_", result.completed, "workflow", idle)
    return result


# --- setup -----------------------------------------------------------------------------------------


def load_credentials(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise BenchError(f"no credentials at {path}: start the stack with `make run` (it writes that file)")
    try:
        creds: dict[str, Any] = json.loads(path.read_text())
    except ValueError as e:
        raise BenchError(f"{path} is not JSON: {e}") from e
    for key in ("api_url", "api_key", "temporal_address", "networks"):
        if key not in creds:
            raise BenchError(f"{path} has no {key!r}: was it written by `make run`?")
    return creds


async def api_healthy(api_url: str) -> tuple[bool, str]:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.get(f"{api_url.rstrip('/')}/health")
    except httpx.HTTPError as e:
        return False, f"{type(e).__name__}: {e}"
    return r.status_code == 200, f"HTTP {r.status_code}: {r.text[:200]}"


async def check_stack(creds: dict[str, Any], path: Path, args: argparse.Namespace) -> None:
    ok, why = await api_healthy(creds["api_url"])
    if not ok:
        raise BenchError(
            f"the engine API at {creds['api_url']} is not up ({why}). Start the stack with "
            f"`make run` and wait for its banner ({path} is from the last start)."
        )
    net = creds["networks"].get(args.network)
    if net is None:
        served = ", ".join(creds["networks"])
        raise BenchError(f"network {args.network!r} is not served by the stack (it has {served})")
    if args.asset != net.get("native_asset") and args.asset not in net.get("tokens", {}):
        raise BenchError(f"asset {args.asset!r} is not on {args.network}")


async def wait_for_proxied_stack(
    path: Path, args: argparse.Namespace, proxy_url: str, config: Path
) -> dict[str, Any]:
    """In --rpc-proxy mode, wait until a stack started with the proxied config is healthy."""
    told = False
    deadline = time.monotonic() + args.wait_stack
    while time.monotonic() < deadline:
        try:
            creds = json.loads(await asyncio.to_thread(path.read_text))
            rpc_url = creds["networks"][args.network]["rpc_url"]
        except (OSError, ValueError, KeyError):
            creds, rpc_url = None, None
        healthy = creds is not None and (await api_healthy(creds["api_url"]))[0]
        if healthy and rpc_url == proxy_url:
            assert creds is not None
            return creds
        if not told:
            stop = (
                (
                    "A stack is running that talks to anvil directly: stop it first "
                    "(Ctrl-C in its terminal, or SIGINT to its process group), then start it as below.\n"
                )
                if healthy
                else ""
            )
            note(
                f"RPC proxy listening on {proxy_url}, counting {args.network} calls.\n{stop}"
                f"# Start the stack with:  WE_CONFIG_FILE={config} make run\n"
                f"# Waiting up to {args.wait_stack:.0f} s for it."
            )
            told = True
        await asyncio.sleep(1.0)
    raise BenchError(f"no stack using the RPC proxy within --wait-stack {args.wait_stack:.0f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--n", type=int, default=1000, help="withdrawals (and ceiling workflows) per phase")
    p.add_argument("--concurrency", type=int, default=50, help="POSTs (and ceiling starts) in flight at most")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of one engine and one ceiling phase, in alternating order (round 1 engine first, "
        "round 2 ceiling first, ...); the ratio is computed per round",
    )
    p.add_argument("--network", default="ethereum")
    p.add_argument("--asset", default="ETH")
    p.add_argument("--amount", default="0.001", help="decimal string in the asset's units")
    p.add_argument(
        "--users", type=int, default=100, help="withdrawals are spread over this many user_ids (daily limits)"
    )
    p.add_argument("--credentials", type=Path, default=ROOT / ".data" / "dev-credentials.json")
    p.add_argument("--timeout", type=float, default=900.0, help="overall limit per phase, seconds")
    p.add_argument(
        "--observe",
        choices=("auto", "webhooks", "status"),
        default="auto",
        help="how the engine phase sees its withdrawals: webhooks (signed events on a local receiver, "
        "no status reads), status (GET /withdrawal/status at --poll-rps at most) or auto (webhooks "
        "when the stack has them)",
    )
    p.add_argument("--webhooks", action="store_true", help="the same as --observe webhooks")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.1,
        help="--observe status: seconds between status reads of a withdrawal before BROADCAST is seen",
    )
    p.add_argument(
        "--poll-interval-after",
        type=float,
        default=1.0,
        help="--observe status: seconds between status reads after BROADCAST",
    )
    p.add_argument(
        "--poll-rps", type=float, default=50.0, help="--observe status: status reads per second at most"
    )
    p.add_argument(
        "--settle", type=float, default=5.0, help="seconds of rest between phases (one's tail off the next)"
    )
    p.add_argument(
        "--idle-sample",
        type=float,
        default=5.0,
        help="seconds of CPU sampling with nothing submitted, before the first phase (0: none)",
    )
    p.add_argument("--no-ceiling", action="store_true", help="engine phases only")
    p.add_argument(
        "--ceiling-mix",
        choices=sorted(CEILING_MIXES),
        default="head",
        help="the withdrawal shape the ceiling mimics: head (7 local + 3 regular, as workflows/"
        "withdrawal.py), or an older one (see bench/noop_workflow.py)",
    )
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="after the phases, split each withdrawal's time from its Temporal history and the worker's "
        "log (see docs/benchmarks.md)",
    )
    p.add_argument(
        "--worker-log",
        type=Path,
        default=None,
        help="--breakdown: the worker's JSON log (default: logs/worker.log next to --credentials)",
    )
    p.add_argument(
        "--rpc-proxy",
        action="store_true",
        help="count JSON-RPC calls: start a counting proxy, print how to start the stack "
        "through it, wait for it, then run (see bench/rpc_proxy.py)",
    )
    p.add_argument(
        "--rpc-sniff",
        action="store_true",
        help="count JSON-RPC calls to the network's anvil on the loopback interface during each engine "
        "phase, without a proxy in the path (Linux, root or CAP_NET_RAW; see bench/rpc_sniff.py)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=ROOT / "config" / "dev.toml",
        help="network config to copy for --rpc-proxy",
    )
    p.add_argument(
        "--wait-stack", type=float, default=900.0, help="--rpc-proxy: seconds to wait for the stack"
    )
    p.add_argument(
        "--hold",
        type=int,
        default=None,
        metavar="N",
        help="run bench/hold.py instead: N withdrawals in flight with mining paused (its other options: "
        "`bench/hold.py --help`; --concurrency, --network, --asset, --credentials and --rpc-sniff "
        "are passed on)",
    )
    args = p.parse_args(argv)
    if args.webhooks:
        args.observe = "webhooks"
    if args.rpc_sniff and args.rpc_proxy:
        p.error("--rpc-sniff and --rpc-proxy count the same calls: use one")
    if min(args.n, args.concurrency, args.rounds, args.users) < 1 or args.poll_rps <= 0:
        p.error("--n, --concurrency, --rounds, --users and --poll-rps must be positive")
    if args.hold is not None and (args.hold < 1 or args.rpc_proxy):
        p.error("--hold needs a positive N and no --rpc-proxy")
    return args


def phase_plan(rounds: int, ceiling: bool) -> list[tuple[int, str]]:
    """Round 1 engine then ceiling, round 2 ceiling then engine, ...: E C C E E C ..."""
    plan: list[tuple[int, str]] = []
    for r in range(1, rounds + 1):
        order = ("engine", "ceiling") if r % 2 else ("ceiling", "engine")
        plan += [(r, kind) for kind in order if ceiling or kind == "engine"]
    return plan


def _fmt(values: Iterable[float | None]) -> str:
    return " ".join("n/a" if v is None else f"{v:.3f}" for v in values) or "n/a"


def _median(values: Iterable[float | None]) -> float | str:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else "n/a"


def report_summary(results: list[tuple[int, PhaseResult]]) -> None:
    """Medians over the rounds and the ratio of each round's pair (engine / ceiling, same round)."""
    figure("phase", "summary")
    engine = {r: res for r, res in results if res.kind == "engine"}
    ceiling = {r: res for r, res in results if res.kind == "ceiling"}
    rounds = sorted(engine)
    figure("order", " | ".join(f"round {r}: {res.kind}" for r, res in results))
    for name, found in (("confirmed", engine), ("ceiling", ceiling)):
        if not found:
            continue
        figure(f"{name}_per_s_steady_per_round", _fmt(found[r].steady for r in sorted(found)))
        figure(f"{name}_per_s_steady", _median(found[r].steady for r in sorted(found)))
        figure(f"{name}_per_s_whole_run_per_round", _fmt(found[r].whole_run for r in sorted(found)))
        figure(f"{name}_per_s_whole_run", _median(found[r].whole_run for r in sorted(found)))
    for proc in ("worker", "api", "temporal", "anvil"):
        if any(proc in engine[r].cpu_ms for r in rounds):
            figure(f"cpu_ms_per_confirmed_{proc}", _median(engine[r].cpu_ms.get(proc) for r in rounds))
    for proc in ("noop_worker", "temporal"):
        if any(proc in res.cpu_ms for res in ceiling.values()):
            figure(
                f"ceiling_cpu_ms_per_workflow_{proc}",
                _median(res.cpu_ms.get(proc) for res in ceiling.values()),
            )
    if not ceiling:
        return
    for which in ("steady", "whole_run"):
        ratios: list[float | None] = []
        for r in rounds:
            e, c = getattr(engine[r], which), getattr(ceiling[r], which) if r in ceiling else None
            ratios.append(e / c if e is not None and c else None)
        figure(f"ratio_{which}_per_round", _fmt(ratios))
        figure(f"ratio_{which}", _median(ratios))
    # What a sustained rate is bounded by on a machine the two sides saturate: CPU per completion of
    # every process that works for it (engine: worker, API, server, anvil; ceiling: its worker, server).
    cpu: list[float | None] = []
    for r in rounds:
        e_cpu = sum(engine[r].cpu_ms.get(p, 0.0) for p in ("worker", "api", "temporal", "anvil"))
        c_cpu = (
            sum(ceiling[r].cpu_ms.get(p, 0.0) for p in ("noop_worker", "temporal")) if r in ceiling else 0.0
        )
        cpu.append(c_cpu / e_cpu if e_cpu and c_cpu else None)
    figure("ratio_cpu_per_round", _fmt(cpu))
    figure("ratio_cpu", _median(cpu))


def hold_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--n", str(args.hold), "--concurrency", str(args.concurrency), "--network", args.network]
    argv += ["--asset", args.asset, "--credentials", str(args.credentials)]
    return argv + (["--rpc-sniff"] if args.rpc_sniff else [])


async def main(args: argparse.Namespace) -> int:
    if args.hold is not None:
        from bench import hold

        return await hold.main(hold.parse_args(hold_argv(args)))
    proxy: ProxyProcess | None = None
    try:
        if args.rpc_proxy:
            config, proxy_url, upstream = proxied_config(
                args.config, args.network, args.credentials.resolve().parent / "bench"
            )
            proxy = ProxyProcess(proxy_url, upstream)
            await proxy.start()
            creds = await wait_for_proxied_stack(args.credentials, args, proxy_url, config)
        else:
            creds = load_credentials(args.credentials)
        await check_stack(creds, args.credentials, args)
        client = await connect_temporal(creds)
        rpc_port = urlsplit(str(creds["networks"][args.network].get("rpc_url", ""))).port
        if args.rpc_sniff and rpc_port is None:
            raise BenchError(f"--rpc-sniff: no port in the {args.network} rpc_url of {args.credentials}")
        pids = stack_processes(urlsplit(creds["api_url"]).port or 80, rpc_port)
        if not pids:
            note("the `make run` processes were not found in /proc: no CPU or memory figures")
        net = creds["networks"][args.network]
        for name, value in (
            ("n", args.n),
            ("concurrency", args.concurrency),
            ("rounds", args.rounds),
            ("users", args.users),
            ("network", args.network),
            ("asset", args.asset),
            ("amount", args.amount),
            ("required_confirmations", net.get("required_confirmations")),
            ("load_average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ):
            figure(name, value)
        idle = await idle_sample(pids, args.idle_sample)
        results: list[tuple[int, PhaseResult]] = []
        engines: list[EngineRun] = []
        since = time.time()
        for i, (r, kind) in enumerate(phase_plan(args.rounds, not args.no_ceiling)):
            if i:
                await asyncio.sleep(args.settle)
            figure("phase", f"round {r} {kind}")
            if kind == "engine":
                engine = EngineRun(args, creds)
                res = await engine.run(proxy, pids, idle, rpc_port if args.rpc_sniff else None)
                report_attempts(args.credentials.resolve().parent / "engine.db", engine.withdrawal_ids)
                engines.append(engine)
            else:
                res = await run_ceiling(client, args, creds, pids, idle)
            results.append((r, res))
        if args.breakdown:
            figure("phase", "breakdown")
            log_path = args.worker_log or args.credentials.resolve().parent / "logs" / "worker.log"
            ids = [w for e in engines for w in e.withdrawal_ids]
            confirmed_at = {w: t for e in engines for w, t in e.confirmed_at.items()}
            await report_breakdown(client, ids, log_path, since, confirmed_at)
        report_summary(results)
        return 0 if all(res.ok for _, res in results) else 1
    finally:
        if proxy is not None:
            note(
                "the stack's RPC for this network goes through the bench's proxy, which stops now: "
                "stop the stack too (SIGTERM to its process group)"
            )
            await proxy.stop()


async def connect_temporal(creds: dict[str, Any]) -> Client:
    try:
        return await asyncio.wait_for(
            Client.connect(creds["temporal_address"], namespace=creds.get("temporal_namespace", "default")),
            10,
        )
    except Exception as e:
        raise BenchError(f"cannot reach Temporal at {creds['temporal_address']}: {e}") from e


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except BenchError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
