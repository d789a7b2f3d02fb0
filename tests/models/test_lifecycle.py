"""The lifecycle table itself: terminal statuses are final, every status is reachable, effects are
where the design says they are."""

from __future__ import annotations

from models import lifecycle
from models.lifecycle import (
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    NonceEffect,
    ReservationEffect,
    WithdrawalStatus,
)

S = WithdrawalStatus


def test_every_status_has_a_row_and_terminal_ones_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(WithdrawalStatus)
    assert {S.CONFIRMED, S.REJECTED, S.CANCELLED, S.FAILED} == TERMINAL
    for status in TERMINAL:
        assert status.terminal and not TRANSITIONS[status]
        assert not any(lifecycle.allowed(status, to) for to in WithdrawalStatus)


def test_every_status_is_reachable_from_the_initial_one() -> None:
    seen, frontier = {INITIAL}, [INITIAL]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(WithdrawalStatus)


def test_no_status_moves_to_itself_and_predecessors_invert_the_table() -> None:
    for frm, nxt in TRANSITIONS.items():
        assert frm not in nxt
    for to in WithdrawalStatus:
        assert lifecycle.predecessors(to) == {frm for frm, nxt in TRANSITIONS.items() if to in nxt}
    assert lifecycle.predecessors(INITIAL) >= {S.AWAITING_APPROVAL, S.WAITING_FOR_FUNDS}


def test_money_moves_only_out_of_a_block() -> None:
    # CONFIRMED only after CONFIRMING (a transaction in a block); never straight from BROADCAST.
    assert lifecycle.predecessors(S.CONFIRMED) == {S.CONFIRMING}
    assert lifecycle.predecessors(S.FAILED) == {S.CONFIRMING}
    assert not lifecycle.allowed(S.BROADCAST, S.CONFIRMED)  # only a transaction in a block confirms
    assert lifecycle.allowed(S.CONFIRMING, S.BROADCAST)  # a reorg


def test_reservation_and_nonce_effects() -> None:
    effects = {s: lifecycle.RESERVATION_EFFECT[s] for s in WithdrawalStatus}
    assert effects[S.CONFIRMED] is ReservationEffect.CONSUME
    assert {s for s, e in effects.items() if e is ReservationEffect.RELEASE} == {
        S.REJECTED,
        S.CANCELLED,
        S.FAILED,
    }
    assert {s for s, e in effects.items() if e is not ReservationEffect.HOLD} == TERMINAL
    nonces = lifecycle.NONCE_EFFECT
    assert {s for s in WithdrawalStatus if nonces[s] is not NonceEffect.KEEP} == TERMINAL
    assert nonces[S.CANCELLED] is NonceEffect.FILLED and nonces[S.CONFIRMED] is NonceEffect.CONSUMED
