"""Tables. Amounts and fees are base units: `U256` is NUMERIC(78,0) on MySQL and exact text on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, DateTime, Index, Numeric, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class U256(TypeDecorator[int]):
    """An unsigned integer in base units: NUMERIC(78,0) (all of uint256) where the database allows it,
    DECIMAL(65,0) on MySQL/MariaDB (their maximum; amounts are capped at `MAX_AMOUNT_UNITS`), and exact
    text on SQLite, whose NUMERIC would round large values through REAL. Sums are done in Python."""

    impl = Numeric(78, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(78))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(Numeric(65, 0))
        return dialect.type_descriptor(Numeric(78, 0))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = int(value)
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


# Microseconds on MySQL/MariaDB too (a plain DATETIME there keeps whole seconds); see migration 0003,
# which also gives every table the byte-for-byte collation utf8mb4_bin.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(Timestamp, nullable=False, **kw))


class ApiClient(SQLModel, table=True):
    __tablename__ = "api_clients"
    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=120)
    key_hash: str = Field(max_length=64, unique=True, index=True)
    key_prefix: str = Field(max_length=16)
    active: bool = True
    expires_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))
    rate_limit_per_minute: int | None = None
    # Space-separated permissions: withdrawals:create withdrawals:read webhooks:manage
    scopes: str = Field(default="withdrawals:create withdrawals:read webhooks:manage", max_length=255)
    created_by: str | None = Field(default=None, max_length=120)
    ip_allowlist: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))  # JSON CIDRs
    # Rotation: the previous secret keeps working until `previous_key_expires_at`.
    previous_key_hash: str | None = Field(default=None, max_length=64, index=True)
    previous_key_expires_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class User(SQLModel, table=True):
    __tablename__ = "users"
    id: str = Field(primary_key=True, max_length=36)
    username: str = Field(max_length=120, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    role: str = Field(max_length=20)  # ADMIN | APPROVER | OPERATOR | VIEWER
    active: bool = True
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Withdrawal(SQLModel, table=True):
    __tablename__ = "withdrawals"
    __table_args__ = (
        UniqueConstraint("client_id", "idempotency_key", name="uq_withdrawal_idempotency"),
        Index("ix_withdrawal_user_day", "network", "asset", "user_id", "created_at"),
    )
    id: str = Field(primary_key=True, max_length=36)
    client_id: str = Field(max_length=36, index=True)
    idempotency_key: str = Field(max_length=255)
    fingerprint: str = Field(max_length=64)
    user_id: str = Field(max_length=255)
    network: str = Field(max_length=32)
    asset: str = Field(max_length=32)
    to_address: str = Field(max_length=42)
    amount: int = Field(sa_column=Column(U256(), nullable=False))
    decimals: int
    client_reference: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=32, index=True)
    # The number of the last transition (0: born); each move writes seq + 1 (see `repo.transition`).
    status_seq: int = 0
    hot_wallet: str | None = Field(default=None, max_length=42)
    nonce: int | None = None
    tx_hash: str | None = Field(default=None, max_length=66)
    block_number: int | None = None
    confirmations: int = 0
    required_confirmations: int
    fee_wei: int | None = Field(default=None, sa_column=Column(U256(), nullable=True))
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class StatusEvent(SQLModel, table=True):
    """Every status a withdrawal entered, in order, written by `repo.transition` in the same transaction
    as the move (the outbox that webhooks are delivered from)."""

    __tablename__ = "withdrawal_events"
    __table_args__ = (UniqueConstraint("withdrawal_id", "seq", name="uq_withdrawal_event_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    withdrawal_id: str = Field(max_length=36, index=True)
    seq: int
    status: str = Field(max_length=32)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    created_at: datetime = _ts()


class TxAttempt(SQLModel, table=True):
    """Every signed transaction, recorded before it is broadcast."""

    __tablename__ = "tx_attempts"
    __table_args__ = (UniqueConstraint("withdrawal_id", "purpose", "seq", name="uq_attempt_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    withdrawal_id: str = Field(max_length=36, index=True)
    purpose: str = Field(max_length=16)
    seq: int = 0
    network: str = Field(max_length=32)
    hot_wallet: str = Field(max_length=42)
    nonce: int
    tx_hash: str = Field(max_length=66, unique=True)
    raw_tx: str = Field(sa_column=Column(Text(), nullable=False))
    tx_type: int
    gas_limit: int
    max_fee_per_gas: int | None = Field(default=None, sa_column=Column(U256(), nullable=True))
    max_priority_fee_per_gas: int | None = Field(default=None, sa_column=Column(U256(), nullable=True))
    gas_price: int | None = Field(default=None, sa_column=Column(U256(), nullable=True))
    outcome: str = Field(default="SIGNED", max_length=16)  # a `TxOutcome`
    error: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class HotWallet(SQLModel, table=True):
    """Row per (network, address); locked to serialize nonce allocation and reservations."""

    __tablename__ = "hot_wallets"
    __table_args__ = (UniqueConstraint("network", "address", name="uq_hot_wallet"),)
    id: int | None = Field(default=None, primary_key=True)
    network: str = Field(max_length=32)
    address: str = Field(max_length=42)
    next_nonce: int
    created_at: datetime = _ts()


class NonceAllocation(SQLModel, table=True):
    """Every nonce of a hot wallet the engine knows about, contiguous from the first one it used.

    purpose WITHDRAWAL: given to a withdrawal (`active` while it is the one it uses); FILL: a 0-value
    self-transfer the reconciler sent for a nonce no live withdrawal will use; EXTERNAL: used by a
    transaction sent from the wallet outside the engine."""

    __tablename__ = "nonce_allocations"
    __table_args__ = (UniqueConstraint("network", "hot_wallet", "nonce", name="uq_nonce"),)
    id: int | None = Field(default=None, primary_key=True)
    network: str = Field(max_length=32)
    hot_wallet: str = Field(max_length=42)
    nonce: int
    withdrawal_id: str | None = Field(default=None, max_length=36, index=True)
    purpose: str = Field(default="WITHDRAWAL", max_length=16)
    active: bool = True
    # FILL: the reconciler's 0-value self-transfer that took the nonce (a fill of the nonce, not an
    # attempt of the withdrawal it was allocated to), kept to resend and to audit.
    fill_tx_hash: str | None = Field(default=None, max_length=66)
    fill_raw_tx: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    created_at: datetime = _ts()


class FundReservation(SQLModel, table=True):
    __tablename__ = "fund_reservations"
    __table_args__ = (
        UniqueConstraint("withdrawal_id", "asset", name="uq_reservation"),
        Index("ix_reservation_wallet_state", "network", "hot_wallet", "state"),
        # The settled-after-a-block read of `repo.held_amounts` seeks (network, settled_block).
        Index("ix_reservation_network_state", "network", "state"),
        Index("ix_reservation_network_settled", "network", "settled_block"),
    )
    id: int | None = Field(default=None, primary_key=True)
    withdrawal_id: str = Field(max_length=36)
    network: str = Field(max_length=32)
    hot_wallet: str = Field(max_length=42)
    asset: str = Field(max_length=32)
    amount: int = Field(sa_column=Column(U256(), nullable=False))
    state: str = Field(default="HELD", max_length=16)  # HELD | CONSUMED | RELEASED
    created_at: datetime = _ts()
    settled_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))
    # The block that mined the withdrawal's transaction when it settled (None: nothing was mined). A
    # balance read at an earlier block still holds these funds (see `repo.held_amounts`).
    settled_block: int | None = None


class WalletHold(SQLModel, table=True):
    """What the HELD reservations on one (network, hot wallet, asset) add up to, and how many there are:
    kept in step with `fund_reservations` by `repo.reserve` and the settlement in `repo.transition`,
    in the same transaction, so admission reads one row per wallet and asset instead of every
    reservation in flight (`repo.held_amounts`, `repo.in_flight_counts`)."""

    __tablename__ = "wallet_holds"
    network: str = Field(primary_key=True, max_length=32)
    hot_wallet: str = Field(primary_key=True, max_length=42)
    asset: str = Field(primary_key=True, max_length=32)
    held: int = Field(default=0, sa_column=Column(U256(), nullable=False))
    holders: int = 0


class AuditEntry(SQLModel, table=True):
    """Every operator and admin action, written in the same transaction as the action itself."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_actor_at", "actor", "at"), Index("ix_audit_target", "target"))
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    actor: str = Field(max_length=120)  # a username, "api-key:<id>", or "system"
    role: str | None = Field(default=None, max_length=20)
    action: str = Field(max_length=64, index=True)  # e.g. login.failed, withdrawal.retry, queues.pause
    target: str | None = Field(default=None, max_length=255)
    before: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))  # JSON
    after: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))  # JSON
    source_ip: str | None = Field(default=None, max_length=64)
    outcome: str = Field(default="ok", max_length=16)  # ok | refused | failed


class Pause(SQLModel, table=True):
    """A kill switch: everything (network and hot_wallet null), one network, or one hot wallet.
    Active while `resumed_at` is null; kept afterwards as a record."""

    __tablename__ = "pauses"
    __table_args__ = (Index("ix_pause_active", "resumed_at"),)
    id: int | None = Field(default=None, primary_key=True)
    network: str | None = Field(default=None, max_length=32)
    hot_wallet: str | None = Field(default=None, max_length=42)
    reason: str = Field(sa_column=Column(Text(), nullable=False))
    paused_by: str = Field(max_length=120)
    paused_at: datetime = _ts()
    resumed_by: str | None = Field(default=None, max_length=120)
    resumed_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))


class Alert(SQLModel, table=True):
    """One row per cause (`dedup_key`): FIRING until the cause clears, then RESOLVED."""

    __tablename__ = "alerts"
    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(max_length=255, unique=True)
    kind: str = Field(max_length=64)
    severity: str = Field(default="warning", max_length=16)  # info | warning | critical
    summary: str = Field(sa_column=Column(Text(), nullable=False))
    detail: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))  # JSON
    state: str = Field(default="FIRING", max_length=16, index=True)  # FIRING | RESOLVED
    fired_at: datetime = _ts()
    updated_at: datetime = _ts()
    resolved_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))


class ApiKeyUsage(SQLModel, table=True):
    """Requests per API key, day, route and status, flushed in batches (not one write per request)."""

    __tablename__ = "api_key_usage"
    __table_args__ = (UniqueConstraint("client_id", "day", "route", "status", name="uq_api_key_usage"),)
    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(max_length=36)
    day: str = Field(max_length=10)  # YYYY-MM-DD (UTC)
    route: str = Field(max_length=120)
    status: int
    count: int = 0


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"
    id: str = Field(primary_key=True, max_length=36)
    client_id: str = Field(max_length=36, index=True)
    url: str = Field(sa_column=Column(Text(), nullable=False))
    events: str = Field(default="*", sa_column=Column(Text(), nullable=False))  # space-separated, * = all
    secret: str = Field(max_length=128)  # whsec_<base64>: needed to sign, never logged
    active: bool = True
    created_at: datetime = _ts()
    deleted_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: written with the status change (the outbox), sent in order per
    (endpoint, withdrawal). `event_id` is stable across retries and redeliveries. The retry state is
    in the row: `next_attempt_at` (when it may be sent, pushed back after each failed attempt) and
    `window_start` (queued or re-queued: the retry window runs from there)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_event"),
        Index("ix_webhook_delivery_queue", "endpoint_id", "withdrawal_id", "state", "seq"),
        Index("ix_webhook_delivery_pending", "state", "created_at"),  # the sweeper's scan
        Index("ix_webhook_delivery_due", "endpoint_id", "state", "next_attempt_at"),  # an endpoint's batch
    )
    id: str = Field(primary_key=True, max_length=36)
    event_id: str = Field(max_length=64, index=True)
    endpoint_id: str = Field(max_length=36)
    client_id: str = Field(max_length=36)
    withdrawal_id: str = Field(max_length=36, index=True)
    seq: int  # order within the withdrawal (the status event's number; a reorg event follows its move)
    event_type: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text(), nullable=False))  # the exact JSON body that is signed
    state: str = Field(default="PENDING", max_length=16)  # PENDING | DELIVERED | FAILED
    attempts: int = 0
    last_status_code: int | None = None
    last_latency_ms: int | None = None
    last_error: str | None = Field(default=None, max_length=500)  # a short excerpt, never a full body
    created_at: datetime = _ts()
    delivered_at: datetime | None = Field(default=None, sa_column=Column(Timestamp, nullable=True))
    next_attempt_at: datetime = _ts()
    window_start: datetime = _ts()


class WebhookAttempt(SQLModel, table=True):
    __tablename__ = "webhook_attempts"
    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(max_length=36, index=True)
    attempt: int
    at: datetime = _ts()
    status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = Field(default=None, max_length=500)
