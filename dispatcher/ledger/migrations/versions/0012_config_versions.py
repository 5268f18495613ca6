"""A copy of every configuration version loaded: the schedule and its template snapshot, keyed by version.

``dispatcher diff`` compares an edit with the version the daemon is running, and
a worker can run exactly the version a task names.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_versions",
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("schedule_text", sa.Text, nullable=False),
        sa.Column("templates", sa.Text, nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("first_loaded_at", UtcDateTime, nullable=False),
        sa.Column("last_loaded_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("config_versions")
