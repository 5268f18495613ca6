"""The report's ledger figures, each one grouped query over ``attempts`` or ``suppressions`` in a period.

An attempt belongs to the period by the moment it was made (``attempted_at``), or recorded
(``created_at``) when it was never made, as in :mod:`dispatcher.outcomes.measures`. Counts are
of ledger rows, so each equals what ``dispatcher attempts --status S`` lists for that period.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, select

from dispatcher.ledger.tables import attempts, suppressions
from dispatcher.report.period import Period

SENT = ("sent", "delivered", "undelivered")
"""Statuses of an attempt the provider accepted: ``sent``, then ``delivered`` or ``undelivered`` by its callback."""

FAILED = ("failed", "undelivered")
"""Statuses of an attempt that did not reach the borrower."""

DECIDED = ("suppressed", "deferred")
"""Statuses of a decision not to send (now, or ever), with the rule that made it."""

CHANNEL_STATUSES = ("sent", "delivered", "failed", "undelivered", "unknown", "suppressed", "deferred")
"""The columns of the table of attempts by channel."""

NONE = "none"
"""How an empty key (no error class, no rule id) is shown."""


@dataclass(frozen=True, slots=True)
class StepFunnel:
    """One ladder step: messages due (reminder × channel), sent, confirmed delivered, failed."""

    step: str
    due: int
    sent: int
    delivered: int
    failed: int


@dataclass(frozen=True, slots=True)
class Tally:
    """A count of attempts (or suppressions) under a key of one or more parts."""

    key: tuple[str, ...]
    count: int


@dataclass(frozen=True, slots=True)
class ChannelStatuses:
    """Attempts of one channel by status (:data:`CHANNEL_STATUSES`)."""

    channel: str
    counts: dict[str, int]


def moment() -> ColumnElement[Any]:
    """When an attempt happened: made, else recorded."""
    return func.coalesce(attempts.c.attempted_at, attempts.c.created_at)


def _in(period: Period) -> list[ColumnElement[bool]]:
    at = moment()
    return [at >= period.since, at < period.until]


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((condition, 1), else_=0))


def funnel(engine: Engine, period: Period, steps: Sequence[str] = ()) -> list[StepFunnel]:
    """Per step, in ladder order (``steps``) then by name: reminder channels due and what became of them."""
    due = (select(attempts.c.step, attempts.c.reminder_key, attempts.c.channel).where(*_in(period))
           .distinct().subquery())
    due_query = select(due.c.step, func.count()).group_by(due.c.step)
    status = attempts.c.status
    outcome_query = (select(attempts.c.step, _count(status.in_(SENT)), _count(status == "delivered"),
                            _count(status.in_(FAILED)))
                     .where(*_in(period)).group_by(attempts.c.step))
    with engine.connect() as connection:
        dues = {row[0]: int(row[1]) for row in connection.execute(due_query)}
        outcomes = {row[0]: tuple(int(n or 0) for n in row[1:]) for row in connection.execute(outcome_query)}
    return [StepFunnel(step, dues[step], *outcomes.get(step, (0, 0, 0))) for step in ordered(dues, steps)]


def channel_statuses(engine: Engine, period: Period) -> list[ChannelStatuses]:
    """Attempts per channel and status, channels by name."""
    query = (select(attempts.c.channel, attempts.c.status, func.count()).where(*_in(period))
             .group_by(attempts.c.channel, attempts.c.status))
    found: dict[str, dict[str, int]] = {}
    with engine.connect() as connection:
        for channel, status, count in connection.execute(query):
            if status in CHANNEL_STATUSES:
                found.setdefault(channel, dict.fromkeys(CHANNEL_STATUSES, 0))[status] = int(count)
    return [ChannelStatuses(channel, found[channel]) for channel in sorted(found)]


def failures(engine: Engine, period: Period) -> list[Tally]:
    """Failed and undelivered attempts by (channel, error class, error code), the most frequent first."""
    return _tallies(engine, (attempts.c.channel, attempts.c.error_class, attempts.c.error_code),
                    attempts.c.status.in_(FAILED), *_in(period))


def decisions(engine: Engine, period: Period) -> list[Tally]:
    """Suppressed and deferred attempts by (status, rule id), the most frequent first."""
    return _tallies(engine, (attempts.c.status, attempts.c.rule_id), attempts.c.status.in_(DECIDED), *_in(period))


def opt_outs(engine: Engine, period: Period) -> list[Tally]:
    """Addresses suppressed in the period by (source, channel, ``active`` or ``lifted``), the most frequent first."""
    active = suppressions.c.lifted_at.is_(None)  # grouped as it is: no bound value, the same SQL in both places
    found = _tallies(engine, (suppressions.c.source, suppressions.c.channel, active),
                     suppressions.c.created_at >= period.since, suppressions.c.created_at < period.until)
    return [Tally((*t.key[:2], "active" if t.key[2] in ("True", "1") else "lifted"), t.count) for t in found]


def _tallies(engine: Engine, keys: Sequence[ColumnElement[Any]], *where: ColumnElement[bool]) -> list[Tally]:
    query = select(*keys, func.count()).where(*where).group_by(*keys)
    with engine.connect() as connection:
        rows = [Tally(tuple(str(part) if part is not None else NONE for part in row[:-1]), int(row[-1]))
                for row in connection.execute(query)]
    return sorted(rows, key=lambda tally: (-tally.count, tally.key))


def ordered(found: Iterable[str], first: Sequence[str]) -> list[str]:
    """The keys of ``found`` in the order of ``first`` (the ladder's), the others after by name."""
    present = set(found)
    return [key for key in first if key in present] + sorted(present - set(first))
