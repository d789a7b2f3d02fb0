"""webhook_deliveries: next_attempt_at and window_start (the retry state lives in the row, one
delivery workflow per endpoint sends due deliveries in batches) and (endpoint_id, state,
next_attempt_at) for the batch's seek

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", TS, nullable=True))
        batch_op.add_column(sa.Column("window_start", TS, nullable=True))
    # A delivery already queued is due now and its window began when it was queued (as before).
    op.execute("UPDATE webhook_deliveries SET next_attempt_at = created_at, window_start = created_at")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.alter_column("next_attempt_at", existing_type=TS, nullable=False)
        batch_op.alter_column("window_start", existing_type=TS, nullable=False)
        batch_op.create_index(
            "ix_webhook_delivery_due", ["endpoint_id", "state", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_delivery_due")
        batch_op.drop_column("window_start")
        batch_op.drop_column("next_attempt_at")
