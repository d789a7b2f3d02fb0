"""Figures for operators (DESIGN §6.1): per day, per network, per status. Amounts are decimal strings
in the asset's units; fees in the network's native coin."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query

from api import schemas
from api.deps import StateDep, ViewerDep
from api.routes.admin_common import iso, parse_time
from api.routes.admin_system import network_heads
from models import pauses, stats
from models.amounts import format_amount
from models.lifecycle import WithdrawalStatus
from models.tables import utcnow

router = APIRouter(tags=["admin"])

_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.QUERY})


@router.get("/admin/stats/daily", response_model=schemas.DailyStats, responses=_ERRORS)
async def stats_daily(
    state: StateDep, _: ViewerDep, days: int = Query(7, ge=1, le=366, description="today and the days before")
) -> dict[str, Any]:
    """Per UTC day of the request, network and asset, oldest day first: `count` requests, `confirmed`
    of them, `volume` (what the confirmed ones paid out) and `fees` (gas of every mined transaction)."""
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=days - 1)
    async with state.db.read() as s:
        figures = await stats.daily(s, since)
    out = []
    for f in figures:
        net = state.config.network(f.network)
        native_decimals = net.native_decimals if net else 18
        out.append(
            {
                "date": f.day.isoformat(),
                "network": f.network,
                "asset": f.asset,
                "count": f.count,
                "confirmed": f.confirmed,
                "volume": format_amount(f.volume, f.decimals),
                "fees": format_amount(f.fees, native_decimals),
            }
        )
    return {"days": out}


@router.get(
    "/admin/stats/network",
    response_model=schemas.NetworkStats,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER}),
)
async def stats_network(state: StateDep, _: ViewerDep) -> dict[str, Any]:
    """Per configured network: withdrawals by status, what was confirmed in the last 24 hours per asset,
    the chain's head block (null when no endpoint answers) and whether a pause of the network (or of
    everything) holds it."""
    since = utcnow() - timedelta(hours=24)
    async with state.db.read() as s:
        counts = await stats.by_network_and_status(s)
        volume = await stats.confirmed_since(s, since)
        active = await pauses.active(s)
    heads = await network_heads(state)
    networks: dict[str, Any] = {}
    for name, cfg in state.config.networks.items():
        by_status = {st.value: 0 for st in WithdrawalStatus} | counts.get(name, {})
        volume_24h = {}
        for asset in cfg.assets:
            units, decimals = volume.get((name, asset), (0, cfg.asset_decimals(asset) or 0))
            volume_24h[asset] = format_amount(units, decimals)
        networks[name] = {
            "by_status": by_status,
            "volume_24h": volume_24h,
            "head": heads.get(name),
            "paused": any(p.hot_wallet is None and p.network in (None, name) for p in active),
            "paused_hot_wallets": sorted(
                {p.hot_wallet for p in active if p.hot_wallet and p.network in (None, name)}
                & set(cfg.hot_wallets)
            ),
        }
    return {"networks": networks}


@router.get("/admin/stats/status", response_model=schemas.StatusStats, responses=_ERRORS)
async def stats_status(
    state: StateDep,
    _: ViewerDep,
    since: str | None = Query(None, max_length=40, description="ISO 8601: only withdrawals created since"),
) -> dict[str, Any]:
    """Withdrawals per status over every client (every status present)."""
    start = parse_time(since, "since")
    async with state.db.read() as s:
        by_status = await stats.by_status(s, since=start)
    return {"by_status": by_status, "total": sum(by_status.values()), "since": iso(start)}
