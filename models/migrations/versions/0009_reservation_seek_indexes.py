"""fund_reservations: indexes that let admission seek instead of scanning the network's history:
(network, state) for the HELD reservations and the in-flight counts, (network, settled_block) for
those settled after the block the balances were read at

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 16:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fund_reservations", schema=None) as batch_op:
        batch_op.create_index("ix_reservation_network_state", ["network", "state"], unique=False)
        batch_op.create_index("ix_reservation_network_settled", ["network", "settled_block"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fund_reservations", schema=None) as batch_op:
        batch_op.drop_index("ix_reservation_network_settled")
        batch_op.drop_index("ix_reservation_network_state")
