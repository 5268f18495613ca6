"""Run ranges: a run's key ranges planned, booked and delivered by Celery workers, each with its state.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_ranges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(128)),
        sa.Column("starts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("accounts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("planned", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result", sa.Text),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("run_id", "number", name="uq_run_ranges_run_id_number"),
    )


def downgrade() -> None:
    op.drop_table("run_ranges")
