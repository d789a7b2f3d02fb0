"""The ceiling: a workflow shaped like a happy-path native withdrawal whose activities do nothing.

`WithdrawalWorkflow` (workflows/withdrawal.py) runs, on the happy path of a native withdrawal (no
approval, funds available), in this order:

    admit (local)                          the API's update-with-start waits for this one
    allocate_nonce (regular, 60 s)         ends the first workflow task, so the POST is answered here
    record_transition PROCESSING (local)   every status move is its own write (`_move`); the webhook
    sign_transaction (local)               kick of each move is inside record_transition
    broadcast_transaction (local)
    record_transition BROADCAST (local)
    await_transaction, until included (regular, waits queue, 1 h, heartbeat 20 s)
    record_transition CONFIRMING (local)
    await_transaction, until confirmed (regular, waits queue, 1 h, heartbeat 20 s)
    record_transition CONFIRMED (local)

that is 7 local and 3 regular activities, no timer. `tests/workflows/test_ceiling_in_step.py` runs the
real workflow and this one on Temporal's test server and fails when their activity sequences
(type, local or regular, task queue, timeouts, retry policy) differ, so `head` cannot drift from the workflow.

`NoopWithdrawalWorkflow` runs the same sequence of no-op activities **under the same activity type
names**, with the same timeouts and retry policies, and is started the same way (update-with-start,
the update answering once the first local activity is done), so the only difference left is the work
itself. What it does not copy: the engine's search-attribute upserts (one per status, 6 per withdrawal)
and its Web UI details, and the inputs' sizes.

Older shapes stay selectable with `--ceiling-mix` (their activity names as they were then):

- `d92e909` (the last shape with status writes folded into the activities): admit, allocate_nonce
  (regular), sign, broadcast, the two awaits (3 local, 3 regular);
- `7046ff5` (85b5d78 .. cb8bdd6, patch "answer-submit-before-nonce"): admit, a 1 ms timer, then
  allocate_nonce, sign, broadcast and record_status BROADCAST as local activities, the two awaits,
  record_status CONFIRMED (6 local, 2 regular, 1 timer);
- `5734199`: the same without the timer (6 local, 2 regular).

Lives in its own module, not `__main__`: the workflow sandbox re-imports the workflow's module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models.domain import waits_queue

LOCAL = "local"
REGULAR = "regular"  # as await_transaction: the waits queue, 1 h start-to-close, 20 s heartbeat timeout
REGULAR_SHORT = "regular_60s"  # as allocate_nonce: 60 s start-to-close, no heartbeat
TIMER = "timer"
REGULAR_KINDS = (REGULAR, REGULAR_SHORT)

# (label, kind): the label's first word is the activity type (the engine's activity name).
WITHDRAWAL_HAPPY_PATH: tuple[tuple[str, str], ...] = (
    ("admit", LOCAL),
    ("allocate_nonce", REGULAR_SHORT),
    ("record_transition PROCESSING", LOCAL),
    ("sign_transaction", LOCAL),
    ("broadcast_transaction", LOCAL),
    ("record_transition BROADCAST", LOCAL),
    ("await_transaction included", REGULAR),
    ("record_transition CONFIRMING", LOCAL),
    ("await_transaction confirmed", REGULAR),
    ("record_transition CONFIRMED", LOCAL),
)
# d92e909: status writes folded into allocate_nonce, broadcast and the two awaits.
WITHDRAWAL_HAPPY_PATH_D92E909: tuple[tuple[str, str], ...] = (
    ("admit", LOCAL),
    ("allocate_nonce", REGULAR_SHORT),
    ("sign_transaction", LOCAL),
    ("broadcast_transaction", LOCAL),
    ("await_transaction included", REGULAR),
    ("await_transaction confirmed", REGULAR),
)
# 85b5d78 .. cb8bdd6 (measured in docs/benchmarks.md as "HEAD 7046ff5"): a 1 ms timer after admit.
WITHDRAWAL_HAPPY_PATH_7046FF5: tuple[tuple[str, str], ...] = (
    ("admit", LOCAL),
    ("timer: answer the POST before the nonce", TIMER),
    ("allocate_nonce", LOCAL),
    ("sign_transaction", LOCAL),
    ("broadcast_transaction", LOCAL),
    ("record_status BROADCAST", LOCAL),
    ("await_transaction included", REGULAR),
    ("await_transaction confirmed", REGULAR),
    ("record_status CONFIRMED", LOCAL),
)
# 5734199 (measured 2026-11-28 00:00): no timer.
WITHDRAWAL_HAPPY_PATH_5734199 = tuple(s for s in WITHDRAWAL_HAPPY_PATH_7046FF5 if s[1] != TIMER)
CEILING_MIXES = {
    "head": WITHDRAWAL_HAPPY_PATH,
    "d92e909": WITHDRAWAL_HAPPY_PATH_D92E909,
    "7046ff5": WITHDRAWAL_HAPPY_PATH_7046FF5,
    "5734199": WITHDRAWAL_HAPPY_PATH_5734199,
}

# As workflows/withdrawal.py: LOCAL_TIMEOUT, FOREVER_RETRY (admit, allocate_nonce, the local steps),
# AWAIT_TIMEOUT, AWAIT_HEARTBEAT, AWAIT_RETRY (the awaits). The in-step test compares them.
LOCAL_TIMEOUT = timedelta(seconds=60)
STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
AWAIT_TIMEOUT = timedelta(hours=1)
AWAIT_HEARTBEAT = timedelta(seconds=20)
AWAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=20
)


def activity_type(label: str) -> str:
    """The activity type a step of a mix runs ("record_transition BROADCAST" -> record_transition)."""
    return label.split()[0]


def mix_input(mix: str = "head") -> NoopInput:
    steps = CEILING_MIXES[mix]
    return NoopInput(
        kinds=[kind for _, kind in steps],
        activities=["" if kind == TIMER else activity_type(label) for label, kind in steps],
    )


@dataclass(frozen=True, kw_only=True)
class NoopInput:
    kinds: list[str]  # LOCAL, REGULAR, REGULAR_SHORT or TIMER, one per step, in order
    activities: list[str]  # the activity type of each step ("" for a timer)


def _noop(name: str) -> Callable[[int], Awaitable[int]]:
    @activity.defn(name=name)
    async def noop(step: int) -> int:
        return step

    return noop


# One no-op per activity type any mix runs, registered under the engine's names.
NOOP_ACTIVITY_TYPES = sorted(
    {activity_type(label) for steps in CEILING_MIXES.values() for label, kind in steps if kind != TIMER}
)
NOOP_ACTIVITIES = [_noop(name) for name in NOOP_ACTIVITY_TYPES]


@workflow.defn(name="BenchNoopWithdrawalWorkflow")
class NoopWithdrawalWorkflow:
    @workflow.init
    def __init__(self, inp: NoopInput) -> None:
        self._admitted = False

    @workflow.update
    async def submit(self) -> bool:
        """Answers once the first activity is done, as `WithdrawalWorkflow.submit` waits for admit."""
        await workflow.wait_condition(lambda: self._admitted)
        return True

    @workflow.run
    async def run(self, inp: NoopInput) -> int:
        for step, (kind, name) in enumerate(zip(inp.kinds, inp.activities, strict=True)):
            if kind == TIMER:
                await workflow.sleep(timedelta(milliseconds=1))
            elif kind == LOCAL:
                await workflow.execute_local_activity(
                    name, step, start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=STEP_RETRY
                )
            elif kind == REGULAR_SHORT:
                await workflow.execute_activity(
                    name, step, start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=STEP_RETRY
                )
            else:
                await workflow.execute_activity(
                    name,
                    step,
                    task_queue=waits_queue(workflow.info().task_queue),  # as the engine's waits
                    start_to_close_timeout=AWAIT_TIMEOUT,
                    heartbeat_timeout=AWAIT_HEARTBEAT,
                    retry_policy=AWAIT_RETRY,
                )
            self._admitted = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        return len(inp.kinds)
