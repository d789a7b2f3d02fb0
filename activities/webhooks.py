"""Webhook delivery: the URL guard, the signed HTTP send, the delivery log, the batches of an
endpoint's delivery workflow (workflows/webhooks.py) and the kicks that start or wake it.

A delivery row is the outbox (written with the status change, models/webhooks.py) and holds its own
retry state: `next_attempt_at` (pushed back after each failed attempt, exponential backoff) and
`window_start` (the retry window runs from when it was queued or re-queued). One workflow per
endpoint, `webhook-<endpoint>`, runs `send_due_deliveries` in a loop: each batch sends, for up to
`batch_limit` withdrawals, that withdrawal's first pending delivery if it is due, so the order per
withdrawal holds and a withdrawal that keeps failing holds up nobody else. Signing follows Standard
Webhooks: `webhook-id` (the event id), `webhook-timestamp` (Unix seconds) and
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
from dataclasses import dataclass
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

from models import webhooks
from models.db import Database
from models.tables import WebhookDelivery, WebhookEndpoint, utcnow
from settings import Settings

log = structlog.get_logger()

DELIVERY_WORKFLOW = "WebhookDeliveryWorkflow"
SWEEPER_WORKFLOW = "WebhookSweeperWorkflow"
KICK_SIGNAL = "kick"
USER_AGENT = "withdrawal-engine-webhooks/1"
EXCERPT_CHARS = 200
MAX_URL_LENGTH = 2000
KICK_COALESCE_SECONDS = 0.05  # kicks to one endpoint within this window become one signal
KICK_CONCURRENCY = 32  # signals in flight at once when a flush wakes many endpoints
HEARTBEAT_EVERY_SECONDS = 5.0  # a batch that runs longer heartbeats (a short one never needs to)
WINDOW_CLOSED = "not delivered within the retry window"
ENDPOINT_GONE = "the endpoint was deleted"


# --- inputs (one per workflow, signal and activity) ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DeliveryPolicy:
    timeout_seconds: float = 10.0
    retry_initial_seconds: float = 5.0
    retry_max_interval_seconds: float = 3600.0
    window_seconds: int = 3 * 86_400
    batch_limit: int = 100  # withdrawals per batch (one delivery each)
    concurrency: int = 16  # requests in flight per batch
    idle_seconds: float = 60.0  # the workflow ends after this long with nothing pending and no kick
    batches_per_run: int = 200  # then the workflow continues as new (a short history)

    def backoff(self, failures: int) -> timedelta:
        """The wait after the `failures`-th failed attempt in the window: initial, doubling, capped."""
        seconds = self.retry_initial_seconds * 2.0 ** min(max(failures - 1, 0), 64)
        return timedelta(seconds=min(seconds, self.retry_max_interval_seconds))


@dataclass(frozen=True, kw_only=True)
class DeliveryRunInput:
    endpoint_id: str
    policy: DeliveryPolicy


@dataclass(frozen=True, kw_only=True)
class BatchInput:
    endpoint_id: str
    limit: int
    policy: DeliveryPolicy


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    settled: int  # deliveries that ended in this batch (DELIVERED or FAILED)
    attempted: int  # HTTP attempts made
    more: bool  # another delivery is due now
    next_due_in_seconds: float | None  # when the next one is due (None: nothing pending)
    endpoint_gone: bool = False  # the endpoint was deleted: its pending deliveries were FAILED


@dataclass(frozen=True, kw_only=True)
class SweepInput:
    older_than_seconds: int


def delivery_workflow_id(endpoint_id: str) -> str:
    return f"webhook-{endpoint_id}"


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
    """Signal-with-start of `kick` to the delivery workflow of each endpoint that got deliveries.

    Kicks coalesce: the endpoints kicked within `coalesce_seconds` are signalled once each, by a flush
    task started with the first of them (a status change returns without waiting for Temporal). A
    kick that fails, or is still unsent when the process dies, is logged or lost and left to the
    workflow's own polling and to the sweeper, which find the pending rows. `aclose` flushes."""

    def __init__(
        self, client: Client, settings: Settings, *, coalesce_seconds: float = KICK_COALESCE_SECONDS
    ) -> None:
        self.client, self.task_queue, self.policy = client, settings.task_queue, policy_of(settings)
        self.coalesce_seconds = coalesce_seconds
        self._due: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # set by aclose: flush without waiting

    def _input(self, endpoint_id: str) -> DeliveryRunInput:
        return DeliveryRunInput(endpoint_id=endpoint_id, policy=self.policy)

    async def kick(self, pairs: Iterable[tuple[str, str]], *, redelivered: str | None = None) -> int:
        """Wake the delivery workflows of these (endpoint, withdrawal) pairs' endpoints; returns how
        many endpoints. Never raises, except for a redelivery (`redelivered`: a delivery id), which
        is signalled at once and raises if it could not be (the API answers 503: retry)."""
        endpoints = sorted({endpoint_id for endpoint_id, _ in pairs})
        if redelivered is not None:
            for endpoint_id in endpoints:
                await self._signal(endpoint_id)
            return len(endpoints)
        if not endpoints:
            return 0
        self._due.update(endpoints)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="webhook-kicks")
        return len(endpoints)

    async def _flush_soon(self) -> None:
        while self._due:
            if not self._now.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.coalesce_seconds):
                        await self._now.wait()
            await self.flush()

    async def flush(self) -> int:
        """Signal every endpoint kicked since the last flush; returns how many were signalled."""
        due, self._due = sorted(self._due), set()
        if not due:
            return 0
        limit = asyncio.Semaphore(KICK_CONCURRENCY)

        async def one(endpoint_id: str) -> bool:
            async with limit:
                try:
                    await self._signal(endpoint_id)
                except Exception as e:  # the workflow's polling or the sweeper catches up
                    log.warning("webhook.kick.failed", endpoint_id=endpoint_id, error_type=type(e).__name__)
                    return False
                return True

        return sum(await asyncio.gather(*(one(e) for e in due)))

    async def _signal(self, endpoint_id: str) -> None:
        await self.client.start_workflow(
            DELIVERY_WORKFLOW,
            self._input(endpoint_id),
            id=delivery_workflow_id(endpoint_id),
            task_queue=self.task_queue,
            start_signal=KICK_SIGNAL,
            static_summary=f"webhooks of endpoint {endpoint_id}",
            rpc_timeout=timedelta(seconds=5),
        )

    async def ensure_running(self, endpoint_ids: Iterable[str]) -> int:
        """Start the workflow of each endpoint that has none running (a running one is left alone:
        it polls its rows). Returns how many endpoints were checked without an error."""
        ok = 0
        for endpoint_id in endpoint_ids:
            try:
                await self.client.start_workflow(
                    DELIVERY_WORKFLOW,
                    self._input(endpoint_id),
                    id=delivery_workflow_id(endpoint_id),
                    task_queue=self.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    static_summary=f"webhooks of endpoint {endpoint_id}",
                    rpc_timeout=timedelta(seconds=5),
                )
                ok += 1
            except Exception as e:  # the next sweep tries again
                log.warning(
                    "webhook.sweep.start_failed", endpoint_id=endpoint_id, error_type=type(e).__name__
                )
        return ok

    async def aclose(self) -> None:
        """Send the kicks still waiting for their window (worker shutdown)."""
        self._now.set()
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout=10)
        await self.flush()


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


def _excerpt(text: str) -> str:
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean[:EXCERPT_CHARS]


@dataclass(frozen=True, kw_only=True)
class _Due:
    """What a batch needs of a delivery row, read before the sends (no ORM row outlives its session)."""

    id: str
    event_id: str
    withdrawal_id: str
    payload: str
    window_start: datetime

    @classmethod
    def of(cls, d: WebhookDelivery) -> _Due:
        return cls(
            id=d.id,
            event_id=d.event_id,
            withdrawal_id=d.withdrawal_id,
            payload=d.payload,
            window_start=d.window_start,
        )


@dataclass(frozen=True, kw_only=True)
class _Target:
    id: str
    url: str
    secret: str


@dataclass(frozen=True, kw_only=True)
class _Attempt:
    """One HTTP attempt's outcome. `error` None: a 2xx. `refused`: the URL guard refused the URL
    (final); a host that does not resolve is an ordinary failed attempt (retried)."""

    at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.error is None


def _live(endpoint: WebhookEndpoint | None) -> _Target | None:
    if endpoint is None or not endpoint.active or endpoint.deleted_at is not None:
        return None
    return _Target(id=endpoint.id, url=endpoint.url, secret=endpoint.secret)


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
        """Close the HTTP client and flush the kicker's waiting kicks (the worker's shutdown)."""
        if self.kicker is not None:
            await self.kicker.aclose()
        await self.http.aclose()

    async def _attempt(
        self, target: _Target, event_id: str, payload: str, timeout_seconds: float
    ) -> _Attempt:
        """One signed POST of the body. A 2xx within the timeout is a delivery; any other answer (a
        redirect too), a timeout or a connection error is a failed attempt; a URL the guard refuses
        is refused (nothing is sent)."""
        started, at = time.monotonic(), utcnow()
        try:
            async with asyncio.timeout(timeout_seconds):  # a slow resolver counts against the attempt
                pinned = await self.guard.resolve(target.url)
        except UrlRefused as e:
            return _Attempt(at=at, status_code=None, latency_ms=0, error=str(e), refused=True)
        except HostUnresolved as e:
            return _Attempt(at=at, status_code=None, latency_ms=0, error=str(e))  # retried
        except TimeoutError:
            return _Attempt(at=at, status_code=None, latency_ms=0, error="host not resolved in time")
        timestamp = int(time.time())
        signature = Webhook(target.secret).sign(event_id, datetime.fromtimestamp(timestamp, UTC), payload)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": pinned.host_header,
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        extensions = {"sni_hostname": pinned.sni_hostname} if pinned.sni_hostname else {}
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self.http.stream(
                    "POST", pinned.url, content=payload.encode(), headers=headers, extensions=extensions
                ) as r:
                    status_code = r.status_code
                    if not 200 <= status_code < 300:
                        body = await self._head_of(r)
                        error = f"HTTP {status_code}" + (f": {body}" if body else "")
        except TimeoutError:
            status_code, error = None, f"no answer within {timeout_seconds:g} s"
        except httpx.HTTPError as e:
            status_code, error = None, _excerpt(f"{type(e).__name__}: {e}")
        latency_ms = int((time.monotonic() - started) * 1000)
        return _Attempt(at=at, status_code=status_code, latency_ms=latency_ms, error=error)

    @staticmethod
    async def _head_of(r: httpx.Response) -> str:
        """The first characters of a refusal's body, for the log; the rest is never read."""
        head = b""
        async for chunk in r.aiter_bytes():
            head += chunk
            if len(head) >= EXCERPT_CHARS * 4:
                break
        return _excerpt(head.decode("utf-8", errors="replace").strip())

    @staticmethod
    def _logged(target: _Target, d: _Due, a: _Attempt, number: int) -> None:
        log.info(
            "webhook.attempt",
            delivery_id=d.id,
            event_id=d.event_id,
            endpoint_id=target.id,
            withdrawal_id=d.withdrawal_id,
            attempt=number,
            status_code=a.status_code,
            latency_ms=a.latency_ms,
            delivered=a.delivered,
        )

    @activity.defn
    async def send_due_deliveries(self, inp: BatchInput) -> BatchResult:
        """One batch of an endpoint: per withdrawal its first PENDING delivery, if due, for up to
        `inp.limit` withdrawals, sent `policy.concurrency` at a time; then, in one transaction, each
        attempt recorded and its delivery settled: a 2xx DELIVERED, a refused URL FAILED, another
        failure due again after the backoff, or FAILED if that falls after its retry window. A
        delivery whose window closed while it waited its turn is FAILED unsent; the next of its
        withdrawal is then due. Safe to retry: what a previous try settled is not picked again
        (at worst an attempt whose answer was not recorded is sent again, under the same id)."""
        policy = inp.policy
        now = utcnow()
        async with self.db.read() as s:
            target = _live(await webhooks.get_endpoint(s, inp.endpoint_id))
            heads = (
                [_Due.of(d) for d in await webhooks.due_heads(s, inp.endpoint_id, now, inp.limit)]
                if target is not None
                else []
            )
        if target is None:
            async with self.db.transaction() as s:
                failed = await webhooks.fail_pending_of_endpoint(s, inp.endpoint_id, ENDPOINT_GONE)
            if failed:
                log.warning("webhook.endpoint.gone", endpoint_id=inp.endpoint_id, failed=failed)
            return BatchResult(
                settled=failed, attempted=0, more=False, next_due_in_seconds=None, endpoint_gone=True
            )
        window = timedelta(seconds=policy.window_seconds)
        expired = [d for d in heads if now >= d.window_start + window]
        sending = [d for d in heads if now < d.window_start + window]
        slots = asyncio.Semaphore(policy.concurrency)

        async def send(d: _Due) -> _Attempt:
            async with slots:
                try:
                    return await self._attempt(target, d.event_id, d.payload, policy.timeout_seconds)
                except Exception as e:  # one delivery's surprise is its failed attempt, not the batch's
                    log.warning("webhook.attempt.error", delivery_id=d.id, error_type=type(e).__name__)
                    return _Attempt(at=utcnow(), status_code=None, latency_ms=0, error=type(e).__name__)

        outcomes: list[_Attempt] = []
        if sending:
            beating = asyncio.create_task(_heartbeat_every(HEARTBEAT_EVERY_SECONDS))
            try:
                outcomes = await asyncio.gather(*(send(d) for d in sending))
            finally:
                beating.cancel()
        settled = 0
        failed_now: list[tuple[_Due, str]] = []
        async with self.db.transaction() as s:
            for d in expired:
                if await webhooks.mark_failed(s, d.id, WINDOW_CLOSED, window_start=d.window_start):
                    settled += 1
                    failed_now.append((d, WINDOW_CLOSED))
            for d, a in zip(sending, outcomes, strict=True):
                number = await webhooks.record_attempt(
                    s,
                    d.id,
                    at=a.at,
                    status_code=a.status_code,
                    latency_ms=a.latency_ms,
                    error=a.error,
                    delivered=a.delivered,
                )
                self._logged(target, d, a, number)
                if a.delivered:
                    settled += 1
                    continue
                if a.refused and a.error is not None:
                    reason = a.error
                else:
                    failures = await webhooks.failures_since(s, d.id, d.window_start)
                    retry_at = utcnow() + policy.backoff(failures)
                    if retry_at < d.window_start + window:
                        await webhooks.schedule_retry(s, d.id, retry_at, window_start=d.window_start)
                        continue
                    reason = WINDOW_CLOSED
                if await webhooks.mark_failed(s, d.id, reason, window_start=d.window_start):
                    settled += 1
                    failed_now.append((d, reason))
            next_due = await webhooks.next_due_at(s, inp.endpoint_id)
        for d, why in failed_now:
            log.warning(
                "webhook.delivery.failed",
                delivery_id=d.id,
                event_id=d.event_id,
                endpoint_id=target.id,
                withdrawal_id=d.withdrawal_id,
                reason=why,
            )
        after = utcnow()
        due_in = None if next_due is None else max((next_due - after).total_seconds(), 0.0)
        return BatchResult(
            settled=settled,
            attempted=len(sending),
            more=due_in is not None and due_in <= 0.0,
            next_due_in_seconds=due_in,
        )

    @activity.defn
    async def sweep_webhooks(self, inp: SweepInput) -> int:
        """Start the delivery workflow of every endpoint where a withdrawal's next delivery has been
        due for longer than `older_than_seconds` (USE_EXISTING: a running one is left alone): a kick
        lost to a crash loses nothing. Returns how many endpoints were checked."""
        if self.kicker is None:
            return 0
        due_before = utcnow() - timedelta(seconds=inp.older_than_seconds)
        async with self.db.read() as s:
            endpoints = await webhooks.stale_endpoints(s, due_before)
        if not endpoints:
            return 0
        started = await self.kicker.ensure_running(endpoints)
        log.info("webhook.sweep", endpoints=len(endpoints), started=started)
        return started


async def _heartbeat_every(seconds: float) -> None:
    """Heartbeat while a batch runs (a worker that dies mid-batch is noticed by the heartbeat
    timeout, not the whole start-to-close)."""
    if not activity.in_activity():
        return
    while True:
        await asyncio.sleep(seconds)
        activity.heartbeat()
