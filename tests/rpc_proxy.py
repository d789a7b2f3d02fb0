"""A JSON-RPC proxy in front of anvil for fault injection: it can hold eth_sendRawTransaction, and
lie like a lagging or pruned node behind a load balancer (null for every mined transaction, null for
blocks from some height up)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack import processes

_LOOKUPS = (b"eth_getTransactionReceipt", b"eth_getTransactionByHash", b"eth_getBlockReceipts")


class RpcProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._open = asyncio.Event()  # cleared: eth_sendRawTransaction waits until it is set again
        self._open.set()
        self.held = 0
        self.fail_status: int | None = None  # answer every request with this HTTP status
        self.delay = 0.0  # seconds to wait before forwarding
        # Answer null to receipt and transaction lookups, as a node that does not know them would.
        self.hide_transactions = False
        self.hidden = 0  # how many lookups were answered null
        self.stale_blocks = 0  # answer eth_blockNumber this many blocks behind (a lagging node)
        # Answer null to eth_getBlockByNumber at this height and above, as a node behind would.
        self.hide_blocks_from: int | None = None
        self._http = httpx.AsyncClient(timeout=30)
        app = Starlette(routes=[Route("/", self._handle, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._task: asyncio.Task[None] | None = None

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        if self.fail_status is not None:
            return Response(b"upstream unavailable", self.fail_status)
        if self.delay:
            await asyncio.sleep(self.delay)
        if (self.hide_transactions and any(m in body for m in _LOOKUPS)) or (
            self.hide_blocks_from is not None and b"eth_getBlockByNumber" in body
        ):
            parsed = json.loads(body)
            if isinstance(parsed, list):  # a batch: its lookups null, the rest from the node
                return Response(json.dumps(await self._lie_in_batch(parsed)), 200)
            if self._hides(parsed):
                self.hidden += 1
                return Response(json.dumps({"jsonrpc": "2.0", "id": parsed.get("id"), "result": None}), 200)
        if not self._open.is_set() and b"eth_sendRawTransaction" in body:
            self.held += 1
            await self._open.wait()
        resp = await self._http.post(
            self.upstream, content=body, headers={"Content-Type": "application/json"}
        )
        if self.stale_blocks and b"eth_blockNumber" in body and resp.status_code == 200:
            data = resp.json()
            if isinstance(data.get("result"), str):
                data["result"] = hex(max(0, int(data["result"], 16) - self.stale_blocks))
                return Response(json.dumps(data), 200, media_type="application/json")
        return Response(resp.content, resp.status_code, media_type="application/json")

    def _hides(self, item: dict[str, object]) -> bool:
        method = str(item.get("method")).encode()
        if self.hide_transactions and method in _LOOKUPS:
            return True
        if self.hide_blocks_from is not None and method == b"eth_getBlockByNumber":
            params = item.get("params")
            tag = params[0] if isinstance(params, list) and params else None
            return isinstance(tag, str) and tag.startswith("0x") and int(tag, 16) >= self.hide_blocks_from
        return False

    async def _lie_in_batch(self, items: list[dict[str, object]]) -> list[object]:
        lookups = [i for i in items if self._hides(i)]
        self.hidden += len(lookups)
        rest = [i for i in items if i not in lookups]
        answered = (await self._http.post(self.upstream, json=rest)).json() if rest else []
        return [{"jsonrpc": "2.0", "id": i.get("id"), "result": None} for i in lookups] + answered

    def hold_sends(self) -> None:
        self._open.clear()

    def release_sends(self) -> None:
        self._open.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._open.set()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        await self._http.aclose()
