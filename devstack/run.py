"""`make run`: start and supervise the whole default stack on one machine, no Docker.

Temporal dev server (persistent, search attributes registered), one anvil per network (state kept in
.data/), test tokens deployed and hot wallets funded, migrations and dev credentials, then the worker
and the API as their own processes. A process that dies is reported and restarted; Ctrl-C stops all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog

from activities.signer import write_keystore
from devstack import chain, processes
from devstack.bootstrap import bootstrap
from logging_setup import configure_logging
from settings import ROOT, Settings

log = structlog.get_logger()

TEMPORAL_PORT = int(os.environ.get("WE_DEV_TEMPORAL_PORT", "7233"))
TEMPORAL_UI_PORT = int(os.environ.get("WE_DEV_TEMPORAL_UI_PORT", "8233"))


@dataclass
class Child:
    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.proc = processes.start(self.cmd, self.log_path, self.env)
        log.info("devstack.started", process=self.name, pid=self.proc.pid, log=str(self.log_path))


def _rpc_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def main() -> None:
    settings = Settings()
    configure_logging("INFO", json=False)
    data = settings.data_dir
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    creds_path = data / "dev-credentials.json"
    config = settings.engine_config
    children: list[Child] = [
        Child(
            "temporal",
            processes.temporal_command(
                data / "temporal.db", TEMPORAL_PORT, TEMPORAL_UI_PORT, settings.temporal_namespace
            ),
            logs / "temporal.log",
            port=TEMPORAL_PORT,
        ),
    ]
    for name, net in config.networks.items():
        port = _rpc_port(net.rpc_urls[0])
        children.append(
            Child(
                f"anvil-{name}",
                processes.anvil_command(
                    port,
                    net.chain_id,
                    block_time=net.block_time_seconds,
                    state_file=data / f"anvil-{name}.json",
                ),
                logs / f"anvil-{name}.log",
                port=port,
            )
        )
    busy = [c for c in children if c.port and processes.port_open(c.port)]
    if busy:
        names = ", ".join(f"{c.name} (port {c.port})" for c in busy)
        raise SystemExit(f"ports already in use: {names}. Is another `make run` running?")
    creds_path.unlink(missing_ok=True)  # a stale file must not look like this run is ready
    for c in children:
        c.start()
    for c in children:
        assert c.proc and c.port
        processes.wait_for_port(c.port, c.proc, timeout=60)

    # Chains: tokens at the configured addresses, hot wallets funded, keystore for the dev hot wallet.
    for name, net in config.networks.items():
        url = net.rpc_urls[0]
        chain.wait_for_rpc(url)
        deployed = chain.deploy_tokens(url)
        for symbol, token in net.tokens.items():
            if deployed.get(symbol) != token.address:
                raise SystemExit(
                    f"{name}: {symbol} deployed at {deployed.get(symbol)}, config says {token.address}"
                )
        for wallet in net.hot_wallets:
            chain.fund_hot_wallet(
                url,
                wallet,
                {s: t.address for s, t in net.tokens.items()},
                native_wei=10_000 * 10**18,
                token_units=10_000_000 * 10**6,
            )
        log.info("devstack.chain.ready", network=name, chain_id=net.chain_id, tokens=deployed)
    password = settings.keystore_password.get_secret_value()
    await asyncio.to_thread(write_keystore, settings.keystore_path, chain.ANVIL_KEYS[0], password)

    secrets_data = await bootstrap(settings.db_url, data / "dev-secrets.json")

    py = sys.executable
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    env = {
        "WE_TEMPORAL_ADDRESS": f"127.0.0.1:{TEMPORAL_PORT}",
        "WE_DATABASE_URL": settings.db_url,
        "WE_CONFIG_FILE": str(settings.config_file),
        "WE_DATA_DIR": str(data),
    }
    services = [
        Child("worker", [py, str(ROOT / "worker.py")], logs / "worker.log", env),
        Child(
            "api",
            processes.api_command(settings.api_host, settings.api_port, py),
            logs / "api.log",
            env,
            port=settings.api_port,
        ),
    ]
    for c in services:
        c.start()
    children += services
    await _wait_healthy(api_url, services)

    creds = {
        "api_url": api_url,
        "temporal_address": f"127.0.0.1:{TEMPORAL_PORT}",
        "temporal_namespace": settings.temporal_namespace,
        "temporal_ui_url": f"http://127.0.0.1:{TEMPORAL_UI_PORT}",
        "api_key": secrets_data["api_key"],
        "admin_username": secrets_data["admin_username"],
        "admin_password": secrets_data["admin_password"],
        "networks": {
            name: {
                "chain_id": net.chain_id,
                "rpc_url": net.rpc_urls[0],
                "native_asset": net.native_asset,
                "required_confirmations": net.required_confirmations,
                "hot_wallets": net.hot_wallets,
                "tokens": {s: {"address": t.address, "decimals": t.decimals} for s, t in net.tokens.items()},
            }
            for name, net in config.networks.items()
        },
    }
    _write_private(creds_path, json.dumps(creds, indent=2) + "\n")  # appears only once healthy, whole
    banner = (
        "\nWithdrawal engine is running.\n"
        f"  API docs:        {api_url}/api-docs\n"
        f"  Temporal Web UI: {creds['temporal_ui_url']}\n"
        f"  Dev API key:     {secrets_data['api_key']}\n"
        f"  Credentials:     {creds_path}\n"
        f"  Logs:            {logs}/\n"
        "Press Ctrl-C to stop.\n"
    )
    sys.stdout.write(banner)
    sys.stdout.flush()
    try:
        await _supervise(children)
    finally:
        creds_path.unlink(missing_ok=True)  # the stack is gone: its credentials no longer answer


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only, atomically: a reader sees the old file or
    the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when an old temporary file was left with other modes
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def _wait_healthy(api_url: str, services: list[Child], limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            for c in services:
                if c.proc and c.proc.poll() is not None:
                    raise SystemExit(f"{c.name} exited with {c.proc.returncode}; see {c.log_path}")
            try:
                if (await http.get(f"{api_url}/health", timeout=3)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit(f"the API did not become healthy within {limit}s; see {services[-1].log_path}")


async def _supervise(children: list[Child]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            for c in children:
                if c.proc is not None and c.proc.poll() is not None:
                    log.error(
                        "devstack.process.died", process=c.name, code=c.proc.returncode, log=str(c.log_path)
                    )
                    c.restarts += 1
                    await asyncio.sleep(min(10, c.restarts))
                    c.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1)
    finally:
        log.info("devstack.stopping")
        for c in reversed(children):
            if c.proc is not None:
                processes.stop(c.proc)
        log.info("devstack.stopped")


if __name__ == "__main__":
    asyncio.run(main())
