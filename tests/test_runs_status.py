"""How a run ends: abandoned when its daemon died, failed with a cause, closed by an operator (issue 9).

The RunLedger is driven directly on the ``app`` fixture's migrated ledger with a
fixed clock; ``dispatcher runs`` and ``dispatcher runs --close`` run in-process on
the same ledger with the real clock, so their runs are placed around the real now.
Every test runs on the session's ledger backend (``--ledger=sqlite|postgresql``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import NOW, Cli, FixedClock
from sqlalchemy import Engine, insert, select

from dispatcher.app import App
from dispatcher.ledger.runs import (
    CLOSED_BY_OPERATOR,
    DEFAULT_HORIZON,
    ERROR_LIMIT,
    RunLedger,
    one_line,
    shown_status,
)
from dispatcher.ledger.tables import attempts, runs

LEASE = timedelta(seconds=1)
LONG_LEASE = timedelta(hours=1)


@pytest.fixture
def run_ledger(app: App) -> RunLedger:
    return RunLedger(app.engine, LEASE)


def row_of(engine: Engine, run_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        return dict(connection.execute(select(runs).where(runs.c.id == run_id)).mappings().one())


def started(ledger: RunLedger, name: str, at: datetime, daemon: str = "daemon-a") -> int:
    run_id = ledger.start(name, at, "v1", daemon, at)
    assert run_id is not None
    return run_id


def add_attempts(engine: Engine, run_id: int, statuses: dict[str, int]) -> None:
    """``statuses[s]`` attempts of the run in status ``s`` (distinct reminders)."""
    rows = [{"reminder_key": f"R{run_id}-{status}-{n}", "account_id": f"A{n}", "step": "gentle", "occurrence": 0,
             "channel": "sms", "try_no": 1, "status": status, "run_id": run_id, "created_at": NOW,
             "updated_at": NOW}
            for status, count in statuses.items() for n in range(count)]
    with engine.begin() as connection:
        connection.execute(insert(attempts), rows)


# abandoned ------------------------------------------------------------------------------------------------------
def test_shown_status() -> None:
    assert shown_status("running", NOW + LEASE, NOW) == "running"
    assert shown_status("running", NOW, NOW) == "running"  # the lease runs out after lease_until, not at it
    assert shown_status("running", NOW - LEASE, NOW) == "abandoned"
    assert shown_status("running", None, NOW) == "abandoned"
    assert shown_status("completed", None, NOW) == "completed"
    assert shown_status("failed", NOW - LEASE, NOW) == "failed"


def test_abandon_expired_marks_only_running_runs_whose_lease_ran_out(run_ledger: RunLedger, app: App,
                                                                      clock: FixedClock) -> None:
    dead = started(run_ledger, "morning", NOW)
    done = started(run_ledger, "evening", NOW)
    run_ledger.finish(done, "completed", {}, NOW)
    clock.advance(timedelta(seconds=2))
    alive = started(run_ledger, "morning", clock() + timedelta(days=1))
    assert run_ledger.abandon_expired(NOW) == []  # nothing had run out at the start
    assert run_ledger.abandon_expired(clock()) == [dead]
    assert run_ledger.abandon_expired(clock()) == []  # once

    abandoned = row_of(app.engine, dead)
    assert (abandoned["status"], abandoned["finished_at"], abandoned["lease_until"]) == ("abandoned", None,
                                                                                        NOW + LEASE)
    assert row_of(app.engine, alive)["status"] == "running"
    assert row_of(app.engine, done)["status"] == "completed"


def test_an_abandoned_run_is_orphaned_and_taken_over(run_ledger: RunLedger, app: App, clock: FixedClock) -> None:
    run_id = started(run_ledger, "morning", NOW)
    clock.advance(timedelta(seconds=2))
    assert run_ledger.abandon_expired(clock()) == [run_id]
    assert run_ledger.orphaned(clock()) == [("morning", NOW)]

    assert run_ledger.start("morning", NOW, "v2", "heir", clock()) == run_id
    row = row_of(app.engine, run_id)
    assert (row["status"], row["daemon_id"], row["takeovers"], row["lease_until"]) == (
        "running", "heir", 1, clock() + LEASE)
    assert run_ledger.orphaned(clock()) == []
    assert run_ledger.start("morning", NOW, "v2", "third", clock()) is None  # the heir's lease holds


def test_orphaned_lists_expired_and_abandoned_runs_within_the_horizon(run_ledger: RunLedger,
                                                                       clock: FixedClock) -> None:
    old = started(run_ledger, "morning", NOW - DEFAULT_HORIZON - timedelta(hours=1))
    marked = started(run_ledger, "evening", NOW - timedelta(hours=2))
    clock.advance(timedelta(seconds=2))
    assert run_ledger.abandon_expired(clock()) == [old, marked]
    started(run_ledger, "morning", NOW)  # its lease ran out at NOW + 1 s: expired, not marked
    assert run_ledger.orphaned(clock()) == [("evening", NOW - timedelta(hours=2)), ("morning", NOW)]
    assert run_ledger.orphaned(clock(), timedelta(hours=1)) == [("morning", NOW)]
    assert len(run_ledger.orphaned(clock(), timedelta(days=2))) == 3
    assert run_ledger.start("morning", NOW - DEFAULT_HORIZON - timedelta(hours=1), "v1", "heir", clock()) == old


def test_its_own_daemon_renewing_an_abandoned_run_makes_it_running_again(run_ledger: RunLedger, app: App,
                                                                         clock: FixedClock) -> None:
    run_id = started(run_ledger, "morning", NOW)
    clock.advance(timedelta(seconds=2))
    run_ledger.abandon_expired(clock())
    assert not run_ledger.renew(run_id, "someone-else", clock())
    assert run_ledger.renew(run_id, "daemon-a", clock())  # it was only slow: nobody took the run yet
    assert (row_of(app.engine, run_id)["status"], row_of(app.engine, run_id)["lease_until"]) == (
        "running", clock() + LEASE)
    assert run_ledger.finish(run_id, "completed", {"sent": 1}, clock(), "daemon-a")


# failed, task failures ------------------------------------------------------------------------------------------
def test_fail_records_the_cause_on_one_line(run_ledger: RunLedger, app: App, clock: FixedClock) -> None:
    run_id = started(run_ledger, "morning", NOW)
    assert not run_ledger.fail(run_id, "boom", {}, clock(), "daemon-b")  # not the owner
    assert run_ledger.fail(run_id, "source unreachable:\n  connection refused\n", {"accounts": 7}, clock(),
                           "daemon-a")
    row = row_of(app.engine, run_id)
    assert (row["status"], row["error"], row["finished_at"], row["lease_until"]) == (
        "failed", "source unreachable: connection refused", clock(), None)
    assert json.loads(row["counts"]) == {"accounts": 7}
    assert not run_ledger.fail(run_id, "again", {}, clock())  # ended: nothing overwritten
    assert not run_ledger.finish(run_id, "completed", {}, clock())
    assert row_of(app.engine, run_id)["status"] == "failed"


def test_note_task_failure_counts_and_keeps_the_latest_message(run_ledger: RunLedger) -> None:
    run_id = started(run_ledger, "morning", NOW)
    assert run_ledger.task_failures(run_id) == (0, None)
    assert run_ledger.note_task_failure(run_id, "KeyError: 'sms'")
    long = "Traceback (most recent call last):\n" + "x" * 2000
    assert run_ledger.note_task_failure(run_id, long)
    count, error = run_ledger.task_failures(run_id)
    assert count == 2 and error is not None
    assert len(error) == ERROR_LIMIT and "\n" not in error and error.startswith("Traceback (most recent call last): x")
    assert error == one_line(long)
    assert not run_ledger.note_task_failure(run_id + 100, "no such run")
    assert run_ledger.task_failures(run_id + 100) == (0, None)


# dispatcher runs --------------------------------------------------------------------------------------------------
def real_now() -> datetime:
    return datetime.now(UTC)


def listed(cli: Cli) -> dict[int, dict[str, Any]]:
    code, out, err = cli("runs", "--format", "json")
    assert code == 0, err
    return {row["id"]: row for row in json.loads(out)}


def test_runs_shows_abandoned_before_anyone_marks_it_and_the_error(app: App, cli: Cli) -> None:
    now = real_now()
    dead = started(RunLedger(app.engine, LEASE), "morning", now - timedelta(minutes=5))
    alive = started(RunLedger(app.engine, LONG_LEASE), "evening", now)
    failed = started(RunLedger(app.engine, LONG_LEASE), "morning", now - timedelta(days=1))
    app.runs.fail(failed, "source unreachable", {}, now - timedelta(days=1))

    rows = listed(cli)
    assert {run_id: row["status"] for run_id, row in rows.items()} == {
        dead: "abandoned", alive: "running", failed: "failed"}
    assert row_of(app.engine, dead)["status"] == "running"  # shown, not written
    assert rows[failed]["error"] == "source unreachable" and rows[dead]["error"] is None
    assert {"lease_until", "takeovers", "task_failures"} <= set(rows[dead])

    code, out, _ = cli("runs")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[-1] == "error"
    line = next(line for line in lines if line.split()[0] == str(failed))
    assert "failed" in line.split() and line.endswith("source unreachable")
    assert "abandoned" in next(line for line in lines if line.split()[0] == str(dead)).split()


def test_runs_table_has_no_error_column_when_no_run_has_one(app: App, cli: Cli) -> None:
    started(RunLedger(app.engine, LONG_LEASE), "morning", real_now())
    code, out, _ = cli("runs")
    assert code == 0 and "error" not in out.splitlines()[0].split()


# dispatcher runs --close ------------------------------------------------------------------------------------------
def test_close_an_abandoned_run(app: App, cli: Cli) -> None:
    now = real_now()
    run_id = started(RunLedger(app.engine, LEASE), "morning", now - timedelta(minutes=5), "crashed")
    add_attempts(app.engine, run_id, {"planned": 3, "claimed": 1, "sending": 2, "sent": 5})

    code, out, err = cli("runs", "--close", str(run_id))
    assert code == 0, err
    assert f"closed run #{run_id} (morning of " in out and "which was abandoned on crashed" in out
    assert "planned=3, claimed=1, sending=2" in out and "next run" in out and "reconciler" in out
    row = row_of(app.engine, run_id)
    assert (row["status"], row["lease_until"], row["error"]) == ("closed", None, CLOSED_BY_OPERATOR)
    assert now <= row["finished_at"] <= real_now()
    assert listed(cli)[run_id]["status"] == "closed"
    assert app.runs.orphaned(real_now()) == []  # never taken over again
    assert app.runs.start("morning", now - timedelta(minutes=5), "v1", "heir", real_now()) is None


def test_close_a_marked_abandoned_run_with_nothing_left(app: App, cli: Cli) -> None:
    run_id = started(RunLedger(app.engine, LEASE), "morning", real_now() - timedelta(minutes=5))
    assert app.runs.abandon_expired(real_now()) == [run_id]
    code, out, err = cli("runs", "--close", str(run_id))
    assert code == 0, err
    assert "which was abandoned" in out and "no attempt of the run is left planned, claimed or sending" in out


@pytest.mark.parametrize("status", ["completed", "failed", "interrupted", "closed"])
def test_close_refuses_a_run_that_has_ended(app: App, cli: Cli, status: str) -> None:
    run_id = started(RunLedger(app.engine, LONG_LEASE), "morning", real_now())
    app.runs.finish(run_id, status, {"sent": 4}, real_now())
    before = row_of(app.engine, run_id)
    code, out, err = cli("runs", "--close", str(run_id), "--force")
    assert (code, out) == (1, "")
    assert err == f"dispatcher: run #{run_id} (morning) has already ended: {status}; nothing to close\n"
    assert row_of(app.engine, run_id) == before


def test_close_refuses_a_run_that_does_not_exist(app: App, cli: Cli) -> None:
    code, out, err = cli("runs", "--close", "4242")
    assert (code, out, err) == (1, "", "dispatcher: run #4242 does not exist\n")


def test_close_refuses_a_live_run_unless_forced(app: App, cli: Cli) -> None:
    ledger = RunLedger(app.engine, LONG_LEASE)
    run_id = started(ledger, "morning", real_now(), "daemon-a")
    add_attempts(app.engine, run_id, {"sending": 1})
    before = row_of(app.engine, run_id)

    code, out, err = cli("runs", "--close", str(run_id))
    assert (code, out) == (1, "")
    assert err.startswith(f"dispatcher: run #{run_id} (morning) is running on daemon-a (lease until ")
    assert err.endswith("use --force if that daemon is gone\n") and err.count("\n") == 1
    assert row_of(app.engine, run_id) == before

    code, out, err = cli("runs", "--close", str(run_id), "--force")
    assert code == 0, err
    assert "which was running on daemon-a" in out and "still held the lease" in out
    assert "planned=0, claimed=0, sending=1" in out
    assert row_of(app.engine, run_id)["status"] == "closed"
    # the daemon that was running it learns at its next renewal, and cannot overwrite the closing
    assert not ledger.renew(run_id, "daemon-a", real_now())
    assert not ledger.finish(run_id, "completed", {"sent": 9}, real_now(), "daemon-a")
    assert row_of(app.engine, run_id)["status"] == "closed"


def test_force_needs_close(app: App, cli: Cli) -> None:
    code, _out, err = cli("runs", "--force")
    assert code == 2 and "--force goes with --close" in err


def test_close_result(app: App, clock: FixedClock) -> None:
    ledger = RunLedger(app.engine, LEASE)
    run_id = started(ledger, "morning", NOW)
    live = ledger.close(run_id, clock())
    assert (live.closed, live.previous, live.live_lease, live.daemon_id) == (False, "running", True, "daemon-a")
    clock.advance(timedelta(seconds=2))
    result = ledger.close(run_id, clock())
    assert (result.closed, result.refusal, result.name, result.fire_time, result.previous, result.live_lease) == (
        True, None, "morning", NOW, "abandoned", False)
    assert dict(result.unsettled) == {"planned": 0, "claimed": 0, "sending": 0}
    assert row_of(app.engine, run_id)["finished_at"] == clock()
