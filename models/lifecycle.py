"""The withdrawal lifecycle as data: statuses, allowed moves, and what each status does to the
withdrawal's funds reservation and nonce.

Standard library only (the workflow sandbox imports it). `models.repo.transition` is the one function
that writes a withdrawal's status; it applies a move with a single guarded UPDATE
(`WHERE status IN predecessors(to)`) and the effects listed here in the same database transaction.
Every row is born in `INITIAL`; terminal statuses have no way out.
"""

from __future__ import annotations

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
        return not TRANSITIONS[self]


class ReservationEffect(StrEnum):
    """What entering a status does to the withdrawal's HELD funds reservation."""

    HOLD = "HOLD"  # unchanged
    CONSUME = "CONSUME"  # the funds left the hot wallet
    RELEASE = "RELEASE"  # the funds stay: available to other withdrawals again


class NonceEffect(StrEnum):
    """What entering a status means for the nonce allocated to the withdrawal (if any)."""

    KEEP = "KEEP"  # still the withdrawal's
    CONSUMED = "CONSUMED"  # the withdrawal's own transaction was mined at it
    FILLED = "FILLED"  # it will never carry the withdrawal: a 0-value self-transfer fills it


S = WithdrawalStatus

INITIAL = S.PENDING

# Where each status may move next. Resuming from NEEDS_ATTENTION returns to the status it parked in.
TRANSITIONS: dict[WithdrawalStatus, frozenset[WithdrawalStatus]] = {
    S.PENDING: frozenset(
        {S.AWAITING_APPROVAL, S.WAITING_FOR_FUNDS, S.PROCESSING, S.NEEDS_ATTENTION, S.REJECTED, S.CANCELLED}
    ),
    S.AWAITING_APPROVAL: frozenset({S.PENDING, S.NEEDS_ATTENTION, S.REJECTED, S.CANCELLED}),
    S.WAITING_FOR_FUNDS: frozenset({S.PENDING, S.PROCESSING, S.BROADCAST, S.NEEDS_ATTENTION, S.CANCELLED}),
    S.PROCESSING: frozenset({S.BROADCAST, S.WAITING_FOR_FUNDS, S.NEEDS_ATTENTION, S.CANCELLED}),
    # BROADCAST → CANCELLED: a cancellation in flight whose nonce is proven taken by a transaction the
    # engine did not send (nothing of the withdrawal can be mined any more).
    S.BROADCAST: frozenset({S.CONFIRMING, S.WAITING_FOR_FUNDS, S.NEEDS_ATTENTION, S.CANCELLED}),
    S.CONFIRMING: frozenset({S.CONFIRMED, S.FAILED, S.CANCELLED, S.BROADCAST, S.NEEDS_ATTENTION}),
    S.NEEDS_ATTENTION: frozenset(
        {
            S.PENDING,
            S.AWAITING_APPROVAL,
            S.WAITING_FOR_FUNDS,
            S.PROCESSING,
            S.BROADCAST,
            S.CONFIRMING,
            S.CANCELLED,
        }
    ),
    S.CONFIRMED: frozenset(),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.FAILED: frozenset(),
}

TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

RESERVATION_EFFECT: dict[WithdrawalStatus, ReservationEffect] = {
    s: ReservationEffect.HOLD for s in WithdrawalStatus
} | {
    S.CONFIRMED: ReservationEffect.CONSUME,
    S.REJECTED: ReservationEffect.RELEASE,
    S.CANCELLED: ReservationEffect.RELEASE,
    S.FAILED: ReservationEffect.RELEASE,
}

NONCE_EFFECT: dict[WithdrawalStatus, NonceEffect] = {s: NonceEffect.KEEP for s in WithdrawalStatus} | {
    S.CONFIRMED: NonceEffect.CONSUMED,
    S.FAILED: NonceEffect.CONSUMED,  # mined, reverted: the nonce is used all the same
    S.REJECTED: NonceEffect.FILLED,
    S.CANCELLED: NonceEffect.FILLED,
}

# Entering these statuses means no transaction of the withdrawal is in a block (BROADCAST after a
# reorg): block, confirmations and fee are cleared.
CLEARS_INCLUSION = frozenset({S.BROADCAST})


def predecessors(to: WithdrawalStatus) -> frozenset[WithdrawalStatus]:
    """The statuses from which a withdrawal may move to `to`."""
    return frozenset(frm for frm, nxt in TRANSITIONS.items() if to in nxt)


def allowed(frm: WithdrawalStatus, to: WithdrawalStatus) -> bool:
    return to in TRANSITIONS[frm]


class StaleTransition(Exception):
    """A move that the row's current status does not allow (a stale or out-of-order writer)."""

    def __init__(self, withdrawal_id: str, current: WithdrawalStatus | None, to: WithdrawalStatus) -> None:
        where = "not found" if current is None else f"is {current}"
        super().__init__(f"withdrawal {withdrawal_id} {where}: cannot move to {to}")
        self.withdrawal_id, self.current, self.to = withdrawal_id, current, to
