"""Initial ledger: runs, reminders, attempts, rejects, suppressions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("fire_time", UtcDateTime, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config_version", sa.String(32), nullable=False),
        sa.Column("daemon_id", sa.String(64), nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime),
        sa.Column("counts", sa.Text),
        sa.UniqueConstraint("name", "fire_time", name="uq_runs_name_fire_time"),
    )
    op.create_table(
        "reminders",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("due_date", sa.Date, nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("occurrence", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("key", name="uq_reminders_key"),
    )
    op.create_index("ix_reminders_account_id", "reminders", ["account_id"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("reminder_key", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("occurrence", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("try_no", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("address", sa.String(255)),
        sa.Column("provider", sa.String(32)),
        sa.Column("template", sa.String(64)),
        sa.Column("template_version", sa.String(32)),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("provider_message_id", sa.String(128)),
        sa.Column("error_code", sa.String(32)),
        sa.Column("error_class", sa.String(16)),
        sa.Column("error_message", sa.Text),
        sa.Column("rule_id", sa.String(32)),
        sa.Column("detail", sa.Text),
        sa.Column("not_before", UtcDateTime),
        sa.Column("parent_id", sa.Integer),
        sa.Column("run_id", sa.Integer),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("attempted_at", UtcDateTime),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_attempts_account_id", "attempts", ["account_id"])
    op.create_index("ix_attempts_provider_message_id", "attempts", ["provider_message_id"])
    op.create_index("ix_attempts_status", "attempts", ["status"])
    op.create_index("ix_attempts_created_at", "attempts", ["created_at"])
    op.create_index(
        "uq_attempts_claim",
        "attempts",
        ["reminder_key", "channel", "try_no"],
        unique=True,
        sqlite_where=sa.text("try_no >= 1"),
        postgresql_where=sa.text("try_no >= 1"),
    )
    op.create_table(
        "rejects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer),
        sa.Column("account_id", sa.String(128)),
        sa.Column("field", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("address_hash", sa.String(64), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(128)),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("lifted_at", UtcDateTime),
    )
    op.create_index("ix_suppressions_lookup", "suppressions", ["channel", "address_hash"])


def downgrade() -> None:
    for table in ("suppressions", "rejects", "attempts", "reminders", "runs"):
        op.drop_table(table)
