"""The operator dashboard: one static page at `/admin` (vanilla JS talking to the admin API with a bearer
token) and the effective settings it shows, read-only.

The page and its assets are files in `api/dashboard/`, served from a fixed list (no path from the request
reaches the file system) under a Content-Security-Policy that allows this origin only: no inline script or
style, no external host, no framing. The page needs no authentication; every number on it comes from
admin routes that do.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from api import schemas
from api.deps import StateDep, ViewerDep
from api.errors import NotFound
from logging_setup import redact_urls
from settings import NetworkConfig

router = APIRouter(tags=["dashboard"])

ASSETS_DIR = Path(__file__).resolve().parent.parent / "dashboard"
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _file(name: str, media_type: str) -> Response:
    return Response((ASSETS_DIR / name).read_bytes(), media_type=media_type, headers=_SECURITY_HEADERS)


@router.get("/admin", include_in_schema=False)
async def dashboard() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/admin/static/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:
        raise NotFound("no such dashboard file")
    return _file(name, media_type)


def _dec(value: Decimal | None) -> str | None:
    """A configured amount as the API writes amounts: a plain decimal string, no exponent."""
    return None if value is None else format(value.normalize(), "f")


def _network_settings(n: NetworkConfig) -> dict[str, Any]:
    return {
        "chain_id": n.chain_id,
        "native_asset": n.native_asset,
        "native_decimals": n.native_decimals,
        "required_confirmations": n.required_confirmations,
        "finality": n.finality,
        "block_time_seconds": n.block_time_seconds,
        "stuck_after_blocks": n.stuck_after_blocks,
        "fees": {
            "fee_model": n.fee_model,
            "max_fee_per_gas_cap_gwei": _dec(n.max_fee_per_gas_cap_gwei),
            "priority_fee_gwei": _dec(n.priority_fee_gwei),
            "legacy_gas_price_multiplier": _dec(n.legacy_gas_price_multiplier),
            "cancel_fee_cap_multiple": n.cancel_fee_cap_multiple,
            "gas_limit_margin": _dec(n.gas_limit_margin),
            "native_gas_limit": n.native_gas_limit,
            "native_contract_gas_limit_cap": n.native_contract_gas_limit_cap,
            "token_gas_limit_cap": n.token_gas_limit_cap,
        },
        # Provider keys live in RPC URLs: scheme, host and port only.
        "rpc_endpoints": [redact_urls(u) for u in n.rpc_urls],
        "rpc_timeout_seconds": n.rpc_timeout_seconds,
        "hot_wallets": list(n.hot_wallets),
        "tokens": {s: {"address": t.address, "decimals": t.decimals} for s, t in n.tokens.items()},
        "assets": {
            asset: {
                "decimals": n.asset_decimals(asset),
                "per_transaction": _dec(n.limits[asset].per_transaction),
                "daily_per_user": _dec(n.limits[asset].daily_per_user),
                "approval_threshold": _dec(n.limits[asset].approval_threshold),
                "four_eyes_threshold": _dec(n.limits[asset].four_eyes_threshold),
                "min_hot_wallet_balance": _dec(n.min_hot_wallet_balance.get(asset)),
            }
            for asset in n.assets
        },
        "denied_recipients": list(n.denied_recipients),
    }


@router.get(
    "/admin/settings",
    response_model=schemas.EffectiveSettings,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER}),
)
async def effective_settings(state: StateDep, _: ViewerDep) -> dict[str, Any]:
    """What the engine runs with, per network and asset (amounts as decimal strings in the asset's units).
    Built from an explicit list of fields, so a secret added to the settings later never shows here."""
    s, c = state.settings, state.config
    return {
        "env": s.env,
        "task_queue": s.task_queue,
        "temporal_namespace": s.temporal_namespace,
        "approval_timeout_seconds": c.approval_timeout_seconds,
        "funds_retry_seconds": c.funds_retry_seconds,
        "pause_poll_seconds": s.pause_poll_seconds,
        "reconcile_interval_seconds": s.reconcile_interval_seconds,
        "approval_token_ttl_seconds": s.approval_token_ttl_seconds,
        "jwt_ttl_seconds": s.jwt_ttl_seconds,
        "rate_limit_per_minute": s.rate_limit_per_minute,
        "login_attempts_per_minute": s.login_attempts_per_minute,
        "alert_pending_after_seconds": s.alert_pending_after_seconds,
        "alerts": {
            "slack": s.slack_webhook_url is not None,
            "pagerduty": s.pagerduty_routing_key is not None,
        },
        "networks": {name: _network_settings(n) for name, n in c.networks.items()},
    }
