"""NonceReconcilerWorkflow: one run per hot wallet, started by a Temporal Schedule (see worker.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.nonces import ReconcileActivities
    from models.domain import ReconcileInput, ReconcileReport


@workflow.defn(name="NonceReconcilerWorkflow")
class NonceReconcilerWorkflow:
    @workflow.run
    async def run(self, inp: ReconcileInput) -> ReconcileReport:
        report = await workflow.execute_activity_method(
            ReconcileActivities.reconcile_wallet,
            inp,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        if report.alerts:
            workflow.set_current_details("\n\n".join(f"- {a}" for a in report.alerts))
        return report
