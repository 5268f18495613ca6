"""The statements each batch runs look the batch's keys up in their indexes (SQLite's query planner).

A batch's history reads lists of ids and hashes as one bound parameter (``dispatcher/ledger/among.py``); a
statement that also tests an attempt's status may lead SQLite to the status index instead, which walks every
attempt of that status (every call ever placed, every planned message): fine on a demo, minutes on a ledger
of millions. The ledger here is SQLite whatever ``--ledger`` says: PostgreSQL plans by its statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FixedClock
from sqlalchemy import event

from dispatcher.app import App, build_app
from dispatcher.demo import seed_demo
from dispatcher.settings import Settings


@pytest.fixture
def sqlite_app(workdir: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{workdir / 'plans.db'}")
    built = build_app(Settings.from_env(), clock=clock)
    yield built
    built.engine.dispose()


def _plans(app: App, statements: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """Each SELECT and UPDATE on the ledger's tables, with SQLite's plan for it."""
    found: dict[str, list[str]] = {}
    with app.engine.connect() as connection:
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "UPDATE")):
                continue
            first = parameters[0] if isinstance(parameters, list) and parameters else parameters
            found[statement] = [str(row[-1]) for row in
                                connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", first)]
    return found


def test_a_batchs_history_and_booking_search_by_key_not_by_status(sqlite_app: App, clock: FixedClock) -> None:
    app = sqlite_app
    seed_demo(app.engine, 200, clock().date())
    (batch,) = list(app.pipeline.source.batches())
    accounts, now = batch.accounts, clock()
    since = app.pipeline.policy.contacts_since(now)
    planner, ledger = app.pipeline.planner, app.ledger
    run_id = app.runs.start("manual", now, app.pipeline.loaded.version, "test", now)
    app.booker().book(planner.plan(accounts, ledger.load_history(accounts, since), now), run_id, now)

    executed: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        executed.append((statement, parameters))

    event.listen(app.engine, "before_cursor_execute", grab)
    try:  # the next run plans the same accounts: every claim exists, the history holds contacts and calls
        history = ledger.load_history(accounts, since)
        decisions = planner.plan(accounts, history, now)
        app.booker().book(decisions, run_id, now)
        ledger.load_recheck_history(accounts)
        ledger.defer_claims([("k", "sms", "window")], run_id, now)
        ledger.supersede([("k", "sms", "k2")])
    finally:
        event.remove(app.engine, "before_cursor_execute", grab)

    plans = _plans(app, executed)
    assert sum("json_each" in s for s in plans) >= 6, "the history's lists are one parameter each"
    walking = {s: plan for s, plan in plans.items()
               if any("ix_attempts_status_channel_try" in step or step.startswith("SCAN attempts") for step in plan)}
    assert walking == {}
