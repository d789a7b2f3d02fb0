"""withdrawal_events: every status a withdrawal entered, written with the transition; status_seq

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "withdrawal_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("withdrawal_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("error_code", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("withdrawal_id", "seq", name="uq_withdrawal_event_seq"),
    )
    with op.batch_alter_table("withdrawal_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_withdrawal_events_withdrawal_id"), ["withdrawal_id"], unique=False
        )
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_seq", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.drop_column("status_seq")
    with op.batch_alter_table("withdrawal_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_withdrawal_events_withdrawal_id"))
    op.drop_table("withdrawal_events")
