from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import schemas
from api.deps import StateDep
from api.errors import error_body

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=schemas.Health,
    responses={
        503: {
            "model": schemas.HealthUnavailable,
            "description": "SERVICE_UNAVAILABLE: the database or Temporal cannot be reached",
            "headers": schemas.errors({503: ""})[503]["headers"],
        }
    },
)
async def health(state: StateDep) -> Any:
    """Liveness and readiness: 200 once the API reaches its database and Temporal (never rate limited)."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.db.ping(), timeout=3)
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unavailable"
    try:
        client = await state.temporal.get()
        await asyncio.wait_for(client.service_client.check_health(), timeout=3)
        checks["temporal"] = "ok"
    except Exception:
        checks["temporal"] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ok", **checks}
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    body = error_body("SERVICE_UNAVAILABLE", f"unavailable: {down}")
    body.update(status="unavailable", **checks)
    return JSONResponse(body, 503, headers={"Retry-After": "5"})
