"""Deleting ledger rows past retention (``dispatcher purge``); never rows younger than retention.

What a purge keeps, whatever its age, so that it never changes who is contacted:

* every claim (attempt try ≥ 1), reduced to its reminder key, account id, step,
  occurrence, channel, try, status and rule id: the planner and booking decide
  "already sent" from these rows (:meth:`dispatcher.ledger.store.Ledger.book` and
  ``_load_claims``), so deleting one would send that reminder again. The addresses,
  their hashes, provider ids, error texts, details and content hashes are erased;
* the ``reminders`` rows of those claims (account id, due date, step, occurrence);
* active suppressions (opt-outs, dead numbers and tokens not lifted);
* every inbound reply's message id, channel, decision and times, so that a replayed
  reply (a captured, signed START) changes nothing; its sender, text and address
  hash are erased, except for replies a person has still to read (``unclear`` or
  ``other`` and unread), which are kept whole.

* hand-off work items still open or claimed, with their events.

Everything else older than the cut-off is deleted: decisions that never claimed
(deferrals, holds: the planner records them again if still due), rejects, runs and their key ranges,
lifted suppressions, parked callbacks, delinquencies cured before the cut-off (their
cure rates went with their attempts; an open one stays) and hand-offs closed before the cut-off with
their events and visit authorisations (the claim row of the hand-off attempt stays, so none is opened again).

A purge works in batches of at most :data:`PURGE_BATCH` rows, each statement
its own transaction, so a purge of millions of rows never holds one long lock:
runs, webhooks and the web app go on writing between two batches. An
interrupted purge leaves the ledger consistent (each batch is whole) and the
next one carries on. A dry run counts in one read-only pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import ConfigError, LedgerError
from dispatcher.ledger.tables import (
    attempts,
    delinquencies,
    early_callbacks,
    handoff_events,
    handoffs,
    inbound_replies,
    rejects,
    reminders,
    run_ranges,
    runs,
    suppressions,
    visit_authorisations,
)

PERSONAL_COLUMNS = ("address", "address_hash", "borrower_hash", "provider_message_id", "error_message", "detail",
                    "content_hash")
"""Columns of a claim row that identify the borrower or hold text from a provider: erased past retention."""

PURGE_BATCH = 5000
"""Rows one purge statement deletes or erases at most, each batch in a transaction of its own."""

TO_READ = ("unclear", "other")
"""Decisions of an inbound reply that a person reads (``dispatcher replies``): kept whole until read."""


@dataclass
class PurgeCounts:
    """Rows deleted per table, rows erased down to their keys, and rows kept whole whatever their age."""

    deleted: dict[str, int] = field(default_factory=dict)
    erased: int = 0
    """Claim rows (attempts)."""
    erased_replies: int = 0
    active_suppressions: int = 0
    unread_replies: int = 0
    """Old replies kept whole for a person to read."""


def purge(engine: Engine, older_than: timedelta, retention: timedelta, now: datetime, *,
          dry_run: bool = False, batch: int = PURGE_BATCH) -> PurgeCounts:
    """Delete (or erase, see the module docstring) rows created before ``now - older_than``.

    Refuses when ``older_than`` < ``retention``. With ``dry_run`` nothing changes and
    the counts say what would. Rows change ``batch`` at a time, one transaction each.
    """
    if older_than < retention:
        years = f"{retention.days / 365:g} years, " if retention.days % 365 == 0 else ""
        raise ConfigError(f"refusing to purge rows younger than the retention period ({years}{retention.days} days); "
                          f"--older-than is {older_than.days} days")
    cutoff = now - older_than
    try:
        if dry_run:
            with engine.begin() as connection:
                return _dry_run(connection, cutoff)
        return _purge(engine, cutoff, max(1, batch))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot purge: {exc}") from exc


def _old_claims(cutoff: datetime) -> Any:
    """Claim rows (try ≥ 1) older than ``cutoff`` still holding personal data."""
    return and_(attempts.c.try_no >= 1, attempts.c.created_at < cutoff,
                or_(*(attempts.c[name].is_not(None) for name in PERSONAL_COLUMNS)))


def _old_replies(cutoff: datetime) -> Any:
    """Replies older than ``cutoff`` that nobody has to read any more, still holding personal data."""
    to_read = and_(inbound_replies.c.read_at.is_(None), inbound_replies.c.decision.in_(TO_READ))
    return and_(inbound_replies.c.received_at < cutoff, ~to_read,
                or_(inbound_replies.c.sender != "", inbound_replies.c.text != "", inbound_replies.c.address_hash != ""))


def _old_handoffs(cutoff: datetime) -> Any:
    """Work items closed before ``cutoff`` (a ``wrong_number`` outcome lives on as an active suppression)."""
    return select(handoffs.c.id).where(handoffs.c.status == "closed", handoffs.c.closed_at < cutoff)


def _targets(cutoff: datetime) -> list[tuple[Any, Any]]:
    claimed = exists().where(attempts.c.reminder_key == reminders.c.key, attempts.c.try_no >= 1)
    return [
        (handoff_events, handoff_events.c.handoff_id.in_(_old_handoffs(cutoff))),  # before the items they name
        (visit_authorisations, visit_authorisations.c.handoff_id.in_(_old_handoffs(cutoff))),
        (handoffs, handoffs.c.id.in_(_old_handoffs(cutoff))),
        (attempts, and_(attempts.c.try_no < 1, attempts.c.created_at < cutoff)),
        (reminders, and_(reminders.c.created_at < cutoff, ~claimed)),
        (rejects, rejects.c.created_at < cutoff),
        (runs, runs.c.started_at < cutoff),
        (suppressions, suppressions.c.lifted_at < cutoff),  # never an active one (lifted_at NULL)
        (early_callbacks, early_callbacks.c.received_at < cutoff),
        (delinquencies, delinquencies.c.cured_at < cutoff),  # never an open one (cured_at NULL)
        (run_ranges, run_ranges.c.updated_at < cutoff),  # the key ranges of runs handed to workers
    ]


def _count(connection: Connection, table: Any, condition: Any) -> int:
    return int(connection.execute(select(func.count()).select_from(table).where(condition)).scalar_one())


def _dry_run(connection: Connection, cutoff: datetime) -> PurgeCounts:
    counts = PurgeCounts()
    counts.erased = _count(connection, attempts, _old_claims(cutoff))
    counts.erased_replies = _count(connection, inbound_replies, _old_replies(cutoff))
    for table, condition in _targets(cutoff):
        counts.deleted[table.name] = _count(connection, table, condition)
    _kept(connection, cutoff, counts)
    return counts


def _purge(engine: Engine, cutoff: datetime, batch: int) -> PurgeCounts:
    counts = PurgeCounts()
    erase = update(attempts).values(**dict.fromkeys(PERSONAL_COLUMNS))
    counts.erased = _in_batches(engine, attempts, _old_claims(cutoff), erase, batch)
    erase = update(inbound_replies).values(sender="", text="", address_hash="")
    counts.erased_replies = _in_batches(engine, inbound_replies, _old_replies(cutoff), erase, batch)
    for table, condition in _targets(cutoff):
        counts.deleted[table.name] = _in_batches(engine, table, condition, delete(table), batch)
    with engine.begin() as connection:
        _kept(connection, cutoff, counts)
    return counts


def _in_batches(engine: Engine, table: Any, condition: Any, change: Any, batch: int) -> int:
    """Apply ``change`` (a DELETE or an UPDATE that takes the rows out of ``condition``) to the rows matching
    ``condition``, ``batch`` rows per transaction, until none is left; the rows changed."""
    total = 0
    while True:
        chosen = table.c.id.in_(select(table.c.id).where(condition).limit(batch))
        with engine.begin() as connection:
            done = int(connection.execute(change.where(chosen)).rowcount)
        total += done
        if done < batch:
            return total


def _kept(connection: Connection, cutoff: datetime, counts: PurgeCounts) -> None:
    counts.active_suppressions = _count(connection, suppressions, suppressions.c.lifted_at.is_(None))
    counts.unread_replies = _count(connection, inbound_replies, and_(
        inbound_replies.c.received_at < cutoff, inbound_replies.c.read_at.is_(None),
        inbound_replies.c.decision.in_(TO_READ)))
