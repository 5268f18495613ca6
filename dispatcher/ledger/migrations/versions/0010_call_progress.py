"""Call progress on attempts of the ``voice`` channel: who answered (Twilio's ``AnsweredBy``) and for how long.

``answered_by`` is ``human``, ``machine_end_beep`` … ``unknown`` (answering-machine
detection); ``call_duration`` the seconds the call lasted (``CallDuration``). The
call caps count answered calls and conversations from them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("answered_by", sa.String(32)))
        batch.add_column(sa.Column("call_duration", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("call_duration")
        batch.drop_column("answered_by")
