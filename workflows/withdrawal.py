"""WithdrawalWorkflow: one durable workflow per withdrawal (DESIGN §4).

admit (limits + reservation, answered to the API through the `submit` update) → [wait for funds]
→ [approval] → allocate nonce → sign → broadcast → included → confirmed.
Anything automatic handling cannot resolve parks the withdrawal in NEEDS_ATTENTION until an
operator sends `retry` or `cancel`. Compensation (releasing the reservation) happens exactly once,
in the status record of REJECTED / CANCELLED / FAILED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.chain import ChainActivities
    from activities.funds import FundsActivities
    from models.domain import (
        Admission,
        AwaitInput,
        BroadcastInput,
        ErrorType,
        Inclusion,
        OperatorInput,
        Outcome,
        SignedTx,
        SignInput,
        StatusChange,
        SubmitInput,
        SubmitResult,
        TxPurpose,
        WithdrawalRef,
        WithdrawalRequest,
        WithdrawalStatus,
    )
    from workflows import search_attributes as sa

T = TypeVar("T")
S = WithdrawalStatus

LOCAL_TIMEOUT = timedelta(seconds=60)  # signing may make three RPC calls of up to 10 s each
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=6
)
AWAIT_TIMEOUT = timedelta(hours=1)
AWAIT_HEARTBEAT = timedelta(seconds=20)
AWAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=20
)
FOREVER_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


class _CancelRequested(Exception):
    pass


@workflow.defn(name="WithdrawalWorkflow")
class WithdrawalWorkflow:
    @workflow.init
    def __init__(self, req: WithdrawalRequest) -> None:
        self._req = req
        self._status: str = S.PENDING
        self._admission: Admission | None = None
        self._submitted = False
        self._approval: str | None = None
        self._cancel: OperatorInput | None = None
        self._retry = False
        self._broadcast = False
        self._cancel_sent = False
        self._next_seq: dict[str, int] = {}
        # Patches (see tests/histories): set once, right after admission.
        self._allocate_as_activity = False
        self._fold_writes = False
        self._nonce: int | None = None
        self._tx_hash: str | None = None
        self._error: tuple[str, str] | None = None
        self._history: list[str] = []

    # --- operator interface --------------------------------------------------------------------

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
                type=ErrorType.IDEMPOTENCY_KEY_REUSED,
            )

    @workflow.signal(
        description='Resume a withdrawal in NEEDS_ATTENTION. Input: {"reason"?, "operator"?} or nothing.'
    )
    def retry(self, inp: OperatorInput | None = None) -> None:
        if self._status != S.NEEDS_ATTENTION:
            workflow.logger.warning("retry ignored: withdrawal is %s", self._status)
            return
        self._note("retry", inp)
        self._retry = True

    @workflow.signal(
        description="Cancel. Before broadcast it ends the withdrawal; once broadcast it sends a 0-value "
        "self-transfer at the same nonce, and the withdrawal is CANCELLED only if that is what gets mined. "
        'Input: {"reason"?, "operator"?} or nothing.'
    )
    def cancel(self, inp: OperatorInput | None = None) -> None:
        refusal = None
        if self._cancel is not None:
            refusal = "already requested"
        elif S(self._status).terminal:
            refusal = f"withdrawal is {self._status}"
        elif self._broadcast and self._status != S.BROADCAST:
            refusal = f"transaction is {self._status}"
        if refusal:
            workflow.logger.warning("cancel refused: %s", refusal)
            self._note(f"cancel refused ({refusal})", inp)
            self._publish()
            return
        self._note("cancel", inp)
        self._cancel = inp or OperatorInput()

    @workflow.signal(
        description='Approve a withdrawal in AWAITING_APPROVAL. Input: {"reason"?, "operator"?}.'
    )
    def approve(self, inp: OperatorInput | None = None) -> None:
        if self._status == S.AWAITING_APPROVAL and self._approval is None:
            self._note("approve", inp)
            self._approval = "approved"

    @workflow.signal(description='Reject a withdrawal in AWAITING_APPROVAL. Input: {"reason"?, "operator"?}.')
    def reject(self, inp: OperatorInput | None = None) -> None:
        if self._status == S.AWAITING_APPROVAL and self._approval is None:
            self._note("reject", inp)
            self._approval = "rejected"

    @workflow.query(description="Current status, nonce, tx hash, error and operator history.")
    def status(self) -> dict[str, object]:
        return {
            "status": self._status,
            "nonce": self._nonce,
            "tx_hash": self._tx_hash,
            "error": {"code": self._error[0], "message": self._error[1]} if self._error else None,
            "history": list(self._history),
        }

    # --- main path -----------------------------------------------------------------------------

    @workflow.run
    async def run(self, req: WithdrawalRequest) -> Outcome:
        adm = await workflow.execute_local_activity_method(
            FundsActivities.admit, req, start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=FOREVER_RETRY
        )
        self._admission = adm
        self._status = adm.status
        self._error = (adm.error_code, adm.error_message or "") if adm.error_code else None
        self._publish()
        try:
            if adm.accepted:
                # Patches (histories in tests/histories/*_v1, *_v2 replay the older shapes). The POST
                # (the `submit` update) is answered when this first workflow task ends: now by the
                # allocate_nonce activity it schedules; before, a 1 ms timer; at first, only after broadcast.
                self._allocate_as_activity = workflow.patched("allocate-nonce-as-activity")
                self._fold_writes = workflow.patched("fold-status-writes")
                if not self._allocate_as_activity and workflow.patched("answer-submit-before-nonce"):
                    await workflow.sleep(timedelta(milliseconds=1))
                await self._process(adm)
        except _CancelRequested:
            await self._cancelled()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return Outcome(
            withdrawal_id=req.withdrawal_id,
            status=self._status,
            tx_hash=self._tx_hash,
            error_code=self._error[0] if self._error else None,
            error_message=self._error[1] if self._error else None,
            history=self._history,
        )

    async def _process(self, adm: Admission) -> None:
        if adm.status == S.WAITING_FOR_FUNDS:
            await self._wait_for_funds(adm)
        if adm.requires_approval:
            await self._set_status(S.AWAITING_APPROVAL)
            try:
                await workflow.wait_condition(
                    lambda: self._approval is not None or self._cancel is not None,
                    timeout=timedelta(seconds=adm.approval_timeout_seconds),
                )
            except TimeoutError:
                self._approval = "timeout"
            self._check_cancel()
            if self._approval != "approved":
                reason = "approval timed out" if self._approval == "timeout" else "rejected by an operator"
                await self._set_status(S.REJECTED, ("APPROVAL_REJECTED", reason))
                return
            await self._set_status(S.PENDING)
        self._check_cancel()

        ref = WithdrawalRef(withdrawal_id=self._req.withdrawal_id)
        if self._allocate_as_activity:
            # A regular activity ends the first workflow task at once, so the POST (the `submit` update)
            # is answered with the admission alone; signing and broadcast follow in the next task.
            alloc = await self._step(
                lambda: workflow.execute_activity_method(
                    ChainActivities.allocate_nonce,
                    ref,
                    start_to_close_timeout=LOCAL_TIMEOUT,
                    retry_policy=FOREVER_RETRY,
                )
            )
        else:
            alloc = await self._step(lambda: self._local(ChainActivities.allocate_nonce, ref))
        self._nonce = alloc.nonce
        await self._set_status(S.PROCESSING, persist=False)  # written with the allocation
        self._check_cancel()
        signed: SignedTx = await self._step(
            lambda: self._local(
                ChainActivities.sign_transaction,
                SignInput(withdrawal_id=ref.withdrawal_id),
                retry=self._after_nonce(),
            )
        )
        self._tx_hash = signed.tx_hash
        self._next_seq[TxPurpose.WITHDRAWAL] = 1
        self._publish()
        self._check_cancel()
        await self._broadcast_step(signed.tx_hash, first=True)
        self._broadcast = True
        await self._set_status(S.BROADCAST, persist=not self._fold_writes)  # else written by the broadcast
        await self._confirm(adm.required_confirmations)

    async def _confirm(self, required: int) -> None:
        """Wait for inclusion, then for the required confirmations on the canonical chain.

        Not mined within the stuck threshold: a replacement at the same nonce with both fee fields
        raised (capped). `cancel` while broadcast: a 0-value self-transfer at the same nonce with
        bumped fees; whichever attempt is mined decides the outcome. Receipt gone before the final
        confirmation: a reorg, back to BROADCAST and resent.
        """
        assert self._admission is not None
        stuck_after = self._admission.stuck_after_seconds
        while True:
            included = await self._step(
                lambda: self._await_cancellable(required, stuck_after), cancellable=False
            )
            if included is None:
                await self._replace(TxPurpose.CANCEL)
                continue
            if included.outcome == "STUCK":
                await self._replace(TxPurpose.CANCEL if self._cancel_sent else TxPurpose.WITHDRAWAL)
                continue
            self._tx_hash = included.tx_hash
            await self._set_status(S.CONFIRMING, persist=False)  # written with the inclusion
            final = await self._step(
                lambda inc=included: self._await(required, until_included_only=False, included=inc),  # type: ignore[misc]
                cancellable=False,
            )
            if final.outcome == "REORGED":
                self._history.append(f"reorg: {included.tx_hash} left block {included.block_hash}")
                workflow.logger.warning("withdrawal reorged out: %s", included.tx_hash)
                self._tx_hash = included.tx_hash
                await self._set_status(S.BROADCAST, persist=False)  # written with the reorg
                await self._broadcast_step(included.tx_hash)
                continue
            break
        self._tx_hash = final.tx_hash
        if final.purpose == TxPurpose.CANCEL:
            await self._set_status(S.CANCELLED, self._cancel_error())
        elif final.success:
            if self._cancel_sent:
                self._history.append("cancel lost: the withdrawal was mined before the cancellation")
            await self._set_status(
                S.CONFIRMED, None, persist=not self._fold_writes
            )  # else settled by the await
        else:
            await self._set_status(
                S.FAILED, (ErrorType.EXECUTION_REVERTED.value, "transaction mined but reverted")
            )

    async def _await_cancellable(self, required: int, stuck_after: float) -> Inclusion | None:
        """Await inclusion; returns None as soon as a cancel is requested that has not been sent yet."""
        if self._cancel_pending():
            return None
        handle = workflow.start_activity_method(
            ChainActivities.await_transaction,
            AwaitInput(
                withdrawal_id=self._req.withdrawal_id,
                required_confirmations=required,
                until_included_only=True,
                stuck_after_seconds=stuck_after,
            ),
            start_to_close_timeout=AWAIT_TIMEOUT,
            heartbeat_timeout=AWAIT_HEARTBEAT,
            retry_policy=AWAIT_RETRY,
        )
        await workflow.wait_condition(lambda: handle.done() or self._cancel_pending())
        if handle.done():
            return await handle
        handle.cancel()
        try:
            await handle
        except (ActivityError, asyncio.CancelledError):
            pass
        return None

    def _cancel_pending(self) -> bool:
        return self._cancel is not None and not self._cancel_sent

    async def _replace(self, purpose: str) -> None:
        """Replace the pending transaction at the same nonce (fees bumped over every earlier attempt)."""
        if purpose == TxPurpose.CANCEL:
            self._cancel_sent = True
        signed = await self._sign_replacement(purpose)
        if signed is not None:
            await self._broadcast_step(signed, purpose)
        self._publish()

    async def _sign_replacement(self, purpose: str) -> str | None:
        """Sign the next attempt of `purpose`. None when the bump would pass the fee cap: the
        withdrawal then waits (its details say so) rather than overpay; a cancel is never capped."""
        wid = self._req.withdrawal_id
        seq = self._next_seq.get(purpose, 0)
        try:
            signed: SignedTx = await self._local(
                ChainActivities.sign_transaction, SignInput(withdrawal_id=wid, purpose=purpose, seq=seq)
            )
        except (ActivityError, ApplicationError) as err:
            cause = err.cause if isinstance(err, ActivityError) else err
            if isinstance(cause, ApplicationError) and cause.type == ErrorType.FEE_ABOVE_CAP:
                self._history.append(f"fee bump skipped: {cause.message}")
                workflow.logger.warning("fee bump skipped for %s: %s", wid, cause.message)
                self._publish()
                return None
            raise
        self._next_seq[purpose] = seq + 1
        self._history.append(f"replacement {purpose} #{seq} {signed.tx_hash}")
        return signed.tx_hash

    async def _wait_for_funds(self, adm: Admission) -> None:
        self._publish()
        ref = WithdrawalRef(withdrawal_id=self._req.withdrawal_id)
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._cancel is not None, timeout=timedelta(seconds=adm.funds_retry_seconds)
                )
            except TimeoutError:
                pass
            self._check_cancel()
            wallet = await self._local(FundsActivities.reserve, ref, retry=FOREVER_RETRY)
            if wallet:
                await self._set_status(S.PENDING)
                return

    async def _broadcast_step(
        self, tx_hash: str, purpose: str = TxPurpose.WITHDRAWAL, *, first: bool = False
    ) -> None:
        """Broadcast; an underpriced answer gets a replacement with bumped fees (within the cap),
        insufficient funds waits in WAITING_FOR_FUNDS; both retry on a timer."""
        assert self._admission is not None
        while True:
            inp = BroadcastInput(
                withdrawal_id=self._req.withdrawal_id,
                tx_hash=tx_hash,
                record_status=first and self._fold_writes,
            )
            try:
                await self._step(
                    lambda inp=inp: self._local(  # type: ignore[misc]
                        ChainActivities.broadcast_transaction, inp, retry=self._after_nonce()
                    ),
                    passthrough=(
                        ErrorType.INSUFFICIENT_HOT_WALLET_FUNDS,
                        ErrorType.UNDERPRICED,
                        ErrorType.NONCE_CONFLICT,
                    ),
                )
                return
            except _Passthrough as p:
                if p.code == ErrorType.NONCE_CONFLICT:
                    moved = await self._step(
                        lambda: self._local(
                            ChainActivities.realign_nonce,
                            WithdrawalRef(withdrawal_id=self._req.withdrawal_id),
                        )
                    )
                    self._nonce = moved.new_nonce
                    self._history.append(
                        f"nonce {moved.old_nonce} was used outside the engine; moved to {moved.new_nonce}"
                    )
                    replaced = await self._sign_replacement(purpose)
                    if replaced is not None:
                        tx_hash = replaced
                        continue
                elif p.code == ErrorType.UNDERPRICED:
                    self._history.append(f"underpriced: {p.message}")
                    replaced = await self._sign_replacement(purpose)
                    if replaced is not None:
                        tx_hash = replaced
                        continue
                elif self._status != S.WAITING_FOR_FUNDS:
                    await self._set_status(
                        S.WAITING_FOR_FUNDS, (p.code, "hot wallet balance too low to broadcast")
                    )
            try:
                await workflow.wait_condition(
                    self._cancel_pending, timeout=timedelta(seconds=self._admission.funds_retry_seconds)
                )
            except TimeoutError:
                pass
            if not self._broadcast:
                self._check_cancel()

    async def _cancelled(self) -> None:
        """Cancel requested before broadcast. Without a nonce nothing reached the chain; with one,
        the nonce is filled by a 0-value self-transfer so later nonces do not stall."""
        if self._nonce is None:
            await self._set_status(S.CANCELLED, self._cancel_error())
            return
        ref = self._req.withdrawal_id
        self._cancel_sent = True
        signed = await self._step(
            lambda: self._local(
                ChainActivities.sign_transaction, SignInput(withdrawal_id=ref, purpose=TxPurpose.CANCEL)
            ),
            cancellable=False,
        )
        self._tx_hash = signed.tx_hash
        self._next_seq[TxPurpose.CANCEL] = 1
        await self._broadcast_step(signed.tx_hash, TxPurpose.CANCEL)
        self._broadcast = True
        await self._set_status(S.BROADCAST)
        assert self._admission is not None
        await self._confirm(self._admission.required_confirmations)

    # --- helpers -------------------------------------------------------------------------------

    def _after_nonce(self) -> RetryPolicy:
        """Once a nonce is allocated, a transient failure (RPC down, timeouts) is retried without limit:
        parking would leave the nonce unsent and stall every later transaction of the hot wallet.
        Definite failures (non-retryable errors) still park in NEEDS_ATTENTION."""
        return FOREVER_RETRY if self._fold_writes else STEP_RETRY

    def _check_cancel(self) -> None:
        if self._cancel is not None:
            raise _CancelRequested()

    def _cancel_error(self) -> tuple[str, str]:
        reason = (self._cancel.reason if self._cancel else None) or "cancelled by an operator"
        return ("CANCELLED", reason)

    async def _local(
        self, fn: Callable[..., Awaitable[T]], arg: object, *, retry: RetryPolicy = STEP_RETRY
    ) -> T:
        return await workflow.execute_local_activity_method(
            fn,
            arg,
            start_to_close_timeout=LOCAL_TIMEOUT,
            retry_policy=retry,  # type: ignore[arg-type]
        )

    async def _await(
        self, required: int, *, until_included_only: bool, included: Inclusion | None = None
    ) -> Inclusion:
        return await workflow.execute_activity_method(
            ChainActivities.await_transaction,
            AwaitInput(
                withdrawal_id=self._req.withdrawal_id,
                required_confirmations=required,
                until_included_only=until_included_only,
                settle=self._fold_writes and not until_included_only,
                included_block_hash=included.block_hash if included else None,
                included_block_number=included.block_number if included else 0,
            ),
            start_to_close_timeout=AWAIT_TIMEOUT,
            heartbeat_timeout=AWAIT_HEARTBEAT,
            retry_policy=AWAIT_RETRY,
        )

    async def _step(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        passthrough: tuple[str, ...] = (),
        cancellable: bool = True,
    ) -> T:
        """Run a step; when automatic handling is exhausted, park in NEEDS_ATTENTION until `retry`
        (run the step again) or `cancel` (only before broadcast)."""
        while True:
            try:
                return await call()
            except (ActivityError, ApplicationError) as err:
                # Local activity failures surface as the ApplicationError itself, regular ones wrapped.
                cause = err.cause if isinstance(err, ActivityError) else err
                code = cause.type if isinstance(cause, ApplicationError) and cause.type else "ACTIVITY_FAILED"
                message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
                if code in passthrough:
                    raise _Passthrough(code, message) from err
                resume = self._status
                await self._set_status(S.NEEDS_ATTENTION, (code, message))
                self._retry = False
                await workflow.wait_condition(
                    lambda: self._retry or (cancellable and self._cancel is not None and not self._broadcast)
                )
                if not self._retry:
                    raise _CancelRequested() from err
                self._retry = False
                await self._set_status(resume, None)

    async def _set_status(
        self, status: str, error: tuple[str, str] | None = None, *, persist: bool = True
    ) -> None:
        self._status = status
        self._error = error
        self._history.append(status)
        self._publish()
        if not persist:
            return
        await self._local(
            FundsActivities.record_status,
            StatusChange(
                withdrawal_id=self._req.withdrawal_id,
                status=status,
                error_code=error[0] if error else None,
                error_message=error[1] if error else None,
            ),
            retry=FOREVER_RETRY,
        )

    def _note(self, action: str, inp: OperatorInput | None) -> None:
        who = (inp.operator if inp else None) or "operator"
        why = f": {inp.reason}" if inp and inp.reason else ""
        self._history.append(f"{action} by {who}{why}")

    def _publish(self) -> None:
        """Search attributes and the Web UI summary follow every status change."""
        updates = [sa.WITHDRAWAL_STATUS.value_set(self._status)]
        if self._tx_hash:
            updates.append(sa.TX_HASH.value_set(self._tx_hash))
        workflow.upsert_search_attributes(updates)
        r = self._req
        lines = [
            f"**{self._status}** · {r.network} · {r.asset} · amount (base units) {r.amount}",
            f"to `{r.to_address}`",
        ]
        if self._nonce is not None:
            lines.append(f"nonce {self._nonce}")
        if self._tx_hash:
            lines.append(f"tx `{self._tx_hash}`")
        if self._error:
            lines.append(f"error `{self._error[0]}`: {self._error[1]}")
        if self._status == S.NEEDS_ATTENTION:
            lines.append("Send signal `retry` to resume or `cancel` to stop (before broadcast).")
        workflow.set_current_details("\n\n".join(lines))


class _Passthrough(Exception):
    """A step failure the caller handles itself instead of parking in NEEDS_ATTENTION."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
