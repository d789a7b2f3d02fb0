"""The withdrawal object of the REST contract (DESIGN §6), built from its row: one shape for
`GET /withdrawal/status`, the admin views and the `data` of every webhook event.

The asset's decimals are on the row; the native coin's (for `fee`) come from the network config. The
API passes them from its `EngineConfig`; code that has no config at hand (the webhook outbox inside
`repo.transition`) reads them with `native_decimals_of`, which the worker and the API fill at start
from the same config (`use_config`). EVM native coins have 18 decimals, the fallback for a network
not (or no longer) configured, as the API's own view always did.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from models.amounts import format_amount
from models.errors import ErrorCode
from models.tables import Withdrawal

DEFAULT_NATIVE_DECIMALS = 18

# What a client reads as a withdrawal's `error.message`: fixed texts per code, never a node's answer,
# an internal address or an RPC URL (operators see the recorded detail in the admin API). The
# refusals' own messages are the validator's fixed texts; a cancellation says the operator's reason.
_CLIENT_MESSAGES: dict[str, str] = {
    ErrorCode.APPROVAL_REJECTED: "rejected by an operator",
    ErrorCode.APPROVAL_TIMED_OUT: "not approved in time",
    ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS: "waiting for the hot wallet to be funded",
    ErrorCode.EXECUTION_REVERTED: "the transfer would fail or failed on chain",
    ErrorCode.NONCE_CONFLICT: "held for an operator: the transaction slot was used outside the engine",
    ErrorCode.NONCE_UNPROVEN: "held for an operator: the network's answers could not be verified",
    ErrorCode.FEE_ABOVE_CAP: "waiting for network fees to fall below the configured cap",
    ErrorCode.GAS_ABOVE_CAP: "the transfer needs more gas than allowed",
    ErrorCode.RPC_UNAVAILABLE: "the network is not reachable; retrying",
}
_CLIENT_DEFAULT = "held for an operator"
_OWN_MESSAGES = frozenset(
    {ErrorCode.CANCELLED, ErrorCode.LIMIT_EXCEEDED, ErrorCode.INVALID_ADDRESS, ErrorCode.INVALID_AMOUNT}
    | {ErrorCode.UNSUPPORTED_NETWORK, ErrorCode.UNSUPPORTED_ASSET}
)

_native_decimals: dict[str, int] = {}


def use_config(native_decimals: Mapping[str, int]) -> None:
    """Network name -> decimals of its native coin, from the process's network config."""
    _native_decimals.clear()
    _native_decimals.update(native_decimals)


def native_decimals_of(network: str) -> int:
    return _native_decimals.get(network, DEFAULT_NATIVE_DECIMALS)


def iso(ts: datetime) -> str:
    """Naive UTC as the API writes it: milliseconds and a `Z`."""
    return ts.isoformat(timespec="milliseconds") + "Z"


def client_error_message(code: str, recorded: str | None) -> str:
    if code in _OWN_MESSAGES:
        return recorded or code
    return _CLIENT_MESSAGES.get(code, _CLIENT_DEFAULT)


def withdrawal_object(
    w: Withdrawal, *, native_decimals: int | None = None, operator: bool = False
) -> dict[str, Any]:
    """The REST shape of a withdrawal; `operator` views carry the recorded error detail."""
    fee_decimals = native_decimals if native_decimals is not None else native_decimals_of(w.network)
    error: dict[str, str] | None = None
    if w.error_code:
        message = (w.error_message or "") if operator else client_error_message(w.error_code, w.error_message)
        error = {"code": w.error_code, "message": message}
    return {
        "id": w.id,
        "status": w.status,
        "network": w.network,
        "asset": w.asset,
        "amount": format_amount(w.amount, w.decimals),
        "to_address": w.to_address,
        "user_id": w.user_id,
        "client_reference": w.client_reference,
        "tx_hash": w.tx_hash,
        "confirmations": w.confirmations,
        "required_confirmations": w.required_confirmations,
        "fee": format_amount(w.fee_wei, fee_decimals) if w.fee_wei is not None else None,
        "error": error,
        "created_at": iso(w.created_at),
        "updated_at": iso(w.updated_at),
    }
