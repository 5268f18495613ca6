"""Attempts carry the borrower's key (a hash of the account's primary address at contact time),
so caps counted per borrower see every loan of the same person.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("borrower_hash", sa.String(64)))
    op.create_index("ix_attempts_borrower_hash", "attempts", ["borrower_hash"])


def downgrade() -> None:
    op.drop_index("ix_attempts_borrower_hash", "attempts")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("borrower_hash")
