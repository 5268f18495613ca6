"""The booking's inserts written for the driver (:func:`dispatcher.ledger.claims.insert_new`) store what
SQLAlchemy would, leave out rows already there and return the new ones, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dispatcher.ledger.claims import ROWS_PER_INSERT, insert_new
from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.tables import attempts, reminders

SHANGHAI = timezone(timedelta(hours=8))
NOW = datetime(2026, 12, 1, 2, 0, 0, 123456, tzinfo=UTC)
LATER = datetime(2026, 12, 1, 18, 30, tzinfo=SHANGHAI)  # not UTC: stored as its UTC moment


def attempt(n: int, channel: str = "sms") -> dict[str, Any]:
    return {"reminder_key": f"A{n}|2026-11-01|gentle|1", "account_id": f"A{n}", "step": "gentle", "occurrence": 1,
            "channel": channel, "try_no": 1, "status": "planned" if n % 3 else "suppressed",
            "address": "+86138****8000", "address_hash": f"{n:064x}", "borrower_hash": None, "variant": None,
            "rule_id": None if n % 3 else "cap", "detail": None, "not_before": LATER if n % 2 else None,
            "run_id": None, "created_at": NOW, "updated_at": NOW}


def test_a_booking_larger_than_one_statement_is_stored_as_sqlalchemy_stores_it(ledger_url: str) -> None:
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    first = [attempt(n) for n in range(2 * ROWS_PER_INSERT + 7)]
    again = first[-5:] + [attempt(n, "email") for n in range(3)]  # five are there already
    due = [{"key": f"A{n}|2026-11-01|gentle|1", "account_id": f"A{n}", "due_date": date(2026, 11, 1),
            "step": "gentle", "occurrence": 1, "run_id": None, "created_at": NOW, "bucket": None} for n in range(3)]
    with engine.begin() as connection:
        inserted = insert_new(connection, attempts, first, ("id", "reminder_key", "channel")).run(connection)
        insert_new(connection, reminders, due).run(connection)
    with engine.begin() as connection:
        repeated = insert_new(connection, attempts, again, ("reminder_key", "channel")).run(connection)
        assert insert_new(connection, reminders, due).run(connection) == []  # nothing returned when not asked

    assert len(inserted) == len(first) and len({row[0] for row in inserted}) == len(first)
    assert sorted(repeated) == sorted((f"A{n}|2026-11-01|gentle|1", "email") for n in range(3))
    with engine.connect() as connection:
        stored = {(r.reminder_key, r.channel): r for r in connection.execute(select(attempts))}
        kept = list(connection.execute(select(reminders.c.key, reminders.c.due_date, reminders.c.created_at)))
    assert len(stored) == len(first) + 3
    for given in first:
        row = stored[(given["reminder_key"], given["channel"])]
        assert (row.status, row.rule_id, row.address_hash) == (given["status"], given["rule_id"],
                                                               given["address_hash"])
        assert row.created_at == NOW and row.updated_at == NOW  # read back through UtcDateTime, microseconds kept
        assert row.not_before == (LATER.astimezone(UTC) if given["not_before"] else None)
    assert sorted(kept) == [(f"A{n}|2026-11-01|gentle|1", date(2026, 11, 1), NOW) for n in range(3)]
    engine.dispose()


def _temporary_files() -> set[str]:
    """The deleted-on-open files SQLite's statement journals spill to (``etilqs_*``) this process holds open."""
    found = set()
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:  # closed meanwhile
            continue
        if "etilqs_" in target:
            found.add(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the files a process holds open")
def test_a_bookings_statement_journal_stays_in_memory(tmp_path: Path) -> None:
    """A multi-row INSERT inside a transaction keeps the pages it changes in a statement journal; past 64 KiB
    SQLite wrote it to a temporary file (4,300 writes per 1,000-account booking). The ledger keeps it in memory:
    no such file is open while a booking's statements run on a ledger whose indexes already span many pages.
    (A SQLite ledger's own: PostgreSQL has no statement journal.)"""
    engine = create_ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    with engine.begin() as connection:  # indexes of a few hundred pages, the new rows' hashes all over them
        insert_new(connection, attempts, [attempt(n * 7919 % 100_003) for n in range(20_000)]).run(connection)
    seen: set[str] = set()
    with engine.begin() as connection:
        connection.connection.dbapi_connection.set_progress_handler(
            lambda: seen.update(_temporary_files()), 200)
        insert_new(connection, attempts, [attempt(100_003 + n * 613) for n in range(1_300)]).run(connection)
        connection.connection.dbapi_connection.set_progress_handler(None, 0)
    engine.dispose()
    assert seen == set()
