"""JSON-RPC client per network: several endpoints, failover, timeouts, chain-id check, call counting.

A thin client over httpx rather than web3's provider: the engine needs the node's exact error
messages for classification, one shared connection pool, and a count of every call (benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

import httpx
import structlog

from activities.rpc_errors import RpcErrorKind, classify

log = structlog.get_logger()


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
        self.calls: Counter[str] = Counter()
        self._head: tuple[float, int] | None = None

    def _ordered(self) -> list[str]:
        now = time.monotonic()
        healthy = [u for u in self.urls if self._unhealthy_until.get(u, 0) <= now]
        return healthy + [u for u in self.urls if u not in healthy]

    async def _post(self, url: str, method: str, params: list[Any]) -> Any:
        self.calls[method] += 1
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        resp = await self._http.post(url, json=payload, timeout=self.timeout)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RpcUnavailable(f"HTTP {resp.status_code}", classify(None, http_status=resp.status_code))
        body = resp.json()
        if "error" in body and body["error"] is not None:
            err = body["error"]
            raise RpcError(str(err.get("message", "")), code=err.get("code"), data=err.get("data"))
        return body.get("result")

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
        last: Exception | None = None
        for url in self._ordered():
            if url in self._wrong_chain:
                continue
            try:
                await self._verify(url)
                result = await self._post(url, method, params or [])
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
        data = "0x70a08231" + address[2:].lower().rjust(64, "0")
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
        await self._http.aclose()
