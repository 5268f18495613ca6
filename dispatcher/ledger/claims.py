"""The statements of an attempt's life, each on a given connection so several share one transaction.

``planned → claimed`` (a deliverer took it, nothing handed over yet) → ``sending``
(handed to the channel: from here a crash leaves the outcome in doubt) → an
outcome. A claim that never reached a channel is given back (``claimed →
planned``). :class:`dispatcher.ledger.group_commit.GroupCommitter` groups these
statements from many messages in flight into one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Date, DateTime, Insert, Table, bindparam, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.ledger.callbacks import apply_parked
from dispatcher.ledger.tables import attempts
from dispatcher.records import record

STILL_PLANNED = (attempts.c.status + "") == "planned"
"""``status = 'planned'``, checked on rows found by their key (reminder, account): written plainly, SQLite would walk
every planned attempt in the status index instead of looking the key up."""

IN_CHUNK = 500
"""Ids per ``IN (...)`` list."""

_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = IN_CHUNK) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_ignoring_conflicts(dialect: str, table: Table) -> Insert:
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()


@record
class AttemptOutcome:
    """The final facts of one try, written after the provider answered."""

    attempt_id: int
    status: str
    provider_message_id: str | None = None
    error_code: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    template: str | None = None
    template_version: str | None = None
    content_hash: str | None = None
    provider: str | None = None
    rule_id: str | None = None
    detail: str | None = None
    duration_ms: int | None = None
    attempted_at: datetime | None = None  # when it was handed to the channel (set here when no hand-over was)


@record
class GiveBack:
    """A claim given back (``claimed → planned``), with why when it is held (a template that fails)."""

    attempt_id: int
    error_code: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    rule_id: str | None = None


def _move(connection: Connection, ids: Sequence[int], old: str, new: str, now: datetime, *,
          attempted: bool = False) -> set[int]:
    """``old → new`` for ``ids``; returns the ids this call moved.

    The statement is written for the driver directly: it runs for every few messages
    in flight, and building it with SQLAlchemy cost ten times what SQLite takes to run it.
    """
    mark = _placeholder(connection)
    stamp = _db_time(connection, now)
    attempted_sql = f", attempted_at = {mark}" if attempted else ""
    status = "+status" if connection.dialect.name == "sqlite" else "status"  # SQLite: look ids up, not statuses
    moved: set[int] = set()
    for chunk in chunks(ids):
        sql = (f"UPDATE attempts SET status = {mark}, updated_at = {mark}{attempted_sql} "
               f"WHERE id IN ({', '.join([mark] * len(chunk))}) AND {status} = {mark} RETURNING id")
        params = (new, stamp, *((stamp,) if attempted else ()), *chunk, old)
        moved.update(int(row[0]) for row in _driver(connection, sql, params))
    return moved


def claim(connection: Connection, ids: Sequence[int], now: datetime) -> set[int]:
    """``planned → claimed``; returns the ids this call moved (the others belong to someone else)."""
    return _move(connection, ids, "planned", "claimed", now)


def hand_over(connection: Connection, ids: Sequence[int], now: datetime) -> set[int]:
    """``claimed → sending`` just before the channel is called; ``attempted_at`` is that moment."""
    return _move(connection, ids, "claimed", "sending", now, attempted=True)


def _placeholder(connection: Connection) -> str:
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def _db_time(connection: Connection, moment: datetime) -> Any:
    """``moment`` as :class:`~dispatcher.ledger.tables.UtcDateTime` stores it on this engine."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(sep=" ", timespec="microseconds") if connection.dialect.name == "sqlite" else naive


def _driver(connection: Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """Run ``sql`` on this transaction's driver connection; the rows it returns."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


def _driver_many(connection: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    cursor = connection.connection.cursor()
    try:
        cursor.executemany(sql, [tuple(row) for row in rows])
    finally:
        cursor.close()


ROWS_PER_INSERT = 500
"""Rows per multi-row ``INSERT`` of :func:`insert_new` (fewer when the driver's limit of parameters is lower)."""

_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
"""The most parameters one statement may bind: SQLite's limit (PostgreSQL allows 65,535)."""


@dataclass(frozen=True, slots=True)
class Inserts:
    """Multi-row ``INSERT`` statements with their parameters, built ahead of running them
    (:func:`insert_new`)."""

    statements: list[tuple[str, list[Any]]]
    returning: bool

    def run(self, connection: Connection) -> list[tuple[Any, ...]]:
        """Run them in ``connection``'s transaction: the returned columns of the rows inserted."""
        found: list[tuple[Any, ...]] = []
        if not self.statements:
            return found
        cursor = connection.connection.cursor()
        try:
            for sql, params in self.statements:
                cursor.execute(sql, params)
                if self.returning:
                    found.extend(tuple(row) for row in cursor.fetchall())
        finally:
            cursor.close()
        return found


def insert_new(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]],
               returning: Sequence[str] = (), *, ignore_conflicts: bool = True) -> Inserts:
    """The statements that insert ``rows`` (each with the same keys), those in conflict with a row there left out
    when ``ignore_conflicts``; they return the ``returning`` columns of the rows inserted.

    A booking inserts a batch's attempts, reminders and decisions in one transaction; built with SQLAlchemy the
    statements cost twice what the driver takes to run them (a bind processor called per row and timestamp,
    where a batch has one or two moments), so they are written for the driver, in multi-row ``VALUES``.
    Timestamps are stored as :class:`~dispatcher.ledger.tables.UtcDateTime` stores them, dates as
    SQLAlchemy's ``Date`` does. Built before the transaction writes, they keep the ledger's write gate
    (SQLite) for the writes alone.
    """
    if not rows:
        return Inserts([], bool(returning))
    names = list(rows[0])
    quote = connection.dialect.identifier_preparer.quote
    mark = _placeholder(connection)
    on_sqlite = connection.dialect.name == "sqlite"
    stored: dict[Any, Any] = {}

    def value(item: Any) -> Any:
        if isinstance(item, date):  # datetimes too; a batch holds a few distinct moments
            found = stored.get(item)
            if found is None:
                if isinstance(item, datetime):
                    if item.tzinfo is None:  # as UtcDateTime refuses it
                        raise ValueError("naive datetime given to the ledger; pass an aware one")
                    found = _db_time(connection, item)
                else:
                    found = item.isoformat() if on_sqlite else item
                stored[item] = found
            return found
        return item

    def parameters(chunk: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The chunk's values row by row; only the date and time columns' are converted (a call per value of every
        column cost as much as running the statement)."""
        columns = [[row[name] for row in chunk] for name in names]
        for at, name in enumerate(names):
            if _temporal(table.c[name]):
                columns[at] = [value(item) for item in columns[at]]
        return [item for values in zip(*columns, strict=True) for item in values]

    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in names)}) VALUES "
    tail = (" ON CONFLICT DO NOTHING" if ignore_conflicts else "") + (
        f" RETURNING {', '.join(quote(name) for name in returning)}" if returning else "")
    one = f"({', '.join([mark] * len(names))})"
    return Inserts([(head + ", ".join([one] * len(chunk)) + tail, parameters(chunk))
                    for chunk in chunks(rows, max(1, min(ROWS_PER_INSERT, _PARAMETERS // len(names))))],
                   bool(returning))


def _temporal(column: Any) -> bool:
    """Whether ``column`` holds dates or times (``UtcDateTime``, ``Date``): the values :func:`insert_new` converts."""
    kind = getattr(column.type, "impl", column.type)  # a TypeDecorator's stored type
    return isinstance(kind, Date | DateTime)


def give_back(connection: Connection, backs: Sequence[GiveBack], now: datetime) -> None:
    """``claimed → planned``: nothing was handed over. A held claim keeps its reason (error fields)."""
    plain = [b.attempt_id for b in backs if b.error_code is None and b.rule_id is None]
    for chunk in chunks(plain):
        connection.execute(update(attempts).where(attempts.c.id.in_(chunk), attempts.c.status == "claimed")
                           .values(status="planned", attempted_at=None, updated_at=now))
    noted = [{"b_id": b.attempt_id, "b_code": b.error_code, "b_class": b.error_class, "b_message": b.error_message,
              "b_rule": b.rule_id, "b_now": now} for b in backs if b.error_code is not None or b.rule_id is not None]
    if noted:
        connection.execute(
            update(attempts).where(attempts.c.id == bindparam("b_id"), attempts.c.status == "claimed")
            .values(status="planned", attempted_at=None, updated_at=bindparam("b_now"),
                    error_code=bindparam("b_code"), error_class=bindparam("b_class"),
                    error_message=bindparam("b_message"), rule_id=bindparam("b_rule")), noted)


def insert_try(connection: Connection, row: Mapping[str, Any]) -> int | None:
    """Insert one further try (a retry, a fallback channel); ``None`` when that try exists already."""
    statement = insert_ignoring_conflicts(connection.dialect.name, attempts).returning(attempts.c.id)
    values = dict(row)
    if "variant" not in values:  # a further try keeps the reminder's template variant (an experiment's arm)
        values["variant"] = connection.execute(
            select(attempts.c.variant).where(attempts.c.reminder_key == values["reminder_key"],
                                             attempts.c.try_no >= literal_column("1"),  # the claim index
                                             attempts.c.variant.is_not(None)).limit(1)).scalar()
    found = connection.execute(statement, [values]).all()
    return int(found[0].id) if found else None


def _plain_send(outcome: AttemptOutcome) -> bool:
    """A try the provider accepted, with every fact of the send and nothing else (nearly all of them)."""
    nothing_else = (outcome.error_code, outcome.error_class, outcome.error_message, outcome.rule_id, outcome.detail)
    every_fact = (outcome.template, outcome.template_version, outcome.content_hash, outcome.provider,
                  outcome.duration_ms, outcome.attempted_at)
    return outcome.status == "sent" and all(v is None for v in nothing_else) and None not in every_fact


_SENT_SQL = ("UPDATE attempts SET status = 'sent', provider_message_id = {m}, updated_at = {m}, template = {m}, "
             "template_version = {m}, content_hash = {m}, provider = {m}, duration_ms = {m}, attempted_at = {m}, "
             "error_code = NULL, error_class = NULL, error_message = NULL, rule_id = NULL WHERE id = {m}")
"""The outcome of a plain send (nearly every outcome), written for the driver directly."""

_ANY_PARKED = "SELECT 1 FROM early_callbacks LIMIT 1"

_OUTCOME = (
    update(attempts)
    .where(attempts.c.id == bindparam("b_id"))
    .values(status=bindparam("b_status"), provider_message_id=bindparam("b_pmid"),
            error_code=bindparam("b_code"), error_class=bindparam("b_class"),
            error_message=bindparam("b_message"), updated_at=bindparam("b_now"),
            template=func.coalesce(bindparam("b_template"), attempts.c.template),
            template_version=func.coalesce(bindparam("b_version"), attempts.c.template_version),
            content_hash=func.coalesce(bindparam("b_hash"), attempts.c.content_hash),
            provider=func.coalesce(bindparam("b_provider"), attempts.c.provider),
            rule_id=bindparam("b_rule"),
            detail=func.coalesce(bindparam("b_detail"), attempts.c.detail),
            duration_ms=func.coalesce(bindparam("b_ms"), attempts.c.duration_ms),
            attempted_at=func.coalesce(bindparam("b_attempted"), attempts.c.attempted_at))
)


def write_outcomes(connection: Connection, outcomes: Sequence[AttemptOutcome], now: datetime) -> None:
    """Write the providers' answers for a group of tries, and any status callback that came first."""
    if not outcomes:
        return
    plain: list[tuple[Any, ...]] = []
    other: list[dict[str, Any]] = []
    stamp = _db_time(connection, now)
    for o in outcomes:
        if _plain_send(o):
            plain.append((o.provider_message_id, stamp, o.template, o.template_version, o.content_hash, o.provider,
                          o.duration_ms, _db_time(connection, o.attempted_at or now), o.attempt_id))
        else:
            other.append({"b_id": o.attempt_id, "b_status": o.status, "b_pmid": o.provider_message_id,
                          "b_code": o.error_code, "b_class": o.error_class, "b_message": o.error_message,
                          "b_now": now, "b_template": o.template, "b_version": o.template_version,
                          "b_hash": o.content_hash, "b_provider": o.provider, "b_rule": o.rule_id,
                          "b_detail": o.detail, "b_ms": o.duration_ms, "b_attempted": o.attempted_at})
    if plain:
        _driver_many(connection, _SENT_SQL.format(m=_placeholder(connection)), plain)
    if other:
        connection.execute(_OUTCOME, other)
    pmids = [o.provider_message_id for o in outcomes if o.provider_message_id]
    if pmids and _driver(connection, _ANY_PARKED, ()):  # a callback came before its outcome: almost never
        apply_parked(connection, pmids, now)
