"""Every inbound reply is kept: sender masked and hashed, text masked, what it was read as and what it did.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_replies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_sid", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("keyword", sa.String(64)),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("recorded_at", UtcDateTime, nullable=False),
        sa.Column("read_at", UtcDateTime),
        sa.UniqueConstraint("message_sid", name="uq_inbound_replies_message_sid"),
    )
    op.create_index("ix_inbound_replies_address_hash", "inbound_replies", ["address_hash"])
    op.create_index("ix_inbound_replies_decision", "inbound_replies", ["decision"])


def downgrade() -> None:
    op.drop_table("inbound_replies")
