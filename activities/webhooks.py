"""Webhook delivery: the URL guard, the signed HTTP send, the delivery log, and the kicks that start
the delivery workflow (workflows/webhooks.py).

A delivery row is the outbox (written with the status change, models/webhooks.py). One workflow per
(endpoint, withdrawal) sends that withdrawal's pending deliveries in order; each send is one attempt
of `send_delivery`, retried by Temporal with exponential backoff for the retry window. Signing
follows Standard Webhooks: `webhook-id` (the event id), `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` keyed with the secret's
bytes (the base64 after `whsec_`). Delivery is at least once: a receiver deduplicates on
`webhook-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import structlog
from standardwebhooks.webhooks import Webhook
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from models import webhooks
from models.db import Database
from models.webhooks import DeliveryState
from settings import Settings

log = structlog.get_logger()

DELIVERY_WORKFLOW = "WebhookDeliveryWorkflow"
SWEEPER_WORKFLOW = "WebhookSweeperWorkflow"
KICK_SIGNAL = "kick"
USER_AGENT = "withdrawal-engine-webhooks/1"
EXCERPT_CHARS = 200
MAX_URL_LENGTH = 2000

# `ApplicationError.type`s of a send: NOT_ACCEPTED is retried, URL_REFUSED is final.
WEBHOOK_NOT_ACCEPTED = "WEBHOOK_NOT_ACCEPTED"
WEBHOOK_URL_REFUSED = "WEBHOOK_URL_REFUSED"


# --- inputs (one per workflow, signal and activity) ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DeliveryPolicy:
    timeout_seconds: float = 10.0
    retry_initial_seconds: float = 5.0
    retry_max_interval_seconds: float = 3600.0
    window_seconds: int = 3 * 86_400


@dataclass(frozen=True, kw_only=True)
class DeliveryTarget:
    endpoint_id: str
    withdrawal_id: str


@dataclass(frozen=True, kw_only=True)
class DeliveryRunInput:
    target: DeliveryTarget
    policy: DeliveryPolicy
    # Redelivered delivery id -> when it was re-queued (its retry window starts there).
    requeued: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class KickInput:
    redelivered: str | None = None  # a delivery re-queued by POST /webhook/deliveries/{id}/redeliver


@dataclass(frozen=True, kw_only=True)
class PendingDelivery:
    delivery_id: str
    event_id: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class SendInput:
    delivery_id: str
    timeout_seconds: float


@dataclass(frozen=True, kw_only=True)
class FailInput:
    delivery_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class SweepInput:
    older_than_seconds: int


def delivery_workflow_id(endpoint_id: str, withdrawal_id: str) -> str:
    return f"webhook-{endpoint_id}-{withdrawal_id}"


def policy_of(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        timeout_seconds=settings.webhook_timeout_seconds,
        retry_initial_seconds=settings.webhook_retry_initial_seconds,
        retry_max_interval_seconds=settings.webhook_retry_max_interval_seconds,
        window_seconds=settings.webhook_retry_window_seconds,
    )


# --- the URL guard -------------------------------------------------------------------------------


class UrlRefused(ValueError):
    """A webhook URL the engine will not call (a fixed message, safe to show the client)."""


class HostUnresolved(OSError):
    """The URL's host name did not resolve (now: a send retries, a registration is refused)."""


@dataclass(frozen=True)
class PinnedRequest:
    """Where to connect (a checked address) and what to tell the server (its name, for Host and SNI)."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None


class UrlGuard:
    """Outside dev and test: https only, and no host that resolves to a loopback, private, link-local,
    multicast, reserved or otherwise non-global address (checked at registration and again before
    every send, on every address the name resolves to). The request then goes to the address that
    was checked, so a name that resolves differently a moment later cannot redirect it."""

    def __init__(self, *, allow_private: bool, https_only: bool) -> None:
        self.allow_private, self.https_only = allow_private, https_only

    @classmethod
    def for_env(cls, env: str) -> UrlGuard:
        prod = env == "prod"
        return cls(allow_private=not prod, https_only=prod)

    def parse(self, url: str) -> httpx.URL:
        if len(url) > MAX_URL_LENGTH:
            raise UrlRefused(f"url must be at most {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as e:
            raise UrlRefused("url is not a valid absolute URL") from e
        allowed = ("https",) if self.https_only else ("https", "http")
        if parsed.scheme not in allowed:
            raise UrlRefused("url must use https" if self.https_only else "url must use http or https")
        if not parsed.host:
            raise UrlRefused("url is not a valid absolute URL")
        if parsed.userinfo:
            raise UrlRefused("url must not contain credentials")
        if parsed.fragment:
            raise UrlRefused("url must not contain a fragment")
        return parsed

    async def check_registration(self, url: str) -> str:
        """The URL as it will be called, or `UrlRefused`: where private addresses are refused, the
        host must resolve, and only to global addresses."""
        parsed = self.parse(url)
        if not self.allow_private:
            try:
                await self.resolve(url)
            except HostUnresolved as e:
                raise UrlRefused(str(e)) from e
        return str(parsed)

    async def resolve(self, url: str) -> PinnedRequest:
        """Parse, resolve and check every address; the request goes to the first one."""
        parsed = self.parse(url)
        host = parsed.host
        try:
            literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, parsed.port or 443, type=socket.SOCK_STREAM
                )
            except OSError as e:
                raise HostUnresolved("url host does not resolve") from e
            addresses = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0])) for i in infos))
            if not addresses:
                raise HostUnresolved("url host does not resolve")
        for ip in addresses:
            self._check(ip)
        default_port = 443 if parsed.scheme == "https" else 80
        host_header = host if parsed.port in (None, default_port) else f"{host}:{parsed.port}"
        if literal is not None:
            return PinnedRequest(url=parsed, host_header=host_header, sni_hostname=None)
        return PinnedRequest(
            url=parsed.copy_with(host=str(addresses[0])),
            host_header=host_header,
            sni_hostname=host if parsed.scheme == "https" else None,
        )

    def _check(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        if self.allow_private:
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
            or not ip.is_global
        ):
            raise UrlRefused("url resolves to a loopback, private or reserved address")


# --- kicks: start or wake the delivery workflows ---------------------------------------------------


class WebhookKicker:
    """Signal-with-start of the delivery workflow of each (endpoint, withdrawal) that got deliveries.
    A kick that fails is logged and left to the sweeper, which finds the pending rows."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client, self.task_queue, self.policy = client, settings.task_queue, policy_of(settings)

    def _input(self, endpoint_id: str, withdrawal_id: str) -> DeliveryRunInput:
        target = DeliveryTarget(endpoint_id=endpoint_id, withdrawal_id=withdrawal_id)
        return DeliveryRunInput(target=target, policy=self.policy)

    async def kick(self, pairs: Iterable[tuple[str, str]], *, redelivered: str | None = None) -> int:
        kicked = 0
        for endpoint_id, withdrawal_id in sorted(pairs):
            try:
                await self.client.start_workflow(
                    DELIVERY_WORKFLOW,
                    self._input(endpoint_id, withdrawal_id),
                    id=delivery_workflow_id(endpoint_id, withdrawal_id),
                    task_queue=self.task_queue,
                    start_signal=KICK_SIGNAL,
                    start_signal_args=[KickInput(redelivered=redelivered)],
                    static_summary=f"webhooks of withdrawal {withdrawal_id}",
                    rpc_timeout=timedelta(seconds=5),
                )
                kicked += 1
            except Exception as e:  # the sweeper retries
                log.warning(
                    "webhook.kick.failed",
                    endpoint_id=endpoint_id,
                    withdrawal_id=withdrawal_id,
                    error_type=type(e).__name__,
                )
                if redelivered is not None:
                    raise
        return kicked

    async def ensure_running(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Start the workflow of each pair that has none running (a running one is left alone: it
        sends everything pending before it ends)."""
        started = 0
        for endpoint_id, withdrawal_id in pairs:
            await self.client.start_workflow(
                DELIVERY_WORKFLOW,
                self._input(endpoint_id, withdrawal_id),
                id=delivery_workflow_id(endpoint_id, withdrawal_id),
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"webhooks of withdrawal {withdrawal_id}",
                rpc_timeout=timedelta(seconds=5),
            )
            started += 1
        return started


async def ensure_sweeper_schedule(client: Client, settings: Settings) -> None:
    """The Temporal Schedule that runs WebhookSweeperWorkflow on the task queue (idempotent)."""
    if settings.webhook_sweep_interval_seconds <= 0:
        return
    sid = f"webhook-sweeper-{settings.task_queue}"
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            SWEEPER_WORKFLOW,
            SweepInput(older_than_seconds=settings.webhook_sweep_after_seconds),
            id=sid,
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.webhook_sweep_interval_seconds))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(sid, schedule)
        log.info("worker.schedule.created", schedule_id=sid)


# --- the activities --------------------------------------------------------------------------------


def _aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def _excerpt(text: str) -> str:
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean[:EXCERPT_CHARS]


class WebhookActivities:
    def __init__(self, db: Database, guard: UrlGuard, kicker: WebhookKicker | None) -> None:
        self.db, self.guard, self.kicker = db, guard, kicker
        # Redirects are never followed: a receiver answers itself or the attempt fails.
        self.http = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    @activity.defn
    async def next_pending_delivery(self, target: DeliveryTarget) -> PendingDelivery | None:
        async with self.db.read() as s:
            d = await webhooks.next_pending(s, target.endpoint_id, target.withdrawal_id)
        if d is None:
            return None
        return PendingDelivery(delivery_id=d.id, event_id=d.event_id, created_at=_aware(d.created_at))

    @activity.defn
    async def send_delivery(self, inp: SendInput) -> None:
        """One signed POST of the delivery's body. A 2xx within the timeout marks it DELIVERED; any
        other answer (a redirect too), a timeout or a connection error is recorded and raised for
        Temporal to retry. A URL the guard refuses fails for good."""
        async with self.db.read() as s:
            d = await webhooks.get_delivery(s, inp.delivery_id)
            endpoint = await webhooks.get_endpoint(s, d.endpoint_id) if d is not None else None
        if d is None or d.state != DeliveryState.PENDING:
            return  # delivered meanwhile, or given up
        if endpoint is None or not endpoint.active or endpoint.deleted_at is not None:
            async with self.db.transaction() as s:
                await webhooks.mark_failed(s, d.id, "the endpoint was deleted")
            return
        started, at = time.monotonic(), datetime.now(UTC).replace(tzinfo=None)
        status_code: int | None = None
        try:
            pinned = await self.guard.resolve(endpoint.url)
        except UrlRefused as e:
            await self._record(d.id, at, None, 0, str(e), delivered=False)
            raise ApplicationError(str(e), type=WEBHOOK_URL_REFUSED, non_retryable=True) from e
        except HostUnresolved as e:
            await self._record(d.id, at, None, 0, str(e), delivered=False)
            raise ApplicationError(
                str(e), type=WEBHOOK_NOT_ACCEPTED, category=ApplicationErrorCategory.BENIGN
            ) from e
        timestamp = int(time.time())
        signature = Webhook(endpoint.secret).sign(
            d.event_id, datetime.fromtimestamp(timestamp, UTC), d.payload
        )
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": pinned.host_header,
            "webhook-id": d.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        extensions = {"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else {}
        error: str | None = None
        try:
            async with asyncio.timeout(inp.timeout_seconds):
                async with self.http.stream(
                    "POST", pinned.url, content=d.payload.encode(), headers=headers, extensions=extensions
                ) as r:
                    status_code = r.status_code
                    if not 200 <= status_code < 300:
                        body = await self._head_of(r)
                        error = f"HTTP {status_code}" + (f": {body}" if body else "")
        except TimeoutError:
            status_code, error = None, f"no answer within {inp.timeout_seconds:g} s"
        except httpx.HTTPError as e:
            status_code, error = None, _excerpt(f"{type(e).__name__}: {e}")
        latency_ms = int((time.monotonic() - started) * 1000)
        attempt = await self._record(d.id, at, status_code, latency_ms, error, delivered=error is None)
        log.info(
            "webhook.attempt",
            delivery_id=d.id,
            event_id=d.event_id,
            endpoint_id=endpoint.id,
            withdrawal_id=d.withdrawal_id,
            attempt=attempt,
            status_code=status_code,
            latency_ms=latency_ms,
            delivered=error is None,
        )
        if error is not None:
            raise ApplicationError(error, type=WEBHOOK_NOT_ACCEPTED, category=ApplicationErrorCategory.BENIGN)

    @staticmethod
    async def _head_of(r: httpx.Response) -> str:
        """The first characters of a refusal's body, for the log; the rest is never read."""
        head = b""
        async for chunk in r.aiter_bytes():
            head += chunk
            if len(head) >= EXCERPT_CHARS * 4:
                break
        return _excerpt(head.decode("utf-8", errors="replace").strip())

    async def _record(
        self,
        delivery_id: str,
        at: datetime,
        status_code: int | None,
        latency_ms: int,
        error: str | None,
        *,
        delivered: bool,
    ) -> int:
        async with self.db.transaction() as s:
            return await webhooks.record_attempt(
                s,
                delivery_id,
                at=at,
                status_code=status_code,
                latency_ms=latency_ms,
                error=error,
                delivered=delivered,
            )

    @activity.defn
    async def fail_delivery(self, inp: FailInput) -> None:
        async with self.db.transaction() as s:
            failed = await webhooks.mark_failed(s, inp.delivery_id, inp.reason)
        if failed:
            log.warning("webhook.delivery.failed", delivery_id=inp.delivery_id, reason=inp.reason)

    @activity.defn
    async def sweep_webhooks(self, inp: SweepInput) -> int:
        """Start a delivery workflow for every (endpoint, withdrawal) with deliveries pending for
        longer than `older_than_seconds` and none running: a kick lost to a crash loses nothing."""
        if self.kicker is None:
            return 0
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=inp.older_than_seconds)
        async with self.db.read() as s:
            pairs = await webhooks.stale_pending(s, cutoff)
        started = await self.kicker.ensure_running(pairs)
        if started:
            log.info("webhook.sweep", pending_pairs=len(pairs))
        return started
