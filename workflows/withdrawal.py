"""WithdrawalWorkflow: one durable workflow per withdrawal.

admit (limits + reservation, answered to the API through the `submit` update) → [wait for funds]
→ [approval] → allocate nonce → sign → broadcast → included → confirmed.

Every status change goes through `_move`: the `record_transition` activity applies it to the row with
the one guarded writer (`models.repo.transition`, which also consumes or releases the reservation), and
only then do the workflow's status, its search attribute and the Web UI details follow (`_enter`).
A stale move fails the workflow loudly. Anything automatic handling cannot resolve parks the withdrawal
in NEEDS_ATTENTION until an operator sends `retry` or `cancel`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.approvals import ApprovalActivities
    from activities.broadcast import BroadcastActivities
    from activities.confirmations import ConfirmationActivities
    from activities.funds import FundsActivities
    from activities.lifecycle import LifecycleActivities
    from activities.nonces import NonceActivities
    from activities.transactions import TransactionActivities
    from models.domain import (
        ActionResult,
        Admission,
        ApprovalDecision,
        ApproverIdentity,
        AwaitInput,
        BroadcastInput,
        ErrorCode,
        ErrorInfo,
        HistoryEntry,
        HistoryKind,
        Inclusion,
        InclusionOutcome,
        Nonce,
        NonceAllocation,
        NonceConflictInput,
        NonceHolderOutcome,
        NonceResolution,
        OperatorInput,
        Outcome,
        SignedTx,
        SignInput,
        SubmitInput,
        SubmitResult,
        TransitionInput,
        TxHash,
        TxPurpose,
        VerifyApprovalInput,
        WithdrawalRef,
        WithdrawalRequest,
        WithdrawalState,
        WithdrawalStatus,
        waits_queue,
    )
    from workflows import search_attributes as sa

T = TypeVar("T")
S = WithdrawalStatus
K = HistoryKind

LOCAL_TIMEOUT = timedelta(seconds=60)  # signing may make three RPC calls of up to 10 s each
# Steps are retried without limit while the cause is transient (RPC down, timeouts): parking with an
# allocated nonce unsent would stall every later transaction of the hot wallet. Definite failures
# (non-retryable errors) park in NEEDS_ATTENTION at once.
FOREVER_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# Proving who holds a used nonce: retried while unproven (a lagging node, a block not deep enough),
# then parked in NEEDS_ATTENTION (NONCE_UNPROVEN); never re-signed at another nonce without proof.
PROOF_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=15,
)
AWAIT_TIMEOUT = timedelta(hours=1)
AWAIT_HEARTBEAT = timedelta(seconds=20)
AWAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=20
)
_OPERATOR_INPUT = 'Input: {"reason"?, "operator"?} or nothing.'
_DECISION_INPUT = (
    'Input: {"reason"?, "token"}: counts only with the token the admin API signs for this withdrawal and '
    "approver; without one it is recorded and refused (use POST /admin/transactions/{id}/approve|reject)."
)
VERIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)


class _CancelRequested(Exception):
    pass


class _Ended(Exception):
    """The withdrawal reached a terminal status off the main path (e.g. cancelled, its nonce lost)."""


class _Passthrough(Exception):
    """A step failure the caller handles itself instead of parking in NEEDS_ATTENTION."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _error_of(err: BaseException) -> ErrorInfo:
    """The code and message of an activity failure (local ones surface unwrapped, regular ones wrapped)."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        t = cause.type or ""
        code = ErrorCode(t) if t in ErrorCode.__members__ else ErrorCode.ACTIVITY_FAILED
        return ErrorInfo(code=code, message=cause.message)
    return ErrorInfo(code=ErrorCode.ACTIVITY_FAILED, message=str(cause or err))


@workflow.defn(name="WithdrawalWorkflow")
class WithdrawalWorkflow:
    @workflow.init
    def __init__(self, req: WithdrawalRequest) -> None:
        self._req = req
        self._status = S.PENDING
        self._error: ErrorInfo | None = None
        self._admission: Admission | None = None
        self._submitted = False
        self._approval: ApprovalDecision | None = None
        self._approvers: list[ApproverIdentity] = []  # proven, distinct approvals so far
        self._held: str | None = None  # the kill switch holding the next step, if any
        self._deciding = 0  # approve/reject handlers whose proof is being checked
        self._cancel: OperatorInput | None = None
        self._retry = False
        self._broadcast = False  # a transaction of this withdrawal has reached a node
        self._cancel_sent = False
        self._next_seq: dict[TxPurpose, int] = {}
        self._nonce: Nonce | None = None
        self._tx_hash: TxHash | None = None
        self._history: list[HistoryEntry] = []
        self._published: tuple[S, str | None] | None = None
        self._seq = 0  # the number of the last status move (the row's `status_seq`)
        self._cancelling = False  # the cancel path runs: a cancel no longer interrupts anything
        self._nonce_lost = False  # the nonce is proven held by a transaction the engine did not send
        self._proven: Inclusion | None = None  # our transaction proven in a block (no receipt seen)

    # --- operator interface: a signal (scripts, Web UI) and an update (answers) per action ---------

    @workflow.update(description="Used by the API (update-with-start): answers with the admission decision.")
    async def submit(self, inp: SubmitInput) -> SubmitResult:
        created = not self._submitted
        self._submitted = True
        await workflow.wait_condition(lambda: self._admission is not None)
        assert self._admission is not None
        return SubmitResult(created=created, admission=self._admission)

    @submit.validator
    def _validate_submit(self, inp: SubmitInput) -> None:
        if inp.fingerprint != self._req.fingerprint:
            raise ApplicationError(
                "Idempotency-Key already used with a different request body",
                type=ErrorCode.IDEMPOTENCY_KEY_REUSED,
                non_retryable=True,
            )

    @workflow.signal(name="retry", description=f"Resume a withdrawal in NEEDS_ATTENTION. {_OPERATOR_INPUT}")
    def retry(self, inp: OperatorInput | None = None) -> None:
        self._signal(K.RETRY, inp)

    @workflow.signal(
        name="cancel",
        description="Cancel. Before broadcast it ends the withdrawal; once broadcast it sends a 0-value "
        "self-transfer at the same nonce, and the withdrawal is CANCELLED only if that is what gets mined. "
        + _OPERATOR_INPUT,
    )
    def cancel(self, inp: OperatorInput | None = None) -> None:
        self._signal(K.CANCEL, inp)

    @workflow.signal(
        name="approve", description=f"Approve a withdrawal in AWAITING_APPROVAL. {_DECISION_INPUT}"
    )
    async def approve(self, inp: OperatorInput | None = None) -> None:
        await self._decision_signal(K.APPROVE, inp)

    @workflow.signal(
        name="reject", description=f"Reject a withdrawal in AWAITING_APPROVAL. {_DECISION_INPUT}"
    )
    async def reject(self, inp: OperatorInput | None = None) -> None:
        await self._decision_signal(K.REJECT, inp)

    @workflow.update(
        name="retry", description=f"Like the signal `retry`, answered: accepted or refused. {_OPERATOR_INPUT}"
    )
    def retry_update(self, inp: OperatorInput | None = None) -> ActionResult:
        return self._accept(K.RETRY, inp)

    @retry_update.validator
    def _validate_retry(self, inp: OperatorInput | None = None) -> None:
        self._validate(K.RETRY)

    @workflow.update(
        name="cancel",
        description=f"Like the signal `cancel`, answered: accepted or refused. {_OPERATOR_INPUT}",
    )
    def cancel_update(self, inp: OperatorInput | None = None) -> ActionResult:
        return self._accept(K.CANCEL, inp)

    @cancel_update.validator
    def _validate_cancel(self, inp: OperatorInput | None = None) -> None:
        self._validate(K.CANCEL)

    @workflow.update(
        name="approve",
        description=f"Like the signal `approve`, answered: accepted or refused. {_DECISION_INPUT}",
    )
    async def approve_update(self, inp: OperatorInput | None = None) -> ActionResult:
        return await self._decide(K.APPROVE, inp)

    @approve_update.validator
    def _validate_approve(self, inp: OperatorInput | None = None) -> None:
        self._validate(K.APPROVE, inp)

    @workflow.update(
        name="reject",
        description=f"Like the signal `reject`, answered: accepted or refused. {_DECISION_INPUT}",
    )
    async def reject_update(self, inp: OperatorInput | None = None) -> ActionResult:
        return await self._decide(K.REJECT, inp)

    @reject_update.validator
    def _validate_reject(self, inp: OperatorInput | None = None) -> None:
        self._validate(K.REJECT, inp)

    @workflow.query(description="Current status, nonce, tx hash, error and history.")
    def status(self) -> WithdrawalState:
        return WithdrawalState(
            status=self._status,
            nonce=self._nonce,
            tx_hash=self._tx_hash,
            error=self._error,
            history=list(self._history),
        )

    def _refusal(self, action: HistoryKind) -> str | None:
        """Why `action` is not possible now, or None when it is."""
        st = self._status
        if action is K.RETRY:
            if st is not S.NEEDS_ATTENTION or self._retry:
                return f"retry is possible only in NEEDS_ATTENTION; the withdrawal is {st}"
            return None
        if action is K.CANCEL:
            if self._cancel is not None:
                return "a cancellation is already requested"
            if self._deciding:  # the decision arrived first: it counts (or fails) before a cancel
                return "an approval decision is being recorded: send the cancel again in a moment"
            if st.terminal:
                return f"the withdrawal is {st}"
            if self._approval is ApprovalDecision.REJECTED:
                return "the withdrawal is already rejected"
            if self._broadcast and st is not S.BROADCAST:
                return f"the transaction is {st}: too late to cancel"
            return None
        if st is not S.AWAITING_APPROVAL or self._approval is not None:
            return f"{action.lower()} is possible only in AWAITING_APPROVAL; the withdrawal is {st}"
        if self._cancel is not None:  # decisions that arrive together: the first one counts
            return "a cancellation is already requested"
        return None

    def _validate(self, action: HistoryKind, inp: OperatorInput | None = None) -> None:
        refusal = self._refusal(action)
        if refusal is not None:
            raise ApplicationError(refusal, type=ErrorCode.INVALID_STATE, non_retryable=True)
        if action in (K.APPROVE, K.REJECT) and not (inp and inp.token):
            raise ApplicationError(_UNPROVEN, type=ErrorCode.APPROVAL_UNPROVEN, non_retryable=True)

    async def _decision_signal(self, action: HistoryKind, inp: OperatorInput | None) -> None:
        """A signal cannot answer: a decision without proof (the Web UI, the CLI) is recorded and refused."""
        refusal = self._refusal(action) or (None if inp and inp.token else _UNPROVEN)
        if refusal is None:
            with contextlib.suppress(ApplicationError):
                await self._decide(action, inp)
            return
        workflow.logger.warning("%s refused: %s", action.lower(), refusal)
        self._note(K.REFUSED, inp, action=action, reason=refusal)
        self._publish()

    async def _decide(self, action: HistoryKind, inp: OperatorInput | None) -> ActionResult:
        """Approve or reject with proof: the API-signed token is verified by an activity, and only the
        approver it proves is recorded. Above the four-eyes threshold two distinct approvers are needed."""
        token = inp.token if inp else None
        self._deciding += 1
        try:
            if not token:
                raise ApplicationError(_UNPROVEN, type=ErrorCode.APPROVAL_UNPROVEN, non_retryable=True)
            who: ApproverIdentity = await workflow.execute_local_activity_method(
                ApprovalActivities.verify,
                VerifyApprovalInput(
                    withdrawal_id=self._req.withdrawal_id, action=action.lower(), token=token
                ),
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=VERIFY_RETRY,
            )
        except (ActivityError, ApplicationError) as err:
            self._deciding -= 1
            message = _error_of(err).message
            self._note(K.REFUSED, None, action=action, reason=message, actor=inp.operator if inp else None)
            self._publish()
            raise ApplicationError(message, type=ErrorCode.APPROVAL_UNPROVEN, non_retryable=True) from err
        self._deciding -= 1
        refusal = self._refusal(action)  # the state may have moved while the token was checked
        if (
            refusal is None
            and action is K.APPROVE
            and any(a.operator == who.operator for a in self._approvers)
        ):
            refusal = f"already approved by {who.operator}: a second, different approver is needed"
        if refusal is not None:
            self._note(K.REFUSED, None, action=action, reason=refusal, actor=who.operator)
            self._publish()
            raise ApplicationError(refusal, type=ErrorCode.INVALID_STATE, non_retryable=True)
        reason = inp.reason if inp else None
        if action is K.REJECT:
            self._approval = ApprovalDecision.REJECTED
            self._note(K.REJECT, None, reason=reason, actor=who.operator)
        else:
            self._approvers.append(who)
            needed = self._admission.approvals_required if self._admission else 1
            self._note(
                K.APPROVE,
                None,
                actor=who.operator,
                reason=f"approval {len(self._approvers)} of {needed}" + (f": {reason}" if reason else ""),
            )
            if len(self._approvers) >= needed:
                self._approval = ApprovalDecision.APPROVED
        self._publish()
        return ActionResult(accepted=True, status=self._status)

    def _signal(self, action: HistoryKind, inp: OperatorInput | None) -> None:
        refusal = self._refusal(action)
        if refusal is None:
            self._accept(action, inp)
            return
        workflow.logger.warning("%s refused: %s", action.lower(), refusal)
        self._note(K.REFUSED, inp, action=action, reason=refusal)
        self._publish()

    def _accept(self, action: HistoryKind, inp: OperatorInput | None) -> ActionResult:
        self._note(action, inp, reason=inp.reason if inp else None)
        if action is K.RETRY:
            self._retry = True
        else:
            self._cancel = inp or OperatorInput()
        return ActionResult(accepted=True, status=self._status)

    # --- main path -----------------------------------------------------------------------------

    @workflow.run
    async def run(self, req: WithdrawalRequest) -> Outcome:
        adm = await workflow.execute_local_activity_method(
            FundsActivities.admit, req, start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=FOREVER_RETRY
        )
        self._admission = adm
        self._seq = adm.status_seq
        # The API starts the workflow with WithdrawalStatus=PENDING: no upsert to say it again.
        # (Only that value is trusted: a start from elsewhere may carry anything, or nothing.)
        if workflow.info().typed_search_attributes.get(sa.WITHDRAWAL_STATUS) == S.PENDING:
            self._published = (S.PENDING, None)
        self._enter(adm.status, adm.error)  # the row was created in this status by `admit`
        try:
            try:
                if adm.accepted:
                    await self._process(adm)
            except _CancelRequested:
                self._cancelling = True
                await self._cancelled(adm)
        except _Ended:
            pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        return Outcome(
            withdrawal_id=req.withdrawal_id,
            status=self._status,
            tx_hash=self._tx_hash,
            error=self._error,
            history=self._history,
        )

    async def _process(self, adm: Admission) -> None:
        if adm.status is S.WAITING_FOR_FUNDS:
            await self._wait_for_funds(adm)
        if adm.requires_approval and not await self._approved(adm):
            return
        self._check_cancel()
        ref = WithdrawalRef(withdrawal_id=self._req.withdrawal_id)
        # A regular activity ends the first workflow task at once, so the POST (the `submit` update)
        # is answered with the admission alone; signing and broadcast follow in the next task.
        alloc: NonceAllocation = await self._step(
            lambda: workflow.execute_activity_method(
                NonceActivities.allocate_nonce,
                ref,
                start_to_close_timeout=LOCAL_TIMEOUT,
                retry_policy=FOREVER_RETRY,
            )
        )
        self._nonce = alloc.nonce
        # Published at once, not with the hash after signing: a signing step that keeps retrying
        # (a fee spike, a node down) would leave the search attribute saying PENDING meanwhile.
        await self._move(S.PROCESSING)
        self._check_cancel()
        signed = await self._sign_first(adm)
        self._tx_hash = signed.tx_hash
        self._next_seq[TxPurpose.WITHDRAWAL] = 1
        self._publish()
        self._check_cancel()
        await self._broadcast_step(signed.tx_hash, TxPurpose.WITHDRAWAL)
        await self._confirm(adm)

    async def _sign_first(self, adm: Admission) -> SignedTx:
        """The first attempt. The hot wallet's balance is checked right before signing: when it cannot
        cover amount + fee, the withdrawal waits in WAITING_FOR_FUNDS (nothing signed) and tries again."""
        inp = SignInput(withdrawal_id=self._req.withdrawal_id)
        while True:
            try:
                signed: SignedTx = await self._step(
                    lambda: self._local(TransactionActivities.sign_transaction, inp),
                    passthrough=(ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS,),
                )
            except _Passthrough as p:
                if self._status is not S.WAITING_FOR_FUNDS:
                    await self._move(S.WAITING_FOR_FUNDS, ErrorInfo(code=p.code, message=p.message))
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._cancel is not None, timeout=timedelta(seconds=adm.funds_retry_seconds)
                    )
                self._check_cancel()
                continue
            if self._status is S.WAITING_FOR_FUNDS:
                await self._move(S.PROCESSING)
            return signed

    async def _approved(self, adm: Admission) -> bool:
        """Wait for approve/reject (or cancel) up to the approval timeout; a timeout rejects."""
        await self._move(S.AWAITING_APPROVAL)
        try:
            await workflow.wait_condition(
                lambda: self._approval is not None or self._cancel is not None,
                timeout=timedelta(seconds=adm.approval_timeout_seconds),
            )
        except TimeoutError:
            self._approval = ApprovalDecision.TIMED_OUT
        self._check_cancel()
        if self._approval is ApprovalDecision.APPROVED:
            await self._move(S.PENDING)
            return True
        if self._approval is ApprovalDecision.TIMED_OUT:
            await self._move(
                S.REJECTED, ErrorInfo(code=ErrorCode.APPROVAL_TIMED_OUT, message="approval timed out")
            )
        else:
            await self._move(
                S.REJECTED, ErrorInfo(code=ErrorCode.APPROVAL_REJECTED, message="rejected by an approver")
            )
        return False

    async def _confirm(self, adm: Admission) -> None:
        """Wait for inclusion, then for the required confirmations on the canonical chain.

        Not mined within the stuck threshold: a replacement at the same nonce with both fee fields
        raised (capped). `cancel` while broadcast: a 0-value self-transfer at the same nonce with
        bumped fees; whichever attempt is mined decides the outcome. Receipt gone before the final
        confirmation: a reorg, back to BROADCAST and resent.
        """
        required = adm.required_confirmations
        while True:
            included: Inclusion | None
            if self._proven is not None:
                included, self._proven = self._proven, None
            else:
                included = await self._step(lambda: self._await_inclusion(adm), cancellable=False)
            if included is None:
                await self._replace(TxPurpose.CANCEL)
                continue
            live = TxPurpose.CANCEL if self._cancel_sent else TxPurpose.WITHDRAWAL
            if included.outcome is InclusionOutcome.STUCK:
                await self._replace(live)
                continue
            if included.outcome is InclusionOutcome.NONCE_USED:
                proven = await self._settle_nonce_conflict(live)
                if proven is None:  # moved to a new nonce by an operator's decision
                    replaced = await self._sign_replacement(live)
                    if replaced is not None:
                        await self._broadcast_step(replaced, live)
                    continue
                included = proven
            self._tx_hash = TxHash(included.tx_hash)
            await self._move(S.CONFIRMING)
            final = await self._step(lambda inc=included: self._await_final(required, inc), cancellable=False)  # type: ignore[misc]
            if final.outcome is InclusionOutcome.REORGED:
                workflow.logger.warning("withdrawal reorged out: %s", included.tx_hash)
                self._note(
                    K.REORG, None, tx_hash=included.tx_hash, reason=f"left block {included.block_hash}"
                )
                await self._move(S.BROADCAST)
                await self._broadcast_step(included.tx_hash, included.purpose)
                continue
            break
        self._tx_hash = TxHash(final.tx_hash)
        if final.purpose is not TxPurpose.WITHDRAWAL:
            # A 0-value self-transfer holds the nonce: the withdrawal never paid and never will.
            await self._move(S.CANCELLED, self._cancel_error())
        elif final.success:
            if self._cancel_sent:
                self._note(K.CANCEL_LOST, None, reason="the withdrawal was mined before the cancellation")
            await self._move(S.CONFIRMED)
        else:
            await self._move(
                S.FAILED,
                ErrorInfo(code=ErrorCode.EXECUTION_REVERTED, message="transaction mined but reverted"),
            )

    async def _await_inclusion(self, adm: Admission) -> Inclusion | None:
        """Await inclusion; returns None as soon as a cancel is requested that has not been sent yet."""
        if self._cancel_pending():
            return None
        handle = workflow.start_activity_method(
            ConfirmationActivities.await_transaction,
            AwaitInput(
                withdrawal_id=self._req.withdrawal_id,
                required_confirmations=adm.required_confirmations,
                until_included_only=True,
                stuck_after_seconds=adm.stuck_after_seconds,
            ),
            task_queue=waits_queue(workflow.info().task_queue),
            start_to_close_timeout=AWAIT_TIMEOUT,
            heartbeat_timeout=AWAIT_HEARTBEAT,
            retry_policy=AWAIT_RETRY,
        )
        await workflow.wait_condition(lambda: handle.done() or self._cancel_pending())
        if handle.done():
            return await handle
        handle.cancel()
        with contextlib.suppress(ActivityError, asyncio.CancelledError):
            await handle
        return None

    async def _await_final(self, required: int, included: Inclusion) -> Inclusion:
        return await workflow.execute_activity_method(
            ConfirmationActivities.await_transaction,
            AwaitInput(
                withdrawal_id=self._req.withdrawal_id,
                required_confirmations=required,
                included_block_hash=included.block_hash,
                included_block_number=included.block_number,
            ),
            task_queue=waits_queue(workflow.info().task_queue),
            start_to_close_timeout=AWAIT_TIMEOUT,
            heartbeat_timeout=AWAIT_HEARTBEAT,
            retry_policy=AWAIT_RETRY,
        )

    def _cancel_pending(self) -> bool:
        return self._cancel is not None and not self._cancel_sent

    async def _replace(self, purpose: TxPurpose) -> None:
        """Replace the pending transaction at the same nonce (fees bumped over every earlier attempt)."""
        if purpose is TxPurpose.CANCEL:
            self._cancel_sent = True
        signed = await self._sign_replacement(purpose)
        if signed is not None:
            await self._broadcast_step(signed, purpose)
        self._publish()

    async def _sign_replacement(self, purpose: TxPurpose) -> str | None:
        """Sign the next attempt of `purpose`. None when the bump would pass the fee cap: the
        withdrawal then waits (its details say so) rather than overpay; a cancel is never capped."""
        seq = self._next_seq.get(purpose, 0)
        inp = SignInput(withdrawal_id=self._req.withdrawal_id, purpose=purpose, seq=seq)
        try:
            # Any other failure (no funds at a new nonce, gas above the cap) parks for an operator.
            signed: SignedTx = await self._step(
                lambda: self._local(TransactionActivities.sign_transaction, inp),
                passthrough=(ErrorCode.FEE_ABOVE_CAP,),
            )
        except _Passthrough as p:
            workflow.logger.warning("fee bump skipped: %s", p.message)
            self._note(K.FEE_BUMP_SKIPPED, None, reason=p.message)
            self._publish()
            return None
        self._next_seq[purpose] = seq + 1
        self._note(K.REPLACEMENT, None, tx_hash=signed.tx_hash, reason=f"{purpose.lower()} #{seq}")
        return signed.tx_hash

    async def _wait_for_funds(self, adm: Admission) -> None:
        ref = WithdrawalRef(withdrawal_id=self._req.withdrawal_id)
        while True:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._cancel is not None, timeout=timedelta(seconds=adm.funds_retry_seconds)
                )
            self._check_cancel()
            wallet: str | None = await self._local(FundsActivities.reserve, ref)
            if wallet:
                await self._move(S.PENDING)
                return

    async def _broadcast_step(self, tx_hash: str, purpose: TxPurpose) -> None:
        """Broadcast until a node accepts; the first acceptance moves the withdrawal to BROADCAST.
        Underpriced: a replacement with bumped fees (within the cap); insufficient funds: wait in
        WAITING_FOR_FUNDS; both retry on a timer."""
        assert self._admission is not None
        while True:
            inp = BroadcastInput(withdrawal_id=self._req.withdrawal_id, tx_hash=tx_hash)
            try:
                await self._step(
                    lambda inp=inp: self._local(BroadcastActivities.broadcast_transaction, inp),  # type: ignore[misc]
                    passthrough=(
                        ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS,
                        ErrorCode.UNDERPRICED,
                        ErrorCode.NONCE_CONFLICT,
                    ),
                )
                break
            except _Passthrough as p:
                replaced: str | None = None
                if p.code is ErrorCode.NONCE_CONFLICT:
                    proven = await self._settle_nonce_conflict(purpose)
                    if proven is not None:  # ours is mined: nothing more to send
                        self._proven = proven
                        break
                    replaced = await self._sign_replacement(purpose)
                elif p.code is ErrorCode.UNDERPRICED:
                    self._note(K.UNDERPRICED, None, reason=p.message)
                    replaced = await self._sign_replacement(purpose)
                elif self._status is not S.WAITING_FOR_FUNDS:
                    await self._move(
                        S.WAITING_FOR_FUNDS,
                        ErrorInfo(code=p.code, message="hot wallet balance too low to broadcast"),
                    )
                if replaced is not None:
                    tx_hash = replaced
                    continue
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    self._cancel_pending, timeout=timedelta(seconds=self._admission.funds_retry_seconds)
                )
            if not self._broadcast:
                self._check_cancel()
        self._broadcast = True
        if self._status is not S.BROADCAST:
            await self._move(S.BROADCAST)

    async def _cancelled(self, adm: Admission) -> None:
        """Cancel requested before broadcast. Without a nonce nothing reached the chain; with one,
        the nonce is filled by a 0-value self-transfer so later nonces do not stall."""
        if self._nonce is None or self._nonce_lost:  # nothing of ours can be mined at a nonce
            await self._move(S.CANCELLED, self._cancel_error())
            return
        self._cancel_sent = True
        ref = SignInput(withdrawal_id=self._req.withdrawal_id, purpose=TxPurpose.CANCEL)
        signed: SignedTx = await self._step(
            lambda: self._local(TransactionActivities.sign_transaction, ref), cancellable=False
        )
        self._tx_hash = signed.tx_hash
        self._next_seq[TxPurpose.CANCEL] = 1
        await self._broadcast_step(signed.tx_hash, TxPurpose.CANCEL)
        await self._confirm(adm)

    # --- helpers -------------------------------------------------------------------------------

    def _check_cancel(self) -> None:
        if self._cancel is not None and not self._cancelling:
            raise _CancelRequested()

    async def _settle_nonce_conflict(self, purpose: TxPurpose) -> Inclusion | None:
        """Our nonce is used on chain and no node shows our receipt: prove who holds it.

        Ours → its inclusion, to be confirmed (nothing is re-signed). Another transaction (proven at
        the required depth) → park in NEEDS_ATTENTION with an alert: only an operator's `retry` moves
        the withdrawal to the wallet's next nonce (returns None; the caller signs there), and a
        `cancel` ends it CANCELLED (nothing of ours can be mined at that nonce any more).
        """
        move = False
        while True:
            res: NonceResolution = await self._step(
                lambda move=move: workflow.execute_local_activity_method(  # type: ignore[misc]
                    NonceActivities.resolve_nonce_conflict,
                    NonceConflictInput(withdrawal_id=self._req.withdrawal_id, move=move),
                    start_to_close_timeout=LOCAL_TIMEOUT,
                    retry_policy=PROOF_RETRY,
                ),
                cancellable=not self._cancelling,
            )
            holder = res.holder
            if holder.outcome is NonceHolderOutcome.OURS:
                self._nonce_lost = False
                return Inclusion(
                    outcome=InclusionOutcome.INCLUDED,
                    tx_hash=holder.tx_hash or "",
                    purpose=holder.purpose or TxPurpose.WITHDRAWAL,
                    block_number=holder.block_number,
                    block_hash=holder.block_hash,
                )
            if res.new_nonce is not None:
                self._nonce, self._nonce_lost = res.new_nonce, False
                self._note(
                    K.NONCE_REALIGNED,
                    None,
                    reason=f"{holder.detail}; moved from nonce {res.old_nonce} to {res.new_nonce}",
                )
                return None
            self._nonce_lost = True
            if self._cancelling:
                await self._move(S.CANCELLED, self._cancel_error())
                raise _Ended()
            await self._park(
                ErrorInfo(
                    code=ErrorCode.NONCE_CONFLICT,
                    message=f"{holder.detail}, not sent by the engine: retry moves the withdrawal to the "
                    "wallet's next nonce, cancel ends it",
                ),
                cancellable=True,
            )
            move = True

    def _cancel_error(self) -> ErrorInfo:
        reason = (self._cancel.reason if self._cancel else None) or "cancelled by an operator"
        return ErrorInfo(code=ErrorCode.CANCELLED, message=reason)

    async def _local(self, fn: Callable[..., Awaitable[T]], arg: object) -> T:
        return await workflow.execute_local_activity_method(
            fn,
            arg,
            start_to_close_timeout=LOCAL_TIMEOUT,
            retry_policy=FOREVER_RETRY,
        )

    async def _step(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        passthrough: tuple[ErrorCode, ...] = (),
        cancellable: bool = True,
    ) -> T:
        """Run a step; when automatic handling is exhausted, park in NEEDS_ATTENTION until `retry`
        (run the step again) or `cancel` (only before broadcast)."""
        while True:
            try:
                result = await call()
            except (ActivityError, ApplicationError) as err:
                error = _error_of(err)
                if error.code is ErrorCode.PAUSED:
                    await self._hold(error.message)
                    continue
                self._held = None  # the step ran and failed for another reason: no longer held
                if error.code in passthrough:
                    raise _Passthrough(error.code, error.message) from err
                await self._park(error, cancellable=cancellable)
                continue
            if self._held is not None:
                self._held = None
                self._note(K.RELEASED, None)
                self._publish()
            return result

    async def _hold(self, reason: str) -> None:
        """A kill switch holds the step: say so in the details, wait, and let the caller try again."""
        if self._held != reason:
            self._held = reason
            self._note(K.HELD, None, reason=reason)
            self._publish()
        poll = self._admission.pause_poll_seconds if self._admission else 5.0
        await workflow.sleep(timedelta(seconds=poll))

    async def _park(self, error: ErrorInfo, *, cancellable: bool) -> None:
        """Wait in NEEDS_ATTENTION for an operator: `retry` returns (to the status it parked in),
        `cancel` raises `_CancelRequested` (only before broadcast, and not while cancelling)."""
        resume = self._status
        if resume is not S.NEEDS_ATTENTION:
            await self._move(S.NEEDS_ATTENTION, error)
        self._retry = False
        await workflow.wait_condition(
            lambda: (
                self._retry
                or (cancellable and self._cancel is not None and not self._broadcast and not self._cancelling)
            )
        )
        if not self._retry:
            raise _CancelRequested()
        self._retry = False
        if resume is not S.NEEDS_ATTENTION:
            await self._move(resume)

    async def _move(self, to: WithdrawalStatus, error: ErrorInfo | None = None) -> None:
        """Change the withdrawal's status: the row first (the one guarded writer, with its effects),
        then the workflow's state and search attribute. A stale move fails the workflow."""
        seq = self._seq + 1
        await workflow.execute_local_activity_method(
            LifecycleActivities.record_transition,
            TransitionInput(withdrawal_id=self._req.withdrawal_id, status=to, seq=seq, error=error),
            start_to_close_timeout=LOCAL_TIMEOUT,
            retry_policy=FOREVER_RETRY,
        )
        self._seq = seq
        self._enter(to, error)

    def _enter(self, status: WithdrawalStatus, error: ErrorInfo | None) -> None:
        self._status, self._error = status, error
        self._history.append(
            HistoryEntry(
                kind=K.STATUS, at=workflow.now(), status=status, reason=error.message if error else None
            )
        )
        self._publish()

    def _note(self, kind: HistoryKind, inp: OperatorInput | None, **fields: Any) -> None:
        actor = (
            fields.pop("actor", None)
            or (inp.operator if inp else None)
            or ("operator" if kind in _OPERATOR_KINDS else None)
        )
        self._history.append(HistoryEntry(kind=kind, at=workflow.now(), actor=actor, **fields))

    def _publish(self) -> None:
        """Search attributes (only when they change) and the Web UI details."""
        if self._published != (self._status, self._tx_hash):
            status, tx_hash = self._published or (None, None)
            updates = []
            if status is not self._status:
                updates.append(sa.WITHDRAWAL_STATUS.value_set(self._status))
            if self._tx_hash and self._tx_hash != tx_hash:
                updates.append(sa.TX_HASH.value_set(self._tx_hash))
            if updates:
                workflow.upsert_search_attributes(updates)
            self._published = (self._status, self._tx_hash)
        r, adm = self._req, self._admission
        amount = adm.amount_display if adm and adm.amount_display else f"{r.amount} base units of {r.asset}"
        lines = [f"**{self._status}** · {amount} on {r.network}", f"to `{r.to_address}` · user `{r.user_id}`"]
        if adm and adm.hot_wallet:
            lines.append(
                f"hot wallet `{adm.hot_wallet}`"
                + (f" · nonce {self._nonce}" if self._nonce is not None else "")
            )
        if self._tx_hash:
            lines.append(f"tx `{self._tx_hash}`")
        if self._held:
            lines.append(f"**Held**: {self._held}. It goes on by itself when the pause is lifted.")
        if self._error:
            lines.append(f"error `{self._error.code}`: {self._error.message}")
        if self._status is S.NEEDS_ATTENTION:
            lines.append(
                "**Next action**: fix the cause, then `retry` (resume the step) or `cancel` (before "
                "broadcast), in the admin API or as a signal here."
            )
        elif self._status is S.AWAITING_APPROVAL and adm:
            lines.append(
                f"**Next action**: {adm.approvals_required} distinct approver(s) needed, "
                f"{len(self._approvers)} so far; approve or reject in the admin API "
                "(an approve signal from here carries no proof and is refused)."
            )
        workflow.set_current_details("\n\n".join(lines))


_OPERATOR_KINDS = frozenset({K.RETRY, K.CANCEL, K.APPROVE, K.REJECT, K.REFUSED})
_UNPROVEN = (
    "an approve or reject counts only with proof of who decided: "
    "use the admin API (POST /admin/transactions/{id}/approve or /reject)"
)
