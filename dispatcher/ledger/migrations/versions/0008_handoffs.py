"""Hand-offs to people: one work item per occurrence of a ``handoff:`` step, and who did what with it.

``handoffs`` holds the work item (queue, priority, kind), its status (open →
claimed → closed), who claimed and closed it, the outcome and, for a promise to
pay, the day until which the ladder holds. ``handoff_events`` records every
action with its actor and time.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoffs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("reminder_key", sa.String(255), nullable=False),
        sa.Column("attempt_id", sa.Integer),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("due_date", sa.Date),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phone", sa.String(255)),
        sa.Column("phone_hash", sa.String(64)),
        sa.Column("borrower_hash", sa.String(64)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claimed_at", UtcDateTime),
        sa.Column("closed_by", sa.String(64)),
        sa.Column("closed_at", UtcDateTime),
        sa.Column("outcome", sa.String(32)),
        sa.Column("until", sa.Date),
        sa.Column("note", sa.Text),
        sa.Column("agents", sa.Text),
        sa.UniqueConstraint("reminder_key", name="uq_handoffs_reminder_key"),
    )
    op.create_index("ix_handoffs_account_id", "handoffs", ["account_id"])
    op.create_index("ix_handoffs_attempt_id", "handoffs", ["attempt_id"])
    op.create_index("ix_handoffs_borrower_hash", "handoffs", ["borrower_hash"])
    op.create_index("ix_handoffs_queue_status", "handoffs", ["queue", "status"])
    op.create_table(
        "handoff_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("handoff_id", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_handoff_events_handoff_id", "handoff_events", ["handoff_id"])


def downgrade() -> None:
    op.drop_table("handoff_events")
    op.drop_table("handoffs")
