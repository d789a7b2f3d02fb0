"""Domain types shared by workflows, activities and the API: one frozen input dataclass per workflow,
update, signal and activity, and the enums of every string state.

Standard library only: the workflow sandbox imports this module on every workflow task.
Amounts travel as decimal strings of base units (a uint256 does not fit a JSON number safely).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NewType

from models.errors import ErrorCode
from models.lifecycle import WithdrawalStatus

__all__ = ["ErrorCode", "WithdrawalStatus"]

Wei = NewType("Wei", int)  # an amount in base units (wei, or a token's smallest unit)
Nonce = NewType("Nonce", int)
TxHash = NewType("TxHash", str)


WAITS_QUEUE_SUFFIX = "-waits"


def waits_queue(task_queue: str) -> str:
    """The task queue of the long waits (`await_transaction`) of workflows on `task_queue`: served by
    a worker of their own, so withdrawals waiting for their transaction never hold the slots the
    short steps of others need (docs/operations.md, "Worker sizing")."""
    return task_queue + WAITS_QUEUE_SUFFIX


class TxPurpose(StrEnum):
    WITHDRAWAL = "WITHDRAWAL"
    CANCEL = "CANCEL"  # 0-value self-transfer at the withdrawal's nonce


class TxOutcome(StrEnum):
    """What became of one signed transaction (a `TxAttempt`)."""

    SIGNED = "SIGNED"  # recorded, maybe sent (a crash between send and record leaves it here)
    BROADCAST = "BROADCAST"  # a node accepted it
    MINED = "MINED"  # in the canonical chain
    REPLACED = "REPLACED"  # another attempt at the same nonce was mined
    FAILED = "FAILED"  # refused by the node, or its nonce went to another transaction: never minable


class ReservationState(StrEnum):
    HELD = "HELD"
    CONSUMED = "CONSUMED"
    RELEASED = "RELEASED"


class NoncePurpose(StrEnum):
    """Who holds a nonce of a hot wallet (see `models.tables.NonceAllocation`)."""

    WITHDRAWAL = "WITHDRAWAL"
    FILL = "FILL"
    EXTERNAL = "EXTERNAL"


class InclusionOutcome(StrEnum):
    """What `await_transaction` saw."""

    INCLUDED = "INCLUDED"  # one attempt is in a block (fewer than the required confirmations)
    CONFIRMED = "CONFIRMED"  # the required confirmations on the canonical chain
    STUCK = "STUCK"  # the next nonce the chain must mine, and not mined within the stuck threshold
    NONCE_USED = "NONCE_USED"  # the wallet's mined nonce passed ours, but no node shows our receipt
    REORGED = "REORGED"  # the receipt left the canonical chain before the required confirmations


class ApprovalDecision(StrEnum):
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"


class HistoryKind(StrEnum):
    """One entry of a withdrawal's history (the `status` query, the admin detail view)."""

    STATUS = "STATUS"  # moved to `status`
    RETRY = "RETRY"
    CANCEL = "CANCEL"
    APPROVE = "APPROVE"
    REJECT = "REJECT"
    REFUSED = "REFUSED"  # an operator action refused (`action` says which, `reason` why)
    REPLACEMENT = "REPLACEMENT"  # a new attempt at the same nonce with bumped fees
    FEE_BUMP_SKIPPED = "FEE_BUMP_SKIPPED"  # a replacement would pass the fee cap
    UNDERPRICED = "UNDERPRICED"
    REORG = "REORG"
    NONCE_REALIGNED = "NONCE_REALIGNED"
    CANCEL_LOST = "CANCEL_LOST"  # the withdrawal was mined before its cancellation
    HELD = "HELD"  # a kill switch holds the next step (reason: which pause)
    RELEASED = "RELEASED"  # the pause was lifted and the step went ahead


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    kind: HistoryKind
    at: datetime
    actor: str | None = None  # the operator, for operator actions
    reason: str | None = None
    status: WithdrawalStatus | None = None  # STATUS: the new status
    action: HistoryKind | None = None  # REFUSED: the action that was refused
    tx_hash: str | None = None


@dataclass(frozen=True, kw_only=True)
class ErrorInfo:
    code: ErrorCode
    message: str


@dataclass(frozen=True, kw_only=True)
class WithdrawalRequest:
    """Workflow input: a request as the API validated it. `amount` is in base units."""

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
    """Answer of the admission step (limits and reservation) and the network's settings the workflow
    needs (workflows read no configuration of their own)."""

    accepted: bool
    status: WithdrawalStatus
    status_seq: int = 0  # the number of the row's last transition (the workflow numbers its own next)
    error: ErrorInfo | None = None
    hot_wallet: str | None = None
    requires_approval: bool = False
    approvals_required: int = 1  # 2 above the asset's four-eyes threshold: two distinct approvers
    amount_display: str = ""  # e.g. "250.5 USDT", for the Web UI's details
    pause_poll_seconds: float = 5.0  # held by a kill switch: look again after this long
    required_confirmations: int = 1
    approval_timeout_seconds: int = 86_400
    funds_retry_seconds: int = 15
    stuck_after_seconds: float = 0.0  # not mined for this long: replace with bumped fees (0 = never)
    # The client's view of the row as admission left it (`models.views.withdrawal_object`): the POST
    # is answered from it without reading the row again. The workflow never looks at it.
    view: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class SubmitResult:
    created: bool
    admission: Admission


@dataclass(frozen=True, kw_only=True)
class OperatorInput:
    """Input of every operator signal and update; every field is optional so `{}` or nothing works."""

    reason: str | None = None
    operator: str | None = None
    # approve/reject: proof of who decided, a short-lived token the API signs for this withdrawal,
    # operator and role (`api.approvals`); an approval without a valid one is recorded and refused.
    token: str | None = None


@dataclass(frozen=True, kw_only=True)
class VerifyApprovalInput:
    withdrawal_id: str
    action: str  # "approve" | "reject"
    token: str


@dataclass(frozen=True, kw_only=True)
class ApproverIdentity:
    """Who decided, as proven by the API-signed token."""

    operator: str
    role: str
    token_id: str


@dataclass(frozen=True, kw_only=True)
class ActionResult:
    """Answer of an accepted operator update (a refused one fails with `INVALID_STATE` and the reason)."""

    accepted: bool
    status: WithdrawalStatus


@dataclass(frozen=True, kw_only=True)
class WithdrawalState:
    """The `status` query: what the workflow knows now."""

    status: WithdrawalStatus
    nonce: Nonce | None
    tx_hash: TxHash | None
    error: ErrorInfo | None
    history: list[HistoryEntry]


@dataclass(frozen=True, kw_only=True)
class WithdrawalRef:
    withdrawal_id: str


@dataclass(frozen=True, kw_only=True)
class TransitionInput:
    """Activity `record_transition`: move the row to `status` (see `models.lifecycle`)."""

    withdrawal_id: str
    status: WithdrawalStatus
    seq: int  # the workflow's count of its moves: a re-executed move is recognised by it
    error: ErrorInfo | None = None


@dataclass(frozen=True, kw_only=True)
class NonceAllocation:
    hot_wallet: str
    nonce: Nonce


@dataclass(frozen=True, kw_only=True)
class SignInput:
    withdrawal_id: str
    purpose: TxPurpose = TxPurpose.WITHDRAWAL
    # 0: the first attempt of this purpose; n > 0: the n-th replacement at the same nonce, with fees
    # bumped over every earlier attempt. (purpose, seq) makes a retried call return the same attempt.
    seq: int = 0


@dataclass(frozen=True, kw_only=True)
class SignedTx:
    tx_hash: TxHash
    nonce: Nonce
    purpose: TxPurpose


@dataclass(frozen=True, kw_only=True)
class BroadcastInput:
    withdrawal_id: str
    tx_hash: str


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


@dataclass(frozen=True, kw_only=True)
class Inclusion:
    outcome: InclusionOutcome
    tx_hash: str = ""
    purpose: TxPurpose = TxPurpose.WITHDRAWAL
    block_number: int = 0
    block_hash: str = ""
    confirmations: int = 0
    success: bool = False
    fee_wei: str = "0"


class NonceHolderOutcome(StrEnum):
    OURS = "OURS"  # one of the withdrawal's attempts holds the nonce on the canonical chain
    EXTERNAL = "EXTERNAL"  # a transaction the engine did not send holds it, at the required depth
    UNPROVEN = "UNPROVEN"  # no proof either way (yet): never re-sign at another nonce on this


@dataclass(frozen=True, kw_only=True)
class NonceHolder:
    """What `activities.proof.find_nonce_holder` proved about a hot wallet's nonce."""

    outcome: NonceHolderOutcome
    detail: str
    tx_hash: str | None = None
    block_number: int = 0
    block_hash: str = ""
    purpose: TxPurpose | None = None


@dataclass(frozen=True, kw_only=True)
class NonceConflictInput:
    """Activity `resolve_nonce_conflict`: prove who holds the withdrawal's nonce; with `move` (an
    operator's retry after a proven external holder) give the withdrawal the wallet's next nonce."""

    withdrawal_id: str
    move: bool = False


@dataclass(frozen=True, kw_only=True)
class NonceResolution:
    holder: NonceHolder
    old_nonce: Nonce
    new_nonce: Nonce | None = None  # set when the withdrawal was moved to a new nonce


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
    status: WithdrawalStatus
    tx_hash: str | None = None
    error: ErrorInfo | None = None
    history: list[HistoryEntry] = field(default_factory=list)
