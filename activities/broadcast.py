"""Broadcasting signed transactions: the recorded bytes, so a resend is the same transaction, and the
node's answer classified (see `activities.rpc_errors`)."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity

from activities.failures import fail, rpc_down
from activities.pauses import held_by_pause
from activities.rpc import ChainRpc, Chains, RpcError, RpcUnavailable
from activities.rpc_errors import RpcErrorKind
from models import repo
from models.db import Database
from models.domain import BroadcastInput, ErrorCode, TxOutcome, TxPurpose
from models.tables import TxAttempt

log = structlog.get_logger()

# Answers to a resend that mean the node has (or had) the transaction or one at its nonce.
_RESEND_EXPECTED = (
    RpcErrorKind.ALREADY_KNOWN,
    RpcErrorKind.NONCE_TOO_LOW,
    RpcErrorKind.REPLACEMENT_UNDERPRICED,
)
_UNDERPRICED = (
    RpcErrorKind.UNDERPRICED,
    RpcErrorKind.REPLACEMENT_UNDERPRICED,
    RpcErrorKind.FEE_BELOW_BASE_FEE,
)


async def find_mined_attempt(
    rpc: ChainRpc, attempts: list[TxAttempt]
) -> tuple[TxAttempt, dict[str, Any]] | None:
    """The attempt that has a receipt, newest first. None means only that this node knows none."""
    for a in reversed(attempts):
        r = await rpc.receipt(a.tx_hash)
        if r is not None:
            return a, r
    return None


def resendable(attempts: list[TxAttempt]) -> list[TxAttempt]:
    """The attempts a resend may send: every one not FAILED, except that once a cancellation is
    signed at the nonce (even one that then failed) only live cancellations are sent again. The
    withdrawal's own bytes are then never put back on a node that lost them (a cancel accepted
    before the broadcast must not pay out because a node dropped the cancellation); if one of them
    is mined anyway, it is found as before."""
    live = [a for a in attempts if a.outcome != TxOutcome.FAILED]
    if any(a.purpose == TxPurpose.CANCEL for a in attempts):  # even one the node refused
        return [a for a in live if a.purpose == TxPurpose.CANCEL]
    return live


async def resend(rpc: ChainRpc, withdrawal_id: str, attempts: list[TxAttempt]) -> None:
    """Send the recorded bytes of the attempts a resend may send again (`resendable`): a dropped
    transaction comes back."""
    for a in resendable(attempts):
        try:
            await rpc.send_raw(a.raw_tx)
            log.info("withdrawal.resent", withdrawal_id=withdrawal_id, tx_hash=a.tx_hash)
        except RpcError as e:
            if e.kind not in _RESEND_EXPECTED:
                log.info(
                    "withdrawal.resend.answer",
                    withdrawal_id=withdrawal_id,
                    tx_hash=a.tx_hash,
                    kind=e.kind,
                    error=e.message[:200],
                )


class BroadcastActivities:
    def __init__(self, db: Database, chains: Chains) -> None:
        self.db, self.chains = db, chains

    @activity.defn
    async def broadcast_transaction(self, inp: BroadcastInput) -> str:
        """Send the recorded bytes and classify the answer: accepted or already known = sent; nonce too
        low with one of our attempts mined = sent; underpriced = bump; insufficient funds = wait; node
        down = retry (same bytes); anything else is refused and parks the withdrawal."""
        async with self.db.read() as s:
            attempt = await repo.attempt_by_hash(s, inp.tx_hash)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
            held = await held_by_pause(s, attempt.network, attempt.hot_wallet) if attempt else None
        if attempt is None:
            raise LookupError(inp.tx_hash)
        if held is not None:  # the kill switch: nothing is broadcast while paused
            raise held
        rpc = self.chains[attempt.network]
        try:
            await rpc.send_raw(attempt.raw_tx)
        except RpcError as e:
            kind = e.kind
            detail = f"{kind}: {e.message}"
            if kind is RpcErrorKind.NONCE_TOO_LOW:
                # Maybe ours was mined already (a resend after a crash): reconcile by our hashes.
                try:
                    mined = await find_mined_attempt(rpc, attempts)
                except RpcUnavailable as down:
                    raise rpc_down(down) from down
                if mined is None:
                    raise fail(
                        ErrorCode.NONCE_CONFLICT,
                        f"nonce {attempt.nonce} of {attempt.hot_wallet} was used by a transaction"
                        " the engine did not send",
                    ) from e
            elif kind is RpcErrorKind.INSUFFICIENT_FUNDS:
                raise fail(
                    ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS, f"hot wallet cannot pay: {e.message}"
                ) from e
            elif kind.transient:
                raise rpc_down(e) from e
            elif kind in _UNDERPRICED:
                async with self.db.transaction() as s:
                    await repo.mark_attempt(s, attempt.tx_hash, TxOutcome.FAILED, detail[:1000])
                raise fail(ErrorCode.UNDERPRICED, detail[:500]) from e
            elif kind is not RpcErrorKind.ALREADY_KNOWN:
                async with self.db.transaction() as s:
                    await repo.mark_attempt(s, attempt.tx_hash, TxOutcome.FAILED, detail[:1000])
                raise fail(ErrorCode.BROADCAST_REJECTED, detail[:500]) from e
        except RpcUnavailable as e:
            raise rpc_down(e) from e  # unknown outcome: the retry resends the same bytes
        if attempt.outcome == TxOutcome.SIGNED:
            async with self.db.transaction() as s:
                await repo.mark_attempt(s, attempt.tx_hash, TxOutcome.BROADCAST)
        log.info("withdrawal.broadcast.sent", withdrawal_id=inp.withdrawal_id, tx_hash=attempt.tx_hash)
        return attempt.tx_hash
