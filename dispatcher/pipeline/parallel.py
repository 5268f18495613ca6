"""One run's key ranges planned, booked and delivered by processes of their own (no broker).

The daemon's process splits the source (:meth:`~dispatcher.pipeline.source.AccountSource.split`), starts one
process per key range and follows them; each runs :meth:`Runner.book_range` over its range with delivery in
that process, as a single-process run does over the whole source. What holds across ranges:

- idempotency: reminders and attempts have the same unique keys whichever process books them, and each
  message is claimed before it is sent;
- caps per borrower: batches are booked under the run's booking lock, after checking that no contact of their
  borrowers was booked meanwhile (then the batch is planned again), and a booked, unsent message of another
  loan counts as a contact (:meth:`~dispatcher.ledger.store.Ledger.load_history`);
- provider rate limits: without Redis, each process takes an equal share of every limit.

A process that dies (``kill -9``) fails the run with its range named: what it claimed is reconciled and what it
booked is still ``planned`` for the next run, so nothing is lost or sent twice. A stop request (SIGTERM, a lost
lease) reaches every process, which finishes its messages in flight and stops.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from dispatcher.app import App, Pipeline, build_app, load_version, utc_now
from dispatcher.errors import DispatcherError
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.logs import configure_logging
from dispatcher.pipeline import loops
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.reject_limit import RejectLimit, TooManyRejects
from dispatcher.pipeline.run import Halt, RunFailed, Runner
from dispatcher.pipeline.source import KeyRange
from dispatcher.settings import Settings, log_format

log = logging.getLogger(__name__)

FOLLOW_INTERVAL = 0.1
"""Seconds between two looks at the range processes."""

STOPPED = "stopped by SIGTERM"
"""What is reported of a range process that SIGTERM ended before it could stop between messages."""


class RangeFailed(RunFailed):
    """A process planning one of the run's key ranges failed or died (the message names the range)."""


@dataclass(frozen=True, slots=True)
class RangeTask:
    """What a range process is told: no personal data, only ids, the version and the range's bounds."""

    run_id: int
    version: str
    key_range: KeyRange
    number: int
    """1-based, of ``ranges``."""
    ranges: int
    clock_offset: float
    """Seconds the run's clock is ahead of the real one (0 in production; a test's fixed clock otherwise)."""
    reject_ratio: float


@dataclass(slots=True)
class RangeResult:
    """What a range process reports when its range is done (or stopped)."""

    finished: bool
    counts: dict[str, int]
    jobs: list[int]
    seen: list[str]
    read: bool
    limit: RejectLimit
    error: tuple[str, str] | None = None
    """(exception class, message) when the range failed."""


async def plan_in_processes(app: App, run_id: int, pipeline: Pipeline, ranges: list[KeyRange], counts: RunCounts,
                            jobs: list[int], halt: threading.Event, limit: RejectLimit,
                            outcomes: CureTracker) -> bool:
    """Run every range in a process of its own and merge what they report; False when halted.

    Raises :class:`TooManyRejects` when a range crossed the reject limit and :class:`RangeFailed` when a range
    failed or its process died; the other ranges are asked to stop first.
    """
    app.share_version(pipeline.loaded)  # a process whose schedules.yaml changed meanwhile runs the ledger's copy
    context = multiprocessing.get_context("spawn")
    offset = (app.clock() - utc_now()).total_seconds()
    ratio = pipeline.loaded.schedule.source.max_reject_ratio
    children: list[tuple[BaseProcess, Connection]] = []
    for number, key_range in enumerate(ranges, 1):
        receiving, sending = context.Pipe(duplex=False)
        task = RangeTask(run_id, pipeline.loaded.version, key_range, number, len(ranges), offset, ratio)
        started = context.Process(target=_range_main, args=(sending, task), name=f"run-{run_id}-range-{number}")
        started.start()
        sending.close()
        children.append((started, receiving))
    log.info("run #%s: %d key ranges planned in %d processes", run_id, len(ranges), len(children),
             extra={"run_id": run_id})
    results: dict[int, RangeResult | str] = {}
    stopped = False
    try:
        while len(results) < len(children):
            for number, (process, receiving) in enumerate(children, 1):
                if number not in results:
                    report = _report(process, receiving)
                    if report is not None:
                        results[number] = report
            failed = any(isinstance(r, str) or r.error is not None for r in results.values())
            if (halt.is_set() or failed) and not stopped:
                _stop(children)
                stopped = True
            await asyncio.sleep(FOLLOW_INTERVAL)
    finally:
        if len(results) < len(children):
            _stop(children)  # the daemon itself is stopping: the ranges finish their messages in flight
        for process, receiving in children:
            process.join()
            receiving.close()
    return _merge(results, len(children), counts, jobs, limit, outcomes) and not halt.is_set()


def _stop(children: list[tuple[BaseProcess, Connection]]) -> None:
    """Ask every range process still working to stop between messages (SIGTERM, as a stop of the daemon)."""
    for process, _ in children:
        if process.is_alive():
            process.terminate()


def _report(process: BaseProcess, receiving: Connection) -> RangeResult | str | None:
    """The process's result, a description of its death, or None while it works."""
    if receiving.poll():
        try:
            result: RangeResult = receiving.recv()
        except EOFError:  # it closed its end without a word: it died
            pass
        else:
            return result
    elif process.is_alive():
        return None
    process.join()
    if process.exitcode == -signal.SIGTERM:
        return STOPPED  # asked to stop (by the daemon or the system) before its handler was installed
    return f"its process (pid {process.pid}) died with exit code {process.exitcode}"


def _merge(results: dict[int, RangeResult | str], ranges: int, counts: RunCounts, jobs: list[int],
           limit: RejectLimit, outcomes: CureTracker) -> bool:
    finished = all(r != STOPPED for r in results.values())
    for number in sorted(results):
        result = results[number]
        if isinstance(result, str):
            continue
        counts.add(RunCounts(**result.counts))
        jobs.extend(result.jobs)
        outcomes.absorb(result.seen, result.read)
        limit.absorb(result.limit)
        finished = finished and result.finished
    for number in sorted(results):
        result = results[number]
        if isinstance(result, str) and result != STOPPED:
            raise RangeFailed(f"key range {number} of {ranges}: {result}; what it booked and did not send stays "
                              "planned for the next run")
        if isinstance(result, str):
            continue
        if result.error is not None and result.error[0] == TooManyRejects.__name__:
            raise TooManyRejects(result.error[1])
        if result.error is not None:
            raise RangeFailed(f"key range {number} of {ranges}: {result.error[0]}: {result.error[1]}")
    return finished


# in the range process -------------------------------------------------------------------------------------------
def _range_main(sending: Connection, task: RangeTask) -> None:
    """A range process's entry point: SIGTERM stops it between messages; Ctrl-C is left to the daemon."""
    stopping = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        result = _run_range(task, stopping)
    except BaseException as exc:  # reported to the daemon, which fails the run with it
        result = RangeResult(False, {}, [], [], False, RejectLimit(task.reject_ratio),
                             error=(type(exc).__name__, str(exc)))
    sending.send(result)
    sending.close()


def _run_range(task: RangeTask, stopping: threading.Event) -> RangeResult:
    settings = Settings.from_env()
    configure_logging(settings.log_level, log_format(settings.env))
    offset = timedelta(seconds=task.clock_offset)
    app = build_app(settings, load_version(settings, task.version), migrate=False,
                    clock=lambda: utc_now() + offset)
    app.rate_share = task.ranges
    counts, jobs = RunCounts(), list[int]()
    limit = RejectLimit(task.reject_ratio)
    outcomes = CureTracker(app.engine, task.run_id, app.clock())
    halt = Halt(stopping)
    error: tuple[str, str] | None = None

    async def book() -> bool:
        executor = app.executor(app.pipeline, halt, task.run_id)
        try:
            return await Runner(app, stopping).book_range(task.run_id, app.pipeline, executor, task.key_range,
                                                          counts, jobs, halt, limit, outcomes, shared=True)
        finally:
            await executor.aclose()

    finished = False
    try:
        finished = loops.run(book(), settings.event_loop)
    except DispatcherError as exc:
        error = (type(exc).__name__, str(exc))
    finally:
        app.engine.dispose()
    log.info("run #%s: key range %d of %d %s: %d account(s) read, %d rejected, %d attempt(s) booked; not contacted "
             "at planning: %d suppressed, %d deferred (the run's summary counts what was sent)", task.run_id,
             task.number, task.ranges, "done" if finished and error is None else "stopped", counts.accounts,
             counts.rejected, counts.planned, counts.suppressed, counts.deferred, extra={"run_id": task.run_id})
    return RangeResult(finished, counts.as_dict(), jobs, sorted(outcomes.seen), outcomes.read, limit, error)
