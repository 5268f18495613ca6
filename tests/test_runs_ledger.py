"""Runs in the ledger: one start per (name, fire_time), leases, takeovers, and the daemon's catch-up.

The RunLedger is driven directly with a one-second lease and a clock that only moves
when told; the Runner end to end uses two apps on one ledger (two "daemons" with
their own DISPATCHER_DAEMON_ID) and the outbox channels. Every test runs on the
session's ledger backend (``--ledger=sqlite|postgresql``).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from inspect import signature
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import NOW, FixedClock
from sqlalchemy import Engine, create_engine, inspect, make_url, select, text

from dispatcher.app import App, build_app
from dispatcher.daemon import Daemon, latest_fire_time, trigger_for
from dispatcher.demo import seed_demo
from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.runs import RunLedger
from dispatcher.ledger.tables import attempts, handoffs, runs
from dispatcher.pipeline.run import Runner
from dispatcher.schedule.models import Run
from dispatcher.settings import Settings

LEASE = timedelta(seconds=1)
SHANGHAI = ZoneInfo("Asia/Shanghai")
FIRE = datetime(2026, 3, 10, 9, 0, tzinfo=SHANGHAI)
LEDGER_TABLES = {"alembic_version", "runs", "reminders", "attempts", "rejects", "suppressions", "early_callbacks",
                 "inbound_replies", "handoffs", "handoff_events",
                 "visit_authorisations", "config_versions", "delinquencies", "run_ranges"}


@pytest.fixture
def engine(ledger_url: str) -> Iterator[Engine]:
    built = create_ledger_engine(ledger_url)
    upgrade(built)
    yield built
    built.dispose()


@pytest.fixture
def run_ledger(engine: Engine) -> RunLedger:
    return RunLedger(engine, LEASE)


def run_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(runs).order_by(runs.c.id)).mappings()]


# the ledger lands where the URL says (PostgreSQL: this test's schema only) -----------------------------------------
def test_migrations_and_the_demo_table_land_in_the_tests_own_database(ledger_url: str, engine: Engine,
                                                                      ledger_backend: str) -> None:
    seed_demo(engine, 3, NOW.date())
    assert set(inspect(engine).get_table_names()) == LEDGER_TABLES | {"demo_accounts"}
    if ledger_backend != "postgresql":
        return
    options = make_url(ledger_url).query["options"]
    assert isinstance(options, str) and options.startswith("-csearch_path=")
    schema = options.removeprefix("-csearch_path=")
    server = create_engine(make_url(ledger_url).set(query={}))  # no search path: sees every schema
    try:
        with server.connect() as connection:
            placed = connection.execute(text(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name = ANY(:names) "
                "AND table_schema = :schema"), {"names": sorted(LEDGER_TABLES | {"demo_accounts"}),
                                                "schema": schema}).all()
            version = connection.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar_one()
    finally:
        server.dispose()
    assert {name for _schema, name in placed} == LEDGER_TABLES | {"demo_accounts"}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT current_schema()")).scalar_one() == schema
    assert version


# RunLedger ------------------------------------------------------------------------------------------------------
def test_a_run_starts_once_and_a_second_daemon_is_refused_while_the_lease_holds(run_ledger: RunLedger,
                                                                                engine: Engine) -> None:
    first = run_ledger.start("morning", FIRE, "v1", "daemon-a", NOW)
    assert first is not None
    assert run_ledger.start("morning", FIRE, "v1", "daemon-b", NOW) is None
    assert run_ledger.start("morning", FIRE, "v1", "daemon-b", NOW + LEASE) is None  # lease_until is not "past"
    assert run_ledger.start("morning", FIRE.astimezone(UTC), "v1", "daemon-b", NOW) is None  # same instant
    (row,) = run_rows(engine)
    assert (row["id"], row["name"], row["status"], row["daemon_id"], row["takeovers"]) == (
        first, "morning", "running", "daemon-a", 0)
    assert row["fire_time"] == FIRE and row["lease_until"] == NOW + LEASE and row["started_at"] == NOW


def test_another_fire_time_or_name_is_another_run(run_ledger: RunLedger, engine: Engine) -> None:
    ids = {run_ledger.start("morning", FIRE, "v1", "daemon-a", NOW),
           run_ledger.start("morning", FIRE + timedelta(days=1), "v1", "daemon-a", NOW),
           run_ledger.start("evening", FIRE, "v1", "daemon-a", NOW)}
    assert None not in ids and len(ids) == 3
    assert len(run_rows(engine)) == 3


def test_an_expired_lease_is_taken_over_and_the_first_daemon_loses_its_renewal(run_ledger: RunLedger,
                                                                               engine: Engine) -> None:
    clock = FixedClock()
    run_id = run_ledger.start("morning", FIRE, "v1", "daemon-a", clock())
    assert run_id is not None
    clock.advance(timedelta(milliseconds=900))
    assert run_ledger.renew(run_id, "daemon-a", clock())  # the owner renews in time: lease until +1.9 s
    clock.advance(timedelta(milliseconds=900))
    assert run_ledger.start("morning", FIRE, "v1", "daemon-b", clock()) is None  # +1.8 s: still daemon-a's
    clock.advance(timedelta(milliseconds=200))  # +2.0 s: expired
    assert run_ledger.start("morning", FIRE, "v2", "daemon-b", clock()) == run_id

    (row,) = run_rows(engine)
    assert (row["daemon_id"], row["takeovers"], row["status"]) == ("daemon-b", 1, "running")
    assert row["lease_until"] == clock() + LEASE
    assert not run_ledger.renew(run_id, "daemon-a", clock())
    assert run_ledger.renew(run_id, "daemon-b", clock() + timedelta(milliseconds=500))
    assert run_rows(engine)[0]["lease_until"] == clock() + timedelta(milliseconds=1500)

    clock.advance(timedelta(seconds=5))  # daemon-b dies too: a third daemon takes over, counted again
    assert run_ledger.start("morning", FIRE, "v2", "daemon-c", clock()) == run_id
    assert run_rows(engine)[0]["takeovers"] == 2


def test_finish_clears_the_lease_and_a_finished_run_is_never_taken_over(run_ledger: RunLedger,
                                                                         engine: Engine) -> None:
    clock = FixedClock()
    run_id = run_ledger.start("morning", FIRE, "v1", "daemon-a", clock())
    assert run_id is not None
    clock.advance(timedelta(milliseconds=500))
    run_ledger.finish(run_id, "completed", {"sent": 3, "accounts": 5}, clock())
    (row,) = run_rows(engine)
    assert (row["status"], row["lease_until"], row["finished_at"]) == ("completed", None, clock())
    assert json.loads(row["counts"]) == {"accounts": 5, "sent": 3}
    clock.advance(timedelta(hours=1))
    assert run_ledger.start("morning", FIRE, "v1", "daemon-b", clock()) is None
    assert run_ledger.orphaned(clock()) == []


def test_a_displaced_daemon_does_not_overwrite_the_run_of_the_daemon_that_took_it_over(run_ledger: RunLedger,
                                                                                       engine: Engine) -> None:
    clock = FixedClock()
    run_id = run_ledger.start("morning", FIRE, "v1", "daemon-a", clock())
    clock.advance(timedelta(seconds=2))
    assert run_id is not None and run_ledger.start("morning", FIRE, "v1", "daemon-b", clock()) == run_id
    run_ledger.finish(run_id, "completed", {"sent": 40}, clock())  # daemon-b, the owner now

    assert not run_ledger.renew(run_id, "daemon-a", clock())  # daemon-a learns it lost the run ...
    finish = signature(RunLedger.finish).parameters  # ... and ends it as Runner.run does
    owner = {"daemon_id": "daemon-a"} if "daemon_id" in finish else {}
    run_ledger.finish(run_id, "interrupted", {"sent": 3}, clock() + timedelta(seconds=1), **owner)
    (row,) = run_rows(engine)
    assert (row["status"], json.loads(row["counts"]), row["daemon_id"]) == ("completed", {"sent": 40}, "daemon-b")


def test_orphaned_lists_only_unended_runs_whose_lease_ran_out(run_ledger: RunLedger) -> None:
    clock = FixedClock()
    expired = run_ledger.start("morning", FIRE, "v1", "dead", clock())
    finished = run_ledger.start("evening", FIRE, "v1", "done", clock())
    assert expired is not None and finished is not None
    run_ledger.finish(finished, "completed", {}, clock())
    clock.advance(timedelta(milliseconds=1500))
    alive = run_ledger.start("morning", FIRE + timedelta(days=1), "v1", "alive", clock())
    assert alive is not None
    assert run_ledger.orphaned(clock()) == [("morning", FIRE)]
    assert run_ledger.orphaned(clock())[0][1].utcoffset() == timedelta(0)  # aware UTC, equal to FIRE
    assert run_ledger.orphaned(NOW) == []  # at the start nothing had expired yet
    assert run_ledger.start("morning", FIRE, "v1", "heir", clock()) == expired
    assert run_ledger.orphaned(clock()) == []  # taken over: its lease is fresh again


def test_happened(run_ledger: RunLedger) -> None:
    assert not run_ledger.happened("morning", FIRE)
    run_id = run_ledger.start("morning", FIRE, "v1", "daemon-a", NOW)
    assert run_id is not None
    assert run_ledger.happened("morning", FIRE)
    assert run_ledger.happened("morning", FIRE.astimezone(UTC))
    assert not run_ledger.happened("morning", FIRE + timedelta(minutes=1))
    assert not run_ledger.happened("evening", FIRE)
    run_ledger.finish(run_id, "failed", {}, NOW)
    assert run_ledger.happened("morning", FIRE)  # whatever its outcome


# Runner end to end: two daemons on one ledger -------------------------------------------------------------------
def outbox_messages(outbox: Path) -> list[tuple[str, str, int]]:
    """(channel, reminder key, attempt id) of every message the outbox channels wrote."""
    found: list[tuple[str, str, int]] = []
    for channel in ("sms", "push", "voice"):
        path = outbox / f"{channel}.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                found.append((channel, record["reminder"], int(record["attempt_id"])))
    for eml in sorted((outbox / "email").glob("*.eml")) if (outbox / "email").exists() else []:
        found.append(("email", "", int(eml.name.split("-", 1)[0])))
    return found


def sent_attempts(engine: Engine) -> list[dict[str, Any]]:
    query = select(attempts).where(attempts.c.status == "sent").order_by(attempts.c.id)
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(query).mappings()]


def assert_each_reminder_sent_once(app: App, outbox: Path) -> list[dict[str, Any]]:
    """Every sent attempt is one outbox message (or hand-off work item) and every (reminder, channel) went out at
    most once."""
    sent = sent_attempts(app.engine)
    with app.engine.connect() as connection:  # a hand-off "sent" is a work item in the ledger
        items = [("handoff", r.reminder_key, int(r.attempt_id))
                 for r in connection.execute(select(handoffs.c.reminder_key, handoffs.c.attempt_id))]
    messages = outbox_messages(outbox) + items
    assert sent, "nothing was sent"
    per_reminder = Counter((a["reminder_key"], a["channel"]) for a in sent)
    assert max(per_reminder.values()) == 1, [k for k, n in per_reminder.items() if n > 1]
    assert sorted(m[2] for m in messages) == [a["id"] for a in sent]  # one message per sent attempt, no more
    by_id = {a["id"]: a for a in sent}
    assert all(by_id[attempt_id]["channel"] == channel for channel, _key, attempt_id in messages)
    assert all(by_id[attempt_id]["reminder_key"] == key for channel, key, attempt_id in messages if key)
    return sent


@pytest.fixture
def daemon_a(app: App) -> App:
    """The ``app`` fixture as daemon A, on 100 demo borrowers due at the fixed clock (09:00 Shanghai)."""
    seed_demo(app.engine, 100, NOW.date())
    return app


@pytest.fixture
def make_daemon(workdir: Path, clock: FixedClock) -> Iterator[Any]:
    """Another daemon (its own app and DISPATCHER_DAEMON_ID) on the same ledger, schedule and outbox."""
    built: list[App] = []

    def make(daemon_id: str) -> App:
        app = build_app(Settings.from_env({**os.environ, "DISPATCHER_DAEMON_ID": daemon_id}), clock=clock)
        built.append(app)
        return app

    yield make
    for app in built:
        app.engine.dispose()


def test_the_same_run_in_two_daemons_is_carried_out_once(daemon_a: App, make_daemon: Any, workdir: Path) -> None:
    daemon_b = make_daemon("daemon-b")
    assert daemon_a.settings.daemon_id != daemon_b.settings.daemon_id
    reports: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def carry_out(app: App) -> None:
        barrier.wait()
        reports[app.settings.daemon_id] = Runner(app).run("morning", NOW)

    threads = [threading.Thread(target=carry_out, args=(app,)) for app in (daemon_a, daemon_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(r.status for r in reports.values()) == ["completed", "skipped"]
    completed = next(r for r in reports.values() if r.status == "completed")
    skipped = next(r for r in reports.values() if r.status == "skipped")
    assert skipped.run_id is None and skipped.counts.sent == 0
    (row,) = run_rows(daemon_a.engine)
    assert (row["id"], row["status"], row["takeovers"]) == (completed.run_id, "completed", 0)
    sent = assert_each_reminder_sent_once(daemon_a, workdir / "outbox")
    assert completed.counts.sent == len(sent)

    again = Runner(daemon_b).run("morning", NOW)  # later, sequentially: still nothing
    assert (again.status, again.run_id) == ("skipped", None)
    assert len(sent_attempts(daemon_a.engine)) == len(sent)


def test_a_crashed_daemons_run_is_taken_over_and_each_reminder_goes_out_once(
        daemon_a: App, make_daemon: Any, workdir: Path, clock: FixedClock) -> None:
    """The crashed daemon started the run, booked it, delivered half of its jobs, and died holding the lease."""
    crashed = make_daemon("crashed")
    pipeline = crashed.pipeline
    run_id = RunLedger(crashed.engine, LEASE).start("morning", NOW, pipeline.loaded.version, "crashed", clock())
    assert run_id is not None
    (batch,) = list(pipeline.source.batches())
    decisions = pipeline.planner.plan(batch.accounts, crashed.ledger.load_history(batch.accounts), clock())
    jobs, _ = crashed.booker().book(decisions, run_id, clock())
    assert len(jobs) >= 20

    async def deliver_half() -> None:
        deliverer = crashed.deliverer(pipeline)
        try:
            await deliverer.deliver(jobs[: len(jobs) // 2])
        finally:
            await deliverer.aclose()

    asyncio.run(deliver_half())
    before = len(sent_attempts(daemon_a.engine))
    assert 0 < before < len(jobs)

    assert Runner(daemon_a).run("morning", NOW).status == "skipped"  # the lease still holds
    clock.advance(timedelta(seconds=2))
    assert daemon_a.runs.orphaned(clock()) == [("morning", NOW)]
    report = Runner(daemon_a).run("morning", NOW)
    assert (report.status, report.run_id) == ("completed", run_id)
    (row,) = run_rows(daemon_a.engine)
    assert (row["status"], row["daemon_id"], row["takeovers"], row["lease_until"]) == (
        "completed", daemon_a.settings.daemon_id, 1, None)

    sent = assert_each_reminder_sent_once(daemon_a, workdir / "outbox")
    assert {(a["reminder_key"], a["channel"]) for a in sent} >= {(j.reminder_key, j.channel.value) for j in jobs}
    assert len(sent) == before + report.counts.sent
    with daemon_a.engine.connect() as connection:
        left = connection.execute(select(attempts.c.id).where(
            attempts.c.status.in_(("planned", "claimed", "sending")))).all()
    assert left == []


def test_an_abandoned_run_is_taken_over_by_the_runner(daemon_a: App, make_daemon: Any, workdir: Path,
                                                     clock: FixedClock) -> None:
    """A run marked abandoned (its daemon died before booking anything) is carried out by the next daemon."""
    crashed = make_daemon("crashed")
    run_id = RunLedger(crashed.engine, LEASE).start("morning", NOW, crashed.pipeline.loaded.version, "crashed",
                                                    clock())
    clock.advance(timedelta(seconds=2))
    assert daemon_a.runs.abandon_expired(clock()) == [run_id]
    assert daemon_a.runs.orphaned(clock()) == [("morning", NOW)]
    report = Runner(daemon_a).run("morning", NOW)
    assert (report.status, report.run_id) == ("completed", run_id)
    (row,) = run_rows(daemon_a.engine)
    assert (row["status"], row["daemon_id"], row["takeovers"], row["lease_until"], row["error"]) == (
        "completed", daemon_a.settings.daemon_id, 1, None, None)
    assert len(assert_each_reminder_sent_once(daemon_a, workdir / "outbox")) == report.counts.sent


# the daemon's catch-up ------------------------------------------------------------------------------------------
def test_latest_fire_time() -> None:
    trigger = trigger_for(Run(name="morning", cron="0 9 * * *"), "Asia/Shanghai")
    at = datetime(2026, 3, 10, 12, 0, tzinfo=SHANGHAI)
    assert latest_fire_time(trigger, at, timedelta(days=1)) == FIRE
    assert latest_fire_time(trigger, FIRE, timedelta(days=1)) == FIRE  # a run firing right now counts
    assert latest_fire_time(trigger, FIRE - timedelta(minutes=1), timedelta(days=1)) == FIRE - timedelta(days=1)
    assert latest_fire_time(trigger, at, timedelta(hours=2)) is None
    assert latest_fire_time(trigger, at.astimezone(UTC), timedelta(days=3)) == FIRE


def test_catch_up_carries_out_each_run_missed_in_the_last_day_once(daemon_a: App, clock: FixedClock) -> None:
    clock.now = datetime(2026, 3, 10, 12, 0, tzinfo=SHANGHAI).astimezone(UTC)  # after morning, before evening
    daemon = Daemon(daemon_a)
    daemon._catch_up()
    missed = {("morning", FIRE), ("evening", datetime(2026, 3, 9, 18, 30, tzinfo=SHANGHAI))}
    rows = run_rows(daemon_a.engine)
    assert {(r["name"], r["fire_time"]) for r in rows} == missed
    assert {r["status"] for r in rows} == {"completed"}
    sent = len(sent_attempts(daemon_a.engine))
    assert sent > 0

    daemon._catch_up()  # again, and in a daemon started later: nothing new
    Daemon(daemon_a)._catch_up()
    assert len(run_rows(daemon_a.engine)) == 2
    assert len(sent_attempts(daemon_a.engine)) == sent

    clock.now = datetime(2026, 3, 11, 8, 0, tzinfo=SHANGHAI).astimezone(UTC)  # next day: yesterday's runs
    daemon._catch_up()
    names = Counter(r["name"] for r in run_rows(daemon_a.engine))
    assert names == {"morning": 1, "evening": 2}  # morning 09:00 of the 10th happened; evening 18:30 did not


def test_catch_up_leaves_a_run_another_daemon_is_carrying_out(daemon_a: App, make_daemon: Any,
                                                              clock: FixedClock) -> None:
    other = make_daemon("daemon-b")
    clock.now = datetime(2026, 3, 10, 12, 0, tzinfo=SHANGHAI).astimezone(UTC)
    assert other.runs.start("morning", FIRE, other.pipeline.loaded.version, "daemon-b", clock()) is not None
    Daemon(daemon_a)._catch_up()
    rows = {r["name"]: r for r in run_rows(daemon_a.engine)}
    assert rows["morning"]["daemon_id"] == "daemon-b" and rows["morning"]["status"] == "running"
    assert rows["evening"]["status"] == "completed"


def test_outcomes_of_a_batch_land_on_their_rows_whatever_their_kind(engine: Engine) -> None:
    """Plain sends take the narrow update, the others the general one: each row gets exactly its facts."""
    from sqlalchemy import insert

    from dispatcher.ledger.store import AttemptOutcome, Ledger

    now = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    base = {"account_id": "A", "step": "gentle", "occurrence": 0, "channel": "sms", "try_no": 1,
            "status": "sending", "template": "gentle", "created_at": now, "updated_at": now}
    with engine.begin() as connection:
        connection.execute(insert(attempts), [{**base, "reminder_key": f"K{n}"} for n in range(3)])
        ids = [r.id for r in connection.execute(select(attempts.c.id).order_by(attempts.c.id))]
    sent = AttemptOutcome(ids[0], "sent", provider_message_id="SM1", template="gentle", template_version="v1",
                          content_hash="h1", provider="twilio", duration_ms=12)
    failed = AttemptOutcome(ids[1], "failed", error_code="21610", error_class="permanent",
                            error_message="unsubscribed", template="gentle", template_version="v1",
                            content_hash="h2", provider="twilio", duration_ms=7)
    suppressed = AttemptOutcome(ids[2], "suppressed", rule_id="civil", detail="blocked phrase")
    later = now + timedelta(minutes=1)
    Ledger(engine).finish_attempts([suppressed, sent, failed], later)

    columns = ("status", "provider_message_id", "error_code", "error_class", "error_message", "template",
               "template_version", "content_hash", "provider", "rule_id", "detail", "duration_ms")
    with engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(
            select(*(attempts.c[c] for c in columns), attempts.c.updated_at).order_by(attempts.c.id))]
    assert rows == [
        ("sent", "SM1", None, None, None, "gentle", "v1", "h1", "twilio", None, None, 12, later),
        ("failed", None, "21610", "permanent", "unsubscribed", "gentle", "v1", "h2", "twilio", None, None, 7, later),
        ("suppressed", None, None, None, None, "gentle", None, None, None, "civil", "blocked phrase", None, later),
    ]
