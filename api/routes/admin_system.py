"""The engine's machinery as operators see it (DESIGN §6.1): Temporal task queues, what is in flight
and paused, the kill switch, and a health check of every component.

`GET /admin/health` checks each component for real (database, Temporal, Redis, every RPC endpoint,
hot-wallet balances, the reconciler's schedules), each under its own timeout, and always answers 200:
a component that is down is reported, with `"status": "degraded"`, never a 5xx. Endpoint URLs are
shown redacted (scheme, host and port), as in the logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import httpx
import structlog
from eth_utils import is_address, to_checksum_address
from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, WorkflowExecutionStatus

from api import schemas
from api.deps import AppState, OperatorDep, StateDep, ViewerDep
from api.errors import ValidationFailed
from api.routes.admin_common import audit_fields, iso
from logging_setup import redact_urls
from models import audit, pauses, repo, stats
from models.amounts import format_amount, to_units
from models.domain import waits_queue
from models.tables import Pause
from settings import NetworkConfig

log = structlog.get_logger()
router = APIRouter(tags=["admin"])

T = TypeVar("T")
CHECK_TIMEOUT = 3.0  # seconds per component check
_TASK_QUEUE_TYPES = {
    "workflow": TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    "activity": TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}


async def _within(fn: Callable[[], Awaitable[T]]) -> T:
    return await asyncio.wait_for(fn(), CHECK_TIMEOUT)


# --- pauses ---------------------------------------------------------------------------------------


class PauseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    network: StrictStr | None = Field(default=None, max_length=32)
    hot_wallet: StrictStr | None = Field(default=None, max_length=42)
    reason: StrictStr = Field(min_length=1, max_length=500)


def pause_view(p: Pause) -> dict[str, Any]:
    return {
        "id": p.id,
        "network": p.network,
        "hot_wallet": p.hot_wallet,
        "reason": p.reason,
        "paused_by": p.paused_by,
        "paused_at": iso(p.paused_at),
    }


def _scope(state: AppState, body: PauseBody) -> tuple[str | None, str | None]:
    """(network, checksummed hot wallet) of the body, each checked against the configuration."""
    network, wallet = body.network, body.hot_wallet
    if network is not None and state.config.network(network) is None:
        raise ValidationFailed("network is not a configured network", field="network")
    if wallet is not None:
        if not is_address(wallet):
            raise ValidationFailed("hot_wallet must be an address", field="hot_wallet")
        wallet = to_checksum_address(wallet)
        nets = [state.config.networks[network]] if network else list(state.config.networks.values())
        if not any(wallet in n.hot_wallets for n in nets):
            raise ValidationFailed("hot_wallet is not a configured hot wallet", field="hot_wallet")
    return network, wallet


def _target(network: str | None, wallet: str | None) -> str:
    return "pause:" + ("/".join(p for p in (network, wallet) if p) or "all")


_PAUSE_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.BODY})
_PAUSE_EXAMPLES = {
    "network": {"summary": "one network", "value": {"network": "polygon", "reason": "node upgrade"}},
    "everything": {"summary": "everything", "value": {"reason": "incident 42"}},
}
_READ_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER})


@router.post("/admin/queues/pause", response_model=schemas.PauseResult, responses=_PAUSE_ERRORS)
async def pause(
    body: Annotated[PauseBody, Body(openapi_examples=_PAUSE_EXAMPLES)], state: StateDep, op: OperatorDep
) -> dict[str, Any]:
    """Stop signing and broadcasting for everything, a network or a hot wallet (durable; requests are
    still accepted and confirmations go on). Pausing what is already paused changes nothing."""
    network, wallet = _scope(state, body)
    async with state.db.transaction() as s:
        _, created = await pauses.pause(
            s, network=network, hot_wallet=wallet, reason=body.reason, actor=op.username
        )
        await audit.record(
            s,
            action="queues.pause",
            target=_target(network, wallet),
            after={"network": network, "hot_wallet": wallet, "reason": body.reason, "created": created},
            **audit_fields(op),
        )
        active = await pauses.active(s)
    log.warning("admin.queues.paused", network=network, hot_wallet=wallet, actor=op.username, created=created)
    return {"changed": created, "paused": [pause_view(a) for a in active]}


@router.post("/admin/queues/resume", response_model=schemas.PauseResult, responses=_PAUSE_ERRORS)
async def resume(
    body: Annotated[PauseBody, Body(openapi_examples=_PAUSE_EXAMPLES)], state: StateDep, op: OperatorDep
) -> dict[str, Any]:
    """Lift exactly the pause of that scope (resuming a network does not lift a pause of everything)."""
    network, wallet = _scope(state, body)
    async with state.db.transaction() as s:
        lifted = await pauses.resume(s, network=network, hot_wallet=wallet, actor=op.username)
        await audit.record(
            s,
            action="queues.resume",
            target=_target(network, wallet),
            after={"network": network, "hot_wallet": wallet, "reason": body.reason, "lifted": lifted},
            **audit_fields(op),
        )
        active = await pauses.active(s)
    log.warning("admin.queues.resumed", network=network, hot_wallet=wallet, actor=op.username, lifted=lifted)
    return {"changed": lifted > 0, "paused": [pause_view(a) for a in active]}


# --- queues ---------------------------------------------------------------------------------------


async def _describe_queue(client: Client, namespace: str, name: str, kind: str) -> dict[str, Any]:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=namespace,
            task_queue=TaskQueue(name=name),
            task_queue_type=_TASK_QUEUE_TYPES[kind],
            report_stats=True,
        ),
        timeout=timedelta(seconds=CHECK_TIMEOUT),
    )
    backlog: int | None = None
    backlog_age: float | None = None
    if resp.HasField("stats"):
        backlog = int(resp.stats.approximate_backlog_count)
        backlog_age = resp.stats.approximate_backlog_age.ToTimedelta().total_seconds()
    return {
        "name": name,
        "type": kind,
        "pollers": [
            {
                "identity": p.identity,
                "last_access_time": iso(p.last_access_time.ToDatetime())
                if p.HasField("last_access_time")
                else None,
            }
            for p in resp.pollers
        ],
        "backlog": backlog,
        "backlog_age_s": backlog_age,
    }


@router.get(
    "/admin/queues", response_model=schemas.Queues, response_model_exclude_unset=True, responses=_READ_ERRORS
)
async def queues(state: StateDep, _: ViewerDep) -> dict[str, Any]:
    """The Temporal task queues (pollers, backlog), withdrawals in flight by status and network, and
    the active pauses. A task queue that cannot be described is listed with its error; without the
    database, `in_flight` says so and `paused` is null (unknown, not "nothing")."""
    name, namespace = state.settings.task_queue, state.settings.temporal_namespace
    # The workflows and their short steps on WE_TASK_QUEUE, the waits for transactions on its waits queue.
    described_queues = [(name, "workflow"), (name, "activity"), (waits_queue(name), "activity")]
    task_queues: list[dict[str, Any]] = []
    try:
        client = await _within(state.temporal.get)
        described = await asyncio.gather(
            *(_describe_queue(client, namespace, q, kind) for q, kind in described_queues),
            return_exceptions=True,
        )
        for (q, kind), d in zip(described_queues, described, strict=True):
            if isinstance(d, BaseException):
                task_queues.append(
                    {"name": q, "type": kind, "error": "the task queue could not be described"}
                )
            else:
                task_queues.append(d)
    except Exception:
        task_queues = [
            {"name": q, "type": kind, "error": "Temporal is unreachable"} for q, kind in described_queues
        ]
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), state.db.read() as s:
            in_flight = await stats.by_network_and_status(s, stats.IN_FLIGHT)
            active = await pauses.active(s)
    except Exception:
        log.warning("admin.queues.database_unavailable")
        return {
            "task_queues": task_queues,
            "in_flight": {"error": "the database is unreachable"},
            "paused": None,
        }
    by_status: dict[str, int] = dict.fromkeys(stats.IN_FLIGHT, 0)
    for counts in in_flight.values():
        for st, n in counts.items():
            by_status[st] += n
    return {
        "task_queues": task_queues,
        "in_flight": {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_network": {n: in_flight.get(n, {}) for n in state.config.networks},
        },
        "paused": [pause_view(p) for p in active],
    }


# --- RPC probes -----------------------------------------------------------------------------------


async def _rpc(http: httpx.AsyncClient, url: str, method: str, params: list[Any]) -> Any:
    resp = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    if resp.status_code != 200:
        raise RuntimeError(f"HTTP {resp.status_code}")
    body = resp.json()
    if not isinstance(body, dict) or body.get("error") is not None or "result" not in body:
        raise RuntimeError("JSON-RPC error")
    return body["result"]


def lag_limit_seconds(cfg: NetworkConfig) -> float:
    """A head older than this is not healthy: ten blocks, at least 30 seconds."""
    return max(30.0, 10 * cfg.block_time_seconds)


async def probe_endpoint(http: httpx.AsyncClient, cfg: NetworkConfig, url: str) -> dict[str, Any]:
    """One endpoint: its chain id, head and how old the head block is; healthy when the chain id is the
    configured one and the head is recent. Errors are fixed texts (never the URL or the node's words)."""
    out: dict[str, Any] = {"endpoint": redact_urls(url), "chain_id": None, "head": None, "lag_s": None}
    try:
        chain_id, block = await asyncio.gather(
            _rpc(http, url, "eth_chainId", []), _rpc(http, url, "eth_getBlockByNumber", ["latest", False])
        )
        out["chain_id"] = int(chain_id, 16)
        out["head"] = int(block["number"], 16)
        out["lag_s"] = round(max(0.0, time.time() - int(block["timestamp"], 16)), 1)
    except httpx.TimeoutException:
        return out | {"healthy": False, "error": "timeout"}
    except httpx.TransportError:
        return out | {"healthy": False, "error": "unreachable"}
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        text = str(e) if isinstance(e, RuntimeError) else "invalid answer"
        return out | {"healthy": False, "error": text}
    if out["chain_id"] != cfg.chain_id:
        return out | {"healthy": False, "error": f"chain id {out['chain_id']}, expected {cfg.chain_id}"}
    if out["lag_s"] > lag_limit_seconds(cfg):
        return out | {"healthy": False, "error": "head is stale"}
    return out | {"healthy": True}


def _http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(CHECK_TIMEOUT), follow_redirects=False)


async def network_heads(state: AppState) -> dict[str, int | None]:
    """Each network's head block from the first endpoint that answers with the right chain (None when
    none does)."""

    async def head(cfg: NetworkConfig, http: httpx.AsyncClient) -> int | None:
        for url in cfg.rpc_urls:
            probed = await probe_endpoint(http, cfg, url)
            if probed["chain_id"] == cfg.chain_id and probed["head"] is not None:
                return int(probed["head"])
        return None

    async with _http() as http:
        nets = list(state.config.networks.items())
        heads = await asyncio.gather(*(head(cfg, http) for _, cfg in nets))
    return {name: h for (name, _), h in zip(nets, heads, strict=True)}


# --- health ---------------------------------------------------------------------------------------


async def _check_database(state: AppState) -> str:
    try:
        await _within(state.db.ping)
        return "ok"
    except Exception:
        return "unavailable"


async def _check_temporal(state: AppState) -> str:
    try:
        client = await _within(state.temporal.get)
        await _within(
            lambda: client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=state.settings.temporal_namespace)
            )
        )
        return "ok"
    except Exception:
        return "unavailable"


async def _check_redis(state: AppState) -> str:
    if not state.settings.redis_url:
        return "not configured"
    redis: Any = state.limiter.redis
    owned = redis is None
    try:
        if owned:
            from redis.asyncio import Redis

            redis = Redis.from_url(state.settings.redis_url)
        await _within(redis.ping)
        return "ok"
    except Exception:
        return "unavailable"
    finally:
        if owned and redis is not None:
            await redis.aclose()


async def _hot_wallets(
    state: AppState, http: httpx.AsyncClient, rpc: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Native balance, what is reserved on it, the configured minimum and whether what is free is below
    it, per hot wallet. Balances come from the first healthy endpoint of the network."""
    held: dict[str, dict[tuple[str, str], int] | None] = dict.fromkeys(state.config.networks)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), state.db.read() as s:
            for network in state.config.networks:
                held[network] = await repo.held_amounts(s, network)
    except Exception:
        log.info("admin.health.reservations_unavailable")

    async def wallet(network: str, cfg: NetworkConfig, address: str) -> dict[str, Any]:
        decimals, asset = cfg.native_decimals, cfg.native_asset
        minimum = cfg.min_hot_wallet_balance.get(asset)
        reserved_map = held[network]
        reserved = None if reserved_map is None else reserved_map.get((address, asset), 0)
        out: dict[str, Any] = {
            "address": address,
            "asset": asset,
            "balance": None,
            "reserved": None if reserved is None else format_amount(reserved, decimals),
            "min_balance": None if minimum is None else _plain(minimum),
            "low": None,
        }
        urls = [u for u, p in zip(cfg.rpc_urls, rpc[network], strict=True) if p["healthy"]]
        if not urls:
            return out | {"error": "no healthy RPC endpoint"}
        try:
            balance = int(await _rpc(http, urls[0], "eth_getBalance", [address, "latest"]), 16)
        except Exception:
            return out | {"error": "balance unavailable"}
        out["balance"] = format_amount(balance, decimals)
        free = balance - (reserved or 0)
        out["low"] = minimum is not None and free < to_units(minimum, decimals)
        return out

    jobs = [
        (network, wallet(network, cfg, address))
        for network, cfg in state.config.networks.items()
        for address in cfg.hot_wallets
    ]
    results = await asyncio.gather(*(job for _, job in jobs))
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in state.config.networks}
    for (network, _), r in zip(jobs, results, strict=True):
        out[network].append(r)
    return out


def _plain(d: Decimal) -> str:
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


async def _reconciler(state: AppState) -> dict[str, Any]:
    """The last run of each hot wallet's reconcile Schedule (worker.ensure_reconcile_schedules): ok
    while each ran recently and its last run did not fail."""
    interval = state.settings.reconcile_interval_seconds
    if interval <= 0:
        return {"status": "disabled", "interval_s": interval, "schedules": []}
    stale_after = 3 * interval + 60
    try:
        client = await _within(state.temporal.get)
    except Exception:
        return {
            "status": "degraded",
            "interval_s": interval,
            "error": "Temporal is unreachable",
            "schedules": [],
        }
    now = datetime.now(UTC)

    async def one(network: str, wallet: str) -> dict[str, Any]:
        sid = f"reconcile-{network}-{wallet.lower()}"
        out: dict[str, Any] = {"id": sid, "network": network, "hot_wallet": wallet, "last_run_at": None}
        try:
            desc = await _within(client.get_schedule_handle(sid).describe)
        except Exception:
            return out | {"ok": False, "state": "missing"}
        if desc.schedule.state.paused:
            return out | {"ok": False, "state": "paused"}
        recent = sorted(desc.info.recent_actions, key=lambda a: a.started_at)
        if not recent:
            waiting = (now - desc.info.created_at).total_seconds() < stale_after
            return out | {"ok": waiting, "state": "waiting for its first run" if waiting else "never ran"}
        last = recent[-1]
        out["last_run_at"] = iso(last.started_at.astimezone(UTC).replace(tzinfo=None))
        result = None
        if isinstance(last.action, ScheduleActionExecutionStartWorkflow):
            try:
                wf = client.get_workflow_handle(
                    last.action.workflow_id, run_id=last.action.first_execution_run_id
                )
                result = (await _within(wf.describe)).status
            except Exception:
                result = None
        out["last_result"] = result.name if result is not None else None
        failed = result in (
            WorkflowExecutionStatus.FAILED,
            WorkflowExecutionStatus.TIMED_OUT,
            WorkflowExecutionStatus.TERMINATED,
        )
        stale = (now - last.started_at).total_seconds() > stale_after
        state_text = "failed" if failed else ("stale" if stale else "ok")
        return out | {"ok": not failed and not stale, "state": state_text}

    schedules = await asyncio.gather(
        *(one(n, w) for n, cfg in state.config.networks.items() for w in cfg.hot_wallets)
    )
    status = "ok" if all(s["ok"] for s in schedules) else "degraded"
    return {"status": status, "interval_s": interval, "schedules": list(schedules)}


@router.get(
    "/admin/health",
    response_model=schemas.AdminHealth,
    response_model_exclude_unset=True,
    responses=_READ_ERRORS,
)
async def admin_health(state: StateDep, _: ViewerDep) -> dict[str, Any]:
    """Every component checked now; `status` is `ok` only when all of them are."""
    async with _http() as http:
        nets = list(state.config.networks.items())

        async def endpoints(cfg: NetworkConfig) -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(probe_endpoint(http, cfg, u) for u in cfg.rpc_urls)))

        database, temporal, redis, reconciler, *probed = await asyncio.gather(
            _check_database(state),
            _check_temporal(state),
            _check_redis(state),
            _reconciler(state),
            *(endpoints(cfg) for _, cfg in nets),
        )
        rpc = {name: p for (name, _), p in zip(nets, probed, strict=True)}
        wallets = await _hot_wallets(state, http, rpc)
    healthy = (
        database == "ok"
        and temporal == "ok"
        and redis in ("ok", "not configured")
        and all(p["healthy"] for eps in rpc.values() for p in eps)
        and all(w["low"] is False for ws in wallets.values() for w in ws)
        and reconciler["status"] in ("ok", "disabled")
    )
    return {
        "status": "ok" if healthy else "degraded",
        "components": {
            "database": database,
            "temporal": temporal,
            "redis": redis,
            "rpc": rpc,
            "hot_wallets": wallets,
            "reconciler": reconciler,
        },
    }
