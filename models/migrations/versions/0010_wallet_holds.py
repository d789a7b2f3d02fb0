"""wallet_holds: the running total (and count) of HELD reservations per (network, hot wallet, asset),
so admission reads a row per wallet and asset instead of every reservation in flight; filled from
the HELD reservations already there

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 19:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.tables

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    holds = op.create_table(
        "wallet_holds",
        sa.Column("network", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("hot_wallet", sqlmodel.sql.sqltypes.AutoString(length=42), nullable=False),
        sa.Column("asset", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("held", models.tables.U256(precision=78, scale=0), nullable=False),
        sa.Column("holders", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("network", "hot_wallet", "asset"),
    )
    assert holds is not None
    # Summed here rather than in SQL: on SQLite amounts are exact text, which SUM would round.
    reservations = sa.table(
        "fund_reservations",
        sa.column("network"),
        sa.column("hot_wallet"),
        sa.column("asset"),
        sa.column("amount", models.tables.U256()),
        sa.column("state"),
    )
    rows = op.get_bind().execute(
        sa.select(
            reservations.c.network, reservations.c.hot_wallet, reservations.c.asset, reservations.c.amount
        ).where(reservations.c.state == "HELD")
    )
    totals: dict[tuple[str, str, str], list[int]] = {}
    for network, wallet, asset, amount in rows:
        total = totals.setdefault((network, wallet, asset), [0, 0])
        total[0] += int(amount)
        total[1] += 1
    if totals:
        op.bulk_insert(
            holds,
            [
                {"network": n, "hot_wallet": w, "asset": a, "held": held, "holders": count}
                for (n, w, a), (held, count) in sorted(totals.items())
            ],
        )


def downgrade() -> None:
    op.drop_table("wallet_holds")
