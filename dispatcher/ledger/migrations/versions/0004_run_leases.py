"""Runs hold a lease that their daemon renews, so another daemon can take over a run whose daemon died;
attempts record how long the provider took.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("lease_until", UtcDateTime))
        batch.add_column(sa.Column("takeovers", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("duration_ms", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("duration_ms")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("takeovers")
        batch.drop_column("lease_until")
