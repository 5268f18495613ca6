"""``/metrics`` counts attempts by status and channel from an index, without sorting the table.

``ix_attempts_status_channel_try (status, channel, try_no)`` replaces
``ix_attempts_status (status)``: it starts with the same column, so every query
that used the old index can use the new one, and writes keep one index to
maintain. Building it holds writes to ``attempts`` for as long as the build takes
(seconds per million rows). To upgrade a large PostgreSQL ledger without that
pause, build it first while delivery runs; the migration then finds it:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_attempts_status_channel_try
        ON attempts (status, channel, try_no);

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attempts_status_channel_try", "attempts", ["status", "channel", "try_no"],
                    if_not_exists=True)
    op.drop_index("ix_attempts_status", table_name="attempts", if_exists=True)


def downgrade() -> None:
    op.create_index("ix_attempts_status", "attempts", ["status"], if_not_exists=True)
    op.drop_index("ix_attempts_status_channel_try", table_name="attempts", if_exists=True)
