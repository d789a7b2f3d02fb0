"""AlertWorkflow: one per cause, delivers its alert to the sinks; AlertMonitorWorkflow: the periodic
checks that raise and resolve alerts (run by a Temporal Schedule, see worker.py).

An `AlertWorkflow` (id `alert-<hash of the dedup key>`) is started or signalled (`changed`) whenever
its row fires or resolves. It reads the row and, when the row's state is not what the sinks were last
told, sends trigger or resolve to each sink (one activity per sink, retried with backoff, so a sink
that is down delays only itself and a retry never resends to the other). It ends once the sinks know
the alert is resolved; a cause that fires again starts a new run under the same id.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.alerts import AlertActivities, MonitorActivities
    from models.alerts import (
        AlertInput,
        AlertRef,
        AlertSnapshot,
        AlertState,
        CheckReport,
        MonitorInput,
        SendAlertInput,
        Sink,
    )

LOAD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
# A sink that is down is retried for a day (backoff up to 5 minutes), then given up on and logged.
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["ALERT_SINK_REFUSED"],
)
SEND_GIVE_UP = timedelta(days=1)
CHECK_TIMEOUT = timedelta(minutes=2)


@workflow.defn(name="AlertWorkflow")
class AlertWorkflow:
    def __init__(self) -> None:
        self._changed = True  # the first look is always due

    @workflow.signal(
        name="changed",
        description="The alert's row fired or resolved: deliver its state to the sinks. No input.",
    )
    def changed(self) -> None:
        self._changed = True

    @workflow.run
    async def run(self, inp: AlertInput) -> AlertState | None:
        delivered = inp.delivered
        while True:
            await workflow.wait_condition(lambda: self._changed)
            self._changed = False
            alert: AlertSnapshot | None = await workflow.execute_activity_method(
                AlertActivities.load_alert,
                AlertRef(dedup_key=inp.dedup_key),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=LOAD_RETRY,
            )
            if alert is None:
                workflow.logger.warning("alert row %s is gone", inp.dedup_key)
                return delivered
            # A cause that fired and cleared before anything was sent is not announced after the fact.
            if alert.state != delivered and not (delivered is None and alert.state is AlertState.RESOLVED):
                await asyncio.gather(*(self._send(sink, alert) for sink in alert.sinks))
                workflow.set_current_details(f"**{alert.state}** · {alert.severity}\n\n{alert.summary}")
            delivered = alert.state
            if delivered is AlertState.RESOLVED and not self._changed:
                return delivered
            if workflow.info().is_continue_as_new_suggested() and not self._changed:
                workflow.continue_as_new(AlertInput(dedup_key=inp.dedup_key, delivered=delivered))

    async def _send(self, sink: Sink, alert: AlertSnapshot) -> None:
        try:
            await workflow.execute_activity_method(
                AlertActivities.send_alert,
                SendAlertInput(sink=sink, alert=alert),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=SEND_GIVE_UP,
                retry_policy=SEND_RETRY,
            )
        except ActivityError as e:
            workflow.logger.error(
                "alert %s (%s) not delivered to %s: %s", alert.dedup_key, alert.state, sink, e.cause
            )


@workflow.defn(name="AlertMonitorWorkflow")
class AlertMonitorWorkflow:
    """One round of the health checks; each check fails on its own (the others still run)."""

    @workflow.run
    async def run(self, inp: MonitorInput) -> list[CheckReport]:
        checks = (
            MonitorActivities.check_rpc_endpoints,
            MonitorActivities.check_hot_wallets,
            MonitorActivities.check_withdrawals,
            MonitorActivities.sweep_deliveries,
        )
        results = await asyncio.gather(
            *(
                workflow.execute_activity_method(
                    check,
                    inp,
                    start_to_close_timeout=CHECK_TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=2),
                )
                for check in checks
            ),
            return_exceptions=True,
        )
        reports: list[CheckReport] = []
        for check, result in zip(checks, results, strict=True):
            if isinstance(result, Exception):
                workflow.logger.warning("alert check %s failed: %s", check.__name__, result)
                reports.append(CheckReport(check=check.__name__, errors=[str(result)[:200]]))
            elif isinstance(result, BaseException):
                raise result
            else:
                reports.append(result)
        changed = [
            f"- {r.check}: fired {r.fired}, resolved {r.resolved}" for r in reports if r.fired or r.resolved
        ]
        if changed:
            workflow.set_current_details("\n".join(changed))
        return reports
