"""Client routes (API key): request a withdrawal, read it, see the queue."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response

from api import withdrawals as svc
from api.deps import IdempotencyKeyDep, ReaderDep, StateDep, WriterDep
from api.errors import NotFound
from models import repo
from models.lifecycle import TERMINAL

router = APIRouter(tags=["withdrawals"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "MISSING_IDEMPOTENCY_KEY"},
    401: {"description": "UNAUTHORIZED"},
    403: {"description": "FORBIDDEN"},
    409: {"description": "IDEMPOTENCY_KEY_REUSED"},
    422: {
        "description": "INVALID_ADDRESS, INVALID_AMOUNT, UNSUPPORTED_NETWORK, UNSUPPORTED_ASSET, "
        "LIMIT_EXCEEDED, VALIDATION_ERROR"
    },
    429: {"description": "RATE_LIMITED (see Retry-After)"},
    503: {"description": "SERVICE_UNAVAILABLE (see Retry-After)"},
}


@router.post(
    "/withdrawal/request",
    status_code=201,
    response_model=svc.WithdrawalOut,
    responses={
        200: {"description": "replay of the same Idempotency-Key and body", "model": svc.WithdrawalOut},
        **_ERRORS,
    },
)
async def request_withdrawal(
    body: svc.WithdrawalBody, client: WriterDep, key: IdempotencyKeyDep, state: StateDep, response: Response
) -> dict[str, Any]:
    """Start a withdrawal. Answers once limits are checked and hot-wallet funds are reserved."""
    status, view = await svc.submit(state, client, key, body)
    response.status_code = status
    return view


@router.get("/withdrawal/status/{withdrawal_id}", response_model=svc.WithdrawalOut, responses=_ERRORS)
async def withdrawal_status(withdrawal_id: str, client: ReaderDep, state: StateDep) -> dict[str, Any]:
    try:
        uuid.UUID(withdrawal_id)
    except ValueError as e:
        raise NotFound("withdrawal not found") from e
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id, client_id=client.id)
    if w is None:
        raise NotFound("withdrawal not found")
    return svc.withdrawal_view(w, state.config)


@router.get("/withdrawal/queue/status", responses=_ERRORS)
async def queue_status(client: ReaderDep, state: StateDep) -> dict[str, Any]:
    """This client's withdrawals: in flight, and counts by status and by network."""
    async with state.db.read() as s:
        rows = await repo.count_by_status_and_network(s, client_id=client.id)
    by_status: dict[str, int] = {}
    by_network: dict[str, dict[str, int]] = {}
    for network, status, count in rows:
        by_status[status] = by_status.get(status, 0) + count
        by_network.setdefault(network, {})[status] = count
    in_flight = sum(c for st, c in by_status.items() if st not in TERMINAL)
    return {
        "in_flight": in_flight,
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_network": by_network,
    }
