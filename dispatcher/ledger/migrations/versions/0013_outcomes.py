"""Outcomes: one row per reminded delinquency (account, due date) with the balances read and when it was cured;
the template variant of every attempt.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delinquencies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("first_balance", sa.String(40), nullable=False),
        sa.Column("last_balance", sa.String(40), nullable=False),
        sa.Column("first_reminded_at", UtcDateTime, nullable=False),
        sa.Column("last_seen_at", UtcDateTime, nullable=False),
        sa.Column("last_run_id", sa.Integer),
        sa.Column("cured_at", UtcDateTime),
        sa.Column("cure", sa.String(16)),
        sa.UniqueConstraint("account_id", "due_date", name="uq_delinquencies_account_id_due_date"),
    )
    op.create_index("ix_delinquencies_cured_at", "delinquencies", ["cured_at"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("variant", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("variant")
    op.drop_index("ix_delinquencies_cured_at", table_name="delinquencies")
    op.drop_table("delinquencies")
