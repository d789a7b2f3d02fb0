"""The Temporal worker: builds the dependencies once and runs the withdrawal workflow and activities.

python worker.py            # settings from WE_* environment variables / .env
"""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
)
from temporalio.worker import Worker

from activities.alerts import Alerting
from activities.approvals import ApprovalActivities
from activities.broadcast import BroadcastActivities
from activities.confirmations import ConfirmationActivities
from activities.funds import FundsActivities
from activities.lifecycle import LifecycleActivities
from activities.nonces import NonceActivities, ReconcileActivities, TemporalWorkflowProbe
from activities.rpc import Chains
from activities.signer import KeystoreSigner
from activities.transactions import TransactionActivities
from activities.webhooks import UrlGuard, WebhookActivities, WebhookKicker, ensure_sweeper_schedule
from gc_setup import freeze_startup_heap
from logging_setup import configure_logging
from models.alerts import MonitorInput
from models.db import Database
from models.domain import ReconcileInput, waits_queue
from models.views import use_config
from settings import EngineConfig, Settings
from telemetry import interceptors
from workflows.alerts import AlertMonitorWorkflow, AlertWorkflow
from workflows.reconcile import NonceReconcilerWorkflow
from workflows.webhooks import WebhookDeliveryWorkflow, WebhookSweeperWorkflow
from workflows.withdrawal import WithdrawalWorkflow

log = structlog.get_logger()


class Engine:
    """The worker's dependencies, built once; each activity class gets only what it uses."""

    def __init__(
        self, settings: Settings, config: EngineConfig, signer: KeystoreSigner, client: Client
    ) -> None:
        self.settings, self.config, self.signer = settings, config, signer
        self.db = Database(settings.db_url)
        self.chains = Chains(config.networks)
        self.alerting = Alerting(settings, config, self.db, self.chains, client)
        use_config({name: net.native_decimals for name, net in config.networks.items()})
        self.kicker = WebhookKicker(client, settings)
        self.webhooks = WebhookActivities(self.db, UrlGuard.for_env(settings.env), self.kicker)
        self.lifecycle = LifecycleActivities(self.db, alerts=self.alerting.alerter, webhooks=self.kicker)
        self.approvals = ApprovalActivities(settings.jwt_secret.get_secret_value())
        self.funds = FundsActivities(
            self.db, self.chains, config, settings.pause_poll_seconds, webhooks=self.kicker
        )
        self.nonces = NonceActivities(self.db, self.chains, config)
        self.transactions = TransactionActivities(
            self.db, self.chains, signer, config, alerts=self.alerting.alerter
        )
        self.broadcast = BroadcastActivities(self.db, self.chains)
        self.confirmations = ConfirmationActivities(self.db, self.chains, config)
        self.reconcile = ReconcileActivities(
            self.db, self.chains, signer, config, TemporalWorkflowProbe(client), alerts=self.alerting.alerter
        )

    @property
    def activities(self) -> list[object]:
        return [
            self.lifecycle.record_transition,
            self.approvals.verify,
            self.funds.admit,
            self.funds.reserve,
            self.nonces.allocate_nonce,
            self.nonces.resolve_nonce_conflict,
            self.transactions.sign_transaction,
            self.broadcast.broadcast_transaction,
            self.reconcile.reconcile_wallet,
            *self.alerting.activities,
            self.webhooks.send_due_deliveries,
            self.webhooks.sweep_webhooks,
        ]

    @property
    def wait_activities(self) -> list[object]:
        """The long waits, served on the waits queue (`models.domain.waits_queue`)."""
        return [self.confirmations.await_transaction]

    async def start(self) -> None:
        await self.chains.verify_all()
        await self.nonces.ensure_hot_wallets()

    async def aclose(self) -> None:
        await self.confirmations.aclose()
        await self.alerting.aclose()
        await self.webhooks.aclose()
        await self.chains.aclose()
        await self.db.dispose()


def worker_limits(settings: Settings) -> dict[str, Any]:
    """The worker's slots and cache (the bench's ceiling worker uses the same, bench/noop_worker.py)."""
    return {
        "max_cached_workflows": settings.worker_max_cached_workflows,
        "max_concurrent_workflow_tasks": settings.worker_max_concurrent_workflow_tasks,
        "max_concurrent_activities": settings.worker_max_concurrent_activities,
        "max_concurrent_local_activities": settings.worker_max_concurrent_local_activities,
        "graceful_shutdown_timeout": timedelta(seconds=5),
    }


def wait_worker_limits(settings: Settings) -> dict[str, Any]:
    """The waits queue's worker: activities only, as many at once as withdrawals may wait."""
    return {
        "max_concurrent_activities": settings.worker_max_concurrent_waits,
        "graceful_shutdown_timeout": timedelta(seconds=5),
    }


def build_worker(client: Client, engine: Engine, task_queue: str, settings: Settings | None = None) -> Worker:
    """The workflows and their short steps, on `task_queue`."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[
            WithdrawalWorkflow,
            NonceReconcilerWorkflow,
            AlertWorkflow,
            AlertMonitorWorkflow,
            WebhookDeliveryWorkflow,
            WebhookSweeperWorkflow,
        ],
        activities=engine.activities,  # type: ignore[arg-type]
        **worker_limits(settings or Settings()),
    )


def build_wait_worker(
    client: Client, engine: Engine, task_queue: str, settings: Settings | None = None
) -> Worker:
    """`await_transaction`, on the waits queue of `task_queue`: a withdrawal waiting for its
    transaction holds one of these slots, never one of the short steps'."""
    return Worker(
        client,
        task_queue=waits_queue(task_queue),
        activities=engine.wait_activities,  # type: ignore[arg-type]
        **wait_worker_limits(settings or Settings()),
    )


def build_workers(
    client: Client, engine: Engine, task_queue: str, settings: Settings | None = None
) -> list[Worker]:
    """Every worker one engine process runs: the workflows and short steps, and the waits."""
    settings = settings or Settings()
    return [
        build_worker(client, engine, task_queue, settings),
        build_wait_worker(client, engine, task_queue, settings),
    ]


async def ensure_reconcile_schedules(client: Client, engine: Engine, settings: Settings) -> None:
    """One Temporal Schedule per hot wallet running NonceReconcilerWorkflow (idempotent)."""
    if settings.reconcile_interval_seconds <= 0:
        return
    for network, cfg in engine.config.networks.items():
        for wallet in cfg.hot_wallets:
            sid = f"reconcile-{network}-{wallet.lower()}"
            action = ScheduleActionStartWorkflow(
                NonceReconcilerWorkflow.run,
                ReconcileInput(network=network, hot_wallet=wallet),
                id=f"reconcile-{network}-{wallet.lower()}",
                task_queue=settings.task_queue,
            )
            schedule = Schedule(
                action=action,
                spec=ScheduleSpec(
                    intervals=[
                        ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_seconds))
                    ]
                ),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            )
            try:
                await client.create_schedule(sid, schedule)
                log.info("worker.schedule.created", schedule_id=sid)
            except ScheduleAlreadyRunningError:
                pass


async def ensure_alert_schedule(client: Client, settings: Settings) -> None:
    """The Schedule running AlertMonitorWorkflow every `monitor_interval_seconds` (kept in step with
    the setting on every start)."""
    if settings.monitor_interval_seconds <= 0:
        return
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            AlertMonitorWorkflow.run, MonitorInput(), id="alert-monitor", task_queue=settings.task_queue
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.monitor_interval_seconds))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule("alert-monitor", schedule)
        log.info("worker.schedule.created", schedule_id="alert-monitor")
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle("alert-monitor").update(lambda _: ScheduleUpdate(schedule=schedule))


async def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    log.info("worker.boot", env=settings.env)
    config = settings.engine_config
    signer = await asyncio.to_thread(
        KeystoreSigner.from_dir, settings.keystore_path, settings.keystore_password.get_secret_value()
    )
    missing = [w for n in config.networks.values() for w in n.hot_wallets if not signer.has(w)]
    if missing:
        log.warning("worker.keystore.missing_keys", hot_wallets=missing)
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        interceptors=interceptors(settings.otel_exporter),
    )
    engine = Engine(settings, config, signer, client)
    log.info("worker.starting", task_queue=settings.task_queue, hot_wallets=len(signer.addresses))
    await engine.start()
    workers = build_workers(client, engine, settings.task_queue, settings)
    await ensure_reconcile_schedules(client, engine, settings)
    await ensure_sweeper_schedule(client, settings)
    await ensure_alert_schedule(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    freeze_startup_heap()
    log.info("worker.started", task_queue=settings.task_queue, networks=list(config.networks))
    runs = [asyncio.create_task(w.run()) for w in workers]
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, *runs], return_when=asyncio.FIRST_COMPLETED)
    # A worker that stopped on its own, with an error or without, takes the process down (a supervisor
    # restarts it): a process serving one of its two queues only would look alive and leave work waiting.
    failed = [r for r in runs if r.done()]
    for r in failed:
        error = None if r.cancelled() else r.exception()
        log.error("worker.failed", error_type=type(error).__name__ if error else None, error=str(error or ""))
    try:
        # Activities are idempotent: whatever is cut short here is retried by another worker.
        await asyncio.wait_for(asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True), 15)
    except TimeoutError:
        log.warning("worker.shutdown.timeout")
    for run in runs:
        run.cancel()
    stopping.cancel()
    await engine.aclose()
    log.info("worker.stopped")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
