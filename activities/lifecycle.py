"""The workflow's status writes: one activity around `repo.transition`, the single writer."""

from __future__ import annotations

import structlog
from temporalio import activity

from activities.alerts import Alerter
from activities.failures import fail
from activities.webhooks import WebhookKicker
from models import alerts, repo
from models.db import Database
from models.domain import ErrorCode, TransitionInput
from models.lifecycle import StaleTransition
from models.webhooks import queued_in

log = structlog.get_logger()


class LifecycleActivities:
    def __init__(
        self, db: Database, *, alerts: Alerter | None = None, webhooks: WebhookKicker | None = None
    ) -> None:
        self.db = db
        self.alerts = alerts or Alerter(db)
        self.webhooks = webhooks

    @activity.defn
    async def record_transition(self, inp: TransitionInput) -> None:
        """Move the row to `inp.status` with its effects (reservation, nonce, status event) in one
        transaction. A move the row's status does not allow fails, non-retryable, and changes nothing."""
        try:
            async with self.db.transaction() as s:
                moved = await repo.transition(s, inp.withdrawal_id, inp.status, error=inp.error, seq=inp.seq)
                queued = queued_in(s)  # the (endpoint, withdrawal) pairs that got webhook deliveries
                # The alerts this move resolves, if any is FIRING: read here, not in a session of its own.
                firing = await alerts.firing_keys(s, Alerter.transition_keys(inp.withdrawal_id, inp.status))
        except StaleTransition as e:
            log.error(
                "withdrawal.transition.stale",
                withdrawal_id=inp.withdrawal_id,
                to=inp.status,
                current=e.current,
            )
            raise fail(ErrorCode.STALE_TRANSITION, str(e)) from e
        log.info(
            "withdrawal.status",
            withdrawal_id=inp.withdrawal_id,
            status=inp.status,
            error=inp.error.code if inp.error else None,
            seq=inp.seq,
            repeat=not moved,
        )
        if queued and self.webhooks is not None:
            await self.webhooks.kick(queued)  # never raises: a lost kick is found by the sweeper
        # NEEDS_ATTENTION in/out and the resolves; never raises
        await self.alerts.on_transition(inp.withdrawal_id, inp.status, firing=firing)
