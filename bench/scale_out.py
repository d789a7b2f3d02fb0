"""Two workers and two API processes on one MariaDB: do they share the load, and stay correct?

    .venv/bin/python bench/scale_out.py [--n 1000] [--concurrency 50] [--api-port2 8001]
        [--network ethereum] [--asset ETH] [--credentials .data/dev-credentials.json] [--start-mariadb]

Two steps. (1) A default stack on MariaDB, in another terminal:

    WE_DATABASE_URL=mysql+aiomysql://root:@127.0.0.1:<port>/<db> WE_RATE_LIMIT_PER_MINUTE=1000000 \\
        WE_ALERT_PENDING_AFTER_SECONDS=86400 make run

(`--start-mariadb` starts a throwaway MariaDB under .data/bench/, prints that command line with its URL,
and waits for such a stack.) (2) This script: it starts a second `python worker.py` and a second API
(the devstack's uvicorn command on --api-port2) with the first worker's WE_* environment, logs in
.data/logs/worker-2.log and api-2.log; runs two engine phases at the same time, `bench/throughput.py
--no-ceiling --n N/2 --concurrency C/2 --observe webhooks`, one against each API; samples the CPU of
both workers, both APIs, Temporal, anvil and MariaDB over them; then checks from the database and the
chain that every withdrawal of the run is CONFIRMED, that each hot wallet's nonces are distinct and
contiguous and match the chain, and that no withdrawal has two mined attempts; and from the two
workers' logs that both did work. Both added processes are stopped at the end, also on failure or
Ctrl-C. One `name: value` line per figure, `check_<name>: ok|FAIL ...` per check.

Exit status: 0 when every check holds, 1 when one does not, 2 when the stack is not there or the
bench is misused (an `error:` line says what to start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from bench.throughput import (  # noqa: E402
    BenchError,
    PhaseMeter,
    _proc_cmdline,
    api_healthy,
    figure,
    load_credentials,
    note,
    stack_processes,
    steady_rate,
)
from devstack import processes  # noqa: E402

# What each engine phase's figures are printed again as, prefixed api1_ / api2_ (the full output of
# each is kept in .data/logs/scale-out-api<k>.txt).
PHASE_FIGURES = (
    "submitted",
    "accepted",
    "confirmed",
    "confirmed_per_s_steady",
    "confirmed_per_s_whole_run",
    "final_statuses",
    "errors",
    "post_p50_s",
    "post_p99_s",
    "post_to_broadcast_p50_s",
    "post_to_confirmed_p50_s",
    "http_retried",
    "webhook_events_received",
    "webhook_lag_s",
)
ENV_KEYS = ("WE_TEMPORAL_ADDRESS", "WE_DATABASE_URL", "WE_CONFIG_FILE", "WE_DATA_DIR")


class Checks:
    """Every correctness check of the run, printed as it is made; the exit status is their AND."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, name: str, ok: bool, detail: str = "") -> None:
        figure(f"check_{name}", ("ok" if ok else "FAIL") + (f" ({detail})" if detail else ""))
        if not ok:
            self.failed.append(name)


# --- the processes: the stack's, and the two this bench adds --------------------------------------


def proc_environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def stack_env(worker_pid: int) -> dict[str, str]:
    """The environment for the added worker and API: ours without any WE_* variable, plus every WE_*
    variable of the running worker (devstack's four and whatever `make run` was started with, e.g.
    WE_RATE_LIMIT_PER_MINUTE), so both pairs run on the same settings."""
    theirs = proc_environ(worker_pid)
    if theirs is None or "WE_DATABASE_URL" not in theirs:
        raise BenchError(f"cannot read the environment of the stack's worker (pid {worker_pid}) from /proc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WE_")}
    env.update({k: v for k, v in theirs.items() if k.startswith("WE_")})
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as devstack: the workflow sandbox re-imports modules
    return env


def start_process(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """As devstack's `processes.start`, but with exactly `env` (not merged over ours)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )


async def wait_worker_started(proc: subprocess.Popen[bytes], log_path: Path, offset: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the second worker exited with {proc.returncode}; see {log_path}")
        with log_path.open("rb") as f:
            f.seek(offset)
            if b'"worker.started"' in f.read():
                return
        await asyncio.sleep(0.3)
    raise BenchError(f"the second worker did not start within 90 s; see {log_path}")


async def wait_api_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the second API exited with {proc.returncode}; see {log_path}")
        if (await api_healthy(url))[0]:
            return
        await asyncio.sleep(0.3)
    raise BenchError(f"the second API at {url} was not healthy within 90 s; see {log_path}")


def mariadb_pid(port: int | None) -> int | None:
    """The MariaDB server listening on `port`, when it was started with --port (as ours is)."""
    if port is None:
        return None
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        cmd = _proc_cmdline(int(p))
        if cmd and Path(cmd[0]).name in ("mariadbd", "mysqld") and f"--port={port}" in cmd:
            return int(p)
    return None


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def worker_work(path: Path, offset: int, wanted: set[str]) -> tuple[int, set[str]]:
    """`withdrawal.status` lines (one per status write) of the run's withdrawals in a worker's JSON
    log from `offset` on, and the withdrawals it logged anything for."""
    writes, seen = 0, set[str]()
    if not path.exists():
        return 0, seen
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            if b'"withdrawal_id"' not in raw:
                continue
            try:
                d = json.loads(raw)
            except ValueError:
                continue
            wid = d.get("withdrawal_id")
            if wid not in wanted:
                continue
            seen.add(wid)
            writes += d.get("event") == "withdrawal.status"
    return writes, seen


# --- the two engine phases ------------------------------------------------------------------------


async def run_phase(
    label: str, creds_path: Path, n: int, concurrency: int, args: argparse.Namespace, out: Path
) -> tuple[int, dict[str, str]]:
    """One `bench/throughput.py` engine phase against one API; its figures, and its full output in
    `out`."""
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--no-ceiling", "--idle-sample", "0"]
    cmd += ["--n", str(n), "--concurrency", str(concurrency), "--observe", "webhooks"]
    cmd += ["--network", args.network, "--asset", args.asset, "--amount", args.amount]
    cmd += ["--timeout", str(args.timeout), "--credentials", str(creds_path)]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches this bench only; it stops the phase itself
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), args.timeout + 120)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
    body = stdout.decode(errors="replace")
    await asyncio.to_thread(out.write_text, body)
    found: dict[str, str] = {}
    for line in body.splitlines():
        name, sep, value = line.partition(": ")
        if line.startswith("error:"):
            note(f"{label}: {line}")
        elif sep and not line.startswith("#"):
            found[name] = value  # the summary block's median (one round: the same) comes last
    assert proc.returncode is not None
    return proc.returncode, found


# --- the checks: database and chain ---------------------------------------------------------------


def sync_engine(db_url: str) -> Engine:
    url = make_url(db_url)
    if url.get_backend_name() not in ("mysql", "mariadb"):
        raise BenchError(
            f"the stack runs on {url.get_backend_name()}, not MariaDB: start it with "
            "WE_DATABASE_URL=mysql+aiomysql://... make run (or use --start-mariadb)"
        )
    return create_engine(url.set(drivername="mysql+pymysql"), pool_pre_ping=True)


def chain_nonce(rpc_url: str, address: str) -> int:
    return int(processes.rpc(rpc_url, "eth_getTransactionCount", [address, "latest"]), 16)


def run_rows(db: Engine, since: datetime) -> list[dict[str, Any]]:
    q = text(
        "SELECT id, network, hot_wallet, nonce, status, tx_hash, created_at, updated_at "
        "FROM withdrawals WHERE created_at >= :since"
    )
    with db.connect() as c:
        return [dict(r._mapping) for r in c.execute(q, {"since": since})]


def check_database(
    db: Engine,
    rows: list[dict[str, Any]],
    creds: dict[str, Any],
    before: dict[tuple[str, str], int],
    n: int,
    check: Checks,
) -> None:
    ids = [r["id"] for r in rows]
    statuses = Counter(str(r["status"]) for r in rows)
    figure("withdrawals", len(rows))
    figure("final_statuses", " ".join(f"{k}={v}" for k, v in statuses.most_common()) or "none")
    check("withdrawals_of_the_run", len(rows) == n, f"{len(rows)} in the database, {n} submitted")
    check("all_confirmed", bool(rows) and statuses.get("CONFIRMED", 0) == len(rows))
    if not rows:
        return
    with db.connect() as c:
        attempts = [
            dict(r._mapping)
            for r in c.execute(
                text(
                    "SELECT withdrawal_id, nonce, tx_hash, outcome FROM tx_attempts "
                    "WHERE withdrawal_id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": ids},
            )
        ]
        allocations = [
            dict(r._mapping)
            for r in c.execute(
                text(
                    "SELECT network, hot_wallet, nonce, withdrawal_id, purpose FROM nonce_allocations "
                    "WHERE withdrawal_id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": ids},
            )
        ]
        wallets = {
            (r.network, r.address): int(r.next_nonce)
            for r in c.execute(text("SELECT network, address, next_nonce FROM hot_wallets"))
        }
    replacements = len(attempts) - len(rows)
    figure("signed_attempts", len(attempts))
    figure("replacements", replacements)
    figure("replacements_per_withdrawal", round(replacements / len(rows), 4))
    mined: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        if a["outcome"] == "MINED":
            mined.setdefault(a["withdrawal_id"], []).append(a)
    two = sum(len(m) > 1 for m in mined.values())
    mismatched = sum(
        1
        for r in rows
        if len(mined.get(r["id"], [])) == 1
        and (mined[r["id"]][0]["tx_hash"] != r["tx_hash"] or mined[r["id"]][0]["nonce"] != r["nonce"])
    )
    none = sum(r["id"] not in mined for r in rows)
    check("no_two_mined_attempts", two == 0, f"{two} withdrawals with two or more MINED attempts")
    check(
        "one_mined_attempt_each",
        none == 0 and mismatched == 0,
        f"{none} without a MINED attempt, {mismatched} whose MINED attempt is not the row's tx_hash/nonce",
    )
    by_alloc = {(a["network"], a["hot_wallet"], a["nonce"]): a for a in allocations}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["network"]), str(r["hot_wallet"])), []).append(r)
    for (network, wallet), group in sorted(groups.items()):
        tag = f"{network}_{wallet}"
        nonces = sorted(int(r["nonce"]) for r in group if r["nonce"] is not None)
        distinct = len(set(nonces)) == len(nonces) == len(group)
        contiguous = bool(nonces) and nonces == list(range(nonces[0], nonces[0] + len(nonces)))
        span = f"{nonces[0]}..{nonces[-1]}" if nonces else "none"
        figure(f"nonces_{tag}", f"{span} ({len(nonces)} nonces for {len(group)} withdrawals)")
        check(f"nonces_distinct_contiguous_{tag}", distinct and contiguous)
        unmatched = sum(
            (network, wallet, r["nonce"]) not in by_alloc
            or by_alloc[(network, wallet, r["nonce"])]["withdrawal_id"] != r["id"]
            or by_alloc[(network, wallet, r["nonce"])]["purpose"] != "WITHDRAWAL"
            for r in group
        )
        check(
            f"nonce_allocations_{tag}",
            unmatched == 0,
            f"{unmatched} withdrawals whose nonce is not allocated to them",
        )
        rpc_url = creds["networks"].get(network, {}).get("rpc_url")
        start = before.get((network, wallet.lower()))
        if rpc_url is None or start is None:
            check(f"chain_nonce_{tag}", False, "the wallet's chain nonce was not read before the run")
            continue
        after = chain_nonce(rpc_url, wallet)
        figure(f"chain_nonce_{tag}", f"{start} -> {after} (+{after - start})")
        check(
            f"chain_nonce_advanced_by_withdrawals_{tag}",
            after - start == len(group) and bool(nonces) and nonces[0] == start,
            f"+{after - start} on chain for {len(group)} withdrawals, first nonce {span.split('..')[0]}",
        )
        db_next = wallets.get((network, wallet))
        check(
            f"db_next_nonce_matches_chain_{tag}",
            db_next == after,
            f"hot_wallets.next_nonce {db_next}, chain {after}",
        )


# --- --start-mariadb ------------------------------------------------------------------------------


def start_mariadb(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A throwaway MariaDB (tests/databases.py) under data_dir/bench/, left running for the stack."""
    try:
        from tests import databases
    except ImportError as e:
        raise BenchError(f"--start-mariadb needs the dev dependencies (make install): {e}") from e
    if databases.mariadb_binaries() is None:
        raise BenchError("--start-mariadb: MariaDB is not installed here (apt-get install -y mariadb-server)")
    tmp = data_dir / "bench" / f"mariadb-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    tmp.mkdir(parents=True)
    try:
        proc, port = databases.start_mariadb(tmp)
    except (subprocess.SubprocessError, OSError, RuntimeError, TimeoutError) as e:
        raise BenchError(f"--start-mariadb: MariaDB did not start ({e}); see {tmp}") from e
    except BaseException as e:  # pytest.skip's exception (binaries missing) is not an Exception
        if type(e).__name__ == "Skipped":
            raise BenchError(f"--start-mariadb: {e}") from None
        raise
    url = databases.create_database(port, "engine")
    return proc, url, tmp


def written_since(path: Path, since: float) -> bool:
    return path.exists() and path.stat().st_mtime >= since


async def wait_for_stack(api_url: str, db_url: str, creds_path: Path, since: float, limit: float) -> None:
    """Until a `make run` on `db_url` is healthy and has written its credentials."""
    port = urlsplit(api_url).port or 80
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pids = stack_processes(port, None)
        env = proc_environ(pids["worker"]) if "worker" in pids else None
        fresh = written_since(creds_path, since)
        if env and env.get("WE_DATABASE_URL") == db_url and fresh and (await api_healthy(api_url))[0]:
            return
        await asyncio.sleep(2.0)
    raise BenchError(f"no `make run` on the new MariaDB within --wait-stack {limit:.0f} s")


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--n", type=int, default=1000, help="withdrawals in all, half through each API")
    p.add_argument("--concurrency", type=int, default=50, help="POSTs in flight in all, half per API")
    p.add_argument("--api-port2", type=int, default=8001, help="port of the second API")
    p.add_argument("--network", default="ethereum")
    p.add_argument("--asset", default="ETH")
    p.add_argument("--amount", default="0.001")
    p.add_argument("--credentials", type=Path, default=ROOT / ".data" / "dev-credentials.json")
    p.add_argument("--timeout", type=float, default=900.0, help="limit per engine phase, seconds")
    p.add_argument(
        "--start-mariadb",
        action="store_true",
        help="start a throwaway MariaDB, print the `make run` command for it, wait for that stack",
    )
    p.add_argument("--wait-stack", type=float, default=900.0, help="--start-mariadb: seconds to wait")
    args = p.parse_args(argv)
    if args.n < 2 or args.concurrency < 2:
        p.error("--n and --concurrency must be at least 2 (half goes through each API)")
    return args


async def main(args: argparse.Namespace) -> int:
    creds_path: Path = args.credentials.resolve()
    data_dir = creds_path.parent
    if args.start_mariadb:
        started = time.time()
        mariadb, url, tmp = await asyncio.to_thread(start_mariadb, data_dir)
        figure(
            "mariadb",
            f"pid {mariadb.pid}, data in {tmp}; left running: stop make run, then kill {mariadb.pid}",
        )
        sys.stdout.write(
            "\nStart the stack on it, in another terminal (in the repository):\n\n"
            f"  WE_DATABASE_URL={url} WE_RATE_LIMIT_PER_MINUTE=1000000 "
            "WE_ALERT_PENDING_AFTER_SECONDS=86400 make run\n\n"
            f"Waiting up to {args.wait_stack:.0f} s for it.\n"
        )
        sys.stdout.flush()
        await wait_for_stack("http://127.0.0.1:8000", url, creds_path, started, args.wait_stack)

    creds = load_credentials(creds_path)
    api1 = str(creds["api_url"]).rstrip("/")
    ok, why = await api_healthy(api1)
    if not ok:
        raise BenchError(
            f"the engine API at {api1} is not up ({why}). Start the stack on MariaDB: WE_DATABASE_URL="
            "mysql+aiomysql://... WE_RATE_LIMIT_PER_MINUTE=1000000 make run (see the docstring)"
        )
    net = creds["networks"].get(args.network)
    if net is None:
        raise BenchError(f"network {args.network!r} is not served by the stack")
    parts = urlsplit(api1)
    host = parts.hostname or "127.0.0.1"
    rpc_port = urlsplit(str(net.get("rpc_url", ""))).port
    pids = stack_processes(parts.port or 80, rpc_port)
    if "worker" not in pids or "api" not in pids:
        raise BenchError(f"the `make run` worker and API serving {api1} were not found in /proc")
    env = stack_env(pids["worker"])
    db_url = env["WE_DATABASE_URL"]
    db = sync_engine(db_url)
    if processes.port_open(args.api_port2, host):
        raise BenchError(f"port {args.api_port2} is in use: pick another with --api-port2")
    logs = Path(env.get("WE_DATA_DIR", str(data_dir))) / "logs"
    worker1_log, worker2_log, api2_log = logs / "worker.log", logs / "worker-2.log", logs / "api-2.log"
    api2 = f"http://{host}:{args.api_port2}"
    n1, c1 = args.n // 2, args.concurrency // 2
    n2, c2 = args.n - n1, args.concurrency - c1
    u = make_url(db_url)
    safe_db = f"{u.drivername}://{u.host}:{u.port}/{u.database}"  # no user, no password
    for name, value in (
        ("n", args.n),
        ("concurrency", args.concurrency),
        ("split", f"api1 {api1}: n={n1} concurrency={c1} | api2 {api2}: n={n2} concurrency={c2}"),
        ("network", args.network),
        ("asset", args.asset),
        ("database", safe_db),
        ("load_average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ):
        figure(name, value)

    added: list[tuple[str, subprocess.Popen[bytes]]] = []
    check = Checks()
    try:
        offsets = {"worker1": log_size(worker1_log), "worker2": log_size(worker2_log)}
        worker2 = start_process([sys.executable, str(ROOT / "worker.py")], worker2_log, env)
        added.append(("worker-2", worker2))
        api2_proc = start_process(processes.api_command(host, args.api_port2, sys.executable), api2_log, env)
        added.append(("api-2", api2_proc))
        await wait_worker_started(worker2, worker2_log, offsets["worker2"])
        await wait_api_healthy(api2_proc, api2, api2_log)
        figure(
            "added_processes",
            f"worker-2 pid {worker2.pid} ({worker2_log}), api-2 pid {api2_proc.pid} ({api2_log})",
        )

        bench_dir = data_dir / "bench"
        bench_dir.mkdir(parents=True, exist_ok=True)
        copies = []
        for k, url in ((1, api1), (2, api2)):
            path = bench_dir / f"scale-out-api{k}-credentials.json"
            path.write_text(json.dumps({**creds, "api_url": url}, indent=2) + "\n")
            path.chmod(0o600)
            copies.append(path)

        before: dict[tuple[str, str], int] = {}
        for wallet in net.get("hot_wallets", []):
            before[(args.network, str(wallet).lower())] = chain_nonce(str(net["rpc_url"]), str(wallet))
        measured = {
            "worker1": pids["worker"],
            "worker2": worker2.pid,
            "api1": pids["api"],
            "api2": api2_proc.pid,
            **{k: v for k, v in pids.items() if k in ("temporal", "anvil")},
        }
        if (db_pid := mariadb_pid(make_url(db_url).port)) is not None:
            measured["mariadb"] = db_pid
        else:
            note("the MariaDB server process was not found (started without --port?): no CPU figure for it")
        since = datetime.now(UTC).replace(tzinfo=None)
        clients_before = sum(os.times()[2:4])
        meter = PhaseMeter(measured, rss_of=("worker1", "worker2"))
        async with meter:
            (rc1, f1), (rc2, f2) = await asyncio.gather(
                run_phase("api1", copies[0], n1, c1, args, logs / "scale-out-api1.txt"),
                run_phase("api2", copies[1], n2, c2, args, logs / "scale-out-api2.txt"),
            )
        clients_cpu = sum(os.times()[2:4]) - clients_before
        for label, rc, found in (("api1", rc1, f1), ("api2", rc2, f2)):
            figure(f"{label}_exit", rc)
            for name in PHASE_FIGURES:
                if name in found:
                    figure(f"{label}_{name}", found[name])
        figure("phase_outputs", f"{logs / 'scale-out-api1.txt'} {logs / 'scale-out-api2.txt'}")
        check("both_phases_exit_0", rc1 == 0 and rc2 == 0, f"api1 {rc1}, api2 {rc2}")

        rows = await asyncio.to_thread(run_rows, db, since)
        confirmed = [r for r in rows if r["status"] == "CONFIRMED"]
        times = [r["updated_at"].replace(tzinfo=UTC).timestamp() for r in confirmed]
        first = min((r["created_at"].replace(tzinfo=UTC).timestamp() for r in rows), default=0.0)
        steady, lo, hi = steady_rate(times)
        figure("confirmed_per_s_steady", steady if steady is not None else "n/a (too few confirmed)")
        if steady is not None:
            figure("steady_window_s", f"{lo - first:.1f} .. {hi - first:.1f} after the first withdrawal")
        whole = len(times) / (max(times) - first) if times and max(times) > first else None
        figure("confirmed_per_s_whole_run", whole if whole is not None else "n/a")
        meter.report("", len(confirmed), "confirmed")
        if meter.elapsed > 0:
            figure(
                "cpu_cores_bench_clients",
                f"{clients_cpu / meter.elapsed:.2f} ({clients_cpu:.1f} s over {meter.elapsed:.1f} s)",
            )
        await asyncio.to_thread(check_database, db, rows, creds, before, args.n, check)

        wanted = {str(r["id"]) for r in rows}
        w1_writes, w1_seen = worker_work(worker1_log, offsets["worker1"], wanted)
        w2_writes, w2_seen = worker_work(worker2_log, offsets["worker2"], wanted)
        figure("worker_status_writes", f"worker1={w1_writes} worker2={w2_writes}")
        figure(
            "worker_withdrawals_logged",
            f"worker1={len(w1_seen)} worker2={len(w2_seen)} both={len(w1_seen & w2_seen)} "
            f"neither={len(wanted - w1_seen - w2_seen)}",
        )
        check(
            "both_workers_worked",
            w1_writes > 0 and w2_writes > 0,
            f"worker1 {w1_writes}, worker2 {w2_writes}",
        )
    finally:
        for name, proc in reversed(added):
            if proc.poll() is not None:
                note(f"{name} had exited with {proc.returncode} before the end of the run")
                check(f"{name.replace('-', '')}_alive_to_the_end", False, f"exit {proc.returncode}")
            processes.stop(proc, timeout=20)
        db.dispose()
    figure("result", "ok" if not check.failed else f"FAIL ({', '.join(check.failed)})")
    return 0 if not check.failed else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except BenchError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
