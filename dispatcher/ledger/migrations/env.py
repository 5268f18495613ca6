"""Alembic environment: runs on the connection handed over by dispatcher.ledger.database."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from dispatcher.ledger.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `dispatcher db upgrade`")
_run(connection)
