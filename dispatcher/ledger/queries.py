"""Read-only listings of the ledger for people: attempts, runs, rejected rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from dispatcher.ledger.claims import chunks
from dispatcher.ledger.tables import attempts, rejects, reminders, runs

ATTEMPT_FIELDS = (
    "id", "account_id", "step", "bucket", "occurrence", "channel", "try_no", "status", "address", "provider",
    "provider_message_id", "error_code", "error_class", "error_message", "rule_id", "detail", "not_before",
    "template", "template_version", "content_hash", "parent_id", "run_id", "reminder_key", "created_at",
    "attempted_at", "updated_at", "answered_by", "call_duration", "variant",
)
"""Columns of an attempt as listed by ``dispatcher attempts``."""


@dataclass(frozen=True, slots=True)
class AttemptFilter:
    """Which attempts to list; ``None`` means any."""

    account_id: str | None = None
    since: datetime | None = None
    status: str | None = None
    channel: str | None = None
    run_id: int | None = None
    limit: int | None = None


def iter_attempts(engine: Engine, where: AttemptFilter) -> Iterator[dict[str, Any]]:
    """Attempts matching ``where``, oldest first, streamed."""
    columns = [reminders.c.bucket if name == "bucket" else attempts.c[name] for name in ATTEMPT_FIELDS]
    joined = attempts.outerjoin(reminders, reminders.c.key == attempts.c.reminder_key)
    query = select(*columns).select_from(joined).order_by(attempts.c.id)
    if where.account_id is not None:
        query = query.where(attempts.c.account_id == where.account_id)
    if where.since is not None:
        query = query.where(attempts.c.created_at >= where.since)
    if where.status is not None:
        query = query.where(attempts.c.status == where.status)
    if where.channel is not None:
        query = query.where(attempts.c.channel == where.channel)
    if where.run_id is not None:
        query = query.where(attempts.c.run_id == where.run_id)
    if where.limit is not None:
        query = query.limit(where.limit)
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=1000).execute(query).mappings():
            yield dict(row)


def list_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The latest runs, newest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in rows]


def list_rejects(engine: Engine, run_id: int | None = None, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    """The newest ``limit`` rejected source rows (account id, field, reason; every one when ``limit`` is 0), newest
    first, and how many there are in all."""
    query = select(rejects).order_by(rejects.c.id.desc())
    total = select(func.count()).select_from(rejects)
    if run_id is not None:
        query, total = query.where(rejects.c.run_id == run_id), total.where(rejects.c.run_id == run_id)
    if limit:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(query).mappings().all()]
        return rows, int(connection.execute(total).scalar_one()) if limit and len(rows) == limit else len(rows)


def attempt_statuses(engine: Engine, attempt_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """attempt id → (status, error code) of the given attempts."""
    found: dict[int, tuple[str, str | None]] = {}
    with engine.connect() as connection:
        for chunk in chunks(sorted(attempt_ids)):
            query = select(attempts.c.id, attempts.c.status, attempts.c.error_code).where(attempts.c.id.in_(chunk))
            found.update((int(row.id), (row.status, row.error_code)) for row in connection.execute(query))
    return found
