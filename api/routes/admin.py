"""Operator routes (JWT with roles VIEWER < OPERATOR < ADMIN) and login."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, StrictStr
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AdminDep, OperatorDep, StateDep, ViewerDep
from api.errors import Conflict, InvalidState, NotFound, Unauthorized
from api.security import hash_password, issue_jwt, verify_password
from api.withdrawals import withdrawal_view
from models import repo
from models.domain import ActionResult, ErrorCode, OperatorInput
from models.tables import User
from workflows.withdrawal import WithdrawalWorkflow

router = APIRouter(tags=["admin"])


class LoginBody(BaseModel):
    username: StrictStr = Field(min_length=1, max_length=120)
    password: StrictStr = Field(min_length=1, max_length=200)


class RegisterBody(LoginBody):
    role: Literal["ADMIN", "OPERATOR", "VIEWER"] = "VIEWER"
    password: StrictStr = Field(min_length=12, max_length=200)


class ActionBody(BaseModel):
    reason: StrictStr | None = Field(default=None, max_length=500)


@router.post("/auth/login")
async def login(body: LoginBody, state: StateDep) -> dict[str, Any]:
    async with state.db.read() as s:
        user = await repo.get_user(s, body.username)
    if user is None or not verify_password(body.password, user.password_hash):
        raise Unauthorized("invalid username or password")
    ttl = state.settings.jwt_ttl_seconds
    token = issue_jwt(user.username, user.role, state.settings.jwt_secret.get_secret_value(), ttl)
    return {"access_token": token, "token_type": "bearer", "expires_in": ttl, "role": user.role}


@router.post("/auth/register", status_code=201)
async def register(body: RegisterBody, state: StateDep, _: AdminDep) -> dict[str, Any]:
    async with state.db.transaction() as s:
        if await repo.get_user(s, body.username) is not None:
            raise Conflict("username already exists", field="username")
        await repo.create_user(
            s,
            User(
                id=str(uuid.uuid4()),
                username=body.username,
                password_hash=hash_password(body.password),
                role=body.role,
            ),
        )
    return {"username": body.username, "role": body.role}


@router.get("/admin/transactions")
async def list_transactions(
    state: StateDep,
    _: ViewerDep,
    status: str | None = None,
    network: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    async with state.db.read() as s:
        rows = await repo.list_withdrawals(s, status=status, network=network, limit=limit, offset=offset)
    return {
        "items": [withdrawal_view(w, state.config, operator=True) | {"client_id": w.client_id} for w in rows]
    }


@router.get("/admin/transactions/{withdrawal_id}")
async def transaction_detail(withdrawal_id: str, state: StateDep, _: ViewerDep) -> dict[str, Any]:
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id)
        attempts = await repo.attempts_for(s, withdrawal_id) if w else []
        reservations = await repo.reservations_for(s, withdrawal_id) if w else []
        events = await repo.status_events(s, withdrawal_id) if w else []
    if w is None:
        raise NotFound("withdrawal not found")
    return withdrawal_view(w, state.config, operator=True) | {
        "client_id": w.client_id,
        "hot_wallet": w.hot_wallet,
        "nonce": w.nonce,
        "workflow_id": f"withdrawal-{w.id}",
        "attempts": [
            {
                "tx_hash": a.tx_hash,
                "purpose": a.purpose,
                "nonce": a.nonce,
                "type": a.tx_type,
                "outcome": a.outcome,
                "max_fee_per_gas": a.max_fee_per_gas and str(a.max_fee_per_gas),
                "max_priority_fee_per_gas": a.max_priority_fee_per_gas and str(a.max_priority_fee_per_gas),
                "gas_price": a.gas_price and str(a.gas_price),
                "error": a.error,
            }
            for a in attempts
        ],
        "reservations": [{"asset": r.asset, "amount": str(r.amount), "state": r.state} for r in reservations],
        "history": [
            {
                "status": e.status,
                "error": {"code": e.error_code, "message": e.error_message or ""} if e.error_code else None,
                "at": e.created_at.isoformat(timespec="milliseconds") + "Z",
            }
            for e in events
        ],
    }


_ACTIONS: dict[str, Any] = {
    "retry": WithdrawalWorkflow.retry_update,
    "cancel": WithdrawalWorkflow.cancel_update,
    "approve": WithdrawalWorkflow.approve_update,
    "reject": WithdrawalWorkflow.reject_update,
}


async def _act(
    state: StateDep, withdrawal_id: str, action: str, body: ActionBody | None, who: str
) -> dict[str, Any]:
    """Send the operator action as a workflow update: 200 when the workflow accepted it, 409
    INVALID_STATE with the workflow's reason when it refused (or when its workflow has ended)."""
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id)
    if w is None:
        raise NotFound("withdrawal not found")
    client = await state.temporal.get()
    handle = client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{withdrawal_id}")
    try:
        result: ActionResult = await handle.execute_update(
            _ACTIONS[action], OperatorInput(reason=body.reason if body else None, operator=who)
        )
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError) and cause.type == ErrorCode.INVALID_STATE:
            raise InvalidState(cause.message) from e
        raise
    except RPCError as e:
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise InvalidState(f"cannot {action}: the withdrawal's workflow has ended ({w.status})") from e
        raise
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id)
    assert w is not None
    return {"accepted": result.accepted, "withdrawal": withdrawal_view(w, state.config, operator=True)}


@router.post("/admin/transactions/{withdrawal_id}/retry")
async def retry(
    withdrawal_id: str, state: StateDep, op: OperatorDep, body: ActionBody | None = None
) -> dict[str, Any]:
    return await _act(state, withdrawal_id, "retry", body, op.username)


@router.post("/admin/transactions/{withdrawal_id}/cancel")
async def cancel(
    withdrawal_id: str, state: StateDep, op: OperatorDep, body: ActionBody | None = None
) -> dict[str, Any]:
    return await _act(state, withdrawal_id, "cancel", body, op.username)


@router.post("/admin/transactions/{withdrawal_id}/approve")
async def approve(
    withdrawal_id: str, state: StateDep, op: OperatorDep, body: ActionBody | None = None
) -> dict[str, Any]:
    return await _act(state, withdrawal_id, "approve", body, op.username)


@router.post("/admin/transactions/{withdrawal_id}/reject")
async def reject(
    withdrawal_id: str, state: StateDep, op: OperatorDep, body: ActionBody | None = None
) -> dict[str, Any]:
    return await _act(state, withdrawal_id, "reject", body, op.username)


@router.get("/admin/stats/status")
async def stats_status(state: StateDep, _: ViewerDep) -> dict[str, Any]:
    async with state.db.read() as s:
        rows = await repo.count_by_status_and_network(s)
    out: dict[str, dict[str, int]] = {}
    for network, status, count in rows:
        out.setdefault(status, {})[network] = count
    return {"by_status": out}
