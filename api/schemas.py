"""The shapes the API answers with, as pydantic models: the response models of the routes and what
their OpenAPI document promises (DESIGN §6). Routes build plain dicts (the withdrawal object comes
from `models.views`); FastAPI checks each answer against these models, so the document and the wire
cannot drift apart.

Timestamps are ISO 8601 strings in UTC with milliseconds and `Z`; amounts are decimal strings in the
asset's units (fees in the network's native coin), never numbers. A key that an answer leaves out
when it does not apply (an `error` of a component that is fine) is declared without null and left
out, as on the wire (`response_model_exclude_unset` on those routes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from models.alerts import AlertKind, AlertState
from models.lifecycle import WithdrawalStatus
from models.webhooks import ALL_EVENTS, EVENT_TYPES

UPPER_SNAKE = r"^[A-Z][A-Z0-9_]*$"
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
TX_HASH = r"^0x[0-9a-fA-F]{64}$"
DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
# A decimal above zero: a non-zero digit before the point, or after it.
POSITIVE_DECIMAL = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$"

Timestamp = Annotated[
    str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-01-31T12:00:00.000Z"])
]
Day = Annotated[str, Field(json_schema_extra={"format": "date"}, examples=["2026-01-31"])]
Amount = Annotated[str, Field(pattern=DECIMAL, examples=["250.5"])]
Address = Annotated[str, Field(pattern=ADDRESS, examples=["0x000000000000000000000000000000000000dEaD"])]
TxHash = Annotated[str, Field(pattern=TX_HASH)]
Role = Literal["VIEWER", "OPERATOR", "APPROVER", "ADMIN"]
Scope = Literal["withdrawals:create", "withdrawals:read", "webhooks:manage"]
Absent = SkipJsonSchema[None]  # `x: str | Absent = None`: optional in the document, never null on the wire


# --- errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(pattern=UPPER_SNAKE, examples=["VALIDATION_ERROR"])
    message: str = Field(description="a fixed text for people; match on `code`, not on this")
    field: str | Absent = Field(default=None, description="the parameter or body field at fault")


class ErrorEnvelope(BaseModel):
    """Every error answer: `{"error": {"code", "message", "field"?}}`."""

    error: ErrorDetail


_RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
_RATE_LIMIT_HEADERS = {
    "Retry-After": _RETRY_AFTER,
    "RateLimit-Limit": {"description": "requests allowed in the window", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "requests left in the window", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "seconds until the window resets", "schema": {"type": "integer"}},
}


def errors(spec: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for error statuses: each an `ErrorEnvelope`, described by the codes it
    carries; 429 and 503 with their `Retry-After` (and 429 with the `RateLimit-*` headers)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in sorted(spec.items()):
        entry: dict[str, Any] = {"model": ErrorEnvelope, "description": description}
        if status == 429:
            entry["headers"] = _RATE_LIMIT_HEADERS
        elif status == 503:
            entry["headers"] = {"Retry-After": _RETRY_AFTER}
        out[status] = entry
    return out


# What every route can answer: the per-IP limit runs before routing, and an unexpected failure is a
# 503, never a bare 500. Routes with a body also get the body guard's answers.
COMMON = {
    429: "RATE_LIMITED: too many requests from this address or key (see Retry-After)",
    503: "SERVICE_UNAVAILABLE: a dependency (database, Temporal) is unavailable; retry later",
}
BODY = {
    413: "PAYLOAD_TOO_LARGE: the body is over 16 KiB",
    422: "VALIDATION_ERROR: the body is not UTF-8 JSON of the documented shape",
}
QUERY = {422: "VALIDATION_ERROR: a parameter is not of the documented shape (`field` names it)"}
API_KEY = {
    401: "UNAUTHORIZED: missing, unknown, revoked or expired API key (one answer for all)",
    403: "FORBIDDEN: the key lacks the scope, or is used from outside its IP allowlist",
}
BEARER = {
    401: "UNAUTHORIZED: missing, invalid or expired bearer token, or a disabled user",
    403: "FORBIDDEN: the user's role is too low for this route",
}


# --- the withdrawal object ------------------------------------------------------------------------


class WithdrawalError(BaseModel):
    code: str = Field(pattern=UPPER_SNAKE, examples=["CANCELLED"])
    message: str


class Withdrawal(BaseModel):
    """A withdrawal as clients see it (DESIGN §6): the same object is the `data` of webhook events."""

    id: str = Field(json_schema_extra={"format": "uuid"})
    status: WithdrawalStatus
    network: str = Field(examples=["polygon"])
    asset: str = Field(examples=["USDT"])
    amount: Amount = Field(description="decimal string in the asset's units")
    to_address: Address
    user_id: str
    client_reference: str | None
    tx_hash: TxHash | None = Field(description="null until signed")
    confirmations: int = Field(ge=0, description="the including block counts as 1")
    required_confirmations: int = Field(ge=1)
    fee: Amount | None = Field(description="in the network's native coin; null until mined")
    error: WithdrawalError | None
    created_at: Timestamp
    updated_at: Timestamp


class QueueStatus(BaseModel):
    in_flight: int = Field(ge=0, description="withdrawals not yet in a terminal status")
    total: int = Field(ge=0)
    by_status: dict[str, int]
    by_network: dict[str, dict[str, int]] = Field(description="network -> status -> count")


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    temporal: Literal["ok"]


class HealthUnavailable(ErrorEnvelope):
    status: Literal["unavailable"]
    database: Literal["ok", "unavailable"]
    temporal: Literal["ok", "unavailable"]


# --- admin: withdrawals ---------------------------------------------------------------------------


class AdminWithdrawal(Withdrawal):
    """The withdrawal object with the operator's fields; `error.message` is the recorded detail."""

    client_id: str
    hot_wallet: Address | None
    nonce: int | None = Field(ge=0)


class TransactionPage(BaseModel):
    items: list[AdminWithdrawal]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page; null on the last")
    total: int = Field(ge=0, description="items matching the filters, over every page")


class Attempt(BaseModel):
    tx_hash: TxHash
    purpose: str = Field(examples=["WITHDRAWAL"])
    nonce: int = Field(ge=0)
    type: int = Field(description="EIP-2718 transaction type (0 legacy, 2 EIP-1559)")
    outcome: str = Field(examples=["SIGNED"])
    gas_limit: int
    max_fee_per_gas: Amount | None = Field(description="wei")
    max_priority_fee_per_gas: Amount | None = Field(description="wei")
    gas_price: Amount | None = Field(description="wei")
    error: str | None
    created_at: Timestamp


class Reservation(BaseModel):
    asset: str
    amount: Amount = Field(description="base units")
    state: str = Field(examples=["HELD"])


class StatusChange(BaseModel):
    kind: Literal["status"]
    status: WithdrawalStatus
    error: WithdrawalError | None
    at: Timestamp


class OperatorAction(BaseModel):
    kind: Literal["action"]
    action: str = Field(examples=["retry"])
    actor: str | None
    role: str | None
    outcome: Literal["ok", "refused", "failed"]
    reason: str | None
    source: Literal["admin-api", "workflow"]
    source_ip: str | None
    at: Timestamp | None


class TransactionDetail(AdminWithdrawal):
    workflow_id: str
    temporal_url: str = Field(description="the workflow's page in the Temporal Web UI")
    attempts: list[Attempt]
    reservations: list[Reservation]
    history: list[Annotated[StatusChange | OperatorAction, Field(discriminator="kind")]]


class ActionResult(BaseModel):
    accepted: bool
    withdrawal: AdminWithdrawal


class ParkedWithdrawal(AdminWithdrawal):
    reason: WithdrawalError | None
    next_action: str
    parked_at: Timestamp


class ParkedPage(BaseModel):
    items: list[ParkedWithdrawal]
    next_cursor: str | None
    total: int = Field(ge=0)


class ReprocessOutcome(BaseModel):
    id: str
    accepted: bool
    reason: str | Absent = Field(default=None, description="why it was not retried")


class ReprocessResult(BaseModel):
    results: list[ReprocessOutcome]


class AuditItem(BaseModel):
    id: int
    at: Timestamp
    actor: str
    role: str | None
    action: str = Field(examples=["withdrawal.retry"])
    target: str | None
    before: Any = Field(description="the state before the action (JSON), or null")
    after: Any = Field(description="the state after the action (JSON), or null")
    source_ip: str | None
    outcome: Literal["ok", "refused", "failed"]


class AuditPage(BaseModel):
    items: list[AuditItem]
    next_cursor: str | None
    total: int = Field(ge=0)


# --- admin: stats, queues, health ---------------------------------------------------------------


class DailyFigure(BaseModel):
    date: Day
    network: str
    asset: str
    count: int = Field(ge=0, description="withdrawals requested that day")
    confirmed: int = Field(ge=0)
    volume: Amount = Field(description="what the confirmed ones paid out, in the asset's units")
    fees: Amount = Field(description="gas of every mined transaction, in the native coin")


class DailyStats(BaseModel):
    days: list[DailyFigure]


class NetworkFigures(BaseModel):
    by_status: dict[str, int]
    volume_24h: dict[str, Amount] = Field(description="asset -> confirmed in the last 24 hours")
    head: int | None = Field(description="the chain's head block; null when no endpoint answers")
    paused: bool = Field(description="a pause of the network, or of everything, holds it")
    paused_hot_wallets: list[Address]


class NetworkStats(BaseModel):
    networks: dict[str, NetworkFigures]


class StatusStats(BaseModel):
    by_status: dict[str, int]
    total: int = Field(ge=0)
    since: Timestamp | None


class PauseView(BaseModel):
    id: int
    network: str | None
    hot_wallet: Address | None
    reason: str
    paused_by: str
    paused_at: Timestamp


class PauseResult(BaseModel):
    changed: bool
    paused: list[PauseView] = Field(description="every pause in force now")


class Poller(BaseModel):
    identity: str
    last_access_time: Timestamp | None


class TaskQueueView(BaseModel):
    name: str
    type: Literal["workflow", "activity"]
    pollers: list[Poller] | Absent = None
    backlog: int | None = None
    backlog_age_s: float | None = None
    error: str | Absent = Field(default=None, description="why the queue could not be described")


class InFlight(BaseModel):
    total: int = Field(ge=0)
    by_status: dict[str, int]
    by_network: dict[str, dict[str, int]]


class Unavailable(BaseModel):
    error: str


class Queues(BaseModel):
    task_queues: list[TaskQueueView]
    in_flight: InFlight | Unavailable
    paused: list[PauseView] | None = Field(description="null when the database cannot be read")


class RpcEndpointHealth(BaseModel):
    endpoint: str = Field(description="scheme, host and port only")
    chain_id: int | None
    head: int | None
    lag_s: float | None = Field(description="age of the head block in seconds")
    healthy: bool
    error: str | Absent = None


class HotWalletHealth(BaseModel):
    address: Address
    asset: str
    balance: Amount | None
    reserved: Amount | None
    min_balance: Amount | None
    low: bool | None
    error: str | Absent = None


class ReconcileSchedule(BaseModel):
    id: str
    network: str
    hot_wallet: Address
    last_run_at: Timestamp | None
    ok: bool
    state: str
    last_result: str | None = None


class ReconcilerHealth(BaseModel):
    status: Literal["ok", "degraded", "disabled"]
    interval_s: int
    error: str | Absent = None
    schedules: list[ReconcileSchedule]


class Components(BaseModel):
    database: Literal["ok", "unavailable"]
    temporal: Literal["ok", "unavailable"]
    redis: Literal["ok", "unavailable", "not configured"]
    rpc: dict[str, list[RpcEndpointHealth]]
    hot_wallets: dict[str, list[HotWalletHealth]]
    reconciler: ReconcilerHealth


class AdminHealth(BaseModel):
    status: Literal["ok", "degraded"]
    components: Components


class AlertItem(BaseModel):
    id: int
    dedup_key: str
    kind: AlertKind
    severity: Literal["info", "warning", "critical"]
    state: AlertState
    summary: str
    detail: Any = Field(description="what raised it (JSON), or null")
    fired_at: Timestamp
    updated_at: Timestamp
    resolved_at: Timestamp | None


class AlertPage(BaseModel):
    items: list[AlertItem]
    next_cursor: str | None
    total: int = Field(ge=0)


# --- operator accounts ----------------------------------------------------------------------------


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds")
    role: Role


class UserView(BaseModel):
    username: str
    role: Role
    active: bool
    created_at: Timestamp | None
    updated_at: Timestamp | None


class UserPage(BaseModel):
    items: list[UserView]
    next_cursor: str | None
    total: int = Field(ge=0)


# --- API keys -------------------------------------------------------------------------------------


class ApiKeyView(BaseModel):
    """A key as the admin routes show it: never the secret or its hash."""

    id: str
    name: str
    key_prefix: str = Field(description="the secret's first characters, to tell keys apart")
    scopes: list[Scope]
    rate_limit_per_minute: int | None
    ip_allowlist: list[str] | None
    active: bool
    expired: bool
    expires_at: Timestamp | None
    previous_key_expires_at: Timestamp | None = Field(description="the old secret works until then")
    created_by: str | None
    last_used_at: Timestamp | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    revoked_at: Timestamp | None


class ApiKeyCreated(ApiKeyView):
    api_key: str = Field(description="the secret: shown in this answer only")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyView]
    next_cursor: str | None
    total: int = Field(ge=0)


class RouteUsage(BaseModel):
    route: str = Field(description="the route template, e.g. /withdrawal/status/{withdrawal_id}")
    status: int
    count: int = Field(ge=0)


class DayUsage(BaseModel):
    date: Day
    requests: int = Field(ge=0)
    routes: list[RouteUsage]


class ApiKeyUsage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    from_: Day = Field(alias="from")
    to: Day
    total: int = Field(ge=0)
    last_used_at: Timestamp | None
    days: list[DayUsage] = Field(description="newest first, every day of the range")


# --- webhooks -------------------------------------------------------------------------------------


class WebhookEndpointView(BaseModel):
    id: str = Field(json_schema_extra={"format": "uuid"})
    url: str
    events: list[str] = Field(examples=[["withdrawal.confirmed", "withdrawal.failed"]])
    created_at: Timestamp


class WebhookEndpointCreated(WebhookEndpointView):
    secret: str = Field(description="whsec_…: the signing secret, shown in this answer only")


class WebhookEndpointPage(BaseModel):
    items: list[WebhookEndpointView]
    next_cursor: str | None
    total: int = Field(ge=0)


class WebhookAttemptView(BaseModel):
    attempt: int = Field(ge=1)
    at: Timestamp
    status_code: int | None
    latency_ms: int | None
    error: str | None


class WebhookDeliveryView(BaseModel):
    id: str
    event_id: str = Field(description="stable across redeliveries")
    event_type: str = Field(examples=["withdrawal.confirmed"])
    endpoint_id: str
    withdrawal_id: str
    seq: int
    state: Literal["PENDING", "DELIVERED", "FAILED"]
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    created_at: Timestamp
    delivered_at: Timestamp | None
    attempts: list[WebhookAttemptView]


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryView]
    next_cursor: str | None
    total: int = Field(ge=0)


class Redelivery(BaseModel):
    accepted: Literal[True]
    delivery: WebhookDeliveryView


# --- effective settings (the dashboard's settings page) ------------------------------------------


class FeeSettings(BaseModel):
    fee_model: Literal["eip1559", "legacy"]
    max_fee_per_gas_cap_gwei: str | None
    priority_fee_gwei: str | None
    legacy_gas_price_multiplier: str | None
    cancel_fee_cap_multiple: int
    gas_limit_margin: str | None
    native_gas_limit: int
    native_contract_gas_limit_cap: int
    token_gas_limit_cap: int


class TokenSettings(BaseModel):
    address: Address
    decimals: int


class AssetSettings(BaseModel):
    decimals: int | None
    per_transaction: str | None
    daily_per_user: str | None
    approval_threshold: str | None
    four_eyes_threshold: str | None
    min_hot_wallet_balance: str | None


class NetworkSettings(BaseModel):
    chain_id: int
    native_asset: str
    native_decimals: int
    required_confirmations: int
    finality: Literal["confirmations", "finalized"]
    block_time_seconds: float
    stuck_after_blocks: int
    fees: FeeSettings
    rpc_endpoints: list[str] = Field(description="scheme, host and port only")
    rpc_timeout_seconds: float
    hot_wallets: list[Address]
    tokens: dict[str, TokenSettings]
    assets: dict[str, AssetSettings]
    denied_recipients: list[str]


class AlertSinks(BaseModel):
    slack: bool
    pagerduty: bool


class EffectiveSettings(BaseModel):
    env: Literal["dev", "test", "prod"]
    task_queue: str
    temporal_namespace: str
    approval_timeout_seconds: int
    funds_retry_seconds: int
    pause_poll_seconds: float
    reconcile_interval_seconds: int
    approval_token_ttl_seconds: int
    jwt_ttl_seconds: int
    rate_limit_per_minute: int
    login_attempts_per_minute: int
    alert_pending_after_seconds: int
    alerts: AlertSinks
    networks: dict[str, NetworkSettings]


# --- the OpenAPI document -------------------------------------------------------------------------

_NON_BLANK = r"\S"


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, completed with what only the running configuration knows (the networks
    and assets, so a client generator gets enums) and what the dependencies check by hand (the
    Idempotency-Key header is required; `status` filters are comma-separated lists)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=[
            {"name": "withdrawals", "description": "Client routes (API key): request and read withdrawals"},
            {"name": "webhooks", "description": "Client routes (API key): webhook endpoints and deliveries"},
            {"name": "health", "description": "Liveness and readiness"},
            {"name": "auth", "description": "Operator login and accounts"},
            {
                "name": "admin",
                "description": "Operator routes (bearer token; VIEWER < OPERATOR < APPROVER < ADMIN)",
            },
            {"name": "api-keys", "description": "API keys of clients (ADMIN)"},
            {"name": "dashboard", "description": "What the operator dashboard at /admin reads"},
        ],
    )
    engine = getattr(app.state, "engine", None)
    networks: list[str] = []
    assets: list[str] = []
    https_only = False
    if engine is not None:
        networks = sorted(engine.config.networks)
        assets = sorted({a for n in engine.config.networks.values() for a in n.assets})
        https_only = engine.settings.env == "prod"
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    body = components.get("WithdrawalBody")
    if body is not None:
        props = body["properties"]
        props["user_id"]["pattern"] = _NON_BLANK
        props["to_address"]["pattern"] = ADDRESS
        props["amount"]["pattern"] = POSITIVE_DECIMAL
        if networks:
            props["network"]["enum"] = networks
            props["asset"]["enum"] = assets
    pause = components.get("PauseBody")
    if pause is not None and networks:
        _nullable_enum(pause["properties"]["network"], networks)
    endpoint = components.get("EndpointBody")
    if endpoint is not None:
        endpoint["properties"]["url"]["pattern"] = _url_pattern(https_only)
        for option in endpoint["properties"]["events"].get("anyOf", []):
            if option.get("type") == "array":
                option["items"] = {"type": "string", "enum": [ALL_EVENTS, *EVENT_TYPES]}
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, item in doc.get("paths", {}).items():
        for operation in item.values():
            for param in operation.get("parameters", []):
                _complete_parameter(path, param, networks, assets)
            # FastAPI adds a 422 of its own shape to routes with parameters: here errors are envelopes.
            invalid = operation.get("responses", {}).get("422")
            if invalid is not None and "HTTPValidationError" in str(invalid):
                invalid["description"] = QUERY[422]
                invalid["content"] = {"application/json": {"schema": envelope}}
    refs = str(doc["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}'" not in refs:
            components.pop(unused, None)
    app.openapi_schema = doc
    return doc


def _complete_parameter(path: str, param: dict[str, Any], networks: list[str], assets: list[str]) -> None:
    name, where = param["name"], param["in"]
    if where == "header" and name == "Idempotency-Key":
        param["required"] = True
        param["description"] = (
            "1-255 characters, unique per withdrawal: a retry with the same key and body answers the "
            "same withdrawal"
        )
        param["schema"] = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _NON_BLANK}
    elif where == "query" and name == "network" and networks:
        _nullable_enum(param["schema"], networks)
    elif where == "query" and name == "asset" and assets:
        _nullable_enum(param["schema"], assets)
    elif where == "query" and name == "tx_hash":
        param["schema"] = {"type": "string", "pattern": TX_HASH}
    elif where == "query" and name == "cursor":
        param["description"] = "the `next_cursor` of the previous page"
        if path in _DIGIT_CURSORS:
            _string(param["schema"])["pattern"] = r"^[0-9]{1,18}$"
        elif path in _OPAQUE_CURSORS:  # base64url; the API keys' list reads an empty one as none
            empty = path == "/admin/api-keys"
            _string(param["schema"])["pattern"] = r"^[A-Za-z0-9_-]*$" if empty else r"^[A-Za-z0-9_-]+$"
    elif where == "query" and name in _TIMES:
        string = _string(param["schema"])
        string["format"] = "date-time"
        param["description"] = (param.get("description") or "ISO 8601") + "; a date alone is midnight UTC"
    elif where == "query" and name == "status" and path == "/admin/transactions":
        param["schema"] = {
            "type": "array",
            "items": {"type": "string", "enum": [s.value for s in WithdrawalStatus]},
            "minItems": 1,
        }
        param["style"], param["explode"] = "form", False


_DIGIT_CURSORS = {"/admin/audit", "/admin/alerts", "/webhook/deliveries"}
_OPAQUE_CURSORS = {"/admin/transactions", "/admin/dlq/messages", "/admin/api-keys"}
_TIMES = {"created_from", "created_to", "since", "until"}


def _string(schema: dict[str, Any]) -> dict[str, Any]:
    """The string option of an optional parameter's schema (`anyOf [string, null]`), or the schema."""
    return next((o for o in schema.get("anyOf", []) if o.get("type") == "string"), schema)


def _nullable_enum(schema: dict[str, Any], values: list[str]) -> None:
    """An optional string parameter or field (`anyOf [string, null]` or `string`) limited to `values`."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            option["enum"] = values
            option.pop("maxLength", None)


_PORT = r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"


def _url_pattern(https_only: bool) -> str:
    """What `activities.webhooks.UrlGuard.parse` accepts, as a pattern: an absolute http(s) URL with a
    host, no credentials and no fragment (outside dev the host must also resolve to public addresses)."""
    scheme = "https" if https_only else "https?"
    return rf"^{scheme}://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?{_PORT}([/?][!$-\[\]-~]*)?$"
