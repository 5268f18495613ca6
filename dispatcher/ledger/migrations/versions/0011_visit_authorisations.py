"""Authorisations of field visits: who may visit for a ``visit`` hand-off, until when, and the code to check them.

A borrower checks a visitor's papers at ``dispatcher web``'s public ``/verify``
page with the letter's code; the lookup goes by the code's hash. Closed work items
also keep where a visit took place (``place``, masked) and an agreed repayment
plan (``plan``: JSON of its instalments and the overdue amount it starts from).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from dispatcher.ledger.tables import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "visit_authorisations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("handoff_id", sa.Integer, nullable=False, unique=True),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("collectors", sa.Text, nullable=False),
        sa.Column("valid_from", sa.Date, nullable=False),
        sa.Column("valid_until", sa.Date, nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("issued_by", sa.String(64), nullable=False),
        sa.Column("issued_at", UtcDateTime, nullable=False),
    )
    with op.batch_alter_table("handoffs") as batch:
        batch.add_column(sa.Column("place", sa.Text))
        batch.add_column(sa.Column("plan", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("handoffs") as batch:
        batch.drop_column("plan")
        batch.drop_column("place")
    op.drop_table("visit_authorisations")
