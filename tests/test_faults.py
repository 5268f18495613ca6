"""Fault tests: real Redis, real Celery worker processes, real daemons, the Twilio stand-in on loopback.

Every test seeds 2,000 borrowers who each get exactly one SMS (a one-step ladder
``channels: [sms]`` on profile ``none``), breaks something in the middle of the
delivery and then demands the same end state: every reminder reached the stand-in
exactly once (counted per ``To`` and per ``To`` + ``Body``), the ledger shows each
reminder's attempt sent once with the stand-in's SID, nothing left ``planned``,
``sending`` or ``unknown``: 0 lost, 0 duplicated.

(a) a worker killed with kill -9 mid-run, (b) transient Twilio errors (429 with
Retry-After, 503, timeouts before Twilio processed the request), (d) two daemons on
one schedule pass, (e) a worker killed in the middle of the key ranges it plans
(planning spread over the workers). They guard three bugs found here and fixed: a
timeout after Twilio processed the request was sent twice (b, second test), a Redis
restart mid-run sent some reminders twice (c), and a run's final count was quadratic
on SQLite (last test).

The ledger is a SQLite file in WAL mode written by every process (test, runner,
daemons, worker pool processes); it held up, so PostgreSQL is not needed here.
Processes are started in their own process groups and killed (the whole group) in
the rig's teardown; see ``faultkit.py``. The broker is Redis database
:data:`BROKER_DB` of the conftest's server, flushed and claimed for the test with
the conftest's claim key (another free database when a parallel session holds it),
except in the Redis-restart test, which starts a private disk-less redis-server.

Timing knobs (all small so the module stays within a few minutes):
``DISPATCHER_VISIBILITY_TIMEOUT=10``, ``DISPATCHER_RECONCILE_AFTER=5``,
``DISPATCHER_RUN_LEASE=5``, ``delivery: {task_batch: 100}``. The runner sweeps
(reconcile, then enqueue the still-planned attempts again when the queue is empty)
after ``DISPATCHER_SWEEP_AFTER`` (30 s by default) without progress, which is most of
the duration of the crash tests.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faultkit import (
    CI,
    FaultyTwilio,
    Proc,
    RedisServer,
    Rig,
    first_try_faults,
    free_port,
    late,
    lost,
    too_many_requests,
    unavailable,
    wait_for,
)
from redisdb import claimed_database
from sqlalchemy import event

from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.group_commit import LAG_LIMIT
from dispatcher.ledger.store import Ledger
from dispatcher.pipeline.claim_ahead import AHEAD_PER_PLACE

pytestmark = pytest.mark.timeout(150)

REMINDERS = 2000
BROKER_DB = 11
"""The Redis database of these tests (the conftest's server; flushed at start)."""

RUN_TIMEOUT = 90.0
"""Seconds a test waits for ``dispatcher run --once`` to finish."""

RigFactory = Callable[..., Rig]

PLANNING: dict[str, dict[str, Any]] = {
    "daemon": {},
    "workers": {"source_batch": 100, "DISPATCHER_PLAN_RANGES": "4", "DISPATCHER_SWEEP_AFTER": "10"},
}
"""Who plans and books: the daemon (workers only deliver), or the workers, four key ranges of 500 borrowers."""


@pytest.fixture
def broker(redis_url: str) -> Iterator[str]:
    """Redis database :data:`BROKER_DB` of the conftest's server, flushed, claimed for this test, flushed after.

    When another session holds it (the whole suite running beside this one), a free
    database among 1-15 is claimed instead, never one in use.
    """
    with claimed_database(redis_url, BROKER_DB) as url:
        yield url


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[RigFactory]:
    """Builds rigs in ``tmp_path`` (seeded); their processes are killed (whole groups) at teardown."""
    built: list[Rig] = []

    def make(broker_url: str, twilio: FaultyTwilio, **env: str) -> Rig:
        rig = Rig(tmp_path, broker_url, twilio, **env)
        built.append(rig)
        rig.seed(REMINDERS)
        return rig

    yield make
    for rig in built:
        rig.close()


def finish(rig: Rig, runner: Proc, timeout: float = RUN_TIMEOUT) -> None:
    """Wait for ``dispatcher run --once``; it must report the run completed."""
    try:
        code = runner.wait(timeout)
    except Exception as exc:  # subprocess.TimeoutExpired: show what every process was doing
        raise AssertionError(f"the run did not finish in {timeout:g} s\n{rig.logs()}") from exc
    assert code == 0, f"dispatcher run --once exited with {code}\n{rig.logs()}"
    assert "completed" in runner.output(), rig.logs()


# (a) ----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_a_worker_killed_mid_run_every_reminder_reaches_twilio_exactly_once(
        make_rig: RigFactory, broker: str) -> None:
    """kill -9 the worker (main and pool processes) at ~37 %; a new worker and the reconciler finish the run.

    Only the messages in flight, the next few claimed ahead and the outcomes not yet
    committed were left ``claimed`` (at most 2 pool processes x (AHEAD_PER_PLACE x 8 + 8 + LAG_LIMIT)); some
    had reached the stand-in, the others not. The rest of the killed batches stayed
    ``planned`` and are redelivered with their tasks. The runner's sweep asks Twilio
    (the stand-in's list endpoint) about each one in doubt: found → ``sent`` with that
    SID, not found → ``planned`` again and delivered by the new worker.
    """
    with FaultyTwilio() as twilio:
        twilio.delay = 0.05  # 2 pool processes x 8 in flight: ~300 messages/s, a run of ~7 s
        rig = make_rig(broker, twilio, DISPATCHER_CONCURRENCY="8")
        worker = rig.worker("worker-1")
        pool = worker.group()
        assert len(pool) == 3, f"expected the main process and 2 pool processes, found {pool}"
        runner = rig.run_once()

        # 740 = 7.4 batches of 100: both pool processes are in the middle of a batch, not between two
        wait_for(lambda: twilio.count() >= 0.37 * REMINDERS, 60, "37 % of the reminders at the stand-in")
        worker.kill()
        at_kill = twilio.count()
        wait_for(lambda: worker.group() == [], 5, "every process of the killed worker's group to be gone")
        in_doubt = [a for a in rig.attempts() if a["status"] in ("claimed", "sending")]
        # per pool process: 4 x 8 claimed ahead, 8 in flight, and the outcomes Twilio can be asked about still lagging
        assert 0 < len(in_doubt) <= 2 * ((AHEAD_PER_PLACE + 1) * 8 + LAG_LIMIT), f"{len(in_doubt)} in doubt"
        assert not [a for a in in_doubt if a["status"] == "sending"]  # Twilio needs no hand-over marker
        assert at_kill <= 0.5 * REMINDERS, f"killed too late: {at_kill} received"

        rig.worker("worker-2")
        finish(rig, runner)

        report = rig.report()
        print(f"\n[a] killed at {at_kill} received; {report.summary()}")
        report.check()
        reconciled = [a for a in rig.attempts() if (a["detail"] or "").startswith("reconciled: the provider had")]
        assert reconciled, "no crashed send was settled by the Twilio lookup: the kill hit no batch in flight?"
        assert "reconciled" in runner.output()


# (b) ----------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("planning", PLANNING)
def test_b_transient_errors_end_delivered_none_twice(make_rig: RigFactory, broker: str, planning: str) -> None:
    """~20 % of first tries fail: 429 (Retry-After: 1), 503, or held past TWILIO_TIMEOUT=1 s and dropped.

    The timeout is modelled honestly as "before Twilio processed it": the stand-in
    holds the request for 1.5 s and closes the connection without creating a
    message. (The processed-then-timed-out case is the next test.)
    """
    plan = first_try_faults(0.2, [too_many_requests(1), unavailable(), lost(1.5)])
    with FaultyTwilio(plan) as twilio:
        rig = make_rig(broker, twilio, TWILIO_TIMEOUT="1", DISPATCHER_CONCURRENCY="32", **PLANNING[planning])
        rig.worker("worker-1")
        rig.worker("worker-2")
        runner = rig.run_once()
        finish(rig, runner)

        report = rig.report()
        print(f"\n[b, planning by the {planning}] {report.summary()}")
        assert ("key ranges handed to the workers" in runner.output()) == (planning == "workers")
        report.check()
        faults = twilio.faults
        assert min(faults["429"], faults["503"], faults["timeout-lost"]) > 0, faults
        assert 0.15 * REMINDERS <= sum(faults.values()) <= 0.25 * REMINDERS, faults
        failed = Counter(a["error_code"] for a in rig.attempts() if a["status"] == "failed")
        assert set(failed) == {"20429", "20500", "timeout"}, failed
        assert (failed["20429"], failed["20500"]) == (faults["429"], faults["503"]), (failed, faults)
        assert failed["timeout"] >= faults["timeout-lost"], (failed, faults)  # more: a slow answer under load
        assert all(a["error_class"] == "transient" for a in rig.attempts() if a["status"] == "failed")


@pytest.mark.redis
def test_b_timeout_after_twilio_processed_the_message_is_not_sent_twice(
        make_rig: RigFactory, broker: str) -> None:
    """5 % of first tries: the stand-in creates the message, then answers after the client's 1 s timeout."""
    with FaultyTwilio(first_try_faults(0.05, [late(1.5)])) as twilio:
        rig = make_rig(broker, twilio, TWILIO_TIMEOUT="1", DISPATCHER_CONCURRENCY="32")
        rig.worker("worker-1")
        rig.worker("worker-2")
        runner = rig.run_once()
        finish(rig, runner)

        report = rig.report()
        print(f"\n[b-late] {report.summary()}")
        assert twilio.faults["timeout-late"] > 0
        report.check()


# (e) ----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_e_planning_spread_over_workers_a_worker_killed_mid_range_loses_and_duplicates_nothing(
        make_rig: RigFactory, broker: str) -> None:
    """Four key ranges of 500 borrowers (batches of 100, ``DISPATCHER_PLAN_RANGES=4``), each planned, booked and
    delivered by a worker's pool process; kill -9 the worker (main and pool) at ~30 %, in the middle of its two
    ranges, then start another.

    The killed ranges' heartbeats go stale; their tasks are published again (the queue is empty once the new
    worker took the other two) and the new worker plans each killed range again from its start: what was sent is
    not booked again, what was booked and not claimed is sent, and what the dead worker had claimed is settled by
    the run's sweep (the Twilio lookup) as in (a).
    """
    with FaultyTwilio() as twilio:
        twilio.delay = 0.05
        rig = make_rig(broker, twilio, source_batch=100, DISPATCHER_CONCURRENCY="8", DISPATCHER_PLAN_RANGES="4",
                       DISPATCHER_SWEEP_AFTER="10")
        worker = rig.worker("worker-1")
        runner = rig.run_once()

        wait_for(lambda: twilio.count() >= 0.3 * REMINDERS, 60, "30 % of the reminders at the stand-in")
        worker.kill()
        at_kill = twilio.count()
        wait_for(lambda: worker.group() == [], 5, "every process of the killed worker's group to be gone")
        running = [r["number"] for r in rig.ranges() if r["status"] == "running"]
        assert len(running) == 2, rig.ranges()
        assert at_kill < 0.5 * REMINDERS, f"killed too late: {at_kill} received"

        rig.worker("worker-2")
        finish(rig, runner, 130)

        report = rig.report()
        ranges = rig.ranges()
        print(f"\n[e] killed at {at_kill} received in ranges {running}; {report.summary()}; "
              f"range starts {[r['starts'] for r in ranges]}")
        report.check()
        assert "4 key ranges handed to the workers" in runner.output()
        assert [r["status"] for r in ranges] == ["done"] * 4
        assert all(r["starts"] >= 2 for r in ranges if r["number"] in running)
        kept = [json.loads(r["result"]) for r in ranges]  # once merged, the ledger keeps counts, not ids
        assert [(k["jobs"], k["seen"]) for k in kept] == [([], [])] * 4
        assert sum(k["counts"]["accounts"] for k in kept) >= REMINDERS


# (c) ----------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A disk-less redis-server of our own on a free port, which the test stops and starts again."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.close()


@pytest.mark.redis
@pytest.mark.parametrize("planning", PLANNING)
def test_c_redis_restarted_mid_run_completes_nothing_lost_nothing_twice(
        make_rig: RigFactory, private_redis: RedisServer, planning: str) -> None:
    """Shut the broker down at ~33 %, start it again (empty) 2 s later: the run still delivers each reminder once."""
    with FaultyTwilio() as twilio:
        twilio.delay = 0.05
        rig = make_rig(private_redis.url, twilio, DISPATCHER_CONCURRENCY="8", **PLANNING[planning])
        rig.worker("worker-1")
        runner = rig.run_once()

        # 660 = 6.6 batches of 100: the worker is in the middle of a batch, not between two
        wait_for(lambda: twilio.count() >= 0.33 * REMINDERS, 60, "33 % of the reminders at the stand-in")
        private_redis.stop()
        down_at = twilio.count()
        time.sleep(2)
        private_redis.start()
        back = time.time()
        finish(rig, runner, 110)  # one sweep (30 s without progress) settles it; the bug below costs a second one

        report = rig.report()
        print(f"\n[c, planning by the {planning}] Redis stopped at {down_at} received; {report.summary()}; "
              f"duplicated numbers whose copies were all created after Redis came back: {report.copies_after(back)}")
        report.check()


# (d) ----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_d_two_daemons_each_scheduled_run_fires_once(make_rig: RigFactory, broker: str) -> None:
    """Two ``dispatcher run`` daemons on a ``* * * * *`` run: one runs row per (name, fire_time), no send twice.

    Both daemons race for the run missed at start-up (catch-up of the current minute)
    and then for the next minute's cron fire; the ledger lets one of them have each.
    """
    with FaultyTwilio() as twilio:
        rig = make_rig(broker, twilio)
        rig.worker("worker-1")
        daemons = [rig.daemon("daemon-1"), rig.daemon("daemon-2")]

        def two_runs_done() -> bool:
            rows = rig.runs()
            return len({r["fire_time"] for r in rows}) >= 2 and all(r["status"] == "completed" for r in rows)

        wait_for(two_runs_done, 75, "two scheduled runs completed", interval=0.5)
        codes = [d.stop() for d in daemons]
        assert codes == [0, 0], rig.logs()

        rows = rig.runs()
        pairs = Counter((r["name"], r["fire_time"]) for r in rows)
        assert all(n == 1 for n in pairs.values()), pairs
        first, second = sorted(r["fire_time"] for r in rows)[:2]
        assert second - first == timedelta(minutes=1)
        assert {r["daemon_id"] for r in rows} <= {"daemon-1", "daemon-2"}
        assert all(r["takeovers"] == 0 for r in rows)
        skipped = sum(d.output().count("already happened or is running elsewhere; skipped") for d in daemons)
        assert skipped >= 1, "the cron fire of the second minute should have been refused to one daemon"

        report = rig.report()
        print(f"\n[d] runs={[(r['fire_time'].isoformat(), r['daemon_id']) for r in rows]}; {report.summary()}")
        report.check()


# scale ----------------------------------------------------------------------------------------


def test_the_final_count_of_a_run_searches_the_claim_index_instead_of_scanning(tmp_path: Path) -> None:
    """The query behind a run's final counts must not scan ``attempts`` for each attempt of the run."""
    engine = create_ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    executed: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        executed.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        Ledger(engine).status_counts(1)
        statement, parameters = executed[-1]
        with engine.connect() as connection:
            plan = [str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    finally:
        engine.dispose()
    assert not [step for step in plan if step.startswith("SCAN later")], plan
