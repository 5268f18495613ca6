"""Provider callbacks that arrive before their attempt's provider id is recorded wait here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "early_callbacks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("provider_message_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32)),
        sa.Column("received_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_early_callbacks_provider_message_id", "early_callbacks", ["provider_message_id"])


def downgrade() -> None:
    op.drop_table("early_callbacks")
