"""One vocabulary of error codes: every code a client or an operator sees, in UPPER_SNAKE.

The same names serve as `ApplicationError.type` inside Temporal, as a withdrawal's `error.code`, and as
the `error.code` of an API error body. Standard library only (the workflow sandbox imports it).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # --- request refusals (API) ----------------------------------------------------------------
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    BAD_REQUEST = "BAD_REQUEST"
    MISSING_IDEMPOTENCY_KEY = "MISSING_IDEMPOTENCY_KEY"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    INVALID_ADDRESS = "INVALID_ADDRESS"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    UNSUPPORTED_NETWORK = "UNSUPPORTED_NETWORK"
    UNSUPPORTED_ASSET = "UNSUPPORTED_ASSET"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    CONFLICT = "CONFLICT"
    INVALID_STATE = "INVALID_STATE"  # an operator action the withdrawal's status does not allow
    RATE_LIMITED = "RATE_LIMITED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"

    # --- a withdrawal's error (why it was refused, ended or parked) ------------------------------
    APPROVAL_REJECTED = "APPROVAL_REJECTED"
    APPROVAL_TIMED_OUT = "APPROVAL_TIMED_OUT"
    APPROVAL_UNPROVEN = "APPROVAL_UNPROVEN"  # an approve/reject without a valid API-signed token
    PAUSED = "PAUSED"  # a kill switch covers the withdrawal's network or hot wallet: nothing is signed
    CANCELLED = "CANCELLED"
    INSUFFICIENT_HOT_WALLET_FUNDS = "INSUFFICIENT_HOT_WALLET_FUNDS"
    EXECUTION_REVERTED = "EXECUTION_REVERTED"
    NONCE_CONFLICT = "NONCE_CONFLICT"  # the nonce is proven held by a transaction the engine did not send
    NONCE_UNPROVEN = "NONCE_UNPROVEN"  # the nonce is used, but no node proves by which transaction
    BROADCAST_REJECTED = "BROADCAST_REJECTED"
    UNDERPRICED = "UNDERPRICED"
    FEE_ABOVE_CAP = "FEE_ABOVE_CAP"
    GAS_ABOVE_CAP = "GAS_ABOVE_CAP"  # the transfer needs more gas than the network's cap allows
    CHAIN_ID_MISMATCH = "CHAIN_ID_MISMATCH"
    SIGNER_UNAVAILABLE = "SIGNER_UNAVAILABLE"
    RPC_UNAVAILABLE = "RPC_UNAVAILABLE"
    STALE_TRANSITION = "STALE_TRANSITION"
    ACTIVITY_FAILED = "ACTIVITY_FAILED"  # an activity failed with an error that has no code of its own
