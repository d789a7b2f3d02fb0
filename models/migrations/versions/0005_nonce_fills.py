"""nonce_allocations.fill_tx_hash / fill_raw_tx: a nonce fill is recorded on the nonce

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 11:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("nonce_allocations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fill_tx_hash", sqlmodel.sql.sqltypes.AutoString(length=66), nullable=True)
        )
        batch_op.add_column(sa.Column("fill_raw_tx", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nonce_allocations", schema=None) as batch_op:
        batch_op.drop_column("fill_raw_tx")
        batch_op.drop_column("fill_tx_hash")
