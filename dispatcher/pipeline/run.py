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
from array import array
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from dispatcher.app import App, Pipeline
from dispatcher.errors import DispatcherError
from dispatcher.ledger.database import booking_lock, refresh_statistics
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.ledger.tally import job_outcomes
from dispatcher.logs import log_context
from dispatcher.pipeline import loops
from dispatcher.pipeline.executors import Executor
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.reject_limit import RejectLimit, TooManyRejects
from dispatcher.pipeline.replan import replan
from dispatcher.pipeline.run_progress import RangeProgress, RunProgress
from dispatcher.pipeline.source import KeyRange
from dispatcher.replies.inbound import drain_spool

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
"""Seconds between two looks at the ledger while workers deliver."""

STATISTICS_AT = 5_000
"""Accounts a process reads before it has PostgreSQL refresh the ledger's statistics, and again each time that
count doubles (:func:`~dispatcher.ledger.database.refresh_statistics`)."""

MIN_BATCHES_PER_PROCESS = 5
"""A run is split over Celery workers only into key ranges of at least this many source batches each, and over
local processes only as many as the source holds such shares: starting a process and wiring it costs about a
second, worth it for thousands of accounts, not for a few hundred."""

RANGES_PER_PROCESS = 16
"""Without a broker, the most key ranges per planning process. Each process takes the next range when it is done
with one, and the ranges shrink down to a :data:`TAIL_BATCH_SHARE`-th of a source batch
(:func:`~dispatcher.pipeline.source.tapered_sizes`), so the processes end within a fraction of a batch's time of each
other (:mod:`dispatcher.pipeline.parallel`)."""

TAIL_BATCH_SHARE = 4
"""The shortest local key range is this share of a source batch. With ranges of at least a whole batch (1,000
accounts, 0.7 s here), the first process to run out of ranges waited 0.11-0.52 s for the other at the end of a
20,000-account run; with a quarter, 0.06-0.13 s. Handing a range out costs a few milliseconds."""


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did. ``run_id`` is None when the run (name, fire_time) belonged to someone else."""

    run_id: int | None
    name: str
    fire_time: datetime
    status: str
    counts: RunCounts


class Halt(threading.Event):
    """Set when the run's lease is lost, and reads as set the moment a stop is requested (no polling delay)."""

    def __init__(self, stopping: threading.Event) -> None:
        super().__init__()
        self.stopping = stopping

    def is_set(self) -> bool:
        return super().is_set() or self.stopping.is_set()


class _Lease(threading.Thread):
    """Renews the run's lease while it runs; ``halt`` is set by a stop request or a lost lease."""

    def __init__(self, app: App, run_id: int, stopping: threading.Event) -> None:
        super().__init__(name=f"run-{run_id}-lease", daemon=True)
        self.app, self.run_id = app, run_id
        self.halt = Halt(stopping)
        self.done = threading.Event()

    def run(self) -> None:
        every = max(1.0, self.app.runs.lease.total_seconds() / 3)
        renewed = time.monotonic()
        while not self.done.wait(0.5):
            if time.monotonic() - renewed >= every:
                renewed = time.monotonic()
                if not self.app.runs.renew(self.run_id, self.app.settings.daemon_id, self.app.clock()):
                    log.error("run #%s was taken over by another daemon; stopping here", self.run_id,
                              extra={"run_id": self.run_id})
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
        log.info("run %s (#%s) started with configuration version %s", name, run_id, pipeline.loaded.version,
                 extra={"run_id": run_id})
        self._apply_spooled_replies()
        loops.settle_heap()
        lease = _Lease(app, run_id, self.stopping)
        lease.start()
        status, error = "failed", "stopped by an unexpected error"
        jobs = array("q")
        try:
            with log_context(run_id=run_id):  # every line the run logs carries its id (JSON logs)
                finished = loops.run(self._execute(run_id, pipeline, counts, jobs, lease.halt),
                                     app.settings.event_loop)
            status, error = ("completed", "") if finished else ("interrupted", "")
        except (RunFailed, TooManyRejects) as exc:
            error = str(exc)
        except DispatcherError as exc:
            error = str(exc)
            raise
        finally:
            lease.done.set()
            lease.join()
            status = self._close(run_id, name, status, error, counts, jobs)
        return RunReport(run_id, name, fire_time, status, counts)

    def _apply_spooled_replies(self) -> None:
        """Opt-outs the web app spooled while the ledger was locked count from this run on."""
        app = self.app
        try:
            applied = drain_spool(app.engine, app.settings.database_url, app.settings.outbox_dir, app.clock())
        except (DispatcherError, OSError) as exc:
            log.warning("cannot apply the replies spooled by the web app: %s", exc)
            return
        if applied:
            log.info("applied %d reply(ies) the web app had spooled", applied)

    def _close(self, run_id: int, name: str, status: str, error: str, counts: RunCounts, jobs: array[int]) -> str:
        """Count every booked attempt's outcome from the ledger and record the run's end."""
        app = self.app
        try:
            settle_counts(counts, job_outcomes(app.engine, jobs))
        except SQLAlchemyError as exc:
            log.error("run #%s: cannot count its outcomes: %s", run_id, exc, extra={"run_id": run_id})
        if status == "failed":
            done = app.runs.fail(run_id, error, counts.as_dict(), app.clock(), app.settings.daemon_id)
            log.error("run %s (#%s) failed: %s", name, run_id, error, extra={"run_id": run_id})
        else:
            done = app.runs.finish(run_id, status, counts.as_dict(), app.clock(), app.settings.daemon_id)
        status = status if done else "taken-over"
        log.info("run %s (#%s) %s: %s", name, run_id, status, summary(counts), extra={"run_id": run_id})
        return status

    async def _execute(self, run_id: int, pipeline: Pipeline, counts: RunCounts, jobs: array[int],
                       halt: threading.Event) -> bool:
        await self._reconcile(pipeline)
        executor = self.app.executor(pipeline, halt, run_id)
        interval = self.app.settings.progress_interval
        ranges = RangeProgress()
        progress = RunProgress(self.app.engine, run_id, counts, interval, ranges).every_interval() if interval else None
        ticking = asyncio.create_task(progress) if progress else None  # a timer on this loop, not a thread
        try:
            finished = await self._book_all(run_id, pipeline, executor, counts, jobs, halt, ranges)
            if executor.remote and finished:
                finished = await self._follow(run_id, pipeline, executor, halt)
            return finished and not halt.is_set()
        finally:
            if ticking:
                ticking.cancel()
            await executor.aclose()

    async def _book_all(self, run_id: int, pipeline: Pipeline, executor: Executor, counts: RunCounts,
                        jobs: array[int], halt: threading.Event, progress: RangeProgress) -> bool:
        """Plan and book every batch of the source, handing each batch's jobs to ``executor``.

        A source large enough is split into key ranges, each planned, booked and delivered on its own: by Celery
        workers with a broker (``DISPATCHER_PLAN_RANGES``, :mod:`dispatcher.pipeline.remote_ranges`), else by
        processes of this machine (``DISPATCHER_PLAN_PROCESSES``, :mod:`dispatcher.pipeline.parallel`).
        """
        limit = RejectLimit(pipeline.loaded.schedule.source.max_reject_ratio)
        outcomes = CureTracker(self.app.engine, run_id, self.app.clock())
        settings = self.app.settings
        batch = pipeline.loaded.schedule.source.batch_size
        ranges, processes = [KeyRange()], 1
        if executor.remote and settings.plan_ranges > 1:
            ranges = pipeline.source.split(settings.plan_ranges, MIN_BATCHES_PER_PROCESS * batch)
        elif not executor.remote and settings.plan_processes > 1:
            # a process for each 5 batches, at most DISPATCHER_PLAN_PROCESSES
            processes = min(settings.plan_processes, pipeline.source.count() // (MIN_BATCHES_PER_PROCESS * batch))
            ranges = (pipeline.source.split(processes * RANGES_PER_PROCESS, max(1, batch // TAIL_BATCH_SHARE),
                                             taper=processes)
                      if processes > 1 else [KeyRange()])
        if len(ranges) > 1 and executor.remote and all(r.portable for r in ranges):
            from dispatcher.pipeline.remote_ranges import plan_on_workers  # imports Celery only when used

            finished = await plan_on_workers(self.app, run_id, pipeline, executor, ranges, counts, jobs, halt,
                                             limit, outcomes, progress)
        elif len(ranges) > 1 and not executor.remote:
            from dispatcher.pipeline.parallel import plan_in_processes  # imports multiprocessing only when used

            finished = await plan_in_processes(self.app, run_id, pipeline, ranges, processes, counts, jobs, halt,
                                               limit, outcomes, progress)
        else:
            if len(ranges) > 1:  # with a broker, but the ids cannot travel in a task's JSON
                log.info("run #%s: account ids of type %s cannot be sent to the workers; the daemon plans the run",
                         run_id, type(ranges[0].upto).__name__, extra={"run_id": run_id})
            finished = await self.book_range(run_id, pipeline, executor, KeyRange(), counts, jobs, halt, limit,
                                             outcomes)
        if not finished:
            return False
        limit.finish()
        if not halt.is_set():  # the whole source was read: who is not in it any more is cured
            outcomes.finish(self.app.clock())
        return True

    async def book_range(self, run_id: int, pipeline: Pipeline, executor: Executor, key_range: KeyRange,
                         counts: RunCounts, jobs: array[int], halt: threading.Event, limit: RejectLimit,
                         outcomes: CureTracker, *, shared: bool = False) -> bool:
        """Plan and book the batches of ``key_range``; False when halted before its end.

        ``shared``: other processes book other ranges of this run at the same time. Each batch is then booked
        under the run's booking lock, after checking that no contact of its borrowers was booked since its
        history was read; if one was (a borrower's loans in two ranges), the batch is planned again first.
        """
        ledger, booker = self.app.ledger, self.app.booker()
        read, refresh_at = 0, STATISTICS_AT
        for batch in pipeline.source.batches(key_range):
            if halt.is_set():
                return False
            now = self.app.clock()
            ledger.record_rejects(run_id, batch.rejects, now)
            limit.admit(batch, counts)  # too many rejects so far: nothing more is booked, the run fails
            since = pipeline.policy.contacts_since(now)
            mark = ledger.contact_mark() if shared and since is not None else None
            history = ledger.load_history(batch.accounts, since)
            if shared:  # another process may have booked since ``now``: its contacts must not lie in the future
                now = self.app.clock()
            decisions = pipeline.planner.plan(batch.accounts, history, now)
            with booking_lock(self.app.engine, run_id) if shared else nullcontext():
                if shared and since is not None and ledger.booked_since(batch.accounts, since, history, mark):
                    now = self.app.clock()
                    decisions, again = replan(pipeline.planner, batch.accounts, decisions, history,
                                              ledger.load_history(batch.accounts, since), now)
                    log.info("run #%s: another process booked contacts of this batch's borrowers meanwhile; "
                             "%d of its %d accounts planned again", run_id, again, len(batch.accounts),
                             extra={"run_id": run_id})
                booked_jobs, booked = booker.book(decisions, run_id, now)
            booked.rejected = len(batch.rejects)
            booked.accounts += len(batch.rejects)
            jobs.extend(job.attempt_id for job in booked_jobs)
            outcomes.observe(batch.accounts, {d.account_id for d in decisions if d.reminder_key}, now,
                             [r.account_id for r in batch.rejects if r.account_id])
            counts.add(booked)  # booked is booked: counted even when handing it over fails (a dead broker)
            await executor.submit(booked_jobs)
            read += len(batch.accounts)
            if read >= refresh_at:  # this run grows the ledger: the history queries keep their index plans
                refresh_at *= 2
                refresh_statistics(self.app.engine)
        return True

    async def _follow(self, run_id: int, pipeline: Pipeline, executor: Executor, halt: threading.Event) -> bool:
        """Wait for the workers to settle the run's attempts.

        When they stop making progress with nothing left in the queue (a lost task, a
        restarted Redis), crashed sends are reconciled and the attempts still ``planned``
        are enqueued again; tasks waiting in the queue are never enqueued twice.
        A run whose tasks keep failing, or that makes no progress for
        ``DISPATCHER_STALL_TIMEOUT`` seconds, fails with the cause.
        """
        settings = self.app.settings
        deadline = time.monotonic() + settings.run_timeout
        last_pending, last_change, last_sweep = -1, time.monotonic(), time.monotonic()
        while time.monotonic() < deadline:
            pending = self.app.ledger.pending_count(run_id)
            if pending == 0:
                return True
            if halt.is_set():
                return False
            self._check_failures(run_id)
            if pending != last_pending:
                last_pending, last_change = pending, time.monotonic()
            elif time.monotonic() - last_change > settings.stall_timeout:
                raise RunFailed(f"no progress for {settings.stall_timeout:.0f} s with {pending} attempt(s) pending "
                                f"({executor.describe_queue()})")
            elif time.monotonic() - max(last_change, last_sweep) > settings.sweep_after:
                last_sweep = time.monotonic()
                await self._sweep(run_id, pipeline, executor, pending)
            await asyncio.sleep(POLL_INTERVAL)
        raise RunFailed(f"the workers did not settle the run within DISPATCHER_RUN_TIMEOUT={settings.run_timeout} s")

    def _check_failures(self, run_id: int) -> None:
        failures, error = self.app.runs.task_failures(run_id)
        if failures >= TASK_FAILURES_LIMIT:
            raise RunFailed(f"{failures} delivery task(s) failed on the workers; the last: {error}")

    async def _sweep(self, run_id: int, pipeline: Pipeline, executor: Executor, pending: int) -> None:
        """No progress: enqueue again what no task holds, unless tasks still wait in the queue."""
        try:
            waiting = executor.queued()
        except Exception as exc:  # kombu and the transports raise many kinds
            log.warning("run #%s: %d attempt(s) pending; the broker cannot be asked how many tasks wait (%s); "
                        "looking again later", run_id, pending, exc)
            return
        if waiting:
            log.warning("run #%s: %d attempt(s) pending, %d task(s) waiting in the queue: no worker is taking "
                        "them (nothing is enqueued again)", run_id, pending, waiting)
            return
        await self._reconcile(pipeline)
        ids = self.app.ledger.planned_ids(run_id)
        log.warning("run #%s: %d attempt(s) pending without progress and the queue is empty; enqueueing the %d "
                    "still planned again", run_id, pending, len(ids))
        await executor.submit_ids(ids)

    async def _reconcile(self, pipeline: Pipeline) -> None:
        reconciler = self.app.reconciler(pipeline)
        now = self.app.clock()
        try:
            await reconciler.reconcile(now - timedelta(seconds=self.app.settings.reconcile_after), now)
        finally:
            await reconciler.aclose()


class RunFailed(DispatcherError):
    """A run cannot finish: its tasks keep failing or it makes no progress (the cause is the message)."""


TASK_FAILURES_LIMIT = 3
"""Failed delivery tasks after which a run is marked failed instead of waiting for its timeout."""


def settle_counts(counts: RunCounts, outcomes: Counter[str]) -> None:
    """Add the outcome of every job: planned = sent + failed + suppressed_at_send + deferred_at_send + unknown
    + pending. ``suppressed`` and ``deferred`` keep what planning decided too."""
    counts.sent, counts.failed, counts.unknown = outcomes["sent"], outcomes["failed"], outcomes["unknown"]
    counts.suppressed_at_send, counts.deferred_at_send = outcomes["suppressed"], outcomes["deferred"]
    counts.suppressed += counts.suppressed_at_send
    counts.deferred += counts.deferred_at_send
    counts.held = outcomes["held"]
    counts.in_doubt = outcomes["in_doubt"]
    counts.pending = outcomes["pending"] + counts.held + counts.in_doubt


def summary(counts: RunCounts) -> str:
    """The counts as one line: every planned attempt's outcome, pending named, then what planning held back."""
    text = (f"accounts={counts.accounts}, rejected={counts.rejected}, planned={counts.planned}: sent={counts.sent}, "
            f"failed={counts.failed}, suppressed={counts.suppressed_at_send}, deferred={counts.deferred_at_send}, "
            f"unknown={counts.unknown}, pending={counts.pending}")
    left = counts.pending - counts.held - counts.in_doubt
    parts = [f"{counts.held} held until the templates render" if counts.held else "",
             f"{counts.in_doubt} handed over, outcome asked at the next reconciliation" if counts.in_doubt else "",
             f"{left} left planned for the next run" if left else ""]
    if counts.pending:
        text += " (" + "; ".join(p for p in parts if p) + ")"
    at_planning = (counts.suppressed - counts.suppressed_at_send, counts.deferred - counts.deferred_at_send)
    return text + f"; not contacted at planning: suppressed={at_planning[0]}, deferred={at_planning[1]}"
