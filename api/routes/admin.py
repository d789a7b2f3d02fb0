"""Operator routes on withdrawals (DESIGN §6.1): the list and detail views, the four actions, the DLQ
(withdrawals parked in NEEDS_ATTENTION) and the audit trail.

Every action is a Temporal update to the withdrawal's workflow, whose answer is the truth (accepted, or
refused with its reason); it is audited once the workflow has answered, with outcome `ok`, `refused`
or `failed` (Temporal unreachable). Approve and reject carry proof of who decided: a short-lived token
signed for this withdrawal, action, operator and role, which the workflow verifies.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities import approvals
from api import schemas
from api.deps import AdminDep, ApproverDep, AppState, Operator, OperatorDep, StateDep, ViewerDep
from api.errors import InvalidState, NotFound, ServiceUnavailable, ValidationFailed
from api.routes.admin_common import (
    LIMIT_DEFAULT,
    LIMIT_MAX,
    audit_fields,
    decode_id_cursor,
    decode_position,
    encode_position,
    iso,
    parse_time,
)
from api.withdrawals import withdrawal_view
from models import audit, repo, stats
from models.domain import ActionResult, ErrorCode, HistoryKind, OperatorInput, WithdrawalStatus
from models.stats import Position, WithdrawalFilter
from models.tables import AuditEntry, Withdrawal
from workflows.withdrawal import WithdrawalWorkflow

log = structlog.get_logger()
router = APIRouter(tags=["admin"])

Action = Literal["retry", "cancel", "approve", "reject"]
_UPDATES: dict[str, Any] = {
    "retry": WithdrawalWorkflow.retry_update,
    "cancel": WithdrawalWorkflow.cancel_update,
    "approve": WithdrawalWorkflow.approve_update,
    "reject": WithdrawalWorkflow.reject_update,
}
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_WORKFLOW_QUERY_TIMEOUT = timedelta(seconds=2)
# How long an action's answer waits for the workflow's next move, so that e.g. a cancelled PENDING
# withdrawal is answered as CANCELLED rather than as it stood when the action was accepted.
ACTION_SETTLE_SECONDS = 2.0


_LIST_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.QUERY})
_DETAIL_ERRORS = schemas.errors({**schemas.COMMON, **schemas.BEARER, 404: "NOT_FOUND: no such withdrawal"})
_ACTION_ERRORS = schemas.errors(
    {
        **schemas.COMMON,
        **schemas.BEARER,
        **schemas.BODY,
        404: "NOT_FOUND: no such withdrawal",
        409: "INVALID_STATE: the workflow refused the action in the withdrawal's current status "
        "(its reason is the message)",
    }
)
_ACTION_EXAMPLES = {
    "reason": {
        "summary": "with a reason for the audit log",
        "value": {"reason": "checked with the customer"},
    },
    "empty": {"summary": "no reason", "value": {}},
}


class ActionBody(BaseModel):
    reason: StrictStr | None = Field(default=None, max_length=500)


class ReprocessBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[StrictStr] = Field(min_length=1, max_length=100)


def _item(w: Withdrawal, state: AppState) -> dict[str, Any]:
    return withdrawal_view(w, state.config, operator=True) | {
        "client_id": w.client_id,
        "hot_wallet": w.hot_wallet,
        "nonce": w.nonce,
    }


def _filter(
    state: AppState,
    *,
    status: str | None,
    network: str | None,
    asset: str | None,
    user_id: str | None,
    client_id: str | None,
    tx_hash: str | None,
    created_from: str | None,
    created_to: str | None,
) -> WithdrawalFilter:
    """The query's filters, each checked: an unknown status, network or asset, a malformed hash or time
    is a 422 naming the parameter, never an empty page that looks like an answer."""
    statuses: tuple[str, ...] = ()
    if status is not None:
        statuses = tuple(p.strip() for p in status.split(",") if p.strip())
        known = {s.value for s in WithdrawalStatus}
        if not statuses or any(p not in known for p in statuses):
            raise ValidationFailed(
                "status must be one or more (comma-separated) of " + ", ".join(sorted(known)), field="status"
            )
    if network is not None and state.config.network(network) is None:
        raise ValidationFailed("network is not a configured network", field="network")
    if asset is not None:
        nets = [state.config.networks[network]] if network else list(state.config.networks.values())
        if not any(asset in n.assets for n in nets):
            raise ValidationFailed("asset is not an asset of the network(s)", field="asset")
    if tx_hash is not None:
        if not _TX_HASH.fullmatch(tx_hash):
            raise ValidationFailed("tx_hash must be 0x and 64 hex digits", field="tx_hash")
        tx_hash = tx_hash.lower()
    start, end = parse_time(created_from, "created_from"), parse_time(created_to, "created_to")
    if start is not None and end is not None and start >= end:
        raise ValidationFailed("created_from must be before created_to", field="created_to")
    return WithdrawalFilter(
        statuses=statuses,
        network=network,
        asset=asset,
        user_id=user_id,
        client_id=client_id,
        tx_hash=tx_hash,
        created_from=start,
        created_to=end,
    )


async def _page(
    state: AppState, f: WithdrawalFilter, cursor: str | None, limit: int
) -> tuple[list[Withdrawal], str | None, int]:
    after = decode_position(cursor)
    async with state.db.read() as s:
        rows = await stats.withdrawals_page(s, f, after=after, limit=limit + 1)
        total = await stats.count_withdrawals(s, f)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_position(Position(rows[-1].created_at, rows[-1].id)) if more and rows else None
    return rows, next_cursor, total


@router.get("/admin/transactions", response_model=schemas.TransactionPage, responses=_LIST_ERRORS)
async def list_transactions(
    state: StateDep,
    _: ViewerDep,
    status: str | None = Query(None, max_length=300, description="one status, or several comma-separated"),
    network: str | None = Query(None, max_length=32),
    asset: str | None = Query(None, max_length=32),
    user_id: str | None = Query(None, min_length=1, max_length=255),
    client_id: str | None = Query(None, min_length=1, max_length=36),
    tx_hash: str | None = Query(None, max_length=66, description="the withdrawal's or any attempt's hash"),
    created_from: str | None = Query(
        None, max_length=40, description="ISO 8601, inclusive (UTC if no offset)"
    ),
    created_to: str | None = Query(None, max_length=40, description="ISO 8601, exclusive"),
    cursor: str | None = Query(None, max_length=200),
    limit: int = Query(LIMIT_DEFAULT, ge=1, le=LIMIT_MAX),
) -> dict[str, Any]:
    """Withdrawals, newest first; `next_cursor` is passed back as `cursor` for the next page."""
    f = _filter(
        state,
        status=status,
        network=network,
        asset=asset,
        user_id=user_id,
        client_id=client_id,
        tx_hash=tx_hash,
        created_from=created_from,
        created_to=created_to,
    )
    rows, next_cursor, total = await _page(state, f, cursor, limit)
    return {"items": [_item(w, state) for w in rows], "next_cursor": next_cursor, "total": total}


def temporal_url(state: AppState, withdrawal_id: str) -> str:
    """The workflow's page in the Temporal Web UI (it opens the latest run of the id)."""
    base = state.settings.temporal_ui_url.rstrip("/")
    ns = quote(state.settings.temporal_namespace, safe="")
    return f"{base}/namespaces/{ns}/workflows/{quote(f'withdrawal-{withdrawal_id}', safe='')}"


def _audit_history(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        after = audit.decoded(e.after) or {}
        out.append(
            {
                "kind": "action",
                "action": e.action.removeprefix("withdrawal.").removeprefix("dlq."),
                "actor": e.actor,
                "role": e.role,
                "outcome": e.outcome,
                "reason": after.get("reason") if isinstance(after, dict) else None,
                "source": "admin-api",
                "source_ip": e.source_ip,
                "at": iso(e.at),
            }
        )
    return out


_WORKFLOW_KINDS = {
    HistoryKind.RETRY: "retry",
    HistoryKind.CANCEL: "cancel",
    HistoryKind.APPROVE: "approve",
    HistoryKind.REJECT: "reject",
}


async def _workflow_actions(state: AppState, withdrawal_id: str) -> list[dict[str, Any]]:
    """Operator actions the workflow recorded (also those sent from the Web UI or the CLI, and refused
    signals); empty when the workflow cannot be asked now."""
    try:
        client = await state.temporal.get()
        handle = client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{withdrawal_id}")
        wf_state = await handle.query(WithdrawalWorkflow.status, rpc_timeout=_WORKFLOW_QUERY_TIMEOUT)
    except Exception as e:
        log.info("admin.detail.query_failed", withdrawal_id=withdrawal_id, error_type=type(e).__name__)
        return []
    out = []
    for h in wf_state.history:
        if h.kind in _WORKFLOW_KINDS:
            action, outcome = _WORKFLOW_KINDS[h.kind], "ok"
        elif h.kind is HistoryKind.REFUSED and h.action is not None:
            action, outcome = _WORKFLOW_KINDS.get(h.action, str(h.action).lower()), "refused"
        else:
            continue
        at = h.at.replace(tzinfo=None) if h.at.tzinfo else h.at
        out.append(
            {
                "kind": "action",
                "action": action,
                "actor": h.actor,
                "role": None,
                "outcome": outcome,
                "reason": h.reason,
                "source": "workflow",
                "source_ip": None,
                "at": iso(at),
            }
        )
    return out


def _merge_history(
    events: list[dict[str, Any]], audited: list[dict[str, Any]], recorded: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Status changes and operator actions in time order. An action sent through this API appears in
    both the audit log and the workflow's history: the audit entry (with role and source IP) stays."""
    unmatched = [a for a in audited if a["outcome"] == "ok"]
    extra = []
    for r in recorded:
        twin = next((a for a in unmatched if a["actor"] == r["actor"] and a["action"] == r["action"]), None)
        if twin is None:
            extra.append(r)
        else:
            unmatched.remove(twin)
    return sorted(events + audited + extra, key=lambda e: e["at"] or "")


@router.get(
    "/admin/transactions/{withdrawal_id}", response_model=schemas.TransactionDetail, responses=_DETAIL_ERRORS
)
async def transaction_detail(withdrawal_id: str, state: StateDep, _: ViewerDep) -> dict[str, Any]:
    """The withdrawal with its attempts, reservations, history and Web UI link."""
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id)
        if w is None:
            raise NotFound("withdrawal not found")
        attempts = await repo.attempts_for(s, withdrawal_id)
        reservations = await repo.reservations_for(s, withdrawal_id)
        events = await repo.status_events(s, withdrawal_id)
        audited = await audit.for_targets(s, [withdrawal_id])
    status_history = [
        {
            "kind": "status",
            "status": e.status,
            "error": {"code": e.error_code, "message": e.error_message or ""} if e.error_code else None,
            "at": iso(e.created_at),
        }
        for e in events
    ]
    recorded = await _workflow_actions(state, withdrawal_id)
    return _item(w, state) | {
        "workflow_id": f"withdrawal-{w.id}",
        "temporal_url": temporal_url(state, w.id),
        "attempts": [
            {
                "tx_hash": a.tx_hash,
                "purpose": a.purpose,
                "nonce": a.nonce,
                "type": a.tx_type,
                "outcome": a.outcome,
                "gas_limit": a.gas_limit,
                "max_fee_per_gas": None if a.max_fee_per_gas is None else str(a.max_fee_per_gas),
                "max_priority_fee_per_gas": (
                    None if a.max_priority_fee_per_gas is None else str(a.max_priority_fee_per_gas)
                ),
                "gas_price": None if a.gas_price is None else str(a.gas_price),
                "error": a.error,
                "created_at": iso(a.created_at),
            }
            for a in attempts
        ],
        "reservations": [{"asset": r.asset, "amount": str(r.amount), "state": r.state} for r in reservations],
        "history": _merge_history(status_history, _audit_history(audited), recorded),
    }


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _update(state: AppState, w: Withdrawal, action: str, inp: OperatorInput) -> ActionResult:
    """Send the update; `_Refused` with the workflow's reason when it refuses or has ended."""
    client = await state.temporal.get()
    handle = client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{w.id}")
    try:
        result: ActionResult = await handle.execute_update(_UPDATES[action], inp)
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError):
            raise _Refused(cause.message) from e
        raise
    except RPCError as e:
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            raise _Refused(f"cannot {action}: the withdrawal's workflow has ended ({w.status})") from e
        raise
    return result


async def _act(
    state: AppState,
    op: Operator,
    withdrawal_id: str,
    action: Action,
    reason: str | None,
    *,
    audit_action: str | None = None,
    settle: float = 0.0,
) -> tuple[Withdrawal, ActionResult]:
    """One operator action, audited after the workflow answered. Raises NotFound, `_Refused`, or
    ServiceUnavailable when Temporal cannot be reached. The row returned is read once the workflow
    has made its next move after the action, or after `settle` seconds if it has not (a cancellation
    whose transaction must first be replaced, a first of two approvals)."""
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id)
    if w is None:
        raise NotFound("withdrawal not found")
    token = None
    if action in ("approve", "reject"):
        token = approvals.issue(
            state.settings.jwt_secret.get_secret_value(),
            withdrawal_id=w.id,
            action=action,
            operator=op.username,
            role=op.role,
            ttl_seconds=state.settings.approval_token_ttl_seconds,
        )
    inp = OperatorInput(reason=reason, operator=op.username, token=token)
    name = audit_action or f"withdrawal.{action}"
    before = {"status": w.status}
    try:
        result = await _update(state, w, action, inp)
    except _Refused as refused:
        await _audit(state, op, name, w.id, before, {"reason": reason, "refusal": refused.reason}, "refused")
        raise
    except Exception as e:
        log.warning("admin.action.failed", action=action, withdrawal_id=w.id, error_type=type(e).__name__)
        await _audit(state, op, name, w.id, before, {"reason": reason, "error": type(e).__name__}, "failed")
        raise ServiceUnavailable(
            "the workflow service is unreachable; retry later", headers={"Retry-After": "5"}
        ) from e
    await _audit(state, op, name, w.id, before, {"reason": reason, "status": result.status}, "ok")
    deadline = time.monotonic() + settle
    while True:
        async with state.db.read() as s:
            fresh = await repo.get_withdrawal(s, withdrawal_id)
        if fresh is None or fresh.status_seq > w.status_seq or time.monotonic() >= deadline:
            return fresh or w, result
        await asyncio.sleep(0.05)


async def _audit(
    state: AppState,
    op: Operator,
    action: str,
    target: str,
    before: dict[str, Any],
    after: dict[str, Any],
    outcome: str,
) -> None:
    async with state.db.transaction() as s:
        await audit.record(
            s, action=action, target=target, before=before, after=after, outcome=outcome, **audit_fields(op)
        )


async def _answer(
    state: AppState, op: Operator, withdrawal_id: str, action: Action, body: ActionBody | None
) -> dict[str, Any]:
    try:
        w, result = await _act(
            state, op, withdrawal_id, action, body.reason if body else None, settle=ACTION_SETTLE_SECONDS
        )
    except _Refused as refused:
        raise InvalidState(refused.reason) from refused
    return {"accepted": result.accepted, "withdrawal": _item(w, state)}


@router.post(
    "/admin/transactions/{withdrawal_id}/retry", response_model=schemas.ActionResult, responses=_ACTION_ERRORS
)
async def retry(
    withdrawal_id: str,
    state: StateDep,
    op: OperatorDep,
    body: Annotated[ActionBody | None, Body(openapi_examples=_ACTION_EXAMPLES)] = None,
) -> dict[str, Any]:
    """Resume a withdrawal parked in NEEDS_ATTENTION."""
    return await _answer(state, op, withdrawal_id, "retry", body)


@router.post(
    "/admin/transactions/{withdrawal_id}/cancel",
    response_model=schemas.ActionResult,
    responses=_ACTION_ERRORS,
)
async def cancel(
    withdrawal_id: str,
    state: StateDep,
    op: OperatorDep,
    body: Annotated[ActionBody | None, Body(openapi_examples=_ACTION_EXAMPLES)] = None,
) -> dict[str, Any]:
    """Cancel before the transaction is mined (a broadcast one is replaced by a 0-value self-transfer)."""
    return await _answer(state, op, withdrawal_id, "cancel", body)


@router.post(
    "/admin/transactions/{withdrawal_id}/approve",
    response_model=schemas.ActionResult,
    responses=_ACTION_ERRORS,
)
async def approve(
    withdrawal_id: str,
    state: StateDep,
    op: ApproverDep,
    body: Annotated[ActionBody | None, Body(openapi_examples=_ACTION_EXAMPLES)] = None,
) -> dict[str, Any]:
    """Approve a withdrawal in AWAITING_APPROVAL (APPROVER or ADMIN)."""
    return await _answer(state, op, withdrawal_id, "approve", body)


@router.post(
    "/admin/transactions/{withdrawal_id}/reject",
    response_model=schemas.ActionResult,
    responses=_ACTION_ERRORS,
)
async def reject(
    withdrawal_id: str,
    state: StateDep,
    op: ApproverDep,
    body: Annotated[ActionBody | None, Body(openapi_examples=_ACTION_EXAMPLES)] = None,
) -> dict[str, Any]:
    """Reject a withdrawal in AWAITING_APPROVAL (APPROVER or ADMIN); nothing is sent."""
    return await _answer(state, op, withdrawal_id, "reject", body)


# --- the DLQ: withdrawals parked in NEEDS_ATTENTION ------------------------------------------------

_NEXT_ACTIONS: dict[str, str] = {
    ErrorCode.EXECUTION_REVERTED: (
        "The transfer would revert (e.g. the token refuses the recipient or the sender). Fix the cause, "
        "then retry; or cancel."
    ),
    ErrorCode.NONCE_CONFLICT: (
        "The nonce is held by a transaction the engine did not send. Check that transaction, then retry "
        "(the withdrawal moves to the wallet's next nonce); or cancel."
    ),
    ErrorCode.NONCE_UNPROVEN: (
        "The nonce is used but no node proves by which transaction. Check the nodes, then retry (the "
        "proof runs again); nothing is re-signed without proof."
    ),
    ErrorCode.BROADCAST_REJECTED: "The node refused the transaction. Read the error, fix it, then retry.",
    ErrorCode.GAS_ABOVE_CAP: (
        "The transfer needs more gas than the network's cap. Raise the cap if the recipient is trusted, "
        "then retry; or cancel."
    ),
    ErrorCode.CHAIN_ID_MISMATCH: (
        "No RPC endpoint serves the configured chain id. Fix the network's rpc_urls, then retry."
    ),
    ErrorCode.SIGNER_UNAVAILABLE: "No usable key for the hot wallet. Load the keystore, then retry.",
    ErrorCode.FEE_ABOVE_CAP: (
        "Fees are above the network's cap. Wait for fees to fall or raise the cap, then retry."
    ),
    ErrorCode.ACTIVITY_FAILED: (
        "An unexpected error. Read the error and the worker's logs, then retry or cancel."
    ),
}
_DEFAULT_NEXT_ACTION = "Read the error, fix the cause, then retry; or cancel."


def next_action(w: Withdrawal) -> str:
    text = _NEXT_ACTIONS.get(w.error_code or "", _DEFAULT_NEXT_ACTION)
    if w.tx_hash is not None:
        text += " A transaction was broadcast: cancel is possible only while it is BROADCAST and not mined."
    return text


@router.get("/admin/dlq/messages", response_model=schemas.ParkedPage, responses=_LIST_ERRORS)
async def dlq_messages(
    state: StateDep,
    _: ViewerDep,
    network: str | None = Query(None, max_length=32),
    cursor: str | None = Query(None, max_length=200),
    limit: int = Query(LIMIT_DEFAULT, ge=1, le=LIMIT_MAX),
) -> dict[str, Any]:
    """Withdrawals in NEEDS_ATTENTION, newest first, each with why and what an operator can do."""
    f = _filter(
        state,
        status=WithdrawalStatus.NEEDS_ATTENTION.value,
        network=network,
        asset=None,
        user_id=None,
        client_id=None,
        tx_hash=None,
        created_from=None,
        created_to=None,
    )
    rows, next_cursor, total = await _page(state, f, cursor, limit)
    items = [
        _item(w, state)
        | {
            "reason": {"code": w.error_code, "message": w.error_message or ""} if w.error_code else None,
            "next_action": next_action(w),
            "parked_at": iso(w.updated_at),
        }
        for w in rows
    ]
    return {"items": items, "next_cursor": next_cursor, "total": total}


@router.post(
    "/admin/dlq/reprocess",
    response_model=schemas.ReprocessResult,
    response_model_exclude_unset=True,
    responses=schemas.errors({**schemas.COMMON, **schemas.BEARER, **schemas.BODY}),
)
async def dlq_reprocess(
    body: Annotated[
        ReprocessBody,
        Body(openapi_examples={"two": {"value": {"ids": ["0b0e5a8e-3b5c-5d43-9d6f-1f7a3c1d2e4f"]}}}),
    ],
    state: StateDep,
    op: OperatorDep,
) -> dict[str, Any]:
    """Retry each withdrawal; one result per id, in the order given (duplicates answered once)."""
    ids = list(dict.fromkeys(body.ids))
    limit = asyncio.Semaphore(8)

    async def one(wid: str) -> dict[str, Any]:
        async with limit:
            try:
                await _act(state, op, wid, "retry", None, audit_action="dlq.reprocess")
            except NotFound:
                return {"id": wid, "accepted": False, "reason": "withdrawal not found"}
            except _Refused as refused:
                return {"id": wid, "accepted": False, "reason": refused.reason}
            except ServiceUnavailable:
                return {"id": wid, "accepted": False, "reason": "the workflow service is unreachable"}
            return {"id": wid, "accepted": True}

    return {"results": list(await asyncio.gather(*(one(wid) for wid in ids)))}


@router.delete(
    "/admin/dlq/messages/{withdrawal_id}",
    response_model=schemas.ActionResult,
    responses=schemas.errors(
        {
            **schemas.COMMON,
            **schemas.BEARER,
            **schemas.QUERY,
            404: "NOT_FOUND: no such withdrawal",
            409: "INVALID_STATE: the withdrawal is not in NEEDS_ATTENTION, or the workflow refused",
        }
    ),
)
async def dlq_delete(
    withdrawal_id: str,
    state: StateDep,
    op: OperatorDep,
    reason: str | None = Query(None, max_length=500),
) -> dict[str, Any]:
    """Cancel a parked withdrawal (its nonce is filled where one was allocated) and take it off the DLQ."""
    async with state.db.read() as s:
        w = await repo.get_withdrawal(s, withdrawal_id)
    if w is None:
        raise NotFound("withdrawal not found")
    if w.status != WithdrawalStatus.NEEDS_ATTENTION:
        refusal = f"the withdrawal is {w.status}, not in NEEDS_ATTENTION"
        after = {"reason": reason, "refusal": refusal}
        await _audit(state, op, "dlq.delete", w.id, {"status": w.status}, after, "refused")
        raise InvalidState(refusal)
    try:
        fresh, result = await _act(
            state,
            op,
            withdrawal_id,
            "cancel",
            reason,
            audit_action="dlq.delete",
            settle=ACTION_SETTLE_SECONDS,
        )
    except _Refused as refused:
        raise InvalidState(refused.reason) from refused
    return {"accepted": result.accepted, "withdrawal": _item(fresh, state)}


# --- the audit trail ---------------------------------------------------------------------------------


def audit_view(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "role": e.role,
        "action": e.action,
        "target": e.target,
        "before": audit.decoded(e.before),
        "after": audit.decoded(e.after),
        "source_ip": e.source_ip,
        "outcome": e.outcome,
    }


@router.get("/admin/audit", response_model=schemas.AuditPage, responses=_LIST_ERRORS)
async def list_audit(
    state: StateDep,
    _: AdminDep,
    actor: str | None = Query(None, max_length=120),
    action: str | None = Query(None, max_length=64),
    target: str | None = Query(None, max_length=255),
    since: str | None = Query(None, max_length=40, description="ISO 8601, inclusive"),
    until: str | None = Query(None, max_length=40, description="ISO 8601, exclusive"),
    cursor: str | None = Query(None, max_length=20),
    limit: int = Query(LIMIT_DEFAULT, ge=1, le=LIMIT_MAX),
) -> dict[str, Any]:
    """Every operator and admin action, newest first."""
    before_id = decode_id_cursor(cursor)
    start, end = parse_time(since, "since"), parse_time(until, "until")
    async with state.db.read() as s:
        rows = await audit.entries(
            s,
            actor=actor,
            action=action,
            target=target,
            since=start,
            until=end,
            before_id=before_id,
            limit=limit + 1,
        )
        total = await audit.count(s, actor=actor, action=action, target=target, since=start, until=end)
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [audit_view(e) for e in rows],
        "next_cursor": str(rows[-1].id) if more and rows else None,
        "total": total,
    }
