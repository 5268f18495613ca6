"""A run's key ranges planned, booked and delivered by Celery workers (dispatcher/pipeline/remote_ranges.py).

The worker's side (``dispatcher.plan_range``: claim, heartbeat, result) is driven here in this process, as a pool
process drives it; the daemon's side with real workers, a real Redis and a worker killed mid-range is in
test_faults.py. Batches of 20 accounts, so a few hundred accounts make ranges of at least 100.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from array import array
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import FixedClock
from faultkit import wait_for
from rows import attempt_rows
from sqlalchemy import update
from test_pipeline import outbox_ids
from test_worker_versions import V1_BRAND, english_texts, rename_brand

from dispatcher import worker
from dispatcher.app import App, build_app, utc_now
from dispatcher.demo import seed_demo
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.ledger.ranges import beat, claim_range, open_ranges, read_ranges, stop_ranges
from dispatcher.ledger.tables import run_ranges
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.ranges import RangeResult, RangeTask, merge_results
from dispatcher.pipeline.reject_limit import RejectLimit
from dispatcher.pipeline.remote_ranges import STALE_AFTER
from dispatcher.pipeline.run import Runner
from dispatcher.pipeline.source import KeyRange
from dispatcher.settings import Settings


@pytest.fixture
def ranged(workdir: Path, anytime: Path, clock: FixedClock) -> Iterator[App]:
    """The app on profile ``none`` (workers run on the real clock shifted to the test's) with batches of 20."""
    anytime.write_text(anytime.read_text(encoding="utf-8").replace("batch_size: 1000", "batch_size: 20"),
                       encoding="utf-8")
    built = build_app(Settings.from_env(), clock=clock)
    yield built
    built.engine.dispose()


def start_run(app: App, clock: FixedClock, accounts: int, parts: int) -> list[RangeTask]:
    """A run of ``accounts`` demo borrowers split into ``parts`` ranges, recorded as the daemon records them."""
    seed_demo(app.engine, accounts, clock().date())
    run_id = app.runs.start("morning", clock(), app.pipeline.loaded.version, "daemon", clock())
    assert run_id is not None
    ranges = app.pipeline.source.split(parts, 100)
    assert len(ranges) == parts
    offset = (clock() - utc_now()).total_seconds()
    tasks = [RangeTask(run_id, app.pipeline.loaded.version, r, n, parts, offset, 0.05)
             for n, r in enumerate(ranges, 1)]
    open_ranges(app.engine, run_id, parts, clock())
    return tasks


def through_json(task: RangeTask) -> dict[str, Any]:
    """The task's payload as the broker carries it."""
    payload: dict[str, Any] = json.loads(json.dumps(task.to_json()))
    return payload


def test_range_bounds_keep_their_type_through_json() -> None:
    for bounds in ((None, 17), (17, 40), ("F000120", "F000240"), (Decimal("10.5"), None)):
        key_range = KeyRange(*bounds, first=bounds[0] is None)
        again = KeyRange.from_json(json.loads(json.dumps(key_range.to_json())))
        assert again == key_range and [type(b) for b in (again.after, again.upto)] == [type(b) for b in bounds]
    assert not KeyRange(True, None).portable and not KeyRange(None, 1.5).portable
    with pytest.raises(TypeError, match="cannot be sent to a worker"):
        KeyRange(None, 1.5).to_json()


def test_workers_run_each_range_once_and_record_results_the_daemon_merges(
        ranged: App, clock: FixedClock, runtime_factory: Any) -> None:
    tasks = start_run(ranged, clock, 400, 2)
    first, second = runtime_factory(), runtime_factory()
    results = {1: first.plan_range(through_json(tasks[0])), 2: second.plan_range(through_json(tasks[1]))}
    assert all(isinstance(r, RangeResult) and r.finished and r.error is None for r in results.values())

    rows = read_ranges(ranged.engine, tasks[0].run_id)
    assert [(r.status, r.worker, r.starts) for r in rows] == [("done", first.name, 1), ("done", second.name, 1)]
    assert [(r.accounts, r.planned) for r in rows] == [  # what the daemon's progress lines add up meanwhile
        (result.counts["accounts"], result.counts["planned"]) for result in results.values() if result]
    assert first.plan_range(through_json(tasks[1])) is None  # redelivered after it ended: nothing happens
    stored = {r.number: RangeResult.from_json(r.result or "") for r in rows}

    counts, jobs, limit = RunCounts(), array("q"), RejectLimit(0.05)
    outcomes = CureTracker(ranged.engine, tasks[0].run_id, clock())
    assert merge_results(dict(stored), 2, counts, jobs, limit, outcomes)
    assert counts.accounts == 400 and limit.rows == 400 and len(outcomes.seen()) >= counts.planned // 3
    sent = attempt_rows(ranged, status="sent")
    assert len(jobs) == counts.planned == len(sent) > 300
    assert set(Counter((r["reminder_key"], r["channel"]) for r in sent).values()) == {1}
    written = outbox_ids(ranged.settings.outbox_dir)
    assert set(written.values()) == {1}
    assert {r["id"] for r in sent if r["channel"] != "handoff"} == set(written)


def test_a_range_whose_worker_died_is_claimed_again_and_runs_from_its_start_sending_nothing_twice(
        ranged: App, clock: FixedClock, runtime_factory: Any) -> None:
    """The dead worker booked and sent the range's first accounts; the next worker plans the whole range again:
    it books nothing twice, sends the rest and leaves nothing planned."""
    task = start_run(ranged, clock, 200, 2)[0]
    dead = runtime_factory()
    dead.name = "dead-host:1"
    part = KeyRange(task.key_range.after, "L00000040", first=True)  # what it got through before it died
    assert dead.plan_range(through_json(dataclasses.replace(task, key_range=part))) is not None
    sent_before = {r["id"] for r in attempt_rows(ranged, status="sent")}
    assert sent_before

    def left_running(beaten: datetime) -> None:
        with ranged.engine.begin() as connection:
            connection.execute(update(run_ranges).where(run_ranges.c.run_id == task.run_id, run_ranges.c.number == 1)
                               .values(status="running", result=None, updated_at=beaten))

    runtime = runtime_factory()
    left_running(utc_now() + timedelta(seconds=task.clock_offset))
    assert runtime.plan_range(through_json(task)) is None  # its heartbeat is fresh: the range is still the other's
    left_running(clock() - STALE_AFTER * 2)
    result = runtime.plan_range(through_json(task))

    assert result is not None and result.finished and result.error is None
    row = read_ranges(ranged.engine, task.run_id)[0]
    assert (row.status, row.worker, row.starts) == ("done", runtime.name, 2)
    sent = [r for r in attempt_rows(ranged, status="sent") if r["account_id"] <= str(task.key_range.upto)]
    assert set(Counter((r["reminder_key"], r["channel"]) for r in sent).values()) == {1}
    assert sent_before < {r["id"] for r in sent}
    assert not attempt_rows(ranged, status="planned")
    assert set(outbox_ids(ranged.settings.outbox_dir).values()) == {1}


def test_a_range_asked_to_stop_is_not_started(ranged: App, clock: FixedClock, runtime_factory: Any) -> None:
    tasks = start_run(ranged, clock, 200, 2)
    assert stop_ranges(ranged.engine, tasks[0].run_id, clock()) == 2
    runtime = runtime_factory()
    assert runtime.plan_range(through_json(tasks[0])) is None
    assert [r.status for r in read_ranges(ranged.engine, tasks[0].run_id)] == ["stopped", "stopped"]
    assert not attempt_rows(ranged)


def test_no_range_of_an_ended_run_is_claimed(ranged: App, clock: FixedClock, runtime_factory: Any) -> None:
    tasks = start_run(ranged, clock, 200, 2)
    assert ranged.runs.finish(tasks[0].run_id, "completed", {}, clock() + timedelta(seconds=1), "daemon")
    assert runtime_factory().plan_range(through_json(tasks[0])) is None
    assert not attempt_rows(ranged)


def test_a_range_the_daemon_stops_ends_between_messages_and_leaves_the_rest_planned(
        ranged: App, clock: FixedClock, runtime_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon stops (SIGTERM): the worker hears it at its next heartbeat and stops between messages; what it
    booked and did not send stays planned, and the next run sends it, once."""
    monkeypatch.setattr(worker, "BEAT_INTERVAL", 0.02)
    task = start_run(ranged, clock, 1200, 2)[0]
    runtime = runtime_factory()
    found: list[RangeResult | None] = []
    working = threading.Thread(target=lambda: found.append(runtime.plan_range(through_json(task))))
    working.start()
    wait_for(lambda: attempt_rows(ranged, status="sent"), 30, "the range's first messages sent")
    assert stop_ranges(ranged.engine, task.run_id, clock()) == 2  # range 1 running, range 2 never started
    working.join(30)
    assert not working.is_alive(), "the range did not stop within 30 s"

    (result,) = found
    assert result is not None and not result.finished and result.error is None
    assert [r.status for r in read_ranges(ranged.engine, task.run_id)] == ["stopped", "stopped"]
    assert result.counts["accounts"] < 600, "the range (600 accounts) ran to its end before it heard the stop"
    left = attempt_rows(ranged, status="planned")  # booked, not sent (none when it stopped between two batches)
    reminded = {r["account_id"] for r in attempt_rows(ranged)}

    report = Runner(ranged).run("next", clock())  # in this process, no broker: the rest goes out
    assert report.status == "completed"
    sent = attempt_rows(ranged, status="sent")
    assert {r["id"] for r in left} <= {r["id"] for r in sent}
    assert len({r["account_id"] for r in attempt_rows(ranged)}) > len(reminded)  # the rest of the range, and more
    assert set(Counter((r["reminder_key"], r["channel"]) for r in sent).values()) == {1}


def test_a_worker_whose_file_differs_plans_its_range_with_the_version_the_task_names(
        ranged: App, anytime: Path, clock: FixedClock, runtime_factory: Any) -> None:
    task = start_run(ranged, clock, 200, 2)[0]
    ranged.share_version(ranged.pipeline.loaded)  # as the daemon does before it publishes the tasks
    rename_brand(anytime)
    runtime = runtime_factory()
    assert runtime.app.pipeline.loaded.version != task.version

    result = runtime.plan_range(through_json(task))
    assert result is not None and result.finished and result.counts["planned"] > 0
    assert runtime.app.pipeline.loaded.version == task.version
    texts = english_texts(ranged)
    assert texts and all(V1_BRAND in text for text in texts)  # the planned version's words, not this file's


def test_a_version_the_worker_cannot_have_fails_the_range_with_the_reason(
        ranged: App, anytime: Path, clock: FixedClock, runtime_factory: Any) -> None:
    """Not stored in the ledger (the daemon could not store it) and not this worker's file: the range fails, so
    the daemon fails the run with the reason instead of waiting for its stall timeout."""
    task = start_run(ranged, clock, 200, 2)[0]
    rename_brand(anytime)
    result = runtime_factory().plan_range(through_json(task))
    assert result is not None and result.error is not None
    assert result.error[0] == "ConfigError" and f"version {task.version} is neither" in result.error[1]
    (row, _) = read_ranges(ranged.engine, task.run_id)
    assert row.status == "failed" and json.loads(row.result or "")["error"] == list(result.error)
    assert not attempt_rows(ranged)


def test_a_daemon_that_takes_the_run_over_opens_its_ranges_again_and_the_old_worker_stops(
        ranged: App, clock: FixedClock) -> None:
    task = start_run(ranged, clock, 200, 2)[0]
    assert claim_range(ranged.engine, task.run_id, 1, "old-worker:1", clock(), STALE_AFTER)
    assert beat(ranged.engine, task.run_id, 1, "old-worker:1", clock(), 40, 60)

    open_ranges(ranged.engine, task.run_id, 3, clock())  # the run taken over, split in three this time
    assert [(r.number, r.status, r.worker, r.accounts) for r in read_ranges(ranged.engine, task.run_id)] == [
        (1, "queued", None, 0), (2, "queued", None, 0), (3, "queued", None, 0)]
    assert not beat(ranged.engine, task.run_id, 1, "old-worker:1", clock(), 80, 120)  # it stops between messages
