"""Client routes (API key): request a withdrawal, read it, see the queue."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Response

from api import schemas
from api import withdrawals as svc
from api.deps import IdempotencyKeyDep, ReaderDep, StateDep, WriterDep
from api.errors import NotFound
from models import repo
from models.lifecycle import TERMINAL

router = APIRouter(tags=["withdrawals"])

_REQUEST_ERRORS = schemas.errors(
    {
        **schemas.COMMON,
        **schemas.API_KEY,
        400: "MISSING_IDEMPOTENCY_KEY: the Idempotency-Key header is missing or blank",
        409: "IDEMPOTENCY_KEY_REUSED: the key was used before with a different body",
        413: schemas.BODY[413],
        422: "INVALID_ADDRESS, INVALID_AMOUNT, UNSUPPORTED_NETWORK, UNSUPPORTED_ASSET, LIMIT_EXCEEDED "
        "(the request is refused; nothing was written), or VALIDATION_ERROR (a malformed body or an "
        "Idempotency-Key over 255 characters). `field` names the part at fault. A schema-valid body can "
        "still be refused: the asset must be one of the network's, the amount within its decimals and "
        "limits, the address a valid EIP-55 checksum (when mixed case) and not one the engine refuses",
    }
)
_READ_ERRORS = schemas.errors({**schemas.COMMON, **schemas.API_KEY})
_EXAMPLES = {
    "token": {
        "summary": "250.5 USDT on Polygon",
        "value": {
            "user_id": "user-42",
            "network": "polygon",
            "asset": "USDT",
            "to_address": "0x000000000000000000000000000000000000dEaD",
            "amount": "250.5",
            "client_reference": "payout-2026-0001",
        },
    },
    "native": {
        "summary": "0.5 ETH on Ethereum",
        "value": {
            "user_id": "user-42",
            "network": "ethereum",
            "asset": "ETH",
            "to_address": "0x000000000000000000000000000000000000dEaD",
            "amount": "0.5",
        },
    },
}


@router.post(
    "/withdrawal/request",
    status_code=201,
    response_model=schemas.Withdrawal,
    responses={
        201: {"description": "accepted: a new withdrawal"},
        200: {"description": "a replay of the same Idempotency-Key and body", "model": schemas.Withdrawal},
        **_REQUEST_ERRORS,
    },
)
async def request_withdrawal(
    body: Annotated[svc.WithdrawalBody, Body(openapi_examples=_EXAMPLES)],
    client: WriterDep,
    key: IdempotencyKeyDep,
    state: StateDep,
    response: Response,
) -> dict[str, Any]:
    """Start a withdrawal. Answers once limits are checked and hot-wallet funds are reserved."""
    status, view = await svc.submit(state, client, key, body)
    response.status_code = status
    return view


@router.get(
    "/withdrawal/status/{withdrawal_id}",
    response_model=schemas.Withdrawal,
    responses=schemas.errors(
        {**schemas.COMMON, **schemas.API_KEY, 404: "NOT_FOUND: no such withdrawal of this client"}
    ),
)
async def withdrawal_status(
    withdrawal_id: Annotated[str, Path(json_schema_extra={"format": "uuid"})],
    client: ReaderDep,
    state: StateDep,
) -> dict[str, Any]:
    try:
        uuid.UUID(withdrawal_id)
    except ValueError as e:
        raise NotFound("withdrawal not found") from e
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id, client_id=client.id)
    if w is None:
        raise NotFound("withdrawal not found")
    return svc.withdrawal_view(w, state.config)


@router.get("/withdrawal/queue/status", response_model=schemas.QueueStatus, responses=_READ_ERRORS)
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
