"""A run's key ranges planned, booked and delivered in processes of their own (dispatcher/pipeline/parallel.py).

``DISPATCHER_PLAN_PROCESSES=2`` and a source of 20-account batches, so a few hundred accounts are split into eight
ranges that the daemon's process and one helper process take one at a time; the helper is real (spawned), on the
test's ledger. What must hold is what holds in one process:
the decisions of the plan, each message once, caps per borrower across ranges, and nothing lost or sent twice
when a range process is killed.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import FixedClock
from rows import attempt_rows, demo_row, seed_rows
from sqlalchemy import delete, select, update
from test_pipeline import outbox_ids

from dispatcher.app import App, build_app
from dispatcher.decisions import Verdict
from dispatcher.demo import demo_accounts, seed_demo
from dispatcher.ledger.database import booking_lock
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.parallel import Planners
from dispatcher.pipeline.reject_limit import RejectLimit
from dispatcher.pipeline.replan import replan
from dispatcher.pipeline.run import Runner
from dispatcher.pipeline.source import AccountSource, KeyRange, SourceBatch, tapered_sizes
from dispatcher.settings import Settings

SHARED = "+8613900009999"
"""The phone of one borrower's two loans."""


@pytest.fixture
def parallel(workdir: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The app with two planning processes and batches of 20 accounts (ranges of at least 20)."""
    schedules = workdir / "schedules.yaml"
    schedules.write_text(schedules.read_text(encoding="utf-8").replace("batch_size: 1000", "batch_size: 20"),
                         encoding="utf-8")
    monkeypatch.setenv("DISPATCHER_PLAN_PROCESSES", "2")
    built = build_app(Settings.from_env(), clock=clock)
    yield built
    built.engine.dispose()


def sends(decisions: Iterator[Any]) -> set[tuple[str, str]]:
    return {(d.account_id, c.channel.value) for d in decisions for c in d.channels if c.verdict is Verdict.SEND}


def sent_pairs(app: App, run_id: int | None = None) -> set[tuple[str, str]]:
    """(account, channel) of every message sent (by one run)."""
    where = {} if run_id is None else {"run_id": run_id}
    return {(r["account_id"], r["channel"]) for r in attempt_rows(app, status="sent", **where)}


def test_two_processes_send_what_one_process_sends_each_message_once(
        parallel: App, clock: FixedClock, make_ledger_url: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The same 400 demo borrowers run on two ledgers: in one process, and split over two (in the same order of
    ids, so loans sharing an address in one range are capped the same way: the demo has such pairs)."""
    single = single_process(parallel, clock, make_ledger_url, tmp_path)
    for app in (single, parallel):
        seed_demo(app.engine, 400, clock().date())
    alone = Runner(single).run("manual", clock())
    assert alone.status == "completed"
    single.engine.dispose()

    caplog.set_level(logging.INFO, logger="dispatcher")
    report = Runner(parallel).run("manual", clock())
    assert report.status == "completed", report
    # ranges of 100, 75, 57, 42, 32, 24, 18, 13, 10, 8, 6, 5, 5 and 5 accounts (tapered: the last ones taken are the
    # shortest, down to a quarter of a batch)
    assert "14 key ranges planned in 2 processes" in caplog.text  # the daemon's process and one helper
    here = re.findall(r"key range (\d+) of 14 done", caplog.text)  # the helper's lines are in its own stderr
    assert 1 <= len(here) < 14 and len(set(here)) == len(here)  # each took ranges until none was left
    sent = sent_pairs(parallel)
    assert len(sent) > 200 and sent == sent_pairs(single)
    assert (report.counts.accounts, report.counts.sent, report.counts.deferred) == \
        (alone.counts.accounts, alone.counts.sent, alone.counts.deferred)
    written = outbox_ids(parallel.settings.outbox_dir)
    missing = [(r["id"], r["channel"]) for r in attempt_rows(parallel, status="sent")
               if r["id"] not in written and r["channel"] != "handoff"]  # a work item is no outbox file
    assert missing == [] and set(written.values()) == {1}

    again = Runner(parallel).run("again", clock())  # another run at the same moment: nothing is sent twice
    assert again.status == "completed"
    sent_twice = Counter((r["reminder_key"], r["channel"]) for r in attempt_rows(parallel, status="sent"))
    assert set(sent_twice.values()) == {1}


def test_a_borrowers_two_loans_in_two_ranges_get_one_sms(parallel: App, clock: FixedClock) -> None:
    """cn: 1 SMS a day per borrower. The loans are in the first batch of each range, planned at the same time."""
    due = clock().date() - timedelta(days=2)
    filler = [demo_row(f"M{n:04d}", due, phone=f"+86139{n:08d}", push_token=None, email=None) for n in range(300)]
    loans = [demo_row(i, due, phone=SHARED, push_token=None, email=None) for i in ("M0000A", "M0150A")]
    seed_rows(parallel.engine, *filler, *loans)
    ranges = parallel.pipeline.source.split(2, 100)
    assert len(ranges) == 2 and ranges[0].upto is not None and "M0000A" <= str(ranges[0].upto) < "M0150A"

    report = Runner(parallel).run("manual", clock())
    assert report.status == "completed"
    sms = {r["account_id"]: r for r in attempt_rows(parallel, channel="sms") if r["account_id"] in ("M0000A", "M0150A")}
    assert sorted(r["status"] for r in sms.values()) == ["deferred", "sent"], sms
    assert {r["rule_id"] for r in sms.values() if r["status"] == "deferred"} == {"cap"}


def test_borrowers_with_loans_in_both_ranges_get_no_more_than_the_caps(parallel: App, clock: FixedClock) -> None:
    """2,000 demo borrowers, some sharing a phone, email or token across the two ranges, planned at the same
    time: cn allows 1 SMS and 3 contacts a day per borrower, whichever process books which loan."""
    seed_demo(parallel.engine, 2000, clock().date())
    start = clock()
    report = Runner(parallel).run("manual", start)
    assert report.status == "completed"
    # every process books on one clock, that moves on from the run's moment (a fixed clock here): the contacts one
    # books never lie in another's future, where the caps would not count them
    booked = [r["created_at"].replace(tzinfo=start.tzinfo) for r in attempt_rows(parallel)]
    assert min(booked) > start, "the daemon's own ranges booked at the fixed moment, the helper's after it"
    sent = [r for r in attempt_rows(parallel, status="sent") if r["channel"] != "handoff"]
    per_address: dict[str, Counter[str]] = {}
    for row in sent:
        for digest in {row["address_hash"], row["borrower_hash"]} - {None}:
            per_address.setdefault(digest, Counter())[row["channel"]] += 1
    assert max(c["sms"] for c in per_address.values()) == 1
    assert max(sum(c.values()) for c in per_address.values()) <= 3
    shared = [c for c in per_address.values() if sum(c.values()) > 1]
    assert shared  # the demo has borrowers with several loans


class _Announcing(AccountSource):
    """The demo source that says when a batch is handed out (to be planned) before handing it out."""

    def __init__(self, app: App, handed: threading.Event) -> None:
        super().__init__(app.engine, app.pipeline.loaded.schedule.source.query, 20)
        self.handed = handed

    def batches(self, key_range: KeyRange | None = None) -> Iterator[SourceBatch]:
        for batch in super().batches(key_range):
            self.handed.set()
            yield batch


def test_a_batch_is_planned_again_when_another_process_booked_its_borrower_meanwhile(
        parallel: App, clock: FixedClock, caplog: pytest.LogCaptureFixture) -> None:
    """Range B's batch is planned while range A holds the booking lock and books the same borrower's other loan, a
    second later: under the lock, B sees the new booking and plans its batch again at the time it is then (its
    SMS waits: cn, 1 SMS a day)."""
    due = clock().date() - timedelta(days=2)
    seed_rows(parallel.engine, demo_row("A1", due, phone=SHARED, push_token=None, email=None),
              demo_row("B1", due, phone=SHARED, push_token=None, email=None))
    run_id = parallel.runs.start("manual", clock(), parallel.pipeline.loaded.version, "test", clock())
    assert run_id is not None
    handed = threading.Event()
    import dataclasses

    pipeline = dataclasses.replace(parallel.pipeline, source=_Announcing(parallel, handed))
    runner = Runner(parallel)
    counts, jobs = RunCounts(), array("q")
    outcome: list[bool] = []

    def range_b() -> None:
        executor = parallel.executor(pipeline, None, run_id)
        from dispatcher.pipeline import loops

        async def go() -> bool:
            try:
                return await runner.book_range(run_id, pipeline, executor, KeyRange("A1", None, first=False), counts,
                                               jobs, threading.Event(), RejectLimit(0.05),
                                               CureTracker(parallel.engine, run_id, clock()), shared=True)
            finally:
                await executor.aclose()

        outcome.append(loops.run(go(), "asyncio"))

    caplog.set_level(logging.INFO, logger="dispatcher")
    with booking_lock(parallel.engine, run_id):  # range A books while B plans
        worker = threading.Thread(target=range_b)
        worker.start()
        assert handed.wait(10)
        time.sleep(0.5)  # B reads its history and plans, then waits for the lock
        assert attempt_rows(parallel, account_id="B1") == []
        clock.now += timedelta(seconds=1)  # A books after B's moment: B must not take A's contact for a future one
        (a_batch,) = AccountSource(parallel.engine, f"SELECT * FROM {demo_accounts.name} WHERE account_id = 'A1'",
                                   20).batches()
        history = parallel.ledger.load_history(a_batch.accounts, parallel.pipeline.policy.contacts_since(clock()))
        decisions = parallel.pipeline.planner.plan(a_batch.accounts, history, clock())
        parallel.booker().book(decisions, run_id, clock())
    worker.join(30)
    assert outcome == [True]
    (b_sms,) = attempt_rows(parallel, account_id="B1", channel="sms")
    assert (b_sms["status"], b_sms["rule_id"]) == ("deferred", "cap")
    assert "1 of its 1 accounts planned again" in caplog.text


def test_only_the_accounts_a_new_booking_reaches_are_planned_again(parallel: App, clock: FixedClock) -> None:
    """B1 shares A1's phone, B2 shares B1's email, C1 shares nothing: A1's SMS booked meanwhile plans B1 and B2 (the
    planner counts B1's messages for B2) again; C1's decision stands as it was."""
    due = clock().date() - timedelta(days=2)
    rows = [demo_row("A1", due, phone=SHARED, push_token=None, email=None),
            demo_row("B1", due, phone=SHARED, push_token=None, email="b1@example.com"),
            demo_row("B2", due, phone="+8613900000002", push_token=None, email="b1@example.com"),
            demo_row("C1", due, phone="+8613900000003", push_token=None, email=None)]
    seed_rows(parallel.engine, *rows)
    accounts = [a for a in next(iter(parallel.pipeline.source.batches())).accounts if a.account_id != "A1"]
    since = parallel.pipeline.policy.contacts_since(clock())
    planner, ledger = parallel.pipeline.planner, parallel.ledger
    before = ledger.load_history(accounts, since)
    decisions = planner.plan(accounts, before, clock())
    assert [d.account_id for d in decisions] == ["B1", "B2", "C1"]
    assert replan(planner, accounts, decisions, before, ledger.load_history(accounts, since), clock())[1] == 0

    (a1,) = [a for a in next(iter(parallel.pipeline.source.batches())).accounts if a.account_id == "A1"]
    parallel.booker().book(planner.plan([a1], ledger.load_history([a1], since), clock()), None, clock())
    again, count = replan(planner, accounts, decisions, before, ledger.load_history(accounts, since), clock())

    assert count == 2 and [d.account_id for d in again] == ["B1", "B2", "C1"]
    assert again[2] is decisions[2] and again[0] is not decisions[0]
    sms = {d.account_id: next(p for p in d.channels if p.channel.value == "sms") for d in again}
    assert (sms["B1"].verdict, sms["B1"].rule_id) == (Verdict.DEFER, "cap")  # cn: 1 SMS a day per borrower
    assert sms["C1"].verdict is Verdict.SEND


def test_the_check_under_the_booking_lock_finds_what_reaches_the_batchs_borrowers(
        parallel: App, clock: FixedClock, ledger_backend: str) -> None:
    """``booked_since``: a contact booked after the batch's history was read for another loan of its borrower (A1
    shares B1's phone) is found, one for a stranger (C1) is not. A contact that went meanwhile (A1's SMS failed)
    is noticed only where the whole history is read again (PostgreSQL); on SQLite only what was inserted after the
    mark is read, and the batch keeps counting it: its caps err on the side of not sending."""
    due = clock().date() - timedelta(days=2)
    seed_rows(parallel.engine, demo_row("A1", due, phone=SHARED, push_token=None, email=None),
              demo_row("B1", due, phone=SHARED, push_token=None, email=None),
              demo_row("C1", due, phone="+8613900000003", push_token=None, email=None))
    by_id = {a.account_id: a for a in next(iter(parallel.pipeline.source.batches())).accounts}
    since = parallel.pipeline.policy.contacts_since(clock())
    ledger, planner = parallel.ledger, parallel.pipeline.planner
    assert since is not None

    def book(account_id: str) -> None:
        account = by_id[account_id]
        parallel.booker().book(planner.plan([account], ledger.load_history([account], since), clock()), None,
                               clock())

    def read() -> tuple[Any, Any]:
        mark = ledger.contact_mark()
        assert (mark is None) is (ledger_backend == "postgresql")
        return mark, ledger.load_history([by_id["B1"]], since)

    mark, history = read()
    assert not ledger.booked_since([by_id["B1"]], since, history, mark)
    book("C1")
    assert not ledger.booked_since([by_id["B1"]], since, history, mark)
    book("A1")
    assert ledger.booked_since([by_id["B1"]], since, history, mark)

    mark, history = read()  # A1's SMS among B1's contacts now
    assert not ledger.booked_since([by_id["B1"]], since, history, mark)
    with parallel.engine.begin() as connection:
        connection.execute(update(attempts).where(attempts.c.account_id == "A1").values(status="failed"))
    assert ledger.booked_since([by_id["B1"]], since, history, mark) is (ledger_backend == "postgresql")


def single_process(parallel: App, clock: FixedClock, make_ledger_url: Any, tmp_path: Path) -> App:
    """The same configuration on a ledger of its own, planned in one process: what the split run must match."""
    env = {**parallel.settings.env, "DISPATCHER_PLAN_PROCESSES": "1", "DISPATCHER_DATABASE_URL": make_ledger_url("one"),
           "DISPATCHER_OUTBOX_DIR": str(tmp_path / "outbox-one")}
    return build_app(Settings.from_env(env), clock=clock)


def one_loan_per_borrower(app: App) -> None:
    """Drop the demo loans sharing an address with an earlier one: which of a borrower's loans takes the day's
    message depends on the order they are planned in, and a run stopped midway plans in another order."""
    seen: set[str] = set()
    extra: list[str] = []
    with app.engine.begin() as connection:
        for row in connection.execute(select(demo_accounts).order_by(demo_accounts.c.account_id)).mappings():
            addresses = {a for a in (row["phone"], row["email"], row["push_token"]) if a}
            if addresses & seen:
                extra.append(row["account_id"])
            else:
                seen.update(addresses)
        connection.execute(delete(demo_accounts).where(demo_accounts.c.account_id.in_(extra)))
    assert 0 < len(extra) < 300


@pytest.mark.slow
def test_a_range_process_killed_mid_range_loses_and_duplicates_nothing(parallel: App, clock: FixedClock,
                                                                        make_ledger_url: Any, tmp_path: Path) -> None:
    single = single_process(parallel, clock, make_ledger_url, tmp_path)
    later = clock() + timedelta(minutes=10)
    for app in (single, parallel):
        seed_demo(app.engine, 3000, clock().date())
        one_loan_per_borrower(app)
    start = clock()
    assert Runner(single).run("manual", start).status == "completed"
    clock.now = later  # the second run's moment: crashed claims older than DISPATCHER_RECONCILE_AFTER are settled
    assert Runner(single).run("manual", later).status == "completed"
    reference = sent_pairs(single)
    single.engine.dispose()
    clock.now = start

    reports: list[Any] = []
    running = threading.Thread(target=lambda: reports.append(Runner(parallel).run("manual", start)))
    running.start()
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        children = multiprocessing.active_children()
        if len(children) == 1 and len(attempt_rows(parallel, status="sent")) > 200:
            victim = children[-1]  # the helper, mid-range: both processes are sending
        time.sleep(0.05)
    assert victim is not None and victim.pid is not None, "the ranges never got going"
    os.kill(victim.pid, signal.SIGKILL)
    running.join(180)
    (first,) = reports
    assert first.status == "failed"
    assert first.counts.sent < len(reference)  # it was stopped in the middle

    clock.now = later
    second = Runner(parallel).run("manual", later)  # reconciles what was in flight, books what is left
    assert second.status == "completed", second
    rows = [r for r in attempt_rows(parallel) if r["try_no"] >= 1]
    in_doubt = [r for r in rows if r["status"] in ("claimed", "sending") and r["channel"] != "handoff"]
    assert in_doubt == []  # (an open work item for people stays claimed until it is closed)
    delivered = Counter((r["account_id"], r["channel"]) for r in rows if r["status"] in ("sent", "unknown"))
    assert set(delivered.values()) == {1}  # nothing twice
    assert set(delivered) == reference  # nothing lost
    assert set(outbox_ids(parallel.settings.outbox_dir).values()) == {1}


def test_a_daemons_helpers_plan_its_next_runs_on_their_clock_and_one_that_died_is_replaced(
        parallel: App, clock: FixedClock, make_ledger_url: Any, tmp_path: Path) -> None:
    """Kept between runs (:class:`Planners`), the helper plans each run at that run's moment: run after run, the
    split runs send what one process sends. Killed between two runs, it is replaced by the next run."""
    single = single_process(parallel, clock, make_ledger_url, tmp_path)
    for app in (single, parallel):
        seed_demo(app.engine, 400, clock().date())
        one_loan_per_borrower(app)
    parallel.planners = Planners(1)
    helpers = []
    try:
        for number, days in enumerate((0, 7, 14), start=1):
            clock.now = moment = clock() + timedelta(days=days)
            alone = Runner(single).run("manual", moment)
            report = Runner(parallel).run("manual", moment)
            assert report.status == alone.status == "completed", report
            assert len(sent_pairs(single, alone.run_id)) > 100
            assert sent_pairs(parallel, report.run_id) == sent_pairs(single, alone.run_id), number
            (helper,) = multiprocessing.active_children()  # kept for the next run
            helpers.append(helper.pid)
            if number == 2:
                os.kill(helper.pid or 0, signal.SIGKILL)  # between runs
                helper.join(10)
        assert helpers[0] == helpers[1] != helpers[2]
        sent = Counter((r["reminder_key"], r["channel"]) for r in attempt_rows(parallel, status="sent"))
        assert set(sent.values()) == {1}
    finally:
        parallel.planners.close()
        single.engine.dispose()
    assert multiprocessing.active_children() == []


def test_progress_lines_count_what_the_ranges_read_before_they_end(parallel: App, clock: FixedClock,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A split run's progress lines add up what each range process reported so far, not 0 until the end."""
    monkeypatch.setattr(parallel, "settings", dataclasses.replace(parallel.settings, progress_interval=0.2))
    seed_demo(parallel.engine, 3000, clock().date())
    caplog.set_level(logging.INFO, logger="dispatcher")
    report = Runner(parallel).run("manual", clock())
    assert report.status == "completed" and report.counts.accounts == 3000
    read = [int(m.group(1)) for m in re.finditer(r"in progress: (\d+) account\(s\) read", caplog.text)]
    assert any(0 < n < 3000 for n in read), read
    assert read == sorted(read), read  # each line counts at least what the one before did


@pytest.mark.parametrize(("count", "processes", "parts"), [(20_000, 2, 16), (100_000, 2, 16), (20_000, 4, 32),
                                                           (5_000, 2, 16), (1_000_000, 2, 3), (2_500, 2, 16)])
def test_tapered_ranges_hold_every_row_and_shrink_to_a_batch(count: int, processes: int, parts: int) -> None:
    sizes = tapered_sizes(count, processes, 1000, parts)
    assert sum(sizes) == count and len(sizes) <= parts
    # none longer than the one before, so no long range is planned alone at the end (unless the parts ran out)
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True)
    assert len(sizes) == parts or sizes == sorted(sizes, reverse=True)
    assert all(size >= 1000 for size in sizes[:-2]) and all(size >= 500 for size in sizes)
    assert sizes[0] == max(1000, -(-count // (2 * processes))) or len(sizes) == 1
    assert len(sizes) == parts or sizes[-1] <= 1000
