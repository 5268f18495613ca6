"""The bucket (M1, M2 …) of a reminder's step, as the schedule named it when the reminder was booked.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reminders") as batch:
        batch.add_column(sa.Column("bucket", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("reminders") as batch:
        batch.drop_column("bucket")
