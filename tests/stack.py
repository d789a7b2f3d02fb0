"""Real processes for the tests: a Temporal dev server and one anvil per dev network, on free ports.

Shared by the pytest fixtures and the history generator (tests/histories/make_histories.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from eth_account import Account
from temporalio.client import Client
from temporalio.worker import Worker

from activities.signer import KeystoreSigner, _Key
from api.app import create_app
from api.deps import AppState, TemporalConnector
from api.ratelimit import RateLimiter
from devstack import chain, processes
from devstack.bootstrap import ensure_api_client, ensure_user, migrate
from models.db import Database
from models.domain import HistoryEntry
from settings import EngineConfig, Settings
from worker import Engine, build_workers
from workflows.withdrawal import WithdrawalWorkflow

# network -> (chain id, native asset, fee model)
NETWORKS = {
    "ethereum": (31337, "ETH", "eip1559"),
    "bsc": (31338, "BNB", "legacy"),
    "polygon": (31339, "POL", "eip1559"),
}
BLOCK_TIME = 0.5
CONFIRMATIONS = 3


@dataclass
class Stack:
    tmp: Path
    temporal_port: int
    rpc_urls: dict[str, str]
    tokens: dict[str, dict[str, str]]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    temporal_cmd: list[str] = field(default_factory=list)

    @contextmanager
    def mining_paused(self, network: str) -> Iterator[None]:
        """Stop the network's interval mining for the block, then mine every second again."""
        processes.rpc(self.rpc_urls[network], "evm_setIntervalMining", [0])
        try:
            yield
        finally:
            processes.rpc(self.rpc_urls[network], "evm_setIntervalMining", [1])

    def restart_temporal(self, *, kill: bool = True) -> None:
        """SIGKILL the dev server and start it again on the same port and database file."""
        proc = self.procs["temporal"]
        if kill:
            proc.kill()
            proc.wait()
        self.procs["temporal"] = processes.start(self.temporal_cmd, self.tmp / "temporal.log")
        processes.wait_for_port(self.temporal_port, self.procs["temporal"], timeout=60)

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def start_anvil(self, network: str) -> None:
        port = int(self.rpc_urls[network].rsplit(":", 1)[1])
        chain_id = NETWORKS[network][0]
        proc = processes.start(
            processes.anvil_command(port, chain_id, block_time=BLOCK_TIME), self.tmp / f"anvil-{network}.log"
        )
        processes.wait_for_port(port, proc)
        self.procs[f"anvil-{network}"] = proc

    def stop_all(self) -> None:
        for p in self.procs.values():
            processes.stop(p)


def start_stack(tmp: Path) -> Stack:
    tmp.mkdir(parents=True, exist_ok=True)
    tport, uiport = processes.free_port(), processes.free_port()
    stack = Stack(
        tmp=tmp,
        temporal_port=tport,
        rpc_urls={n: f"http://127.0.0.1:{processes.free_port()}" for n in NETWORKS},
        tokens={},
    )
    stack.temporal_cmd = processes.temporal_command(tmp / "temporal.db", tport, uiport)
    t = processes.start(stack.temporal_cmd, tmp / "temporal.log")
    stack.procs["temporal"] = t
    for network in NETWORKS:
        stack.start_anvil(network)
    processes.wait_for_port(tport, t, timeout=60)
    for network, url in stack.rpc_urls.items():
        chain.wait_for_rpc(url)
        stack.tokens[network] = chain.deploy_tokens(url)
    return stack


def engine_config(
    stack: Stack,
    hot_wallets: list[str],
    network_overrides: dict[str, Any] | None = None,
    rpc_urls: dict[str, list[str]] | None = None,
    **overrides: Any,
) -> EngineConfig:
    limits = {
        "per_transaction": "1000",
        "daily_per_user": "5000",
        "approval_threshold": "100",
        "four_eyes_threshold": "500",
    }
    token_limits = {"per_transaction": "1000000", "daily_per_user": "5000000", "approval_threshold": "10000"}
    networks = {}
    for name, (chain_id, native, fee_model) in NETWORKS.items():
        networks[name] = {
            "chain_id": chain_id,
            "rpc_urls": (rpc_urls or {}).get(name, [stack.rpc_urls[name]]),
            "native_asset": native,
            "fee_model": fee_model,
            "required_confirmations": CONFIRMATIONS,
            "block_time_seconds": BLOCK_TIME,
            "hot_wallets": hot_wallets,
            "tokens": {s: {"address": a, "decimals": 6} for s, a in stack.tokens[name].items()},
            "limits": {native: limits, "USDT": token_limits, "USDC": token_limits},
            **(network_overrides or {}),
        }
    data: dict[str, Any] = {"networks": networks, "funds_retry_seconds": 1, "approval_timeout_seconds": 3600}
    data.update(overrides)
    return EngineConfig.model_validate(data)


def new_wallet() -> tuple[str, str]:
    key = "0x" + secrets.token_hex(32)
    return Account.from_key(key).address, key


async def fund(
    stack: Stack,
    wallet: str,
    *,
    native: int = 1000 * 10**18,
    tokens: int = 10_000_000 * 10**6,
    networks: tuple[str, ...] = tuple(NETWORKS),
) -> None:
    def _do() -> None:
        hashes = []
        for n in networks:
            url = stack.rpc_urls[n]
            chain.set_balance(url, wallet, native)
            for address in stack.tokens[n].values():
                if tokens:
                    hashes.append((url, chain.mint(url, address, wallet, tokens, wait=False)))
        for url, h in hashes:
            w3 = chain.web3_for(url)
            assert w3.eth.wait_for_transaction_receipt(h, timeout=60, poll_latency=0.1)["status"] == 1  # type: ignore[arg-type]

    await asyncio.to_thread(_do)


@dataclass
class Harness:
    """One engine under test: its own task queue, hot wallet(s), API client and in-process worker."""

    stack: Stack
    config: EngineConfig
    settings: Settings
    db: Database
    client: Client
    engine: Engine
    http: httpx.AsyncClient
    api_key: str
    client_id: str
    keys: dict[str, str]
    workers: list[Worker] = field(default_factory=list)
    _runs: list[asyncio.Task[None]] = field(default_factory=list)

    async def start_worker(self) -> None:
        """The engine's workers, as worker.py runs them: the workflows and short steps, and the waits."""
        self.workers = build_workers(self.client, self.engine, self.settings.task_queue, self.settings)
        self._runs = [asyncio.create_task(w.run()) for w in self.workers]

    @contextmanager
    def signing_key_missing(self, network: str) -> Iterator[None]:
        """Meanwhile the network's first hot wallet has no signing key in this engine: a withdrawal
        takes its nonce and then parks (SIGNER_UNAVAILABLE) with nothing signed at it."""
        wallet = self.config.networks[network].hot_wallets[0]
        key = self.engine.signer._keys.pop(wallet)
        try:
            yield
        finally:
            self.engine.signer._keys[wallet] = key

    async def stop_worker(self) -> None:
        """Shut the workers down; bounded, as worker.py does (after a server restart it can hang)."""
        if self.workers:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(w.shutdown() for w in self.workers), return_exceptions=True), 20
                )
            except TimeoutError:
                for run in self._runs:
                    run.cancel()
            self.workers, self._runs = [], []

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "Idempotency-Key": key or str(uuid.uuid4())}

    async def request(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.http.post("/withdrawal/request", json=body, headers=self.headers(key))

    async def status(self, withdrawal_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/withdrawal/status/{withdrawal_id}", headers={"X-API-Key": self.api_key})
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def wait_status(self, withdrawal_id: str, statuses: set[str], limit: float = 90) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            w = await self.status(withdrawal_id)
            if w["status"] in statuses:
                return w
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"withdrawal {withdrawal_id} stuck in {w['status']}: {w}")
            await asyncio.sleep(0.2)

    async def operator_headers(self, role: str = "OPERATOR") -> dict[str, str]:
        """A bearer token of a fresh user with `role` (ensure_user + POST /auth/login)."""
        name, password = f"{role.lower()}-{uuid.uuid4().hex[:8]}", "operator-password-123"
        await ensure_user(self.db, name, password, role)
        r = await self.http.post("/auth/login", json={"username": name, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def operator_view(self, withdrawal_id: str) -> dict[str, Any]:
        """GET /admin/transactions/{id}: the withdrawal with the recorded error detail, attempts, history."""
        r = await self.http.get(
            f"/admin/transactions/{withdrawal_id}", headers=await self.operator_headers("VIEWER")
        )
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def history(self, withdrawal_id: str) -> list[HistoryEntry]:
        """The workflow's typed history (the `status` query)."""
        handle = self.client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{withdrawal_id}")
        state = await handle.query(WithdrawalWorkflow.status)
        return state.history

    def config_file(self) -> Path:
        path = self.stack.tmp / f"config-{self.settings.task_queue}.json"
        path.write_text(json.dumps(self.config.model_dump(mode="json"), default=str))
        return path


async def make_harness(
    stack: Stack,
    db_url: str,
    *,
    wallets: int = 1,
    fund_wallets: bool = True,
    config_overrides: dict[str, Any] | None = None,
    network_overrides: dict[str, Any] | None = None,
    rpc_urls: dict[str, list[str]] | None = None,
    start_worker: bool = True,
    settings_overrides: dict[str, Any] | None = None,
) -> Harness:
    generated = [new_wallet() for _ in range(wallets)]
    keys = dict(generated)
    if fund_wallets:
        for addr in keys:  # one at a time: the token owner's nonce is shared
            await fund(stack, addr)
    config = engine_config(stack, list(keys), network_overrides, rpc_urls, **(config_overrides or {}))
    settings = Settings(
        env="test",
        database_url=db_url,
        temporal_address=stack.temporal_address,
        task_queue=f"tq-{uuid.uuid4()}",
        data_dir=stack.tmp,
        rate_limit_per_minute=1_000_000,
        pause_poll_seconds=0.5,
        **(settings_overrides or {}),
    )
    signer = KeystoreSigner({a: _Key(bytes.fromhex(k[2:])) for a, k in keys.items()})
    client = await Client.connect(stack.temporal_address)
    engine = Engine(settings, config, signer, client)
    await engine.start()
    db = Database(db_url)
    api_key = "we_test_" + secrets.token_hex(16)
    client_id = await ensure_api_client(db, api_key, name="test")
    state = AppState(
        settings=settings,
        config=config,
        db=db,
        temporal=TemporalConnector(settings, client),
        limiter=RateLimiter(),
    )
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url="http://engine")
    h = Harness(
        stack=stack,
        config=config,
        settings=settings,
        db=db,
        client=client,
        engine=engine,
        http=http,
        api_key=api_key,
        client_id=client_id,
        keys=keys,
    )
    if start_worker:
        await h.start_worker()
    return h


@asynccontextmanager
async def running_harness(stack: Stack, db_url: str, **kw: Any) -> AsyncIterator[Harness]:
    """`make_harness` for the length of a block (or a fixture), always closed."""
    h = await make_harness(stack, db_url, **kw)
    try:
        yield h
    finally:
        await close_harness(h)


async def close_harness(h: Harness) -> None:
    await h.stop_worker()
    await h.http.aclose()
    await h.engine.aclose()
    await h.db.dispose()


def new_sqlite_db(tmp: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp / f'engine-{uuid.uuid4().hex[:8]}.db'}"
    migrate(url)
    return url


def native_body(network: str, to: str, amount: str = "0.5", **kw: Any) -> dict[str, Any]:
    return {
        "user_id": "user-1",
        "network": network,
        "asset": NETWORKS[network][1],
        "to_address": to,
        "amount": amount,
        **kw,
    }


def units(amount: str, decimals: int) -> int:
    return int(Decimal(amount).scaleb(decimals))


class _QuietServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # pytest keeps its own signal handlers


@asynccontextmanager
async def served_over_http(h: Harness) -> AsyncIterator[str]:
    """The harness's app (its AppState) served by uvicorn on a free loopback port in this event loop,
    for clients that need real HTTP (a browser, schemathesis); yields the base URL."""
    transport = h.http._transport
    assert isinstance(transport, httpx.ASGITransport)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        transport.app, lifespan="off", log_config=None, access_log=False, server_header=False
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()
