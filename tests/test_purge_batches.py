"""``dispatcher purge`` in bounded batches: every statement changes at most ``batch`` rows in a transaction of
its own, and the rows deleted and erased are those one unbatched pass would (the dry run's counts)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from conftest import FixedClock
from sqlalchemy import Engine, event, func, insert, select

from dispatcher.app import App
from dispatcher.ledger.retention import PERSONAL_COLUMNS, purge
from dispatcher.ledger.tables import attempts, rejects, runs
from dispatcher.masking import address_hash

RETENTION = timedelta(days=3 * 365)


def _rows(engine: Engine, clock: FixedClock) -> None:
    """7 old and 2 recent rejects, 5 old and 1 recent sent claims, 3 old deferrals, 4 old runs."""
    old, recent = clock() - timedelta(days=4 * 365), clock() - timedelta(days=30)
    with engine.begin() as connection:
        connection.execute(insert(rejects), [{"field": "phone", "reason": "bad", "created_at": at}
                                             for at in [old] * 7 + [recent] * 2])
        connection.execute(insert(runs), [{"name": f"r{n}", "fire_time": old + timedelta(hours=n),
                                           "status": "completed", "config_version": "x", "daemon_id": "t",
                                           "started_at": old, "finished_at": old, "counts": "{}"} for n in range(4)])
        claim = {"step": "gentle", "occurrence": 0, "channel": "sms", "status": "sent", "try_no": 1,
                 "address": "+86138****5678", "address_hash": address_hash("+8613812345678"),
                 "error_message": "+8613812345678 slow"}
        connection.execute(insert(attempts), [
            {**claim, "reminder_key": f"k{n}", "account_id": f"A{n}", "created_at": at, "updated_at": at}
            for n, at in enumerate([old] * 5 + [recent])])
        connection.execute(insert(attempts), [
            {**claim, "try_no": 0, "status": "deferred", "reminder_key": f"d{n}", "account_id": f"D{n}",
             "created_at": old, "updated_at": old} for n in range(3)])


def _table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t.name: int(connection.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (attempts, rejects, runs)}


def test_a_purge_in_batches_of_two_changes_the_rows_one_pass_would(app: App, clock: FixedClock) -> None:
    _rows(app.engine, clock)
    now = clock()
    planned = purge(app.engine, RETENTION, RETENTION, now, dry_run=True)
    changes: list[tuple[str, int]] = []
    commits: list[int] = []

    def after(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("DELETE", "UPDATE")):
            changes.append((statement.split()[2 if statement.lstrip().upper().startswith("DELETE") else 1],
                            _cursor.rowcount))

    event.listen(app.engine, "after_cursor_execute", after)
    event.listen(app.engine, "commit", lambda _conn: commits.append(1))
    done = purge(app.engine, RETENTION, RETENTION, now, batch=2)

    assert done == planned
    assert (done.erased, done.deleted["rejects"], done.deleted["runs"], done.deleted["attempts"]) == (5, 7, 4, 3)
    assert all(count <= 2 for _, count in changes)
    assert sum(count for table, count in changes if table == "rejects") == 7
    assert len([1 for table, _ in changes if table == "rejects"]) == 4  # 2 + 2 + 2 + 1
    assert len(commits) >= len(changes)  # every batch its own transaction
    assert _table_counts(app.engine) == {"attempts": 6, "rejects": 2, "runs": 0}
    with app.engine.connect() as connection:
        kept = connection.execute(select(attempts).order_by(attempts.c.id)).mappings().all()
    assert [row["reminder_key"] for row in kept] == ["k0", "k1", "k2", "k3", "k4", "k5"]
    assert all(row[c] is None for row in kept[:5] for c in PERSONAL_COLUMNS)
    assert kept[5]["address_hash"] and kept[5]["error_message"]  # younger than the cut-off: untouched
    assert purge(app.engine, RETENTION, RETENTION, now, batch=2).deleted["rejects"] == 0  # nothing left


def test_a_purge_deletes_delinquencies_cured_before_the_cut_off_and_keeps_open_ones(app: App,
                                                                                    clock: FixedClock) -> None:
    from datetime import date

    from dispatcher.ledger.tables import delinquencies

    old, recent = clock() - timedelta(days=4 * 365), clock() - timedelta(days=30)
    row = {"due_date": date(2022, 1, 1), "currency": "CNY", "first_balance": "500.00", "last_balance": "500.00",
           "first_reminded_at": old, "last_seen_at": old}
    with app.engine.begin() as connection:
        connection.execute(insert(delinquencies), [
            {**row, "account_id": "cured-long-ago", "cured_at": old, "cure": "zero_balance"},
            {**row, "account_id": "cured-lately", "cured_at": recent, "cure": "left_overdue"},
            {**row, "account_id": "still-open", "cured_at": None, "cure": None}])
    planned = purge(app.engine, RETENTION, RETENTION, clock(), dry_run=True)
    done = purge(app.engine, RETENTION, RETENTION, clock(), batch=1)

    assert planned.deleted["delinquencies"] == done.deleted["delinquencies"] == 1
    with app.engine.connect() as connection:
        left = set(connection.execute(select(delinquencies.c.account_id)).scalars())
    assert left == {"cured-lately", "still-open"}
