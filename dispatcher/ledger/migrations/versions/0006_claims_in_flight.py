"""Claims only for what is in flight, and runs that say why they stopped.

Attempts gain a status ``claimed`` (taken by a deliverer, not yet handed to a
channel: a crash puts it back to ``planned``); ``sending`` now means handed to
the channel, outcome not yet recorded (a crash asks the provider). Rows left
``sending`` by earlier versions were claimed in whole batches: they keep
``sending`` and are reconciled as before. Runs gain ``error`` (why a run failed,
one line) and ``task_failures`` (Celery tasks of the run that raised); a run
whose daemon died shows ``abandoned``. Attempts are indexed by run, which the
daemon and ``dispatcher runs`` count by.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("error", sa.Text))
        batch.add_column(sa.Column("task_failures", sa.Integer, nullable=False, server_default="0"))
    op.create_index("ix_attempts_run_id_status", "attempts", ["run_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_attempts_run_id_status", "attempts")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("task_failures")
        batch.drop_column("error")
