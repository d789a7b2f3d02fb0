"""MySQL/MariaDB: strings compare byte for byte (utf8mb4_bin), timestamps keep microseconds

Idempotency keys, hashes and addresses must compare exactly ("ABC-1" and "abc-1" are two keys), and a
DATETIME without fractional seconds cuts every timestamp to the second. SQLite already compares
bytes and keeps microseconds: nothing to do there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "api_clients",
    "users",
    "withdrawals",
    "withdrawal_events",
    "tx_attempts",
    "hot_wallets",
    "nonce_allocations",
    "fund_reservations",
)
# (table, column, nullable)
TIMESTAMPS = (
    ("api_clients", "created_at", False),
    ("api_clients", "expires_at", True),
    ("users", "created_at", False),
    ("withdrawals", "created_at", False),
    ("withdrawals", "updated_at", False),
    ("withdrawal_events", "created_at", False),
    ("tx_attempts", "created_at", False),
    ("tx_attempts", "updated_at", False),
    ("hot_wallets", "created_at", False),
    ("nonce_allocations", "created_at", False),
    ("fund_reservations", "created_at", False),
    ("fund_reservations", "settled_at", True),
)


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _mysql():
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    for table, column, nullable in TIMESTAMPS:
        op.execute(f"ALTER TABLE {table} MODIFY {column} DATETIME(6) {'NULL' if nullable else 'NOT NULL'}")


def downgrade() -> None:
    if not _mysql():
        return
    for table, column, nullable in TIMESTAMPS:
        op.execute(f"ALTER TABLE {table} MODIFY {column} DATETIME {'NULL' if nullable else 'NOT NULL'}")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
