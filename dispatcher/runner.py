"""One run: stream the accounts, plan each batch, book it in the ledger, deliver it."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from dispatcher.app import App, Pipeline
from dispatcher.delivery import Deliverer
from dispatcher.jobs import RunCounts
from dispatcher.source import SourceBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did. ``run_id`` is None when the run (name, fire_time) had already happened."""

    run_id: int | None
    name: str
    fire_time: datetime
    status: str
    counts: RunCounts


class Runner:
    """Carries out runs with the app's current pipeline; stops between messages when asked."""

    def __init__(self, app: App, stopping: threading.Event | None = None) -> None:
        self.app = app
        self.stopping = stopping or threading.Event()

    def run(self, name: str, fire_time: datetime, pipeline: Pipeline | None = None) -> RunReport:
        """Run (name, fire_time) once: a second call for the same pair does nothing."""
        pipeline = pipeline or self.app.pipeline
        ledger = self.app.ledger
        run_id = ledger.start_run(name, fire_time, pipeline.loaded.version, self.app.settings.daemon_id,
                                  self.app.clock())
        counts = RunCounts()
        if run_id is None:
            log.info("run %s at %s already happened; skipped", name, fire_time.isoformat())
            return RunReport(None, name, fire_time, "skipped", counts)
        log.info("run %s (#%s) started with schedules.yaml version %s", name, run_id, pipeline.loaded.version)
        status = "failed"
        try:
            asyncio.run(self._batches(run_id, pipeline, counts))
            status = "interrupted" if self.stopping.is_set() else "completed"
        finally:
            ledger.finish_run(run_id, status, counts.as_dict(), self.app.clock())
            log.info("run %s (#%s) %s: %s", name, run_id, status,
                     ", ".join(f"{k}={v}" for k, v in counts.as_dict().items()))
        return RunReport(run_id, name, fire_time, status, counts)

    async def _batches(self, run_id: int, pipeline: Pipeline, counts: RunCounts) -> None:
        deliverer = self.app.deliverer(pipeline, self.stopping)
        try:
            for batch in pipeline.source.batches():
                if self.stopping.is_set():
                    break
                counts.add(await self._batch(run_id, pipeline, deliverer, batch))
        finally:
            await deliverer.aclose()

    async def _batch(self, run_id: int, pipeline: Pipeline, deliverer: Deliverer,
                     batch: SourceBatch) -> RunCounts:
        ledger = self.app.ledger
        now = self.app.clock()
        ledger.record_rejects(run_id, batch.rejects, now)
        history = ledger.load_history(batch.accounts, pipeline.policy.contacts_since(now))
        decisions = pipeline.planner.plan(batch.accounts, history, now)
        jobs, counts = self.app.booker().book(decisions, run_id, now)
        counts.rejected = len(batch.rejects)
        counts.accounts += len(batch.rejects)
        delivered = await deliverer.deliver(jobs)
        counts.sent += delivered.sent
        counts.failed += delivered.failed
        counts.suppressed += delivered.suppressed
        counts.deferred += delivered.deferred
        return counts
