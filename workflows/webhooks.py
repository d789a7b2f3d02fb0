"""Webhook delivery: one workflow per (endpoint, withdrawal), `webhook-<endpoint>-<withdrawal>`.

It sends the withdrawal's pending deliveries to the endpoint strictly in order: the next one is read
(a local activity: a short database read) only once the previous one is DELIVERED or FAILED. Each
send is an activity retried with exponential backoff until the delivery's retry window (3 days from
when it was queued) closes; then it is FAILED and the next one goes. The workflow ends when nothing
is pending; the next status change starts it again (signal-with-start of `kick`), and the sweeper
(`WebhookSweeperWorkflow`, on a Schedule) starts it for deliveries whose kick was lost. A `kick` that
arrives while it runs makes it look again before it ends, so nothing committed is left behind.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.webhooks import (
        WEBHOOK_URL_REFUSED,
        DeliveryRunInput,
        FailInput,
        KickInput,
        PendingDelivery,
        SendInput,
        SweepInput,
        WebhookActivities,
    )

DB_TIMEOUT = timedelta(seconds=30)
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# Continue as new after this many deliveries, so a long-lived withdrawal keeps a short history.
DELIVERIES_PER_RUN = 100


@workflow.defn
class WebhookDeliveryWorkflow:
    def __init__(self) -> None:
        self._kicked = False
        self._requeued: dict[str, datetime] = {}

    @workflow.signal(description="New deliveries are queued (or one was re-queued): look again.")
    def kick(self, inp: KickInput | None = None) -> None:
        self._kicked = True
        if inp is not None and inp.redelivered:
            self._requeued[inp.redelivered] = workflow.now()

    @workflow.run
    async def run(self, inp: DeliveryRunInput) -> int:
        """Send until nothing is pending; returns how many deliveries this run settled."""
        self._requeued.update(inp.requeued)
        settled = 0
        while True:
            self._kicked = False
            nxt: PendingDelivery | None = await workflow.execute_local_activity_method(
                WebhookActivities.next_pending_delivery,
                inp.target,
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )
            if nxt is None:
                if self._kicked:
                    continue
                return settled
            await self._deliver(inp, nxt)
            settled += 1
            if settled >= DELIVERIES_PER_RUN or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    DeliveryRunInput(
                        target=inp.target,
                        policy=inp.policy,
                        requeued=dict(self._requeued),
                    )
                )

    async def _deliver(self, inp: DeliveryRunInput, d: PendingDelivery) -> None:
        policy = inp.policy
        start = max(d.created_at, self._requeued.get(d.delivery_id, d.created_at))
        remaining = start + timedelta(seconds=policy.window_seconds) - workflow.now()
        reason = "not delivered within the retry window"
        if remaining > timedelta(0):
            try:
                await workflow.execute_activity_method(
                    WebhookActivities.send_delivery,
                    SendInput(delivery_id=d.delivery_id, timeout_seconds=policy.timeout_seconds),
                    start_to_close_timeout=timedelta(seconds=policy.timeout_seconds + 10),
                    schedule_to_close_timeout=remaining,
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=policy.retry_initial_seconds),
                        backoff_coefficient=2.0,
                        maximum_interval=timedelta(seconds=policy.retry_max_interval_seconds),
                        non_retryable_error_types=[WEBHOOK_URL_REFUSED],
                    ),
                )
                self._requeued.pop(d.delivery_id, None)
                return
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type == WEBHOOK_URL_REFUSED:
                    reason = cause.message
                workflow.logger.warning("webhook delivery given up: %s (%s)", d.event_id, reason)
        await workflow.execute_local_activity_method(
            WebhookActivities.fail_delivery,
            FailInput(delivery_id=d.delivery_id, reason=reason),
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
        )
        self._requeued.pop(d.delivery_id, None)


@workflow.defn
class WebhookSweeperWorkflow:
    """Run by a Schedule: starts the delivery workflow of deliveries pending too long."""

    @workflow.run
    async def run(self, inp: SweepInput) -> int:
        started: int = await workflow.execute_activity_method(
            WebhookActivities.sweep_webhooks,
            inp,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return started
