"""Workers down during a run with a broker: the queue holds the run's own tasks once, and no personal data.

(The last two tests: a run split into key ranges for the workers, whose range fails; whose daemon is stopped.)

A real daemon process (``dispatcher run --once`` with ``DISPATCHER_BROKER_URL``) books a
run on Redis while no worker runs. Several sweeps later the queue still holds exactly
the tasks the run enqueued (nothing is enqueued twice while tasks wait), each carrying
attempt ids only; then a worker comes up and the run completes with every reminder
written to the outbox once.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import delete, func, select

from dispatcher.app import build_app
from dispatcher.demo import demo_accounts, seed_demo
from dispatcher.ledger.tables import attempts, config_versions, handoffs, run_ranges, runs
from dispatcher.pipeline.executors import QUEUE
from dispatcher.settings import Settings

ACCOUNTS = 250
SWEEP = 1
"""DISPATCHER_SWEEP_AFTER of the daemon: a sweep every second while the workers are down."""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def start(started: list[subprocess.Popen[bytes]], log: Path, env: dict[str, str], cwd: Path,
          *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-m", "dispatcher", *args], cwd=cwd, env=env,
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    started.append(process)
    return process


def queued_payloads(client: redis.Redis) -> list[dict[str, object]]:
    """The task arguments waiting in the queue (kombu's Redis messages: JSON envelopes, base64 bodies)."""
    payloads = []
    for raw in client.lrange(QUEUE, 0, -1):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        payloads.append(body[0][0])
    return payloads


@pytest.mark.slow
def test_workers_down_the_queue_holds_the_runs_tasks_once_and_no_personal_data(
        anytime: Path, workdir: Path, broker_url_db: str, processes: list[subprocess.Popen[bytes]]) -> None:
    app = build_app(Settings.from_env())
    seed_demo(app.engine, ACCOUNTS, app.clock().date())
    env = {**os.environ, "DISPATCHER_BROKER_URL": broker_url_db, "DISPATCHER_SWEEP_AFTER": str(SWEEP),
           "DISPATCHER_RECONCILE_AFTER": "1", "PYTHONUNBUFFERED": "1"}
    log = workdir / "run.log"
    runner = start(processes, log, env, workdir, "run", "--once")
    client = redis.Redis.from_url(broker_url_db)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "waiting in the queue" not in log.read_text("utf-8", "replace"):
        time.sleep(0.2)
    with app.engine.connect() as connection:
        planned = int(connection.execute(select(func.count()).select_from(attempts).where(
            attempts.c.status == "planned")).scalar_one())
    tasks = math.ceil(planned / 100)  # one source batch, delivery.task_batch 100
    assert planned > 0 and client.llen(QUEUE) == tasks
    time.sleep(6 * SWEEP)  # several sweeps without workers: nothing enqueued again
    assert client.llen(QUEUE) == tasks and runner.poll() is None

    payloads = queued_payloads(client)
    queued = [i for p in payloads for i in p["attempts"]]  # type: ignore[attr-defined]
    with app.engine.connect() as connection:
        waiting = set(connection.execute(select(attempts.c.id).where(attempts.c.status == "planned")).scalars())
    assert len(queued) == len(set(queued)) and set(queued) == waiting  # each planned attempt queued once
    text = json.dumps(payloads, ensure_ascii=False)
    with app.engine.connect() as connection:
        people = connection.execute(select(demo_accounts.c.name, demo_accounts.c.phone, demo_accounts.c.email,
                                           demo_accounts.c.overdue_amount)).all()
    leaked = [value for row in people for value in row if value and str(value) in text]
    assert leaked == [] and set(payloads[0]) == {"version", "run_id", "attempts"}

    start(processes, workdir / "worker.log", env, workdir, "worker", "--pool", "solo")
    assert runner.wait(120) == 0, log.read_text("utf-8", "replace")[-3000:]
    with app.engine.connect() as connection:
        statuses = dict(connection.execute(select(attempts.c.status, func.count()).where(attempts.c.try_no >= 1)
                                           .group_by(attempts.c.status)).all())
    assert set(statuses) <= {"sent", "suppressed"} and statuses["sent"] == planned
    sent_ids = [json.loads(line)["attempt_id"] for kind in ("sms", "push", "voice")
                if (workdir / "outbox" / f"{kind}.jsonl").exists()
                for line in (workdir / "outbox" / f"{kind}.jsonl").read_text("utf-8").splitlines()]
    sent_ids += [int(p.name.split("-")[0]) for p in (workdir / "outbox" / "email").glob("*.eml")]
    with app.engine.connect() as connection:  # a hand-off is a work item in the ledger, not a file
        sent_ids += [int(r.attempt_id) for r in connection.execute(select(handoffs.c.attempt_id))]
    assert len(sent_ids) == len(set(sent_ids)) == planned  # every reminder once
    app.engine.dispose()


@pytest.mark.slow
def test_range_tasks_carry_no_personal_data_and_a_range_that_fails_fails_the_run_naming_it(
        anytime: Path, workdir: Path, broker_url_db: str, processes: list[subprocess.Popen[bytes]]) -> None:
    """A run split into two key ranges (batches of 20, ``DISPATCHER_PLAN_RANGES=2``) with no worker up: the queue
    holds one ``dispatcher.plan_range`` task per range, ids and bounds only. The worker that comes up cannot have
    the run's version (its schedules.yaml differs and the ledger's copy is gone): the first range fails, the
    daemon stops the other and the run fails with the range and the reason, nothing booked."""
    anytime.write_text(anytime.read_text("utf-8").replace("batch_size: 1000", "batch_size: 20"), "utf-8")
    app = build_app(Settings.from_env())
    seed_demo(app.engine, 300, app.clock().date())
    env = {**os.environ, "DISPATCHER_BROKER_URL": broker_url_db, "DISPATCHER_PLAN_RANGES": "2",
           "DISPATCHER_SWEEP_AFTER": str(SWEEP), "PYTHONUNBUFFERED": "1"}
    log = workdir / "run.log"
    runner = start(processes, log, env, workdir, "run", "--once")
    client = redis.Redis.from_url(broker_url_db)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and client.llen(QUEUE) < 2:
        time.sleep(0.2)
    payloads = queued_payloads(client)
    assert sorted(p["number"] for p in payloads) == [1, 2], log.read_text("utf-8", "replace")[-3000:]
    assert set(payloads[0]) == {"run_id", "version", "number", "ranges", "key_range", "clock_offset", "reject_ratio"}
    bounds = [b for p in payloads for b in p["key_range"].values() if isinstance(b, list)]  # type: ignore[attr-defined]
    assert bounds and all(kind == "str" and value.startswith("L") for kind, value in bounds)  # account ids
    text = json.dumps(payloads, ensure_ascii=False)
    with app.engine.connect() as connection:
        people = connection.execute(select(demo_accounts.c.name, demo_accounts.c.phone, demo_accounts.c.email,
                                           demo_accounts.c.overdue_amount)).all()
    assert [value for row in people for value in row if value and str(value) in text] == []

    with app.engine.begin() as connection:
        connection.execute(delete(config_versions))
    anytime.write_text(anytime.read_text("utf-8").replace("name: Xinyong Wallet", "name: Renamed Wallet"), "utf-8")
    start(processes, workdir / "worker.log", env, workdir, "worker", "--pool", "solo")
    assert runner.wait(120) == 1, log.read_text("utf-8", "replace")[-3000:]
    with app.engine.connect() as connection:
        (run,) = connection.execute(select(runs.c.status, runs.c.error)).all()
        booked = int(connection.execute(select(func.count()).select_from(attempts)).scalar_one())
    assert run.status == "failed" and run.error.startswith("key range 1 of 2: ConfigError: configuration version")
    assert booked == 0
    app.engine.dispose()


@pytest.mark.slow
def test_a_daemon_stopped_while_workers_plan_its_ranges_stops_them_and_the_next_run_sends_the_rest_once(
        anytime: Path, workdir: Path, broker_url_db: str, processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to the daemon while a worker's two pool processes plan its two key ranges: the daemon asks the
    ranges to stop, each stops between messages and reports, and the run ends ``interrupted``; the next run
    sends what is left, nothing twice."""
    anytime.write_text(anytime.read_text("utf-8").replace("batch_size: 1000", "batch_size: 20"), "utf-8")
    app = build_app(Settings.from_env())
    # ranges of 3,000 accounts last a few seconds: longer than a worker takes to see the stop (its range's beat)
    seed_demo(app.engine, 6000, app.clock().date())
    env = {**os.environ, "DISPATCHER_BROKER_URL": broker_url_db, "DISPATCHER_PLAN_RANGES": "2",
           "DISPATCHER_SWEEP_AFTER": str(SWEEP), "PYTHONUNBUFFERED": "1"}
    start(processes, workdir / "worker.log", env, workdir, "worker", "--pool", "prefork", "--concurrency", "2")
    log = workdir / "run.log"
    runner = start(processes, log, env, workdir, "run", "--once")

    def sent() -> int:
        with app.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(attempts).where(
                attempts.c.status == "sent")).scalar_one())

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and sent() < 200:
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(60) == 143, log.read_text("utf-8", "replace")[-3000:]
    with app.engine.connect() as connection:
        (run,) = connection.execute(select(runs.c.status, runs.c.counts)).all()
        stages = [row.status for row in connection.execute(select(run_ranges.c.status))]
    assert run.status == "interrupted" and stages == ["stopped", "stopped"], (run, stages)
    assert 0 < json.loads(run.counts)["accounts"] < 6000  # both ranges reported what they read before stopping

    again = start(processes, workdir / "again.log", env, workdir, "run", "--once")
    assert again.wait(120) == 0, (workdir / "again.log").read_text("utf-8", "replace")[-3000:]
    with app.engine.connect() as connection:
        done = connection.execute(select(attempts.c.reminder_key, attempts.c.channel, func.count())
                                  .where(attempts.c.status == "sent")
                                  .group_by(attempts.c.reminder_key, attempts.c.channel)).all()
        second = connection.execute(select(runs.c.status, runs.c.counts).order_by(runs.c.id.desc())).first()
    assert second is not None and second.status == "completed" and json.loads(second.counts)["accounts"] == 6000
    assert done and {n for *_, n in done} == {1}
    app.engine.dispose()
