"""Attempts carry a hash of the full address, so caps and suppressions can follow a borrower's number.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("address_hash", sa.String(64)))
    op.create_index("ix_attempts_address_hash", "attempts", ["address_hash"])
    op.create_index("ix_suppressions_address_hash", "suppressions", ["address_hash"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_address_hash", "suppressions")
    op.drop_index("ix_attempts_address_hash", "attempts")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("address_hash")
