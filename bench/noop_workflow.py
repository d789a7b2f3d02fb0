"""The ceiling: a workflow shaped like a happy-path native withdrawal whose activities do nothing.

`WithdrawalWorkflow` (workflows/withdrawal.py) on the happy path of a native withdrawal (no approval,
funds available) runs, in this order:

    admit (local)                       the API's update-with-start waits for this one
    a 1 ms timer                        ends the workflow task, so the POST is answered here
                                        (`workflow.patched("answer-submit-before-nonce")`, since 85b5d78)
    allocate_nonce (local)              also writes PROCESSING (`_set_status(..., persist=False)`)
    sign_transaction (local)
    broadcast_transaction (local)
    record_status BROADCAST (local)
    await_transaction, until included (regular)    also writes CONFIRMING (persist=False)
    await_transaction, until confirmed (regular)
    record_status CONFIRMED (local)

that is 6 local and 2 regular activities and one timer (`WithdrawalWorkflow.run`, `_process`,
`_confirm`). Before 85b5d78 there was no timer: the POST waited for the whole first workflow task,
up to record_status BROADCAST (`--ceiling-mix 5734199` runs that older shape).
`NoopWithdrawalWorkflow` runs the same sequence of no-op activities, is started the same way
(update-with-start, the update answering once the first local activity is done) and uses the same
timeouts, so the only difference left is the work itself.

Lives in its own module, not `__main__`: the workflow sandbox re-imports the workflow's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

LOCAL = "local"
REGULAR = "regular"
TIMER = "timer"

WITHDRAWAL_HAPPY_PATH: tuple[tuple[str, str], ...] = (
    ("admit", LOCAL),
    ("timer: answer the POST before the nonce", TIMER),
    ("allocate_nonce", LOCAL),  # PROCESSING is written by the activity itself
    ("sign_transaction", LOCAL),
    ("broadcast_transaction", LOCAL),
    ("record_status BROADCAST", LOCAL),
    ("await_transaction included", REGULAR),  # CONFIRMING is written by the activity itself
    ("await_transaction confirmed", REGULAR),
    ("record_status CONFIRMED", LOCAL),
)
# The same path before 85b5d78 (measured in docs/benchmarks.md, 2026-11-27/28): no timer.
WITHDRAWAL_HAPPY_PATH_5734199 = tuple(step for step in WITHDRAWAL_HAPPY_PATH if step[1] != TIMER)
CEILING_MIXES = {"head": WITHDRAWAL_HAPPY_PATH, "5734199": WITHDRAWAL_HAPPY_PATH_5734199}

LOCAL_TIMEOUT = timedelta(seconds=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10))


@dataclass(frozen=True, kw_only=True)
class NoopInput:
    kinds: list[str]  # LOCAL, REGULAR or TIMER, one per step, in order


@activity.defn
async def noop(step: int) -> int:
    return step


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
        for step, kind in enumerate(inp.kinds):
            if kind == TIMER:
                await workflow.sleep(timedelta(milliseconds=1))
            elif kind == LOCAL:
                await workflow.execute_local_activity(
                    noop, step, start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=RETRY
                )
            else:
                await workflow.execute_activity(
                    noop,
                    step,
                    start_to_close_timeout=timedelta(hours=1),
                    heartbeat_timeout=timedelta(seconds=20),
                    retry_policy=RETRY,
                )
            self._admitted = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        return len(inp.kinds)
