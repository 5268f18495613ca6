"""Run records: each scheduled run (name, fire time) fires once, under a lease its daemon renews.

Several daemons may run side by side. The first to insert (name, fire_time)
carries the run out and renews its lease while it works; if it dies, the lease
runs out and another daemon takes the run over. A takeover repeats planning, not
sending: every reminder is claimed in the ledger, so nothing goes out twice.

Statuses::

    running ──► completed | failed | interrupted     (its daemon ends it: finish / fail)
       │  ▲
       ▼  │ takeover (start), or its own daemon renews again
    abandoned ──► closed                             (an operator: close)

A ``running`` run whose lease ran out is *shown* as ``abandoned`` at once
(:func:`shown_status`) and stored as such by :meth:`RunLedger.abandon_expired`.
An abandoned run keeps ``finished_at`` NULL (it did not finish and may still be
taken over) and its ``lease_until``: the last moment its daemon was known to hold it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import attempts, runs
from dispatcher.masking import mask_text

DEFAULT_LEASE = timedelta(seconds=60)
"""How long a run stays its daemon's without renewal."""

DEFAULT_HORIZON = timedelta(days=1)
"""Orphaned runs whose fire time is older than this are left alone (shown abandoned, never taken over)."""

OPEN = ("running", "abandoned")
"""Statuses of a run that has not ended: it may be renewed, taken over, finished or closed."""

ENDED = ("completed", "failed", "interrupted", "closed")
"""Statuses of a run that has ended for good."""

FAILED = ("failed", "abandoned")
"""Statuses that make a run name unhealthy."""

UNSETTLED = ("planned", "claimed", "sending")
"""Attempt statuses a closed run leaves for the next run (planned) and the reconciler (claimed, sending)."""

ERROR_LIMIT = 500
"""Characters of an error message kept on the run."""

CLOSED_BY_OPERATOR = "closed by an operator"
"""The ``error`` of a run ended with ``dispatcher runs --close``."""


def one_line(message: str, limit: int = ERROR_LIMIT) -> str:
    """``message`` on one line (whitespace runs collapsed), personal data masked, cut to ``limit`` characters."""
    text = mask_text(" ".join(message.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown_status(status: str, lease_until: datetime | None, now: datetime) -> str:
    """The status to show at ``now``: a ``running`` run whose lease ran out is ``abandoned``."""
    if status == "running" and (lease_until is None or lease_until < now):
        return "abandoned"
    return status


def _expired(now: datetime) -> ColumnElement[bool]:
    """SQL: the run is stored ``running`` but its lease ran out (or it never had one)."""
    return and_(runs.c.status == "running", or_(runs.c.lease_until.is_(None), runs.c.lease_until < now))


def shown_status_column(now: datetime) -> ColumnElement[str]:
    """SQL twin of :func:`shown_status`."""
    return case((_expired(now), "abandoned"), else_=runs.c.status)


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What :meth:`RunLedger.close` did: ``closed``, or the ``refusal`` (one line) and nothing written.

    ``previous`` is the status shown before (None: no such run); ``live_lease`` says the
    run's daemon still held its lease (closed only with ``force``); ``unsettled`` counts
    the run's attempts still ``planned``, ``claimed`` or ``sending``.
    """

    run_id: int
    closed: bool
    refusal: str | None = None
    name: str | None = None
    fire_time: datetime | None = None
    previous: str | None = None
    daemon_id: str | None = None
    live_lease: bool = False
    unsettled: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NameSummary:
    """The latest runs of one run name, for ``/metrics`` and ``/healthz`` (statuses as shown)."""

    name: str
    latest_status: str
    latest_fire_time: datetime
    last_ended_status: str | None  # the latest run that is not running (abandoned counts)
    last_success: datetime | None  # the latest finished_at of a completed run

    @property
    def failing(self) -> bool:
        """Whether the latest run failed or was abandoned (a newer run of the name clears it)."""
        return self.latest_status in FAILED


class RunLedger:
    """Starting, renewing, taking over, finishing, failing, abandoning and closing runs."""

    def __init__(self, engine: Engine, lease: timedelta = DEFAULT_LEASE) -> None:
        self.engine = engine
        self.lease = lease

    def start(self, name: str, fire_time: datetime, version: str, daemon_id: str, now: datetime) -> int | None:
        """Own run (name, fire_time): a new one, or one abandoned or whose lease ran out. ``None``: not ours."""
        row = {"name": name, "fire_time": fire_time, "status": "running", "config_version": version,
               "daemon_id": daemon_id, "started_at": now, "lease_until": now + self.lease, "takeovers": 0}
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        insert = dialect.insert(runs).on_conflict_do_nothing().returning(runs.c.id)
        takeover = (
            update(runs)
            .where(runs.c.name == name, runs.c.fire_time == fire_time,
                   or_(_expired(now), runs.c.status == "abandoned"))
            .values(status="running", daemon_id=daemon_id, lease_until=now + self.lease,
                    takeovers=runs.c.takeovers + 1)
            .returning(runs.c.id)
        )
        try:
            with self.engine.begin() as connection:
                found = connection.execute(insert, [row]).all() or connection.execute(takeover).all()
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot start run {name}: {exc}") from exc
        return int(found[0].id) if found else None

    def renew(self, run_id: int, daemon_id: str, now: datetime) -> bool:
        """Extend the lease; False when the run was taken over or ended (closed by an operator).

        A run marked abandoned that no other daemon took yet is ``running`` again.
        """
        statement = (update(runs).where(runs.c.id == run_id, runs.c.daemon_id == daemon_id, runs.c.status.in_(OPEN))
                     .values(status="running", lease_until=now + self.lease))
        return self._update(statement, f"renew run {run_id}")

    def finish(self, run_id: int, status: str, counts: Mapping[str, int], now: datetime,
               daemon_id: str | None = None) -> bool:
        """Record the run's end; False (and nothing written) when it was taken over or has ended already.

        ``daemon_id`` None finishes the run whoever holds it (tools, tests).
        """
        return self._end(run_id, {"status": status}, counts, now, daemon_id)

    def fail(self, run_id: int, error: str, counts: Mapping[str, int], now: datetime,
             daemon_id: str | None = None) -> bool:
        """End the run ``failed`` with ``error`` (made one line) as its cause; False as for :meth:`finish`."""
        return self._end(run_id, {"status": "failed", "error": one_line(error)}, counts, now, daemon_id)

    def note_task_failure(self, run_id: int, error: str) -> bool:
        """Count one Celery task of the run that raised; ``error`` (one line, 500 characters) is kept as latest."""
        statement = (update(runs).where(runs.c.id == run_id)
                     .values(task_failures=runs.c.task_failures + 1, error=one_line(error)))
        return self._update(statement, f"note a task failure of run {run_id}")

    def task_failures(self, run_id: int) -> tuple[int, str | None]:
        """(tasks of the run that raised, the run's error); (0, None) when there is no such run."""
        query = select(runs.c.task_failures, runs.c.error).where(runs.c.id == run_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return (int(row.task_failures), row.error) if row else (0, None)

    def abandon_expired(self, now: datetime) -> list[int]:
        """Mark ``abandoned`` every ``running`` run whose lease ran out; their ids.

        ``finished_at`` stays NULL and ``lease_until`` is kept (see the module docstring).
        """
        statement = update(runs).where(_expired(now)).values(status="abandoned").returning(runs.c.id)
        try:
            with self.engine.begin() as connection:
                return sorted(int(row.id) for row in connection.execute(statement))
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot mark abandoned runs: {exc}") from exc

    def close(self, run_id: int, now: datetime, *, force: bool = False) -> CloseResult:
        """End a run that will never finish: ``closed``, finished now, lease cleared, error "closed by an operator".

        Refused (nothing written) when there is no such run, when it has ended, and when
        its daemon still holds its lease, unless ``force``.
        """
        try:
            with self.engine.begin() as connection:
                return self._close(connection, run_id, now, force)
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot close run {run_id}: {exc}") from exc

    def happened(self, name: str, fire_time: datetime) -> bool:
        """Whether run (name, fire_time) was started by any daemon."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(runs.c.id).where(and_(runs.c.name == name, runs.c.fire_time == fire_time))).first() is not None

    def orphaned(self, now: datetime, horizon: timedelta = DEFAULT_HORIZON) -> list[tuple[str, datetime]]:
        """Runs to take over: abandoned, or running with an expired lease, fired within ``horizon`` of ``now``."""
        query = (select(runs.c.name, runs.c.fire_time)
                 .where(or_(_expired(now), runs.c.status == "abandoned"), runs.c.fire_time > now - horizon)
                 .order_by(runs.c.fire_time, runs.c.id))
        with self.engine.connect() as connection:
            return [(row.name, row.fire_time) for row in connection.execute(query)]

    def summaries(self, now: datetime) -> list[NameSummary]:
        """Per run name, its latest run, latest ended run and last success: one grouped query."""
        shown = select(runs.c.name, shown_status_column(now).label("shown"), runs.c.fire_time,
                       runs.c.finished_at).subquery()
        query = (select(shown.c.name, shown.c.shown, func.max(shown.c.fire_time).label("fire_time"),
                        func.max(shown.c.finished_at).label("finished_at"))
                 .group_by(shown.c.name, shown.c.shown))
        groups: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                groups.setdefault(row.name, {})[row.shown] = row
        return [_summary(name, by_status) for name, by_status in sorted(groups.items())]

    def _close(self, connection: Connection, run_id: int, now: datetime, force: bool) -> CloseResult:
        row = connection.execute(select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            return CloseResult(run_id, False, f"run #{run_id} does not exist")
        previous = shown_status(row.status, row.lease_until, now)
        about = {"name": row.name, "fire_time": row.fire_time, "previous": previous, "daemon_id": row.daemon_id,
                 "live_lease": previous == "running"}
        refusal = _close_refusal(run_id, row, previous, force)
        if refusal:
            return CloseResult(run_id, False, refusal, **about)
        closable = runs.c.status.in_(OPEN) if force else or_(_expired(now), runs.c.status == "abandoned")
        moved = connection.execute(
            update(runs).where(runs.c.id == run_id, closable)
            .values(status="closed", finished_at=now, lease_until=None, error=CLOSED_BY_OPERATOR)).rowcount
        if not moved:
            return CloseResult(run_id, False, f"run #{run_id} changed while closing it; look again", **about)
        return CloseResult(run_id, True, None, unsettled=_unsettled(connection, run_id), **about)

    def _end(self, run_id: int, values: Mapping[str, Any], counts: Mapping[str, int], now: datetime,
             daemon_id: str | None) -> bool:
        owner = runs.c.daemon_id == daemon_id if daemon_id is not None else runs.c.id == run_id
        statement = (update(runs).where(runs.c.id == run_id, owner, runs.c.status.in_(OPEN))
                     .values(**values, finished_at=now, lease_until=None,
                             counts=json.dumps(dict(counts), sort_keys=True)))
        return self._update(statement, f"finish run {run_id}")

    def _update(self, statement: Any, what: str) -> bool:
        """Run one UPDATE; whether it changed a row."""
        try:
            with self.engine.begin() as connection:
                return bool(connection.execute(statement).rowcount)
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot {what}: {exc}") from exc


def _close_refusal(run_id: int, row: Any, previous: str, force: bool) -> str | None:
    """Why run ``row`` may not be closed (one line), or None."""
    if previous in ENDED:
        return f"run #{run_id} ({row.name}) has already ended: {previous}; nothing to close"
    if previous == "running" and not force:
        return (f"run #{run_id} ({row.name}) is running on {row.daemon_id} (lease until "
                f"{row.lease_until.isoformat()}); use --force if that daemon is gone")
    if previous not in OPEN:
        return f"run #{run_id} ({row.name}) has status {previous!r}; only running or abandoned runs can be closed"
    return None


def _unsettled(connection: Connection, run_id: int) -> dict[str, int]:
    """The run's attempts still planned, claimed or sending, by status (each present, zero or not)."""
    query = (select(attempts.c.status, func.count())
             .where(attempts.c.run_id == run_id, attempts.c.status.in_(UNSETTLED)).group_by(attempts.c.status))
    found = {status: int(count) for status, count in connection.execute(query)}
    return {status: found.get(status, 0) for status in UNSETTLED}


def _summary(name: str, by_status: Mapping[str, Any]) -> NameSummary:
    latest = max(by_status.values(), key=lambda row: row.fire_time)
    ended = [row for status, row in by_status.items() if status != "running"]
    completed = by_status.get("completed")
    return NameSummary(
        name=name, latest_status=latest.shown, latest_fire_time=latest.fire_time,
        last_ended_status=max(ended, key=lambda row: row.fire_time).shown if ended else None,
        last_success=completed.finished_at if completed is not None else None,
    )
