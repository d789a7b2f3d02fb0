"""JSON-RPC client per network: several endpoints, failover, timeouts, chain-id check, batches, call
counting.

A thin client over httpx rather than web3's provider: the engine needs the node's exact error
messages for classification, one shared connection pool, and a count of every call (benchmarks):
`calls` counts JSON-RPC methods (a batch of three counts three), `requests` HTTP round trips.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import structlog

from activities.rpc_errors import RpcErrorKind, classify

if TYPE_CHECKING:
    from activities.blocks import BlockWatcher

log = structlog.get_logger()
T = TypeVar("T")


class RpcError(Exception):
    """The node answered with a JSON-RPC error."""

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message, self.code, self.data = message, code, data
        self.kind = classify(message, code=code)


class RpcUnavailable(Exception):
    """No endpoint answered (connection refused, timeout, HTTP 429/5xx on every endpoint)."""

    def __init__(self, message: str, kind: RpcErrorKind = RpcErrorKind.SERVER_ERROR) -> None:
        super().__init__(message)
        self.kind = kind


class ChainIdMismatch(Exception):
    pass


class _BatchRefused(Exception):
    """The endpoint does not take JSON-RPC batches (it answered a single error object)."""


class ChainRpc:
    def __init__(
        self, network: str, urls: list[str], *, chain_id: int, timeout: float = 10.0, http: httpx.AsyncClient
    ) -> None:
        self.network = network
        self.urls = list(urls)
        self.chain_id = chain_id
        self.timeout = timeout
        self._http = http
        self._ids = itertools.count(1)
        self._unhealthy_until: dict[str, float] = {}
        self._verified: set[str] = set()
        self._wrong_chain: set[str] = set()  # never used again: it serves another chain
        self.calls: Counter[str] = Counter()  # JSON-RPC methods called (each call of a batch counts)
        self.requests = 0  # HTTP requests sent (a batch is one)
        self._no_batch: set[str] = set()  # endpoints that refused a batch: their calls go one by one
        self._head: tuple[float, int] | None = None
        self.watcher: BlockWatcher | None = None  # the network's (activities.blocks.watcher_for)

    def _ordered(self) -> list[str]:
        now = time.monotonic()
        healthy = [u for u in self.urls if self._unhealthy_until.get(u, 0) <= now]
        return healthy + [u for u in self.urls if u not in healthy]

    async def _post(self, url: str, method: str, params: list[Any]) -> Any:
        self.calls[method] += 1
        self.requests += 1
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        resp = await self._http.post(url, json=payload, timeout=self.timeout)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RpcUnavailable(f"HTTP {resp.status_code}", classify(None, http_status=resp.status_code))
        body = resp.json()
        if "error" in body and body["error"] is not None:
            raise _error(body["error"])
        return body.get("result")

    async def _post_batch(self, url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """One HTTP request for all `calls`; a node's error for one call is an RpcError in its place.
        A transient error in any of them (rate limited, overloaded) fails the whole batch over."""
        if url in self._no_batch:
            return [await self._one(url, method, params) for method, params in calls]
        self.requests += 1
        for method, _ in calls:
            self.calls[method] += 1
        ids = [next(self._ids) for _ in calls]
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
            for i, (method, params) in zip(ids, calls, strict=True)
        ]
        resp = await self._http.post(url, json=payload, timeout=self.timeout)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RpcUnavailable(f"HTTP {resp.status_code}", classify(None, http_status=resp.status_code))
        body = resp.json()
        if not isinstance(body, list):
            raise _BatchRefused(str(body)[:200])
        answers = {item.get("id"): item for item in body if isinstance(item, dict)}
        out: list[Any] = []
        for i in ids:
            item = answers.get(i)
            if item is None:
                raise ValueError(f"the batch answer has no item for id {i}")
            out.append(_error(item["error"]) if item.get("error") is not None else item.get("result"))
        for r in out:
            if isinstance(r, RpcError) and r.kind.transient:
                raise r
        return out

    async def _one(self, url: str, method: str, params: list[Any]) -> Any:
        """A call of a batch sent alone: the node's (non-transient) error is returned, not raised."""
        try:
            return await self._post(url, method, params)
        except RpcError as e:
            if e.kind.transient:
                raise
            return e

    async def _verify(self, url: str) -> None:
        if url in self._verified:
            return
        got = int(await self._post(url, "eth_chainId", []), 16)
        if got != self.chain_id:
            raise ChainIdMismatch(
                f"{self.network}: endpoint reports chain id {got}, expected {self.chain_id}"
            )
        self._verified.add(url)

    async def call(self, method: str, params: list[Any] | None = None) -> Any:
        """Call the first healthy endpoint; fail over on transport errors, 429 and 5xx."""
        return await self._failover(method, lambda url: self._post(url, method, params or []))

    async def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Several calls in one HTTP request (a JSON-RPC batch), answered in order. A node's error for
        one of them is an `RpcError` in its place (the others still count); transport errors, 429/5xx
        and transient errors fail the batch over to the next endpoint as `call` does. An endpoint
        that refuses batches gets the calls one by one from then on."""
        if not calls:
            return []
        label = "+".join(m for m, _ in calls)
        if len(calls) == 1:
            method, params = calls[0]
            return [await self._failover(method, lambda url: self._one(url, method, params))]

        async def send(url: str) -> list[Any]:
            try:
                return await self._post_batch(url, calls)
            except (_BatchRefused, ValueError) as e:
                # Refused outright, or an answer that is not a usable batch (not JSON, an id
                # missing): the calls one by one from then on, so no caller stalls on batches.
                self._no_batch.add(url)
                log.warning("rpc.batch.refused", network=self.network, url=url, answer=str(e)[:200])
                return [await self._one(url, method, params) for method, params in calls]

        return await self._failover(label, send)

    async def _failover(self, method: str, send: Callable[[str], Awaitable[T]]) -> T:
        last: Exception | None = None
        for url in self._ordered():
            if url in self._wrong_chain:
                continue
            try:
                await self._verify(url)
                result = await send(url)
                self._unhealthy_until.pop(url, None)
                return result
            except RpcError as e:
                if not e.kind.transient:
                    raise
                last = e
            except ChainIdMismatch as e:
                self._wrong_chain.add(url)
                log.error("rpc.endpoint.wrong_chain", network=self.network, url=url, error=str(e))
                last = e
                continue
            except (httpx.TransportError, RpcUnavailable, ValueError) as e:
                last = e
            self._unhealthy_until[url] = time.monotonic() + 5.0
            log.warning(
                "rpc.endpoint.failed",
                network=self.network,
                method=method,
                error_type=type(last).__name__,
                error=str(last)[:200],
            )
        if isinstance(last, ChainIdMismatch) or (self._wrong_chain and last is None):
            raise ChainIdMismatch(f"{self.network}: no endpoint serves chain id {self.chain_id}")
        if isinstance(last, RpcUnavailable | RpcError):
            kind = last.kind
        elif isinstance(last, httpx.TimeoutException):
            kind = RpcErrorKind.TIMEOUT
        else:
            kind = RpcErrorKind.SERVER_ERROR
        raise RpcUnavailable(f"{self.network}: no RPC endpoint answered {method}: {last}", kind)

    async def verify_all(self) -> None:
        """Check every endpoint's chain id; a mismatch is fatal, an unreachable endpoint is not."""
        for url in self.urls:
            try:
                await self._verify(url)
            except ChainIdMismatch as e:
                self._wrong_chain.add(url)
                log.error("rpc.endpoint.wrong_chain", network=self.network, url=url, error=str(e))
            except (httpx.TransportError, RpcUnavailable) as e:
                log.warning("rpc.endpoint.unreachable", network=self.network, url=url, error=str(e)[:200])

    # --- typed helpers -------------------------------------------------------------------------

    async def block_number(self, *, max_age: float = 0.0) -> int:
        """Head block number; callers that tolerate `max_age` seconds of staleness share one call."""
        now = time.monotonic()
        if max_age and self._head and now - self._head[0] < max_age:
            return self._head[1]
        head = int(await self.call("eth_blockNumber"), 16)
        self._head = (now, head)
        return head

    async def balance(self, address: str, *, block: int | str | None = None) -> int:
        tag = hex(block) if isinstance(block, int) else (block or "latest")
        return int(await self.call("eth_getBalance", [address, tag]), 16)

    async def token_balance(self, token: str, address: str, *, block: int | str | None = None) -> int:
        data = balance_of_data(address)
        tag = hex(block) if isinstance(block, int) else (block or "latest")
        return int(await self.call("eth_call", [{"to": token, "data": data}, tag]), 16)

    async def pending_nonce(self, address: str) -> int:
        return int(await self.call("eth_getTransactionCount", [address, "pending"]), 16)

    async def latest_nonce(self, address: str) -> int:
        return int(await self.call("eth_getTransactionCount", [address, "latest"]), 16)

    async def nonce_at(self, address: str, block_number: int) -> int:
        """The number of the address's transactions mined up to and including `block_number`."""
        return int(await self.call("eth_getTransactionCount", [address, hex(block_number)]), 16)

    async def get_code(self, address: str) -> str:
        return str(await self.call("eth_getCode", [address, "latest"]))

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        result = await self.call("eth_getTransactionReceipt", [tx_hash])
        return dict(result) if result else None

    async def block(self, number: int | str) -> dict[str, Any] | None:
        tag = hex(number) if isinstance(number, int) else number
        result = await self.call("eth_getBlockByNumber", [tag, False])
        return dict(result) if result else None

    async def block_receipts(self, number: int) -> list[dict[str, Any]] | None:
        """Every receipt of the canonical block at `number` (eth_getBlockReceipts); None: unknown."""
        result = await self.call("eth_getBlockReceipts", [hex(number)])
        return [dict(r) for r in result] if isinstance(result, list) else None

    async def block_with_transactions(self, number: int) -> dict[str, Any] | None:
        result = await self.call("eth_getBlockByNumber", [hex(number), True])
        return dict(result) if result else None

    async def gas_price(self) -> int:
        return int(await self.call("eth_gasPrice"), 16)

    async def max_priority_fee(self) -> int | None:
        try:
            return int(await self.call("eth_maxPriorityFeePerGas"), 16)
        except RpcError:
            return None

    async def estimate_gas(self, tx: dict[str, Any]) -> int:
        return int(await self.call("eth_estimateGas", [tx]), 16)

    async def send_raw(self, raw_tx: str) -> str:
        return str(await self.call("eth_sendRawTransaction", [raw_tx]))


def balance_of_data(address: str) -> str:
    """Call data of ERC-20 `balanceOf(address)`."""
    return "0x70a08231" + address[2:].lower().rjust(64, "0")


def _error(err: Any) -> RpcError:
    if not isinstance(err, dict):
        return RpcError(str(err))
    return RpcError(str(err.get("message", "")), code=err.get("code"), data=err.get("data"))


class Chains:
    """The RPC clients of every configured network, sharing one HTTP connection pool."""

    def __init__(self, networks: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))
        self.rpc: dict[str, ChainRpc] = {
            name: ChainRpc(
                name, cfg.rpc_urls, chain_id=cfg.chain_id, timeout=cfg.rpc_timeout_seconds, http=self._http
            )
            for name, cfg in networks.items()
        }

    def __getitem__(self, network: str) -> ChainRpc:
        return self.rpc[network]

    async def verify_all(self) -> None:
        await asyncio.gather(*(r.verify_all() for r in self.rpc.values()))

    async def aclose(self) -> None:
        for r in self.rpc.values():
            if r.watcher is not None:
                await r.watcher.aclose()
        await self._http.aclose()
