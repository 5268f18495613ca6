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
from array import array
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from dispatcher.app import App, Pipeline, build_app, load_version, utc_now
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.logs import configure_logging
from dispatcher.pipeline import loops
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.ranges import (
    STOPPED,
    RangeResult,
    RangeTask,
    describe,
    failed_result,
    merge_results,
    run_range,
)
from dispatcher.pipeline.reject_limit import RejectLimit
from dispatcher.pipeline.run import Halt
from dispatcher.pipeline.run_progress import RangeProgress
from dispatcher.pipeline.source import KeyRange
from dispatcher.settings import Settings, log_format

log = logging.getLogger(__name__)

FOLLOW_INTERVAL = 0.1
"""Seconds between two looks at the range processes."""

PROGRESS_EVERY = 1.0
"""Seconds between two progress reports of a range process (accounts read, attempts planned)."""


async def plan_in_processes(app: App, run_id: int, pipeline: Pipeline, ranges: list[KeyRange], counts: RunCounts,
                            jobs: array[int], halt: threading.Event, limit: RejectLimit,
                            outcomes: CureTracker, progress: RangeProgress) -> bool:
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
                    report = _report(process, receiving, number, progress)
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
    progress.clear()  # their counts join the run's
    return merge_results(results, len(children), counts, jobs, limit, outcomes) and not halt.is_set()


def _stop(children: list[tuple[BaseProcess, Connection]]) -> None:
    """Ask every range process still working to stop between messages (SIGTERM, as a stop of the daemon)."""
    for process, _ in children:
        if process.is_alive():
            process.terminate()


def _report(process: BaseProcess, receiving: Connection, number: int,
            progress: RangeProgress) -> RangeResult | str | None:
    """The process's result, a description of its death, or None while it works (its progress noted)."""
    alive = process.is_alive()  # before reading: a process that sent its result and ended is read to the end
    try:
        while receiving.poll():
            message: RangeResult | tuple[int, int] = receiving.recv()
            if isinstance(message, RangeResult):
                return message
            progress.update(number, *message)
    except EOFError:  # it closed its end without its result: it died
        alive = False
    if alive:
        return None
    process.join()
    if process.exitcode == -signal.SIGTERM:
        return STOPPED  # asked to stop (by the daemon or the system) before its handler was installed
    return f"its process (pid {process.pid}) died with exit code {process.exitcode}"


# in the range process -------------------------------------------------------------------------------------------
def _range_main(sending: Connection, task: RangeTask) -> None:
    """A range process's entry point: SIGTERM stops it between messages; Ctrl-C is left to the daemon."""
    stopping, done, counts = threading.Event(), threading.Event(), RunCounts()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    telling = threading.Thread(target=_tell_progress, args=(sending, counts, done), daemon=True)
    telling.start()
    try:
        result = _run_range(task, stopping, counts)
    except BaseException as exc:  # reported to the daemon, which fails the run with it
        result = failed_result(task, exc)
    done.set()
    telling.join()
    sending.send(result)
    sending.close()


def _tell_progress(sending: Connection, counts: RunCounts, done: threading.Event) -> None:
    """Send (accounts read, attempts planned) to the daemon every :data:`PROGRESS_EVERY` seconds until ``done``."""
    while not done.wait(PROGRESS_EVERY):
        sending.send((counts.accounts, counts.planned))


def _run_range(task: RangeTask, stopping: threading.Event, counts: RunCounts) -> RangeResult:
    settings = Settings.from_env()
    configure_logging(settings.log_level, log_format(settings.env))
    offset = timedelta(seconds=task.clock_offset)
    app = build_app(settings, load_version(settings, task.version), migrate=False,
                    clock=lambda: utc_now() + offset)
    app.rate_share = task.ranges

    async def book() -> RangeResult:
        executor = app.executor(app.pipeline, Halt(stopping), task.run_id)
        try:
            return await run_range(app, executor, task, stopping, counts)
        finally:
            await executor.aclose()

    try:
        result = loops.run(book(), settings.event_loop)
    finally:
        app.engine.dispose()
    log.info("%s", describe(task, result), extra={"run_id": task.run_id})
    return result
