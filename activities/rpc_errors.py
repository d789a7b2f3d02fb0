"""One classification table for what EVM nodes answer to eth_sendRawTransaction and friends.

Messages are geth-family (geth, bor, bsc, erigon, anvil, reth) and are matched on lower-case
substrings; JSON-RPC and HTTP codes cover rate limits and server failures. Each kind has one
handling, applied by the broadcast activity:

| kind                     | handling                                                          |
|--------------------------|-------------------------------------------------------------------|
| ALREADY_KNOWN            | success: the node has our exact transaction                       |
| NONCE_TOO_LOW            | maybe mined: look up our attempts at this nonce, never resend blind |
| REPLACEMENT_UNDERPRICED  | a transaction at this nonce is pending: bump fees                 |
| UNDERPRICED              | fee below the node's minimum: bump fees                           |
| FEE_BELOW_BASE_FEE       | max fee below the base fee: bump fees                             |
| INSUFFICIENT_FUNDS       | WAITING_FOR_FUNDS                                                 |
| INTRINSIC_GAS_TOO_LOW    | build error: NEEDS_ATTENTION                                      |
| EXECUTION_REVERTED       | the call reverts: NEEDS_ATTENTION                                 |
| RATE_LIMITED             | transient: retry with backoff, next endpoint                      |
| TIMEOUT                  | unknown outcome: resend the same bytes                            |
| SERVER_ERROR             | transient: next endpoint                                          |
| UNKNOWN                  | NEEDS_ATTENTION with the message recorded                         |
"""

from __future__ import annotations

from enum import StrEnum


class RpcErrorKind(StrEnum):
    ALREADY_KNOWN = "ALREADY_KNOWN"
    NONCE_TOO_LOW = "NONCE_TOO_LOW"
    REPLACEMENT_UNDERPRICED = "REPLACEMENT_UNDERPRICED"
    UNDERPRICED = "UNDERPRICED"
    FEE_BELOW_BASE_FEE = "FEE_BELOW_BASE_FEE"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INTRINSIC_GAS_TOO_LOW = "INTRINSIC_GAS_TOO_LOW"
    EXECUTION_REVERTED = "EXECUTION_REVERTED"
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"
    SERVER_ERROR = "SERVER_ERROR"
    UNKNOWN = "UNKNOWN"

    @property
    def transient(self) -> bool:
        return self in (RpcErrorKind.RATE_LIMITED, RpcErrorKind.TIMEOUT, RpcErrorKind.SERVER_ERROR)


# Order matters: the first pattern found wins ("replacement transaction underpriced" before "underpriced").
_MESSAGE_TABLE: tuple[tuple[str, RpcErrorKind], ...] = (
    ("already known", RpcErrorKind.ALREADY_KNOWN),
    ("already imported", RpcErrorKind.ALREADY_KNOWN),
    ("known transaction", RpcErrorKind.ALREADY_KNOWN),
    ("already exists", RpcErrorKind.ALREADY_KNOWN),
    ("nonce too low", RpcErrorKind.NONCE_TOO_LOW),
    ("nonce is too low", RpcErrorKind.NONCE_TOO_LOW),
    ("invalid nonce", RpcErrorKind.NONCE_TOO_LOW),
    ("replacement transaction underpriced", RpcErrorKind.REPLACEMENT_UNDERPRICED),
    ("replacement underpriced", RpcErrorKind.REPLACEMENT_UNDERPRICED),
    ("max fee per gas less than block base fee", RpcErrorKind.FEE_BELOW_BASE_FEE),
    ("fee cap less than block base fee", RpcErrorKind.FEE_BELOW_BASE_FEE),
    ("less than block base fee", RpcErrorKind.FEE_BELOW_BASE_FEE),
    ("transaction underpriced", RpcErrorKind.UNDERPRICED),
    ("underpriced", RpcErrorKind.UNDERPRICED),
    ("insufficient funds", RpcErrorKind.INSUFFICIENT_FUNDS),
    ("intrinsic gas too low", RpcErrorKind.INTRINSIC_GAS_TOO_LOW),
    ("execution reverted", RpcErrorKind.EXECUTION_REVERTED),
    ("reverted", RpcErrorKind.EXECUTION_REVERTED),
    ("rate limit", RpcErrorKind.RATE_LIMITED),
    ("too many requests", RpcErrorKind.RATE_LIMITED),
    ("timeout", RpcErrorKind.TIMEOUT),
    ("timed out", RpcErrorKind.TIMEOUT),
)


def classify(message: str | None, *, code: int | None = None, http_status: int | None = None) -> RpcErrorKind:
    """Classify an RPC failure from its message, JSON-RPC error code and HTTP status."""
    if http_status == 429 or code == 429:
        return RpcErrorKind.RATE_LIMITED
    if http_status is not None and http_status >= 500:
        return RpcErrorKind.SERVER_ERROR
    text = (message or "").lower()
    for needle, kind in _MESSAGE_TABLE:
        if needle in text:
            return kind
    if code == -32005:  # "limit exceeded" (EIP-1474)
        return RpcErrorKind.RATE_LIMITED
    if code == 3:  # execution reverted with data
        return RpcErrorKind.EXECUTION_REVERTED
    if code == -32603 and not text:
        return RpcErrorKind.SERVER_ERROR
    return RpcErrorKind.UNKNOWN
