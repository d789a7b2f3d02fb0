"""Domain types shared by workflows, activities and the API.

Standard library only: the workflow sandbox imports this module on every workflow task.
Amounts travel as decimal strings of base units (uint256 does not fit a JSON number safely).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class WithdrawalStatus(StrEnum):
    PENDING = "PENDING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    WAITING_FOR_FUNDS = "WAITING_FOR_FUNDS"
    PROCESSING = "PROCESSING"
    BROADCAST = "BROADCAST"
    CONFIRMING = "CONFIRMING"
    CONFIRMED = "CONFIRMED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        WithdrawalStatus.CONFIRMED,
        WithdrawalStatus.REJECTED,
        WithdrawalStatus.CANCELLED,
        WithdrawalStatus.FAILED,
    }
)


class ErrorType(StrEnum):
    """Named failure types (`ApplicationError.type`), listed in one place."""

    IDEMPOTENCY_KEY_REUSED = "IdempotencyKeyReused"
    LIMIT_EXCEEDED = "LimitExceeded"
    INSUFFICIENT_HOT_WALLET_FUNDS = "InsufficientHotWalletFunds"
    NONCE_CONFLICT = "NonceConflict"
    BROADCAST_REJECTED = "BroadcastRejected"
    UNDERPRICED = "Underpriced"
    EXECUTION_REVERTED = "ExecutionReverted"
    FEE_ABOVE_CAP = "FeeAboveCap"
    CHAIN_ID_MISMATCH = "ChainIdMismatch"
    SIGNER_UNAVAILABLE = "SignerUnavailable"
    NOT_MINED = "NotMined"
    RPC_UNAVAILABLE = "RpcUnavailable"


class TxPurpose(StrEnum):
    WITHDRAWAL = "WITHDRAWAL"
    CANCEL = "CANCEL"  # 0-value self-transfer at the withdrawal's nonce
    FILL = "FILL"  # 0-value self-transfer by the reconciler for a nonce no live withdrawal will use


@dataclass(frozen=True, kw_only=True)
class WithdrawalRequest:
    """Workflow input: a validated request. `amount` is in base units."""

    withdrawal_id: str
    client_id: str
    idempotency_key: str
    fingerprint: str
    user_id: str
    network: str
    asset: str
    to_address: str
    amount: str
    client_reference: str | None = None


@dataclass(frozen=True, kw_only=True)
class SubmitInput:
    """Update `submit`, sent with update-with-start by the API."""

    fingerprint: str


@dataclass(frozen=True, kw_only=True)
class Admission:
    """Answer of the admission step (limits and reservation)."""

    accepted: bool
    status: str
    error_code: str | None = None
    error_message: str | None = None
    hot_wallet: str | None = None
    requires_approval: bool = False
    required_confirmations: int = 1
    approval_timeout_seconds: int = 86_400
    funds_retry_seconds: int = 15
    stuck_after_seconds: float = 0.0  # not mined for this long: replace with bumped fees (0 = never)


@dataclass(frozen=True, kw_only=True)
class SubmitResult:
    created: bool
    admission: Admission


@dataclass(frozen=True, kw_only=True)
class OperatorInput:
    """Input of every operator signal; every field is optional so `{}` or nothing works."""

    reason: str | None = None
    operator: str | None = None


@dataclass(frozen=True, kw_only=True)
class WithdrawalRef:
    withdrawal_id: str


@dataclass(frozen=True, kw_only=True)
class StatusChange:
    withdrawal_id: str
    status: str
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, kw_only=True)
class NonceAllocation:
    hot_wallet: str
    nonce: int


@dataclass(frozen=True, kw_only=True)
class SignInput:
    withdrawal_id: str
    purpose: str = TxPurpose.WITHDRAWAL
    # 0: the first attempt of this purpose; n > 0: the n-th replacement at the same nonce, with fees
    # bumped over every earlier attempt. (purpose, seq) makes a retried call return the same attempt.
    seq: int = 0


@dataclass(frozen=True, kw_only=True)
class SignedTx:
    tx_hash: str
    nonce: int
    purpose: str


@dataclass(frozen=True, kw_only=True)
class BroadcastInput:
    withdrawal_id: str
    tx_hash: str
    # The withdrawal's first broadcast: write status BROADCAST with it.
    record_status: bool = False


@dataclass(frozen=True, kw_only=True)
class AwaitInput:
    withdrawal_id: str
    required_confirmations: int
    # Return as soon as the transaction is in a block (to report CONFIRMING), or wait for all.
    until_included_only: bool = False
    # With until_included_only: return STUCK if nothing is mined for this long (0 = wait).
    stuck_after_seconds: float = 0.0
    # Without: the block the transaction was included in; a receipt in another block is a reorg.
    included_block_hash: str | None = None
    included_block_number: int = 0
    # Write CONFIRMED (and consume the reservation) with the final inclusion when the withdrawal succeeded.
    settle: bool = False


@dataclass(frozen=True, kw_only=True)
class Inclusion:
    """What `await_transaction` saw: INCLUDED, CONFIRMED, STUCK (nothing mined in time) or REORGED
    (the receipt left the canonical chain before the required confirmations)."""

    outcome: str
    tx_hash: str = ""
    purpose: str = ""
    block_number: int = 0
    block_hash: str = ""
    confirmations: int = 0
    success: bool = False
    fee_wei: str = "0"


@dataclass(frozen=True, kw_only=True)
class Realignment:
    old_nonce: int
    new_nonce: int


@dataclass(frozen=True, kw_only=True)
class ReconcileInput:
    network: str
    hot_wallet: str
    # An allocated nonce whose withdrawal's workflow is no longer running is filled after this long.
    orphan_after_seconds: float = 60.0


@dataclass(frozen=True, kw_only=True)
class ReconcileReport:
    network: str
    hot_wallet: str
    latest_nonce: int
    pending_nonce: int
    next_nonce: int
    rebroadcast: list[str] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)
    external: list[int] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    withdrawal_id: str
    status: str
    tx_hash: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    history: list[str] = field(default_factory=list)
