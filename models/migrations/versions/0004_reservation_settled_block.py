"""fund_reservations.settled_block: balances for admission are versioned by block

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:25:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fund_reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("settled_block", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fund_reservations", schema=None) as batch_op:
        batch_op.drop_column("settled_block")
