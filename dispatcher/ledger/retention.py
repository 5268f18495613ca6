"""Deleting ledger rows past retention (``dispatcher purge``); never rows younger than retention."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import ConfigError, LedgerError
from dispatcher.ledger.tables import attempts, early_callbacks, rejects, reminders, runs, suppressions


def purge(engine: Engine, older_than: timedelta, retention: timedelta, now: datetime, *,
          dry_run: bool = False) -> dict[str, int]:
    """Delete rows created before ``now - older_than``; refuses when ``older_than`` < ``retention``.

    Active suppressions (opt-outs still in force) are kept whatever their age.
    Returns the rows deleted (or, with ``dry_run``, that would be) per table.
    """
    if older_than < retention:
        years = f"{retention.days / 365:g} years, " if retention.days % 365 == 0 else ""
        raise ConfigError(f"refusing to purge rows younger than the retention period ({years}{retention.days} days); "
                          f"--older-than is {older_than.days} days")
    cutoff = now - older_than
    targets = [
        (attempts, attempts.c.created_at < cutoff),
        (reminders, reminders.c.created_at < cutoff),
        (rejects, rejects.c.created_at < cutoff),
        (runs, runs.c.started_at < cutoff),
        (suppressions, suppressions.c.lifted_at < cutoff),
        (early_callbacks, early_callbacks.c.received_at < cutoff),
    ]
    counts: dict[str, int] = {}
    try:
        with engine.begin() as connection:
            for table, condition in targets:
                if dry_run:
                    counts[table.name] = int(connection.execute(
                        select(func.count()).select_from(table).where(condition)).scalar_one())
                else:
                    counts[table.name] = int(connection.execute(delete(table).where(condition)).rowcount)
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot purge: {exc}") from exc
    return counts
