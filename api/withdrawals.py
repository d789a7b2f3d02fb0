"""Translate withdrawal requests into update-with-start calls and rows into the REST shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.deps import AppState
from api.errors import (
    REFUSALS,
    AppError,
    IdempotencyKeyReused,
    InvalidAddress,
    InvalidAmount,
    LimitExceeded,
    ServiceUnavailable,
    UnsupportedAsset,
    UnsupportedNetwork,
    ValidationFailed,
)
from models import repo
from models.domain import ErrorCode, SubmitInput, SubmitResult, WithdrawalRequest, WithdrawalStatus
from models.requests import RequestRefused, validate_request
from models.tables import ApiClient, Withdrawal
from models.views import withdrawal_object
from settings import EngineConfig
from workflows import search_attributes as sa
from workflows.withdrawal import WithdrawalWorkflow

log = structlog.get_logger()

WITHDRAWAL_NAMESPACE = uuid.UUID("6f1b8c1e-3d5a-5b8e-9c0f-7a2d4e6b8c10")


class WithdrawalBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: StrictStr = Field(min_length=1, max_length=255, examples=["user-42"])
    network: StrictStr = Field(max_length=32, examples=["polygon"])
    asset: StrictStr = Field(max_length=32, examples=["USDT"])
    to_address: StrictStr = Field(max_length=100, examples=["0x000000000000000000000000000000000000dEaD"])
    amount: StrictStr = Field(
        max_length=100, description="decimal string in the asset's units", examples=["250.5"]
    )
    client_reference: StrictStr | None = Field(default=None, max_length=255)


class WithdrawalOut(BaseModel):
    id: str
    status: str
    network: str
    asset: str
    amount: str
    to_address: str
    user_id: str
    client_reference: str | None
    tx_hash: str | None
    confirmations: int
    required_confirmations: int
    fee: str | None
    error: dict[str, str] | None
    created_at: str
    updated_at: str


def withdrawal_id_for(client_id: str, idempotency_key: str) -> str:
    return str(uuid.uuid5(WITHDRAWAL_NAMESPACE, f"{client_id}\n{idempotency_key}"))


def fingerprint(body: WithdrawalBody) -> str:
    canonical = json.dumps(body.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def withdrawal_view(w: Withdrawal, config: EngineConfig, *, operator: bool = False) -> dict[str, Any]:
    """The REST shape of a withdrawal (`models.views`, shared with the webhook events); `operator`
    views carry the recorded error detail."""
    net = config.network(w.network)
    view = withdrawal_object(w, native_decimals=net.native_decimals if net else None, operator=operator)
    return WithdrawalOut(**view).model_dump()


_REFUSAL_CLASSES: dict[str, type[AppError]] = {
    c.code: c for c in (InvalidAddress, InvalidAmount, UnsupportedNetwork, UnsupportedAsset, LimitExceeded)
}


def validate(body: WithdrawalBody, config: EngineConfig) -> tuple[str, int]:
    """Pure checks answered before anything is written: returns (checksummed address, base units)."""
    if body.user_id.strip() == "":
        raise ValidationFailed("user_id must not be blank", field="user_id")
    try:
        return validate_request(config, body.network, body.asset, body.to_address, body.amount)
    except RequestRefused as refused:
        raise _REFUSAL_CLASSES[refused.code](refused.message, field=refused.field) from refused


def _replay(w: Withdrawal, fp: str, config: EngineConfig) -> tuple[int, dict[str, Any]]:
    if w.fingerprint != fp:
        raise IdempotencyKeyReused("Idempotency-Key already used with a different request body")
    if w.status == WithdrawalStatus.REJECTED and w.error_code in REFUSALS:
        raise REFUSALS[w.error_code](w.error_message or "refused")
    return 200, withdrawal_view(w, config)


async def _read(state: AppState, withdrawal_id: str) -> Withdrawal | None:
    async with state.db.read() as s:
        return await repo.get_withdrawal(s, withdrawal_id)


async def submit(
    state: AppState, client: ApiClient, key: str, body: WithdrawalBody
) -> tuple[int, dict[str, Any]]:
    wid = withdrawal_id_for(client.id, key)
    fp = fingerprint(body)
    try:
        to_address, units = validate(body, state.config)
    except AppError as refused:
        # A used key answers as its first request did (a replay: 200, or 409 for another body) even
        # when this body alone is refused, e.g. the limits changed since. Bad input is never a 5xx:
        # when the key cannot be looked up, the refusal stands.
        try:
            existing = await _read(state, wid)
        except Exception:
            raise refused from None
        if existing is not None:
            return _replay(existing, fp, state.config)
        raise
    existing = await _read(state, wid)
    if existing is not None:
        return _replay(existing, fp, state.config)

    req = WithdrawalRequest(
        withdrawal_id=wid,
        client_id=client.id,
        idempotency_key=key,
        fingerprint=fp,
        user_id=body.user_id,
        network=body.network,
        asset=body.asset,
        to_address=to_address,
        amount=str(units),
        client_reference=body.client_reference,
    )
    op = WithStartWorkflowOperation(
        WithdrawalWorkflow.run,
        req,
        id=f"withdrawal-{wid}",
        task_queue=state.settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.WITHDRAWAL_STATUS, WithdrawalStatus.PENDING.value),
                SearchAttributePair(sa.NETWORK, body.network),
                SearchAttributePair(sa.ASSET, body.asset),
                SearchAttributePair(sa.USER_ID, body.user_id),
                SearchAttributePair(sa.CLIENT_ID, client.id),
            ]
        ),
        static_summary=f"{body.amount} {body.asset} on {body.network} to {to_address}",
    )
    temporal = await state.temporal.get()
    try:
        result: SubmitResult = await asyncio.wait_for(
            temporal.execute_update_with_start_workflow(
                WithdrawalWorkflow.submit,  # type: ignore[arg-type]
                SubmitInput(fingerprint=fp),
                start_workflow_operation=op,
                rpc_timeout=timedelta(seconds=20),
            ),
            timeout=25,
        )
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError) and cause.type == ErrorCode.IDEMPOTENCY_KEY_REUSED:
            raise IdempotencyKeyReused(cause.message) from e
        raise ServiceUnavailable("the withdrawal could not be submitted", headers={"Retry-After": "5"}) from e
    except WorkflowAlreadyStartedError as e:
        existing = await _read(state, wid)  # the workflow finished already: answer from its record
        if existing is None:
            raise ServiceUnavailable("withdrawal state unavailable", headers={"Retry-After": "5"}) from e
        return _replay(existing, fp, state.config)
    except (RPCError, TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as e:
        log.warning("api.submit.temporal_unavailable", withdrawal_id=wid, error_type=type(e).__name__)
        raise ServiceUnavailable(
            "workflow service unavailable; retry with the same Idempotency-Key", headers={"Retry-After": "5"}
        ) from e
    adm = result.admission
    if not adm.accepted:
        code = adm.error.code if adm.error else ErrorCode.LIMIT_EXCEEDED
        raise REFUSALS.get(code, LimitExceeded)(adm.error.message if adm.error else "refused")
    if result.created and adm.view is not None and not adm.requires_approval:
        # The row as admission wrote it, from the update's answer: no read. (A withdrawal that needs
        # an approval has moved to AWAITING_APPROVAL by now, and a repeat may have moved on: read.)
        return 201, WithdrawalOut(**adm.view).model_dump()
    row = await _read(state, wid)
    if row is None:
        raise ServiceUnavailable("withdrawal state unavailable", headers={"Retry-After": "5"})
    if not result.created and row.fingerprint == fp:
        return 200, withdrawal_view(row, state.config)
    return 201, withdrawal_view(row, state.config)
