"""Webhook delivery: one workflow per endpoint, `webhook-<endpoint>`.

It loops over batches (`send_due_deliveries`, a regular activity): each sends, for up to
`batch_limit` withdrawals, that withdrawal's first PENDING delivery if it is due, records the
attempts and settles them; the retry state (next attempt, retry window) is in the rows, so a retry
costs no workflow of its own. Between batches it waits for a `kick` (new deliveries were queued) or
until the next delivery is due, at most `idle_seconds` (a kick lost while it runs costs at most
that much; one lost after it ended waits for the sweeper, about `idle_seconds` + the sweep's
threshold and interval). With nothing pending and no kick for `idle_seconds` it ends; the next
kick (signal-with-start) starts it again, and the sweeper (`WebhookSweeperWorkflow`, on a
Schedule) starts it for an endpoint whose due deliveries nobody is sending. It continues as new
every `batches_per_run` batches, or earlier when Temporal suggests it.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import (
        BatchInput,
        BatchResult,
        DeliveryPolicy,
        DeliveryRunInput,
        SweepInput,
        WebhookActivities,
    )

BATCH_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
BATCH_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
MIN_WAIT_SECONDS = 0.05


def _batch_timeout(policy: DeliveryPolicy) -> timedelta:
    """Every request of a full batch timing out, wave after wave, plus the database's share."""
    waves = -(-policy.batch_limit // max(policy.concurrency, 1))
    return timedelta(seconds=waves * (policy.timeout_seconds + 5) + 60)


@workflow.defn
class WebhookDeliveryWorkflow:
    def __init__(self) -> None:
        self._kicked = False

    @workflow.signal(description="New deliveries are queued (or one was re-queued): look again.")
    def kick(self) -> None:
        self._kicked = True

    @workflow.run
    async def run(self, inp: DeliveryRunInput) -> int:
        """Send until idle; returns how many deliveries this run settled."""
        policy = inp.policy
        settled = 0
        for _ in range(max(policy.batches_per_run, 1)):
            self._kicked = False
            r: BatchResult = await workflow.execute_activity_method(
                WebhookActivities.send_due_deliveries,
                BatchInput(endpoint_id=inp.endpoint_id, limit=policy.batch_limit, policy=policy),
                start_to_close_timeout=_batch_timeout(policy),
                heartbeat_timeout=BATCH_HEARTBEAT_TIMEOUT,
                retry_policy=BATCH_RETRY,
            )
            settled += r.settled
            if r.endpoint_gone:
                return settled
            if workflow.info().is_continue_as_new_suggested():
                break
            if r.more or self._kicked:
                continue
            idle = r.next_due_in_seconds is None
            wait = policy.idle_seconds
            if r.next_due_in_seconds is not None:
                wait = min(max(r.next_due_in_seconds, MIN_WAIT_SECONDS), policy.idle_seconds)
            with contextlib.suppress(TimeoutError):  # asyncio.TimeoutError: no kick within `wait`
                await workflow.wait_condition(lambda: self._kicked, timeout=timedelta(seconds=wait))
            if idle and not self._kicked:
                return settled
        workflow.continue_as_new(inp)


@workflow.defn
class WebhookSweeperWorkflow:
    """Run by a Schedule: starts the delivery workflow of endpoints whose due deliveries wait."""

    @workflow.run
    async def run(self, inp: SweepInput) -> int:
        started: int = await workflow.execute_activity_method(
            WebhookActivities.sweep_webhooks,
            inp,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return started
