"""A counting JSON-RPC proxy for `throughput.py --rpc-proxy`.

The worker counts its RPC calls in-process (`activities.rpc.ChainRpc.calls`) but exports the count
nowhere, and anvil runs with `--silent`, so the only honest place to count from outside is the wire.

How it is put on the wire without changing the engine: `make run` starts each anvil on
`--host 127.0.0.1` and the port of the network's first `rpc_urls` entry, and hands the same config
file to the worker. A config whose URL is `http://127.0.0.2:<port>` therefore starts anvil on
127.0.0.1:<port> as before, while the worker (and the devstack's own setup calls) talk to
127.0.0.2:<port>, where this proxy listens and forwards to 127.0.0.1:<port>. All of 127.0.0.0/8 is
loopback on Linux, so nothing needs configuring.

The proxy runs in a process of its own (`ProxyProcess`, i.e. `python -m bench.rpc_proxy`), so that
the bench's HTTP client, busy with hundreds of withdrawals, does not delay the RPC calls it forwards;
the bench reads the counts from `GET /__bench__/stats`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PROXY_HOST = "127.0.0.2"
STATS_PATH = "/__bench__/stats"
ROOT = Path(__file__).resolve().parent.parent


def proxied_config(config_file: Path, network: str, out_dir: Path) -> tuple[Path, str, str]:
    """Write a copy of the network config with `network`'s RPC URL moved to the proxy address.

    Returns (the new config file, the proxy's URL, the upstream anvil URL). JSON, because
    `settings.EngineConfig.load` reads JSON as well as TOML and the standard library writes no TOML.
    """
    text = config_file.read_text()
    data: dict[str, Any] = json.loads(text) if config_file.suffix == ".json" else tomllib.loads(text)
    nets = data.get("networks", {})
    if network not in nets:
        raise SystemExit(f"error: network {network!r} is not in {config_file}")
    upstream = str(nets[network]["rpc_urls"][0])
    parts = urlsplit(upstream)
    if parts.hostname not in ("127.0.0.1", PROXY_HOST) or parts.port is None:
        raise SystemExit(
            f"error: --rpc-proxy needs a local anvil URL (http://127.0.0.1:PORT), got {upstream}"
        )
    upstream = f"http://127.0.0.1:{parts.port}"
    proxy_url = f"http://{PROXY_HOST}:{parts.port}"
    nets[network]["rpc_urls"] = [proxy_url]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"rpc-proxy-{network}.json"
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return out, proxy_url, upstream


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:  # leave Ctrl-C to the bench
        yield


class CountingProxy:
    """Forwards every request to `upstream` and counts JSON-RPC calls by method (batches included)."""

    def __init__(self, proxy_url: str, upstream: str) -> None:
        parts = urlsplit(proxy_url)
        self.host, self.port = parts.hostname or PROXY_HOST, parts.port or 8545
        self.upstream = upstream
        self.calls: Counter[str] = Counter()
        self.upstream_s: list[float] = []  # anvil's answer time per forwarded request
        self.upstream_errors: Counter[str] = Counter()
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100), timeout=30
        )
        app = Starlette(
            routes=[
                Route(STATS_PATH, self._stats, methods=["GET"]),
                Route("/{path:path}", self._forward, methods=["POST", "GET"]),
            ]
        )
        self._server = _QuietServer(
            uvicorn.Config(
                app, host=self.host, port=self.port, log_level="warning", access_log=False, lifespan="off"
            )
        )
        self._task: asyncio.Task[None] | None = None

    def total(self) -> int:
        return sum(self.calls.values())

    def _count(self, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            return
        for item in payload if isinstance(payload, list) else [payload]:
            if isinstance(item, dict):
                self.calls[str(item.get("method"))] += 1

    async def _stats(self, request: Request) -> Response:
        body = {
            "calls": dict(self.calls),
            "upstream_s": self.upstream_s,
            "errors": dict(self.upstream_errors),
        }
        return Response(json.dumps(body), media_type="application/json")

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        self._count(body)
        started = time.monotonic()
        try:
            r = await self._http.request(
                request.method,
                self.upstream + request.url.path,
                content=body,
                headers={"content-type": request.headers.get("content-type", "application/json")},
            )
        except httpx.HTTPError as e:
            self.upstream_errors[type(e).__name__] += 1
            return Response(f"upstream unavailable: {e}", status_code=502)
        self.upstream_s.append(time.monotonic() - started)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise SystemExit(f"error: the RPC proxy cannot listen on {self.host}:{self.port}: {e}") from e
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(200):
            if self._server.started:
                return
            await asyncio.sleep(0.05)
        raise SystemExit(f"error: the RPC proxy did not start on {self.host}:{self.port}")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=10)
        await self._http.aclose()


@dataclass
class ProxyStats:
    calls: Counter[str] = field(default_factory=Counter)
    upstream_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class ProxyProcess:
    """`CountingProxy` in a child process (`python -m bench.rpc_proxy`); counts are read over HTTP."""

    def __init__(self, proxy_url: str, upstream: str) -> None:
        self.proxy_url, self.upstream = proxy_url, upstream
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [
                sys.executable,
                "-m",
                "bench.rpc_proxy",
                "--listen",
                self.proxy_url,
                "--upstream",
                self.upstream,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(200):
            if self.proc.poll() is not None:
                raise SystemExit(f"error: the RPC proxy exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                await self.stats()
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise SystemExit(f"error: the RPC proxy did not start on {self.proxy_url}")

    async def stats(self) -> ProxyStats:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(self.proxy_url + STATS_PATH)
        r.raise_for_status()
        d = r.json()
        return ProxyStats(Counter(d["calls"]), list(d["upstream_s"]), Counter(d["errors"]))

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.to_thread(self.proc.wait, 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


async def _serve(listen: str, upstream: str) -> None:
    proxy = CountingProxy(listen, upstream)
    await proxy.start()
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Counting JSON-RPC proxy (started by bench/throughput.py)")
    ap.add_argument("--listen", required=True, help="http://127.0.0.2:PORT")
    ap.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(a.listen, a.upstream))
