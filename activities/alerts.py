"""Alerts that reach people: raising (cheap, idempotent), the sinks (Slack, PagerDuty) and the monitor.

Raising (`Alerter`) records the cause in the `alerts` table and, when it changed (fired or resolved),
hands it to that alert's `AlertWorkflow` (workflow id `alert-<hash of the key>`, signal-with-start).
The workflow sends trigger and resolve to every configured sink, each send an activity with retries
and backoff, so a worker crash loses nothing: the row is the record, the workflow the delivery. A cause
that is already FIRING costs one indexed read and sends nothing. The monitor re-checks every cause
on a Schedule and starts the workflow of any FIRING row whose hand-over was lost.

Raising never fails the caller: a withdrawal step must not stop because an alert could not be
written (the monitor raises it on its next run). Webhook URLs and routing keys are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

import httpx
import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.rpc import ChainIdMismatch, Chains, RpcError, RpcUnavailable
from logging_setup import redact_urls
from models import alerts
from models.alerts import (
    AlertInput,
    AlertKind,
    AlertRef,
    AlertSnapshot,
    AlertSpec,
    AlertState,
    CheckReport,
    MonitorInput,
    SendAlertInput,
    Severity,
    Sink,
)
from models.amounts import format_amount, to_units
from models.db import Database
from models.lifecycle import TERMINAL, WithdrawalStatus
from models.tables import Alert, Withdrawal, utcnow
from settings import EngineConfig, Settings

log = structlog.get_logger()

ALERT_WORKFLOW = "AlertWorkflow"
CHANGED_SIGNAL = "changed"
ATTENTION_NEXT_ACTION = "retry or cancel in the admin API / Web UI"
# Failure types of `send_alert` (ApplicationError.type).
SINK_UNAVAILABLE = "ALERT_SINK_UNAVAILABLE"  # no answer, 429 or 5xx: retried with backoff
SINK_REFUSED = "ALERT_SINK_REFUSED"  # another 4xx (revoked webhook, bad routing key): not retried
SINK_TIMEOUT = 10.0
# The monitor looks at this many withdrawals per status; beyond it, it fires but resolves nothing.
MONITOR_LIMIT = 1000


def alert_workflow_id(dedup_key: str) -> str:
    return "alert-" + hashlib.sha256(dedup_key.encode()).hexdigest()[:32]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the causes ------------------------------------------------------------------------------------


def _amount(w: Withdrawal) -> str:
    return f"{format_amount(w.amount, w.decimals)} {w.asset} on {w.network}"


def _withdrawal_detail(w: Withdrawal) -> dict[str, Any]:
    return {
        "withdrawal_id": w.id,
        "network": w.network,
        "asset": w.asset,
        "amount": format_amount(w.amount, w.decimals),
        "to_address": w.to_address,
        "hot_wallet": w.hot_wallet,
        "nonce": w.nonce,
        "status": w.status,
    }


def attention_alert(w: Withdrawal) -> AlertSpec:
    reason = f"{w.error_code}: {w.error_message}" if w.error_code else "no reason recorded"
    return AlertSpec(
        dedup_key=f"needs-attention:{w.id}",
        kind=AlertKind.NEEDS_ATTENTION,
        severity=Severity.CRITICAL,
        summary=f"Withdrawal {w.id} ({_amount(w)}) needs attention: {reason}. "
        f"Next action: {ATTENTION_NEXT_ACTION}.",
        detail=_withdrawal_detail(w)
        | {"reason": reason, "next_action": ATTENTION_NEXT_ACTION, "workflow_id": f"withdrawal-{w.id}"},
    )


def overdue_alert(w: Withdrawal, after_seconds: int) -> AlertSpec:
    return AlertSpec(
        dedup_key=f"overdue:{w.id}",
        kind=AlertKind.WITHDRAWAL_OVERDUE,
        severity=Severity.WARNING,
        summary=f"Withdrawal {w.id} ({_amount(w)}) is not final {after_seconds // 60} min after it was "
        f"requested: {w.status}",
        detail=_withdrawal_detail(w)
        | {"created_at": w.created_at.isoformat() + "Z", "workflow_id": f"withdrawal-{w.id}"},
    )


def fee_cap_alert(w: Withdrawal, reason: str) -> AlertSpec:
    return AlertSpec(
        dedup_key=f"fee-cap:{w.id}",
        kind=AlertKind.FEE_CAP,
        severity=Severity.WARNING,
        summary=f"The {w.network} fee cap holds withdrawal {w.id} ({_amount(w)}): {reason}. It is signed "
        f"once fees fall below the cap (or raise max_fee_per_gas_cap_gwei)",
        detail=_withdrawal_detail(w) | {"reason": reason},
    )


_FINDING_NONCE = re.compile(r"^nonces? (\d+)")


def reconciler_alerts(network: str, hot_wallet: str, findings: Sequence[str]) -> list[AlertSpec]:
    """One alert per nonce the reconciler reported (several findings at one nonce are one cause)."""
    prefix = reconcile_prefix(network, hot_wallet)
    by_key: dict[str, list[str]] = {}
    for text in findings:
        m = _FINDING_NONCE.match(text)
        key = prefix + (f"nonce:{m[1]}" if m else f"finding:{_digest(text)}")
        by_key.setdefault(key, []).append(text)
    return [
        AlertSpec(
            dedup_key=key,
            kind=AlertKind.RECONCILER,
            severity=Severity.CRITICAL if any("outside the engine" in t for t in texts) else Severity.WARNING,
            summary=f"Nonce reconciler, {network} hot wallet {hot_wallet}: {texts[0]}",
            detail={"network": network, "hot_wallet": hot_wallet, "findings": texts},
        )
        for key, texts in by_key.items()
    ]


def reconcile_prefix(network: str, hot_wallet: str) -> str:
    return f"reconcile:{network}:{hot_wallet.lower()}:"


# --- raising -----------------------------------------------------------------------------------------


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


class Alerter:
    """Raises and resolves alerts. Without a Temporal client, or with no sink configured (the default
    dev run), alerts are recorded and logged only."""

    def __init__(
        self, db: Database, *, client: Client | None = None, task_queue: str = "", deliver: bool = False
    ) -> None:
        self.db, self.client, self.task_queue = db, client, task_queue
        self.deliver = deliver and client is not None

    async def fire(self, spec: AlertSpec) -> bool:
        """Raise a cause; True when it fired now. Already FIRING: one read, nothing sent."""
        async with self.db.read() as s:
            row = await alerts.get(s, spec.dedup_key)
        if row is not None and row.state == AlertState.FIRING:
            return False
        spec = AlertSpec(
            dedup_key=spec.dedup_key,
            kind=spec.kind,
            severity=spec.severity,
            summary=redact_urls(spec.summary),
            detail=_redacted(spec.detail),
        )
        async with self.db.transaction() as s:
            fired = await alerts.fire(s, spec)
        if fired:
            log.warning(
                "alert.fired",
                alert=True,
                dedup_key=spec.dedup_key,
                kind=spec.kind,
                severity=spec.severity,
                summary=spec.summary,
            )
            await self.dispatch(spec.dedup_key, summary=spec.summary)
        return fired

    async def resolve(self, keys: Sequence[str]) -> list[str]:
        """Resolve those of `keys` that are FIRING; the keys resolved by this call."""
        async with self.db.read() as s:
            live = await alerts.firing_keys(s, keys)
        done = []
        for key in live:
            async with self.db.transaction() as s:
                resolved = await alerts.resolve(s, key)
            if resolved:
                log.info("alert.resolved", dedup_key=key)
                done.append(key)
                await self.dispatch(key)
        return done

    async def sync(
        self, check: str, kind: AlertKind, prefix: str, current: Sequence[AlertSpec], *, complete: bool = True
    ) -> CheckReport:
        """Make the FIRING alerts of `kind` under `prefix` the `current` causes: fire the new ones and,
        when `current` is the whole truth for that scope (`complete`), resolve the rest."""
        async with self.db.read() as s:
            live = {a.dedup_key for a in await alerts.firing(s, kind=kind, prefix=prefix)}
        wanted = {spec.dedup_key: spec for spec in current}
        fired = [key for key, spec in wanted.items() if key not in live and await self.fire(spec)]
        resolved = await self.resolve([k for k in sorted(live) if k not in wanted]) if complete else []
        return CheckReport(check=check, fired=fired, resolved=resolved)

    async def dispatch(self, dedup_key: str, *, summary: str | None = None) -> None:
        """Tell the alert's workflow that its row changed (starting it if it is not running). A failure
        is logged: the monitor's sweep starts the workflow of every FIRING row that has none."""
        if not self.deliver or self.client is None:
            return
        try:
            await asyncio.wait_for(
                self.client.start_workflow(
                    ALERT_WORKFLOW,
                    AlertInput(dedup_key=dedup_key),
                    id=alert_workflow_id(dedup_key),
                    task_queue=self.task_queue,
                    start_signal=CHANGED_SIGNAL,
                    static_summary=summary[:200] if summary else None,
                ),
                timeout=10,
            )
        except Exception as e:
            log.warning("alert.dispatch.failed", dedup_key=dedup_key, error_type=type(e).__name__)

    async def _safely(self, what: str, call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except Exception as e:
            log.warning("alert.raise.failed", hook=what, error_type=type(e).__name__, error=str(e)[:200])

    # --- hooks of the withdrawal path (never raise) ---------------------------------------------

    @staticmethod
    def transition_keys(withdrawal_id: str, status: WithdrawalStatus) -> list[str]:
        """The alerts a move to `status` resolves: the fee-cap one (the withdrawal moved on), the
        NEEDS_ATTENTION one unless it enters that status, the overdue one at a final status."""
        keys = [f"fee-cap:{withdrawal_id}"]
        if status is not WithdrawalStatus.NEEDS_ATTENTION:
            keys.append(f"needs-attention:{withdrawal_id}")
        if status in TERMINAL:
            keys.append(f"overdue:{withdrawal_id}")
        return keys

    async def on_transition(
        self, withdrawal_id: str, status: WithdrawalStatus, *, firing: Sequence[str] | None = None
    ) -> None:
        """Entering NEEDS_ATTENTION raises its alert; the move resolves `transition_keys`. `firing`:
        those of them the move's own transaction found FIRING (`alerts.firing_keys`), so the common
        move, with none firing, costs no read of its own."""

        async def run() -> None:
            if status is WithdrawalStatus.NEEDS_ATTENTION:
                async with self.db.read() as s:
                    w = await s.get(Withdrawal, withdrawal_id)
                if w is not None:
                    await self.fire(attention_alert(w))
            keys = self.transition_keys(withdrawal_id, status)
            if firing is not None:
                keys = [k for k in keys if k in firing]
            if keys:
                await self.resolve(keys)

        await self._safely("transition", run)

    async def fee_cap_holding(self, w: Withdrawal, reason: str) -> None:
        await self._safely("fee_cap", lambda: self.fire(fee_cap_alert(w, reason)))

    async def reconciler_findings(self, network: str, hot_wallet: str, findings: Sequence[str]) -> None:
        """A reconciler run's findings are the truth for its wallet: new ones fire, those it no longer
        reports resolve."""
        specs = reconciler_alerts(network, hot_wallet, findings)
        prefix = reconcile_prefix(network, hot_wallet)
        await self._safely("reconciler", lambda: self.sync("reconciler", AlertKind.RECONCILER, prefix, specs))


# --- the sinks ------------------------------------------------------------------------------------


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _detail(alert: AlertSnapshot) -> dict[str, Any]:
    if not alert.detail:
        return {}
    try:
        value = json.loads(alert.detail)
    except ValueError:
        return {"detail": alert.detail}
    return value if isinstance(value, dict) else {"detail": value}


def _at(alert: AlertSnapshot) -> str:
    return alert.fired_at.isoformat(timespec="seconds") + "Z"


class SinkClient(Protocol):
    name: Sink

    def payload(self, alert: AlertSnapshot) -> dict[str, Any]: ...

    async def send(self, alert: AlertSnapshot) -> None: ...


async def _post(http: httpx.AsyncClient, sink: Sink, url: str, body: dict[str, Any]) -> None:
    """POST to a sink; failures name the sink and the HTTP status only (never its URL or key)."""
    try:
        resp = await http.post(url, json=body, timeout=SINK_TIMEOUT)
    except httpx.HTTPError as e:
        raise ApplicationError(
            f"{sink} did not answer ({type(e).__name__})",
            type=SINK_UNAVAILABLE,
            category=ApplicationErrorCategory.BENIGN,
        ) from None
    if resp.is_success:
        return
    if resp.status_code in (408, 429) or resp.status_code >= 500:
        delay = resp.headers.get("Retry-After", "")
        raise ApplicationError(
            f"{sink} answered HTTP {resp.status_code}",
            type=SINK_UNAVAILABLE,
            category=ApplicationErrorCategory.BENIGN,
            next_retry_delay=timedelta(seconds=min(int(delay), 600)) if delay.isdigit() else None,
        )
    raise ApplicationError(
        f"{sink} refused the alert: HTTP {resp.status_code}", type=SINK_REFUSED, non_retryable=True
    )


class SlackSink:
    """A Slack incoming webhook: `{"text", "blocks"}` (text is the notification's fallback)."""

    name = Sink.SLACK

    def __init__(self, webhook_url: str, http: httpx.AsyncClient) -> None:
        self._url, self._http = webhook_url, http

    def payload(self, alert: AlertSnapshot) -> dict[str, Any]:
        firing = alert.state is AlertState.FIRING
        icon = ":rotating_light:" if firing else ":white_check_mark:"
        head = f"{icon} *{alert.state}* · {alert.severity} · {alert.kind}"
        blocks: list[dict[str, Any]] = [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"{head}\n{_slack_escape(alert.summary)}"[:3000]},
            }
        ]
        detail = [(k, v) for k, v in _detail(alert).items() if v is not None]
        if detail:
            blocks.append(
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": f"*{_slack_escape(k)}*\n{_slack_escape(str(v))}"[:2000]}
                        for k, v in detail[:10]
                    ],
                }
            )
        when = f"fired {_at(alert)}"
        if alert.resolved_at is not None:
            when += f" · resolved {alert.resolved_at.isoformat(timespec='seconds')}Z"
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"`{_slack_escape(alert.dedup_key)}` · {when}"}],
            }
        )
        return {"text": f"[{alert.state}] {alert.summary}"[:3000], "blocks": blocks}

    async def send(self, alert: AlertSnapshot) -> None:
        await _post(self._http, self.name, self._url, self.payload(alert))


class PagerDutySink:
    """PagerDuty Events API v2: trigger and resolve share the alert's `dedup_key`, so PagerDuty keeps
    one incident per cause."""

    name = Sink.PAGERDUTY
    SOURCE = "withdrawal-engine"

    def __init__(self, events_url: str, routing_key: str, http: httpx.AsyncClient) -> None:
        self._url, self._routing_key, self._http = events_url, routing_key, http

    def payload(self, alert: AlertSnapshot) -> dict[str, Any]:
        detail = _detail(alert)
        network = detail.get("network")
        body: dict[str, Any] = {
            "routing_key": self._routing_key,
            "event_action": "trigger" if alert.state is AlertState.FIRING else "resolve",
            "dedup_key": alert.dedup_key,
        }
        if alert.state is AlertState.FIRING:
            body["payload"] = {
                "summary": alert.summary[:1024],
                "source": f"{self.SOURCE}/{network}" if network else self.SOURCE,
                "severity": alert.severity,
                "timestamp": _at(alert),
                "class": alert.kind,
                "component": str(network or "engine"),
                "custom_details": detail,
            }
        return body

    async def send(self, alert: AlertSnapshot) -> None:
        await _post(self._http, self.name, self._url, self.payload(alert))


def sinks_from_settings(settings: Settings, http: httpx.AsyncClient) -> dict[Sink, SinkClient]:
    sinks: dict[Sink, SinkClient] = {}
    if settings.slack_webhook_url is not None:
        sinks[Sink.SLACK] = SlackSink(settings.slack_webhook_url.get_secret_value(), http)
    if settings.pagerduty_routing_key is not None:
        sinks[Sink.PAGERDUTY] = PagerDutySink(
            settings.pagerduty_events_url, settings.pagerduty_routing_key.get_secret_value(), http
        )
    return sinks


def snapshot(row: Alert, sinks: Sequence[Sink]) -> AlertSnapshot:
    return AlertSnapshot(
        dedup_key=row.dedup_key,
        kind=row.kind,
        severity=row.severity,
        summary=row.summary,
        detail=row.detail,
        state=AlertState(row.state),
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        sinks=list(sinks),
    )


class AlertActivities:
    """What `AlertWorkflow` runs: read the row, send to one sink."""

    def __init__(self, db: Database, sinks: dict[Sink, SinkClient]) -> None:
        self.db, self.sinks = db, sinks

    @activity.defn
    async def load_alert(self, ref: AlertRef) -> AlertSnapshot | None:
        async with self.db.read() as s:
            row = await alerts.get(s, ref.dedup_key)
        return None if row is None else snapshot(row, list(self.sinks))

    @activity.defn
    async def send_alert(self, inp: SendAlertInput) -> None:
        sink = self.sinks.get(inp.sink)
        if sink is None:  # configured when the workflow looked, not on this worker: nothing to send
            log.warning("alert.sink.not_configured", sink=inp.sink, dedup_key=inp.alert.dedup_key)
            return
        await sink.send(inp.alert)
        log.info("alert.sent", sink=inp.sink, dedup_key=inp.alert.dedup_key, state=inp.alert.state)


# --- the monitor --------------------------------------------------------------------------------


class MonitorActivities:
    """The periodic checks (`AlertMonitorWorkflow`, on a Temporal Schedule): each makes the FIRING
    alerts of its kind match what it sees now. A scope it cannot check keeps its alerts as they are."""

    def __init__(
        self,
        db: Database,
        chains: Chains,
        config: EngineConfig,
        alerter: Alerter,
        *,
        pending_after_seconds: int,
        http: httpx.AsyncClient,
    ) -> None:
        self.db, self.chains, self.config, self.alerter = db, chains, config, alerter
        self.pending_after_seconds, self.http = pending_after_seconds, http

    async def _probe(self, url: str, chain_id: int, wait: float) -> str | None:
        """What is wrong with one endpoint (None: it answers with the right chain id)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        try:
            resp = await self.http.post(url, json=body, timeout=wait)
        except httpx.HTTPError as e:
            return f"no answer ({type(e).__name__})"
        if not resp.is_success:
            return f"HTTP {resp.status_code}"
        try:
            got = int(resp.json()["result"], 16)
        except (ValueError, KeyError, TypeError):
            return "no valid eth_chainId answer"
        return None if got == chain_id else f"serves chain id {got}, expected {chain_id}"

    @activity.defn
    async def check_rpc_endpoints(self, _: MonitorInput) -> CheckReport:
        fired: list[str] = []
        resolved: list[str] = []
        for network, cfg in self.config.networks.items():
            timeout = min(cfg.rpc_timeout_seconds, 5.0)
            problems = await asyncio.gather(*(self._probe(u, cfg.chain_id, timeout) for u in cfg.rpc_urls))
            bad = [(u, p) for u, p in zip(cfg.rpc_urls, problems, strict=True) if p]
            severity = Severity.CRITICAL if len(bad) == len(cfg.rpc_urls) else Severity.WARNING
            specs = [
                AlertSpec(
                    dedup_key=f"rpc:{network}:{_digest(url)}",
                    kind=AlertKind.RPC_DOWN,
                    severity=severity,
                    summary=f"RPC endpoint {redact_urls(url)} of {network} is down: {problem}"
                    + ("; no endpoint of the network answers" if severity is Severity.CRITICAL else ""),
                    detail={"network": network, "endpoint": redact_urls(url), "problem": problem},
                )
                for url, problem in bad
            ]
            r = await self.alerter.sync("rpc", AlertKind.RPC_DOWN, f"rpc:{network}:", specs)
            fired += r.fired
            resolved += r.resolved
        return CheckReport(check="rpc", fired=fired, resolved=resolved)

    async def _wallet_alerts(self, network: str) -> list[AlertSpec]:
        cfg, rpc = self.config.networks[network], self.chains[network]
        specs = []
        for wallet in cfg.hot_wallets:
            for asset, minimum in cfg.min_hot_wallet_balance.items():
                decimals = cfg.asset_decimals(asset)
                if decimals is None:
                    continue
                if asset == cfg.native_asset:
                    balance = await rpc.balance(wallet)
                else:
                    balance = await rpc.token_balance(cfg.tokens[asset].address, wallet)
                floor = to_units(minimum, decimals)
                if balance >= floor:
                    continue
                have, need = format_amount(balance, decimals), format_amount(floor, decimals)
                specs.append(
                    AlertSpec(
                        dedup_key=f"hot-wallet-low:{network}:{wallet.lower()}:{asset}",
                        kind=AlertKind.HOT_WALLET_LOW,
                        severity=Severity.WARNING,
                        summary=f"Hot wallet {wallet} on {network} holds {have} {asset}, below its minimum "
                        f"of {need} {asset}: top it up",
                        detail={
                            "network": network,
                            "hot_wallet": wallet,
                            "asset": asset,
                            "balance": have,
                            "min_balance": need,
                        },
                    )
                )
        return specs

    @activity.defn
    async def check_hot_wallets(self, _: MonitorInput) -> CheckReport:
        fired: list[str] = []
        resolved: list[str] = []
        errors: list[str] = []
        for network in self.config.networks:
            try:
                specs = await self._wallet_alerts(network)
            except (RpcUnavailable, RpcError, ChainIdMismatch) as e:
                log.warning("alert.monitor.wallets_unchecked", network=network, error_type=type(e).__name__)
                errors.append(network)
                continue
            r = await self.alerter.sync(
                "hot_wallets", AlertKind.HOT_WALLET_LOW, f"hot-wallet-low:{network}:", specs
            )
            fired += r.fired
            resolved += r.resolved
        return CheckReport(check="hot_wallets", fired=fired, resolved=resolved, errors=errors)

    @activity.defn
    async def check_withdrawals(self, _: MonitorInput) -> CheckReport:
        """Parked withdrawals (NEEDS_ATTENTION), those not final after the threshold, and fee-cap
        alerts whose withdrawal has moved on."""
        before = utcnow() - timedelta(seconds=self.pending_after_seconds)
        async with self.db.read() as s:
            parked = await alerts.withdrawals_in(s, WithdrawalStatus.NEEDS_ATTENTION, limit=MONITOR_LIMIT)
            overdue = await alerts.overdue_withdrawals(s, before, limit=MONITOR_LIMIT)
            held = await alerts.firing(s, kind=AlertKind.FEE_CAP)
            now = await alerts.withdrawal_statuses(s, [a.dedup_key.split(":", 1)[1] for a in held])
        attention = await self.alerter.sync(
            "withdrawals",
            AlertKind.NEEDS_ATTENTION,
            "needs-attention:",
            [attention_alert(w) for w in parked],
            complete=len(parked) < MONITOR_LIMIT,
        )
        late = await self.alerter.sync(
            "withdrawals",
            AlertKind.WITHDRAWAL_OVERDUE,
            "overdue:",
            [overdue_alert(w, self.pending_after_seconds) for w in overdue],
            complete=len(overdue) < MONITOR_LIMIT,
        )
        moved_on = []
        for a in held:
            status_then = json.loads(a.detail or "{}").get("status")
            if now.get(a.dedup_key.split(":", 1)[1]) != status_then:
                moved_on.append(a.dedup_key)
        resolved_caps = await self.alerter.resolve(moved_on)
        return CheckReport(
            check="withdrawals",
            fired=attention.fired + late.fired,
            resolved=attention.resolved + late.resolved + resolved_caps,
        )

    @activity.defn
    async def sweep_deliveries(self, _: MonitorInput) -> CheckReport:
        """Every FIRING alert has a running `AlertWorkflow`, and every running one whose row is no
        longer FIRING is told so (a hand-over lost in a crash between the row and the signal)."""
        alerter = self.alerter
        if not alerter.deliver or alerter.client is None:
            return CheckReport(check="deliveries")
        async with self.db.read() as s:
            live = {alert_workflow_id(a.dedup_key): a for a in await alerts.firing(s)}
        query = (
            f"WorkflowType = '{ALERT_WORKFLOW}' AND ExecutionStatus = 'Running' "
            f"AND TaskQueue = '{alerter.task_queue}'"
        )
        running = {wf.id async for wf in alerter.client.list_workflows(query)}
        started = [a.dedup_key for wid, a in live.items() if wid not in running]
        for key in started:
            await alerter.dispatch(key, summary=live[alert_workflow_id(key)].summary)
        stale = sorted(running - set(live))
        for wid in stale:
            try:
                await alerter.client.get_workflow_handle(wid).signal(CHANGED_SIGNAL)
            except Exception as e:
                log.warning("alert.sweep.signal_failed", workflow_id=wid, error_type=type(e).__name__)
        return CheckReport(check="deliveries", fired=started, resolved=stale)


class Alerting:
    """Alerting as the worker builds it: the raiser the withdrawal path uses, the sinks and the monitor."""

    def __init__(
        self, settings: Settings, config: EngineConfig, db: Database, chains: Chains, client: Client | None
    ) -> None:
        self.http = httpx.AsyncClient(follow_redirects=False)
        sinks = sinks_from_settings(settings, self.http)
        self.alerter = Alerter(db, client=client, task_queue=settings.task_queue, deliver=bool(sinks))
        self.sinks = AlertActivities(db, sinks)
        self.monitor = MonitorActivities(
            db,
            chains,
            config,
            self.alerter,
            pending_after_seconds=settings.alert_pending_after_seconds,
            http=self.http,
        )
        if not sinks:
            log.info("alert.sinks.none", detail="alerts are recorded in the alerts table and logged only")

    @property
    def activities(self) -> list[object]:
        return [
            self.sinks.load_alert,
            self.sinks.send_alert,
            self.monitor.check_rpc_endpoints,
            self.monitor.check_hot_wallets,
            self.monitor.check_withdrawals,
            self.monitor.sweep_deliveries,
        ]

    async def aclose(self) -> None:
        await self.http.aclose()
