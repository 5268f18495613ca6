"""One run: stream the accounts, plan each batch, book it in the ledger, hand it to delivery.

In-process, delivery happens batch by batch as the run goes. With a broker, the
batches go to Celery workers and the run then follows the ledger until every
attempt it booked is settled; if the workers stop making progress (a lost task, a
restarted Redis) it reconciles crashed sends and books the run again, which
re-enqueues exactly the attempts still ``planned``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher import loops
from dispatcher.app import App, Pipeline
from dispatcher.executors import Executor
from dispatcher.jobs import RunCounts

log = logging.getLogger(__name__)

SWEEP_AFTER = 30.0
"""Seconds without progress on a run's attempts after which the run is booked again."""

POLL_INTERVAL = 0.25
"""Seconds between two looks at the ledger while workers deliver."""


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did. ``run_id`` is None when the run (name, fire_time) belonged to someone else."""

    run_id: int | None
    name: str
    fire_time: datetime
    status: str
    counts: RunCounts


class _Lease(threading.Thread):
    """Renews the run's lease while it runs; sets ``halt`` on a stop request or a lost lease."""

    def __init__(self, app: App, run_id: int, stopping: threading.Event) -> None:
        super().__init__(name=f"run-{run_id}-lease", daemon=True)
        self.app, self.run_id, self.stopping = app, run_id, stopping
        self.halt = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        every = max(1.0, self.app.runs.lease.total_seconds() / 3)
        renewed = time.monotonic()
        while not self.done.wait(0.5):
            if self.stopping.is_set():
                self.halt.set()
            if time.monotonic() - renewed >= every:
                renewed = time.monotonic()
                if not self.app.runs.renew(self.run_id, self.app.settings.daemon_id, self.app.clock()):
                    log.error("run #%s was taken over by another daemon; stopping here", self.run_id)
                    self.halt.set()


class Runner:
    """Carries out runs with the app's current pipeline; stops between messages when asked."""

    def __init__(self, app: App, stopping: threading.Event | None = None) -> None:
        self.app = app
        self.stopping = stopping or threading.Event()

    def run(self, name: str, fire_time: datetime, pipeline: Pipeline | None = None) -> RunReport:
        """Run (name, fire_time) once: a second call for the same pair does nothing."""
        pipeline = pipeline or self.app.pipeline
        app = self.app
        run_id = app.runs.start(name, fire_time, pipeline.loaded.version, app.settings.daemon_id, app.clock())
        counts = RunCounts()
        if run_id is None:
            log.info("run %s at %s already happened or is running elsewhere; skipped", name, fire_time.isoformat())
            return RunReport(None, name, fire_time, "skipped", counts)
        log.info("run %s (#%s) started with schedules.yaml version %s", name, run_id, pipeline.loaded.version)
        loops.settle_heap()
        lease = _Lease(app, run_id, self.stopping)
        lease.start()
        status = "failed"
        try:
            finished = loops.run(self._execute(run_id, pipeline, counts, lease.halt), app.settings.event_loop)
            status = "completed" if finished else "interrupted"
        finally:
            lease.done.set()
            lease.join()
            if not app.runs.finish(run_id, status, counts.as_dict(), app.clock(), app.settings.daemon_id):
                status = "taken-over"
            log.info("run %s (#%s) %s: %s", name, run_id, status,
                     ", ".join(f"{k}={v}" for k, v in counts.as_dict().items()))
        return RunReport(run_id, name, fire_time, status, counts)

    async def _execute(self, run_id: int, pipeline: Pipeline, counts: RunCounts, halt: threading.Event) -> bool:
        await self._reconcile(pipeline)
        executor = self.app.executor(pipeline, halt)
        try:
            finished = await self._book_all(run_id, pipeline, executor, counts, halt)
            if executor.remote and finished:
                finished = await self._follow(run_id, pipeline, executor, halt)
                self._count_from_ledger(run_id, counts)
            return finished and not halt.is_set()
        finally:
            await executor.aclose()

    async def _book_all(self, run_id: int, pipeline: Pipeline, executor: Executor, counts: RunCounts,
                        halt: threading.Event) -> bool:
        """Plan and book every batch of the source, handing each batch's jobs to ``executor``."""
        ledger, booker = self.app.ledger, self.app.booker()
        for batch in pipeline.source.batches():
            if halt.is_set():
                return False
            now = self.app.clock()
            ledger.record_rejects(run_id, batch.rejects, now)
            history = ledger.load_history(batch.accounts, pipeline.policy.contacts_since(now))
            decisions = pipeline.planner.plan(batch.accounts, history, now)
            jobs, booked = booker.book(decisions, run_id, now)
            booked.rejected = len(batch.rejects)
            booked.accounts += len(batch.rejects)
            delivered = await executor.submit(jobs)
            booked.sent, booked.failed = delivered.sent, delivered.failed
            booked.suppressed += delivered.suppressed
            booked.deferred += delivered.deferred
            counts.add(booked)
        return True

    async def _follow(self, run_id: int, pipeline: Pipeline, executor: Executor, halt: threading.Event) -> bool:
        """Wait for the workers to settle the run's attempts; sweep when they stop making progress."""
        deadline = time.monotonic() + self.app.settings.run_timeout
        last_pending, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            pending = self.app.ledger.pending_count(run_id)
            if pending == 0:
                return True
            if halt.is_set():
                return False
            if pending != last_pending:
                last_pending, last_change = pending, time.monotonic()
            elif time.monotonic() - last_change > SWEEP_AFTER:
                log.warning("run #%s: %d attempt(s) pending without progress for %.0f s; reconciling and "
                            "re-enqueueing", run_id, pending, SWEEP_AFTER)
                await self._reconcile(pipeline)
                await self._book_all(run_id, pipeline, executor, RunCounts(), halt)
                last_change = time.monotonic()
            await asyncio.sleep(POLL_INTERVAL)
        log.error("run #%s: gave up waiting for the workers after %d s", run_id, self.app.settings.run_timeout)
        return False

    async def _reconcile(self, pipeline: Pipeline) -> None:
        reconciler = self.app.reconciler(pipeline)
        now = self.app.clock()
        try:
            await reconciler.reconcile(now - timedelta(seconds=self.app.settings.reconcile_after), now)
        finally:
            if reconciler.twilio is not None:
                await reconciler.twilio.aclose()

    def _count_from_ledger(self, run_id: int, counts: RunCounts) -> None:
        statuses = self.app.ledger.status_counts(run_id)
        counts.sent = statuses.get("sent", 0) + statuses.get("delivered", 0)
        counts.failed = statuses.get("failed", 0) + statuses.get("undelivered", 0)
        counts.suppressed = statuses.get("suppressed", 0)
        counts.deferred = statuses.get("deferred", 0)
