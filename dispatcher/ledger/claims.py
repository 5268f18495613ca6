"""The statements of an attempt's life, each on a given connection so several share one transaction.

``planned → claimed`` (a deliverer took it, nothing handed over yet) → ``sending``
(handed to the channel: from here a crash leaves the outcome in doubt) → an
outcome. A claim that never reached a channel is given back (``claimed →
planned``). :class:`dispatcher.ledger.group_commit.GroupCommitter` groups these
statements from many messages in flight into one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Insert, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.ledger.callbacks import apply_parked
from dispatcher.ledger.tables import attempts, early_callbacks

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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class GiveBack:
    """A claim given back (``claimed → planned``), with why when it is held (a template that fails)."""

    attempt_id: int
    error_code: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    rule_id: str | None = None


def _move(connection: Connection, ids: Sequence[int], old: str, values: Mapping[str, Any]) -> set[int]:
    moved: set[int] = set()
    for chunk in chunks(ids):
        rows = connection.execute(update(attempts).where(attempts.c.id.in_(chunk), attempts.c.status == old)
                                  .values(**values).returning(attempts.c.id))
        moved.update(int(row.id) for row in rows)
    return moved


def claim(connection: Connection, ids: Sequence[int], now: datetime) -> set[int]:
    """``planned → claimed``; returns the ids this call moved (the others belong to someone else)."""
    return _move(connection, ids, "planned", {"status": "claimed", "updated_at": now})


def hand_over(connection: Connection, ids: Sequence[int], now: datetime) -> set[int]:
    """``claimed → sending`` just before the channel is called; ``attempted_at`` is that moment."""
    return _move(connection, ids, "claimed", {"status": "sending", "attempted_at": now, "updated_at": now})


def give_back(connection: Connection, backs: Sequence[GiveBack], now: datetime) -> None:
    """``claimed → planned``: nothing was handed over. A held claim keeps its reason (error fields)."""
    plain = [b.attempt_id for b in backs if b.error_code is None and b.rule_id is None]
    _move(connection, plain, "claimed", {"status": "planned", "attempted_at": None, "updated_at": now})
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
    found = connection.execute(statement, [dict(row)]).all()
    return int(found[0].id) if found else None


def _plain_send(outcome: AttemptOutcome) -> bool:
    """A try the provider accepted, with every fact of the send and nothing else (nearly all of them)."""
    nothing_else = (outcome.error_code, outcome.error_class, outcome.error_message, outcome.rule_id, outcome.detail)
    every_fact = (outcome.template, outcome.template_version, outcome.content_hash, outcome.provider,
                  outcome.duration_ms)
    return outcome.status == "sent" and all(v is None for v in nothing_else) and None not in every_fact


_SENT = (update(attempts).where(attempts.c.id == bindparam("b_id"))
         .values(status="sent", provider_message_id=bindparam("b_pmid"), updated_at=bindparam("b_now"),
                 template=bindparam("b_template"), template_version=bindparam("b_version"),
                 content_hash=bindparam("b_hash"), provider=bindparam("b_provider"), duration_ms=bindparam("b_ms"),
                 error_code=None, error_class=None, error_message=None, rule_id=None))
"""The outcome of a plain send: fewer parameters than the general update, and no ``COALESCE``."""

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
            duration_ms=func.coalesce(bindparam("b_ms"), attempts.c.duration_ms))
)


def write_outcomes(connection: Connection, outcomes: Sequence[AttemptOutcome], now: datetime) -> None:
    """Write the providers' answers for a group of tries, and any status callback that came first."""
    if not outcomes:
        return
    plain: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for o in outcomes:
        if _plain_send(o):
            plain.append({"b_id": o.attempt_id, "b_pmid": o.provider_message_id, "b_now": now,
                          "b_template": o.template, "b_version": o.template_version, "b_hash": o.content_hash,
                          "b_provider": o.provider, "b_ms": o.duration_ms})
        else:
            other.append({"b_id": o.attempt_id, "b_status": o.status, "b_pmid": o.provider_message_id,
                          "b_code": o.error_code, "b_class": o.error_class, "b_message": o.error_message,
                          "b_now": now, "b_template": o.template, "b_version": o.template_version,
                          "b_hash": o.content_hash, "b_provider": o.provider, "b_rule": o.rule_id,
                          "b_detail": o.detail, "b_ms": o.duration_ms})
    if plain:
        connection.execute(_SENT, plain)
    if other:
        connection.execute(_OUTCOME, other)
    pmids = [o.provider_message_id for o in outcomes if o.provider_message_id]
    if pmids and connection.execute(select(early_callbacks.c.id).limit(1)).first() is not None:
        apply_parked(connection, pmids, now)
