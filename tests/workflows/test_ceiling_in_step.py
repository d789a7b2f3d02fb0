"""The benchmark's ceiling stays in step with the withdrawal workflow's happy path.

`bench.noop_workflow.NoopWithdrawalWorkflow` (mix `head`) must schedule the same activities, in the
same order, as `WithdrawalWorkflow` on the happy path of a native withdrawal: the same activity types,
local or regular, on the same task queue (the workflow's own or its waits queue), with the same
timeouts and retry policies. Both run here on Temporal's time-skipping
test server (the real workflow with the stand-in activities of test_withdrawal.py) and their
histories are compared; the committed history `tests/histories/native_ethereum_confirmed.json`
(regenerated with every change to the workflow) is compared with the mix too. The ceiling's worker
(bench/noop_worker.py) must also be configured as the engine's (worker.py `build_workers`: both
workers, their queues and limits).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WithStartWorkflowOperation, WorkflowHistory
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import worker as engine_worker
from bench.noop_worker import build_noop_workers
from bench.noop_workflow import (
    LOCAL,
    REGULAR_KINDS,
    WITHDRAWAL_HAPPY_PATH,
    NoopWithdrawalWorkflow,
    activity_type,
    mix_input,
)
from models.domain import WithdrawalStatus, waits_queue
from tests.workflows.test_withdrawal import Stand, env, scenario

__all__ = ["env"]  # the time-skipping server fixture of test_withdrawal.py, shared

HISTORY = Path(__file__).parents[1] / "histories" / "native_ethereum_confirmed.json"


@dataclass(frozen=True)
class Step:
    """One activity as the history records it."""

    activity_type: str
    kind: str  # "local" or "regular"
    queue: str = "own"  # regular: "own" (the workflow's task queue) or "waits" (its waits queue)
    start_to_close: timedelta | None = None  # regular activities only (a marker records no options)
    heartbeat: timedelta | None = None
    retry: tuple[Any, ...] | None = None


def _steps(events: list[HistoryEvent]) -> list[Step]:
    """ActivityTaskScheduled events and local-activity markers, in history order."""
    steps: list[Step] = []
    own = events[0].workflow_execution_started_event_attributes.task_queue.name
    for ev in events:
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = ev.activity_task_scheduled_event_attributes
            rp = a.retry_policy
            queue = {own: "own", waits_queue(own): "waits"}.get(a.task_queue.name, a.task_queue.name)
            steps.append(
                Step(
                    a.activity_type.name,
                    "regular",
                    queue,
                    a.start_to_close_timeout.ToTimedelta(),
                    a.heartbeat_timeout.ToTimedelta(),
                    (
                        rp.initial_interval.ToTimedelta(),
                        rp.backoff_coefficient,
                        rp.maximum_interval.ToTimedelta(),
                        rp.maximum_attempts,
                        tuple(rp.non_retryable_error_types),
                    ),
                )
            )
        elif (
            ev.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
            and ev.marker_recorded_event_attributes.marker_name == "core_local_activity"
        ):
            data = ev.marker_recorded_event_attributes.details["data"].payloads[0].data
            steps.append(Step(json.loads(data)["activity_type"], "local"))
    return steps


def _shape(steps: list[Step]) -> list[tuple[str, str]]:
    return [(s.activity_type, s.kind) for s in steps]


def _mix_shape() -> list[tuple[str, str]]:
    return [
        (activity_type(label), LOCAL if kind == LOCAL else "regular")
        for label, kind in WITHDRAWAL_HAPPY_PATH
        if kind == LOCAL or kind in REGULAR_KINDS
    ]


def _labelled(name: str) -> list[str]:
    """The second word of the labels of the mix's steps running activity `name`."""
    return [label.split()[1] for label, _ in WITHDRAWAL_HAPPY_PATH if activity_type(label) == name]


async def _ceiling_history(env: WorkflowEnvironment) -> list[HistoryEvent]:
    task_queue = f"ceiling-{uuid.uuid4()}"
    op = WithStartWorkflowOperation(
        NoopWithdrawalWorkflow.run,
        mix_input("head"),
        id=f"{task_queue}-0",
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    main_worker, wait_worker = build_noop_workers(env.client, task_queue)
    async with main_worker, wait_worker:
        assert await env.client.execute_update_with_start_workflow(
            NoopWithdrawalWorkflow.submit, start_workflow_operation=op
        )
        handle = await op.workflow_handle()
        assert await handle.result() == len(WITHDRAWAL_HAPPY_PATH)
        return list((await handle.fetch_history()).events)


async def test_the_ceiling_runs_the_happy_path_of_a_native_withdrawal(env: WorkflowEnvironment) -> None:
    async with scenario(env) as sc:
        await sc.submit()
        outcome = await sc.finish()
        engine = _steps(list((await sc.handle.fetch_history()).events))
    assert outcome.status is WithdrawalStatus.CONFIRMED
    ceiling = _steps(await _ceiling_history(env))

    # the same activities in the same order, with the same options: the whole difference is the work
    assert ceiling == engine, "bench/noop_workflow.py `head` no longer matches WithdrawalWorkflow"
    assert _shape(engine) == _mix_shape()
    # and the mix's labels say what each step is: the status of each record_transition, in order,
    # and which await waits for inclusion and which for the confirmations
    assert _labelled("record_transition") == [t.status.value for t in sc.stand.inputs("record_transition")]
    assert _labelled("await_transaction") == [
        "included" if a.until_included_only else "confirmed" for a in sc.stand.inputs("await_transaction")
    ]


def test_the_committed_native_history_runs_the_ceilings_mix() -> None:
    """The history `make histories` regenerates with every workflow change (replayed by test_replay)."""
    history = WorkflowHistory.from_json("native", HISTORY.read_text())
    steps = _steps(list(history.events))
    assert _shape(steps) == _mix_shape(), "regenerated history differs from bench/noop_workflow.py `head`"


async def test_the_ceilings_worker_is_configured_as_the_engines(env: WorkflowEnvironment) -> None:
    stand = Stand()
    engine: list[Worker] = engine_worker.build_workers(
        env.client,
        SimpleNamespace(activities=stand.activities, wait_activities=stand.activities),  # type: ignore[arg-type]
        "engine-config",
    )
    ceiling = build_noop_workers(env.client, "ceiling-config")
    mine = {"client", "task_queue", "workflows", "activities"}
    engine_config = [{k: v for k, v in w.config().items() if k not in mine} for w in engine]
    ceiling_config = [{k: v for k, v in w.config().items() if k not in mine} for w in ceiling]
    queues = [[w.config()["task_queue"] for w in ws] for ws in (engine, ceiling)]
    async with engine[0], engine[1], ceiling[0], ceiling[1]:  # all run (and are shut down, not left at exit)
        pass
    assert ceiling_config == engine_config
    assert queues == [["engine-config", "engine-config-waits"], ["ceiling-config", "ceiling-config-waits"]]
    # the limits are really set, not defaults: the short steps' slots, and the waits' own
    assert [c["max_concurrent_activities"] for c in engine_config] == [100, 2000]
