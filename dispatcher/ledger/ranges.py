"""The key ranges of a run handed to Celery workers: who runs each, its heartbeat and its result.

Statuses::

    queued ──► running ──► done | stopped | failed          (the worker that runs it)
       │          │ ▲
       │          ▼ │ claimed again when its heartbeat is stale (its worker died)
       └────► stopping ──► stopped                          (the daemon asks; the worker stops between messages)

A range is run by whoever claims it: a task claims a queued range, or a running one whose heartbeat is older than
``stale_after`` (a worker killed mid-range; its task redelivered, or published again by the daemon). A second task
for a range that is being run does nothing, so a task redelivered while its first worker still works (Redis
redelivers an unacknowledged task after the visibility timeout) costs nothing. Ranges are claimed only while
their run is ``running``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import run_ranges, runs

ENDED = ("done", "stopped", "failed")
"""Statuses of a range whose worker reported its result."""


@dataclass(frozen=True, slots=True)
class RangeRow:
    number: int
    status: str
    worker: str | None
    starts: int
    accounts: int
    planned: int
    result: str | None
    updated_at: datetime


def open_ranges(engine: Engine, run_id: int, count: int, now: datetime) -> None:
    """Record ranges 1 to ``count`` of ``run_id`` as ``queued``, in place of any it had: a daemon that took the run
    over plans it again (a worker still on an old range hears it at its next heartbeat and stops)."""
    rows = [{"run_id": run_id, "number": n, "status": "queued", "updated_at": now} for n in range(1, count + 1)]

    def replace(connection: Connection) -> int:
        connection.execute(delete(run_ranges).where(run_ranges.c.run_id == run_id))
        return int(connection.execute(insert(run_ranges), rows).rowcount)

    _write(engine, "record the run's key ranges", replace)


def claim_range(engine: Engine, run_id: int, number: int, worker: str, now: datetime,
                stale_after: timedelta) -> bool:
    """Make ``worker`` the one running the range; False when another runs it, it ended or its run did."""
    running_run = exists().where(runs.c.id == run_id, runs.c.status == "running")
    statement = update(run_ranges).where(
        run_ranges.c.run_id == run_id, run_ranges.c.number == number, running_run,
        or_(run_ranges.c.status == "queued",
            and_(run_ranges.c.status == "running", run_ranges.c.updated_at < now - stale_after)),
    ).values(status="running", worker=worker, starts=run_ranges.c.starts + 1, accounts=0, planned=0, updated_at=now)
    return _write(engine, "claim a key range", lambda c: c.execute(statement).rowcount) == 1


def beat(engine: Engine, run_id: int, number: int, worker: str, now: datetime, accounts: int, planned: int) -> bool:
    """``worker`` still runs the range (``accounts`` read and ``planned`` booked so far); False when it should stop
    (the daemon asked, or another claimed it)."""
    statement = update(run_ranges).where(
        run_ranges.c.run_id == run_id, run_ranges.c.number == number, run_ranges.c.worker == worker,
        run_ranges.c.status == "running").values(updated_at=now, accounts=accounts, planned=planned)
    return _write(engine, "renew a key range", lambda c: c.execute(statement).rowcount) == 1


def end_range(engine: Engine, run_id: int, number: int, worker: str, status: str, result: str,
              now: datetime, accounts: int, planned: int) -> bool:
    """Record the range's result; False when another worker claimed it meanwhile (its result counts)."""
    statement = update(run_ranges).where(
        run_ranges.c.run_id == run_id, run_ranges.c.number == number, run_ranges.c.worker == worker,
        run_ranges.c.status.in_(("running", "stopping"))).values(status=status, result=result, updated_at=now,
                                                                  accounts=accounts, planned=planned)
    return _write(engine, "record a key range's result", lambda c: c.execute(statement).rowcount) == 1


def stop_ranges(engine: Engine, run_id: int, now: datetime) -> int:
    """Ask the workers of the run's ranges to stop between messages; a range not started yet ends ``stopped``."""
    asked = update(run_ranges).where(run_ranges.c.run_id == run_id, run_ranges.c.status == "running").values(
        status="stopping", updated_at=now)
    never = update(run_ranges).where(run_ranges.c.run_id == run_id, run_ranges.c.status == "queued").values(
        status="stopped", updated_at=now)

    def both(connection: Connection) -> int:
        return int(connection.execute(asked).rowcount) + int(connection.execute(never).rowcount)

    return _write(engine, "stop the run's key ranges", both)


def keep_results(engine: Engine, run_id: int, results: Mapping[int, str]) -> None:
    """Replace the ranges' recorded results (the daemon keeps their counts once it merged their ids)."""
    statement = update(run_ranges).where(run_ranges.c.run_id == run_id, run_ranges.c.number == bindparam("b_number")
                                         ).values(result=bindparam("b_result"))
    rows = [{"b_number": number, "b_result": result} for number, result in results.items()]
    if rows:
        _write(engine, "keep the key ranges' counts", lambda c: c.execute(statement, rows).rowcount)


def read_ranges(engine: Engine, run_id: int, *, results: bool = True) -> list[RangeRow]:
    """The run's ranges in order; without their results (``result`` None) unless ``results``: a daemon that polls
    them reads each result once, with :func:`read_result`, when its range ended."""
    columns = [c for c in run_ranges.c if results or c.name != "result"]
    query = select(*columns).where(run_ranges.c.run_id == run_id).order_by(run_ranges.c.number)
    try:
        with engine.connect() as connection:
            return [RangeRow(int(r.number), r.status, r.worker, int(r.starts), int(r.accounts), int(r.planned),
                             r.result if results else None, r.updated_at)
                    for r in connection.execute(query)]
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot read the run's key ranges: {exc}") from exc


def read_result(engine: Engine, run_id: int, number: int) -> str | None:
    """The result a range's worker recorded (None while it runs, or for a range stopped before it could report)."""
    query = select(run_ranges.c.result).where(run_ranges.c.run_id == run_id, run_ranges.c.number == number)
    try:
        with engine.connect() as connection:
            return connection.execute(query).scalar()
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot read key range {number}'s result: {exc}") from exc


def _write(engine: Engine, what: str, work: Callable[[Connection], int]) -> int:
    try:
        with engine.begin() as connection:
            return int(work(connection))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot {what}: {exc}") from exc
