"""The Celery tasks and their worker runtime: ``dispatcher.deliver_batch`` delivers a batch of booked attempts,
``dispatcher.plan_range`` plans, books and delivers one key range of a run (:mod:`dispatcher.pipeline.remote_ranges`).

The Celery app itself is :mod:`dispatcher.celery_app`; the daemon sends tasks by
name through it and never imports this module (which builds the whole app).

A delivery task carries the configuration version, the run id and attempt ids (a range task: the range's two
bounding account ids instead), never a borrower's name, number, address or amount: each worker reads the attempts from
the ledger and the accounts from the lender's database just before sending
(:mod:`dispatcher.pipeline.job_loader`). Each message is claimed only when it is about to
be sent, so a worker killed mid-batch leaves at most its messages in flight in
doubt; the rest stay ``planned`` and are delivered when the task is redelivered
or enqueued again.

Start workers with ``dispatcher worker`` or ``celery -A dispatcher.worker worker``
(the broker is ``DISPATCHER_BROKER_URL``). Each worker process builds the app from
the environment and schedules.yaml once, when it starts, keeps one event loop and its provider
connections across tasks, and sends up to ``DISPATCHER_CONCURRENCY`` messages at
a time. Tasks are acknowledged late and rejected when their worker dies, so a
killed worker's batch is delivered again; the ledger claim makes sure what already
went out is not sent twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from dispatcher.app import App, Pipeline, build_app, load_version, utc_now
from dispatcher.celery_app import RANGE_TASK_NAME, TASK_NAME, app
from dispatcher.ledger.ranges import beat, claim_range, end_range
from dispatcher.pipeline import loops
from dispatcher.pipeline.deliver import Deliverer
from dispatcher.pipeline.executors import InProcessExecutor
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.ranges import RangeResult, RangeTask, describe, failed_result, run_range
from dispatcher.pipeline.remote_ranges import BEAT_INTERVAL, STALE_AFTER
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["RANGE_TASK_NAME", "TASK_NAME", "app", "deliver_batch", "plan_range"]
"""``celery -A dispatcher.worker`` finds the app here, with the tasks registered on it."""


VERSIONS_KEPT = 4
"""Configuration versions a worker process keeps wired (pipeline and deliverer) for tasks of earlier runs."""


class _Runtime:
    """One per worker process: the wired app, an event loop and a deliverer per version, outliving tasks.

    A task names the configuration version its run planned with. The worker runs exactly that version: its own
    schedules.yaml when that is the version, else the ledger's copy (stored when the run handed work to the
    broker). Each version is wired once and kept, so tasks of two versions in flight cost no rebuilding.
    """

    def __init__(self) -> None:
        self.offset = timedelta(0)  # a range task's: its run's clock against the real one (0 but in tests)
        self.app: App = build_app(Settings.from_env(), migrate=False, clock=self.clock)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.loop = loops.loop_factory(self.app.settings.event_loop)()
        self.stopping = threading.Event()
        self.deliverer: Deliverer = self.app.deliverer(self.app.pipeline, self.stopping)
        self.wired: OrderedDict[str, tuple[Pipeline, Deliverer]] = OrderedDict(
            {self.app.pipeline.loaded.version: (self.app.pipeline, self.deliverer)})
        loops.settle_heap()

    def follow(self, version: str) -> None:
        """Make ``version`` the one this process delivers with; raises ConfigError when it cannot be had."""
        if version == self.app.pipeline.loaded.version:
            return
        wired = self.wired.get(version)
        if wired is None:
            pipeline = self.app.build_pipeline(load_version(self.app.settings, version, self.app.engine))
            wired = pipeline, self.app.deliverer(pipeline, self.stopping)
            self.wired[version] = wired
            while len(self.wired) > VERSIONS_KEPT:
                _, (_, oldest) = self.wired.popitem(last=False)
                self.loop.run_until_complete(oldest.aclose())
            loops.settle_heap()
        self.wired.move_to_end(version)
        self.app.pipeline, self.deliverer = wired

    def deliver(self, payload: dict[str, Any]) -> dict[str, int]:
        """Deliver the payload's attempts that are still ``planned``; a failure is noted on the run."""
        run_id = payload.get("run_id")
        try:
            self.follow(str(payload.get("version", "")))
            loader = self.app.job_loader(self.app.pipeline)
            loaded = loader.load(payload["attempts"], self.app.clock())
            counts = self.loop.run_until_complete(self.deliverer.deliver(loaded.jobs, loaded.accounts))
        except Exception as exc:
            if isinstance(run_id, int):
                self.app.runs.note_task_failure(run_id, f"{type(exc).__name__}: {exc}")
            raise
        counts.suppressed += loaded.gone
        counts.skipped += loaded.not_planned
        return counts.as_dict()

    def clock(self) -> datetime:
        return utc_now() + self.offset

    def plan_range(self, payload: dict[str, Any]) -> RangeResult | None:
        """Plan, book and deliver one key range of a run; None when another worker runs it or it ended.

        The range is claimed in the ledger and beaten every :data:`BEAT_INTERVAL` seconds while it runs; when the
        daemon asks it to stop (or another worker took it over) it stops between messages. Its result, or the
        error that ended it, is recorded on the range for the daemon.
        """
        task = RangeTask.from_json(payload)
        self.offset = timedelta(seconds=task.clock_offset)
        engine = self.app.engine
        if not claim_range(engine, task.run_id, task.number, self.name, self.clock(), STALE_AFTER):
            log.info("run #%s: key range %d of %d is run by another worker or ended; nothing to do", task.run_id,
                     task.number, task.ranges, extra={"run_id": task.run_id})
            return None
        stopping, done, counts = threading.Event(), threading.Event(), RunCounts()
        beating = threading.Thread(target=self._beat, args=(task, stopping, done, counts), daemon=True,
                                   name=f"run-{task.run_id}-range-{task.number}-beat")
        beating.start()
        try:
            self.follow(task.version)  # a version this worker cannot have fails the range, and so the run
            result = self._run(task, stopping, counts)
        except Exception as exc:  # recorded for the daemon, which fails the run with it
            result = failed_result(task, exc)
        finally:
            done.set()
            beating.join()
        status = "failed" if result.error else "done" if result.finished else "stopped"
        if not end_range(engine, task.run_id, task.number, self.name, status, result.to_json(), self.clock(),
                         counts.accounts, counts.planned):
            log.warning("run #%s: key range %d of %d was taken over by another worker; its result counts",
                        task.run_id, task.number, task.ranges, extra={"run_id": task.run_id})
        log.info("%s", describe(task, result), extra={"run_id": task.run_id})
        return result

    def _run(self, task: RangeTask, stopping: threading.Event, counts: RunCounts) -> RangeResult:
        pipeline = self.app.pipeline
        executor = InProcessExecutor(self.app.deliverer(pipeline, stopping), self.app.job_loader(pipeline),
                                     self.clock)
        try:
            return self.loop.run_until_complete(run_range(self.app, executor, task, stopping, counts))
        finally:
            self.loop.run_until_complete(executor.aclose())

    def _beat(self, task: RangeTask, stopping: threading.Event, done: threading.Event, counts: RunCounts) -> None:
        """Renew the range's claim with its progress until ``done``; set ``stopping`` when the daemon asks or the
        claim is lost."""
        while not done.wait(BEAT_INTERVAL):
            try:
                held = beat(self.app.engine, task.run_id, task.number, self.name, self.clock(), counts.accounts,
                            counts.planned)
            except Exception as exc:  # a locked or unreachable ledger: try again at the next beat
                log.warning("run #%s: cannot renew key range %d: %s", task.run_id, task.number, exc,
                            extra={"run_id": task.run_id})
                continue
            if not held or self.stopping.is_set():
                stopping.set()

    def close(self) -> None:
        self.stopping.set()
        for _, deliverer in self.wired.values():
            self.loop.run_until_complete(deliverer.aclose())
        self.loop.close()


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    global _runtime
    if _runtime is None:
        _runtime = _Runtime()
    return _runtime


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def deliver_batch(payload: dict[str, Any]) -> dict[str, int]:
    """Claim, re-check, send and record one batch of jobs (see :mod:`dispatcher.pipeline.deliver`)."""
    counts = runtime().deliver(payload)
    log.info("batch of %d attempt(s) of run #%s delivered in pid %d: %s", len(payload["attempts"]),
             payload.get("run_id"), os.getpid(), counts)
    return counts


@app.task(name=RANGE_TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def plan_range(payload: dict[str, Any]) -> dict[str, int]:
    """Plan, book and deliver one key range of a run (see :mod:`dispatcher.pipeline.remote_ranges`)."""
    result = runtime().plan_range(payload)
    return result.counts if result is not None else {}


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _build_runtime(**_kwargs: Any) -> None:
    """Each pool process wires the app when it starts, not while its first task waits."""
    try:
        runtime()
    except Exception:  # the first task reports it again, with the task's error handling
        log.exception("cannot set up delivery in pid %d", os.getpid())
    else:
        log.info("delivery ready in pid %d", os.getpid())


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close_runtime(**_kwargs: Any) -> None:
    if _runtime is not None:
        _runtime.close()
