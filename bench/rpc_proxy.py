"""A counting JSON-RPC proxy for `throughput.py --rpc-proxy`.

The worker counts its RPC calls in-process (`activities.rpc.ChainRpc.calls`) but exports the count
nowhere, and anvil runs with `--silent`, so the only honest place to count from outside is the wire.

How it is put on the wire without changing the engine: `make run` starts each anvil on
`--host 127.0.0.1` and the port of the network's first `rpc_urls` entry, and hands the same config
file to the worker. A config whose URL is `http://127.0.0.2:<port>` therefore starts anvil on
127.0.0.1:<port> as before, while the worker (and the devstack's own setup calls) talk to
127.0.0.2:<port>, where this proxy listens and forwards to 127.0.0.1:<port>. All of 127.0.0.0/8 is
loopback on Linux, so nothing needs configuring.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import tomllib
from collections import Counter
from collections.abc import Generator
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
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST", "GET"])])
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
