"""``dispatcher worker`` and the Celery app of dispatcher/worker.py: refusal without a broker, delivery guarantees.

The configuration is read in fresh interpreters (``dispatcher.worker`` configures its
Celery app from the environment at import). One test starts a real worker (solo
pool) on a Redis database of its own and hands it one booked batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from conftest import FixedClock
from sqlalchemy import select

from dispatcher.app import App
from dispatcher.demo import seed_demo
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.executors import QUEUE, task_payload
from dispatcher.worker import TASK_NAME

CONF = ("import dispatcher.worker as w; c = w.app.conf; "
        "print(c.task_acks_late, c.task_reject_on_worker_lost, c.worker_prefetch_multiplier); "
        "print(c.broker_transport_options['visibility_timeout']); print(c.task_default_queue); print(c.broker_url)")


def environment(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_BROKER_URL", "DISPATCHER_VISIBILITY"))}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def python(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_worker_without_a_broker_exits_non_zero_with_a_clear_message(workdir: Path) -> None:
    done = python("-m", "dispatcher", "worker", env=environment(), cwd=workdir)
    assert done.returncode != 0
    assert "DISPATCHER_BROKER_URL is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_worker_with_a_bad_visibility_timeout_says_so(workdir: Path) -> None:
    done = python("-m", "dispatcher", "worker", cwd=workdir,
                  env=environment(DISPATCHER_BROKER_URL="redis://127.0.0.1:6379/15",
                                  DISPATCHER_VISIBILITY_TIMEOUT="1h"))
    assert done.returncode != 0
    assert "DISPATCHER_VISIBILITY_TIMEOUT" in done.stderr and "Traceback" not in done.stderr


def test_celery_app_acks_late_requeues_on_a_lost_worker_and_prefetches_one(workdir: Path) -> None:
    broker = "redis://127.0.0.1:6379/15"
    done = python("-c", CONF, env=environment(DISPATCHER_BROKER_URL=broker), cwd=workdir)
    assert done.returncode == 0, done.stderr
    acks, visibility, queue, url = done.stdout.splitlines()
    assert acks == "True True 1"
    assert visibility == "3600"  # DEFAULT_VISIBILITY_TIMEOUT
    assert (queue, url) == (QUEUE, broker)


@pytest.mark.parametrize("seconds", ["45", "7200"])
def test_the_broker_visibility_timeout_follows_the_environment(workdir: Path, seconds: str) -> None:
    done = python("-c", CONF, cwd=workdir,
                  env=environment(DISPATCHER_BROKER_URL="redis://127.0.0.1:6379/15",
                                  DISPATCHER_VISIBILITY_TIMEOUT=seconds))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == seconds


# a real worker ---------------------------------------------------------------------------------------------------
@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], Path]]:
    """Processes started by a test (each in its own process group) and the file their output goes to."""
    started: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "worker.log"
    yield started, log
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def book_batch(app: App, clock: FixedClock) -> tuple[dict[str, object], list[int]]:
    """A run's first batch, planned and booked as the daemon does: (task payload, attempt ids)."""
    seed_demo(app.engine, 8, clock().date())
    run_id = app.runs.start("morning", clock(), app.pipeline.loaded.version, "daemon", clock())
    (batch,) = list(app.pipeline.source.batches())
    decisions = app.pipeline.planner.plan(batch.accounts, app.ledger.load_history(batch.accounts), clock())
    jobs, _ = app.booker().book(decisions, run_id, clock())
    assert jobs
    payload = task_payload(app.pipeline.loaded.version, run_id, [job.attempt_id for job in jobs])
    text = json.dumps(payload, ensure_ascii=False)
    assert not any(value in text for job in jobs  # what the broker holds names nobody
                   for value in (job.account.name, job.address, str(job.account.overdue_amount)))
    return payload, [job.attempt_id for job in jobs]


@pytest.mark.slow
def test_a_worker_started_with_schedules_delivers_a_booked_batch(
        anytime: Path, app: App, clock: FixedClock, broker_url_db: str,
        worker_log: tuple[list[subprocess.Popen[bytes]], Path], tmp_path: Path) -> None:
    payload, attempt_ids = book_batch(app, clock)
    started, log = worker_log
    elsewhere = tmp_path / "elsewhere"  # a working directory without schedules.yaml
    elsewhere.mkdir()
    env = environment(DISPATCHER_BROKER_URL=broker_url_db, DISPATCHER_SCHEDULES=None, PYTHONUNBUFFERED="1")
    with log.open("wb") as output:
        started.append(subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "--schedules", str(anytime), "worker", "--pool", "solo"],
            cwd=elsewhere, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True))
    publisher = Celery("test-publisher", broker=broker_url_db)
    try:
        publisher.send_task(TASK_NAME, args=[payload], queue=QUEUE)
    finally:
        publisher.close()

    deadline = time.monotonic() + 60
    statuses: list[str] = []
    while time.monotonic() < deadline:
        with app.engine.connect() as connection:
            statuses = [row.status for row in connection.execute(
                select(attempts.c.status).where(attempts.c.id.in_(attempt_ids)))]
        text = log.read_text(encoding="utf-8", errors="replace")
        if all(s not in ("planned", "claimed", "sending") for s in statuses) or "raised unexpected" in text \
                or started[0].poll() is not None:
            break
        time.sleep(0.2)
    assert statuses and set(statuses) == {"sent"}, f"{statuses}\n{log.read_text(encoding='utf-8')[-3000:]}"
