"""One run's key ranges planned, booked and delivered by the daemon's process and processes of its own (no broker).

The daemon's process splits the source into a few key ranges per process
(:meth:`~dispatcher.pipeline.source.AccountSource.split`), starts ``DISPATCHER_PLAN_PROCESSES - 1`` helper processes
and hands out the ranges one at a time: each process, the daemon's own included, takes the next range as soon as
it is done with one, so none waits while another still has work, and the daemon's process, which has everything
imported and compiled already, starts planning at once. Each range runs :meth:`Runner.book_range` with delivery in
the process that took it, as a single-process run does over the whole source. What holds across ranges:

- idempotency: reminders and attempts have the same unique keys whichever process books them, and each
  message is claimed before it is sent;
- caps per borrower: batches are booked under the run's booking lock, after checking that no contact of their
  borrowers was booked meanwhile (then the batch is planned again), and a booked, unsent message of another
  loan counts as a contact (:meth:`~dispatcher.ledger.store.Ledger.load_history`);
- provider rate limits: without Redis, each process takes an equal share of every limit.

A helper process that dies (``kill -9``) fails the run with its range named: what it claimed is reconciled and
what it booked is still ``planned`` for the next run, so nothing is lost or sent twice. A stop request (SIGTERM, a
lost lease) reaches every process, which finishes its messages in flight and stops; the ranges no one took are
left for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import threading
from array import array
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import cast

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
"""Seconds the daemon's follower thread waits for a helper's message before it looks at the stop request again."""

PROGRESS_EVERY = 1.0
"""Seconds between two progress reports of a helper process (range, accounts read, attempts planned)."""


async def plan_in_processes(app: App, run_id: int, pipeline: Pipeline, ranges: list[KeyRange], processes: int,
                            counts: RunCounts, jobs: array[int], halt: threading.Event, limit: RejectLimit,
                            outcomes: CureTracker, progress: RangeProgress) -> bool:
    """Plan every range in this process and ``processes - 1`` others and merge what they report; False when halted.

    Raises :class:`TooManyRejects` when a range crossed the reject limit and :class:`RangeFailed` when a range
    failed or its process died; the other processes are asked to stop first.
    """
    app.share_version(pipeline.loaded)  # a process whose schedules.yaml changed meanwhile runs the ledger's copy
    shift = app.clock() - utc_now()
    offset = shift.total_seconds()
    ratio = pipeline.loaded.schedule.source.max_reject_ratio
    board = _Board([RangeTask(run_id, pipeline.loaded.version, key_range, number, len(ranges), offset, ratio)
                    for number, key_range in enumerate(ranges, 1)], halt, progress)
    helpers = [_Helper.start(run_id, n, processes) for n in range(1, min(processes, len(ranges)))]
    log.info("run #%s: %d key ranges planned in %d processes", run_id, len(ranges), len(helpers) + 1,
             extra={"run_id": run_id})
    follower = threading.Thread(target=board.follow, args=(helpers,), name=f"run-{run_id}-ranges", daemon=True)
    follower.start()
    try:
        # the helpers' clock (a test's or a benchmark's fixed moment moves on there): contacts one process books
        # must not lie in the other's future, or the caps would not count them
        here = dataclasses.replace(app, pipeline=pipeline, rate_share=processes, clock=lambda: utc_now() + shift)
        await _plan_here(here, board)
    except BaseException:
        board.abort()  # the daemon is going down: the helpers stop between messages
        raise
    finally:
        board.stop_handing_out()
        while follower.is_alive():  # the helpers finish their ranges (or stop between messages)
            await asyncio.sleep(FOLLOW_INTERVAL)
        for helper in helpers:
            helper.close()
    if board.error is not None:
        raise board.error
    progress.clear()  # their counts join the run's
    return merge_results(board.results(), len(ranges), counts, jobs, limit, outcomes) and not halt.is_set()


async def _plan_here(app: App, board: _Board) -> None:
    """Take ranges in the daemon's process until none is left (or the run stops, or a range failed)."""
    executor = app.executor(app.pipeline, board.failed, board.run_id)
    try:
        while (task := board.take()) is not None:
            counts = RunCounts()
            board.planning_here(task.number, counts)
            result = await run_range(app, executor, task, board.failed, counts)
            board.planning_here(None, None)
            board.report(task.number, result)
            log.info("%s", describe(task, result), extra={"run_id": task.run_id})
    finally:
        await executor.aclose()


class _Board:
    """The ranges still to hand out and what came back, shared by the daemon's loop and its follower thread."""

    def __init__(self, tasks: Sequence[RangeTask], halt: threading.Event, progress: RangeProgress) -> None:
        self.run_id = tasks[0].run_id
        self.ranges = len(tasks)
        self.progress = progress
        self.failed = Halt(halt)
        """Set when the run stops or a range failed: the ranges being planned stop between messages."""
        self.error: BaseException | None = None
        """What broke the follower thread, raised in the daemon's loop."""
        self._lock = threading.Lock()
        self._waiting = deque(tasks)
        self._results: dict[int, RangeResult | str] = {}
        self._closed = False
        self._here: tuple[int, RunCounts] | None = None

    def take(self) -> RangeTask | None:
        """The next range, or None: every range is handed out, the run is stopping, or a range failed."""
        with self._lock:
            if self._closed or self.failed.is_set() or not self._waiting:
                return None
            return self._waiting.popleft()

    def report(self, number: int, result: RangeResult | str) -> None:
        with self._lock:
            self._results[number] = result
            if isinstance(result, str) or result.error is not None:  # the run fails: every range stops
                self._closed = True
                self.failed.set()

    def stop_handing_out(self) -> None:
        with self._lock:
            self._closed = True

    def abort(self) -> None:
        """Stop every range between messages and hand out no more."""
        self.stop_handing_out()
        self.failed.set()

    def planning_here(self, number: int | None, counts: RunCounts | None) -> None:
        """The range the daemon's process plans now, for the progress lines (None when it is between ranges)."""
        self._here = (number, counts) if number is not None and counts is not None else None

    def results(self) -> dict[int, RangeResult | str]:
        """Every range's result; a range no one took is stopped (the next run plans it)."""
        with self._lock:
            return {n: self._results.get(n, STOPPED) for n in range(1, self.ranges + 1)}

    def follow(self, helpers: list[_Helper]) -> None:
        """The follower thread: hand each helper a range, and the next each time it reports, until none is left;
        relay their progress; ask them to stop (SIGTERM) when the run stops or a range failed."""
        try:
            self._follow(helpers)
        except BaseException as exc:  # raised in the daemon's loop once the helpers ended
            self.error = exc
            self.abort()
            for helper in helpers:
                helper.stop()

    def _follow(self, helpers: list[_Helper]) -> None:
        busy = {helper.connection: helper for helper in helpers if helper.give(self.take())}
        stopped = False
        while busy:
            if self.failed.is_set() and not stopped:
                stopped = True
                for helper in busy.values():
                    helper.stop()
            for ready in wait(list(busy), FOLLOW_INTERVAL):
                helper = busy[cast(Connection, ready)]
                message = helper.receive()
                if isinstance(message, tuple):
                    self.progress.update(*message)
                    continue
                assert helper.task is not None
                self.report(helper.task.number, message)
                if isinstance(message, str) or not helper.give(self.take()):
                    del busy[helper.connection]
            here = self._here
            if here is not None:
                self.progress.update(here[0], here[1].accounts, here[1].planned)


@dataclasses.dataclass
class _Helper:
    """A helper process of the run and the daemon's end of its pipe."""

    process: BaseProcess
    connection: Connection
    task: RangeTask | None = None
    """The range it plans now."""

    @classmethod
    def start(cls, run_id: int, number: int, processes: int) -> _Helper:
        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        process = context.Process(target=_helper_main, args=(theirs, processes), name=f"run-{run_id}-planner-{number}")
        process.start()
        theirs.close()  # its death then reads as the end of the pipe
        return cls(process, mine)

    def give(self, task: RangeTask | None) -> bool:
        """Hand it ``task``, or tell it to end when None; whether it now plans a range."""
        self.task = task
        try:
            self.connection.send(task)
        except OSError:  # it ended (a stop request reached it between ranges)
            self.task = None
            return False
        return task is not None

    def receive(self) -> RangeResult | tuple[int, int, int] | str:
        """Its next message: progress (range, accounts read, attempts planned), its range's result, or a
        description of its death."""
        try:
            message: RangeResult | tuple[int, int, int] = self.connection.recv()
            return message
        except (EOFError, OSError):  # it closed its end without reporting: it died
            self.process.join()
            if self.process.exitcode == -signal.SIGTERM:
                return STOPPED  # asked to stop (by the daemon or the system) before its handler was installed
            return f"its process (pid {self.process.pid}) died with exit code {self.process.exitcode}"

    def stop(self) -> None:
        """Ask it to stop between messages (SIGTERM, as a stop of the daemon)."""
        if self.process.is_alive():
            self.process.terminate()

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # it ended meanwhile
                self.connection.send(None)
        self.process.join()
        self.connection.close()


# in a helper process ----------------------------------------------------------------------------------------------
def _helper_main(connection: Connection, processes: int) -> None:
    """A helper process's entry point: plans the ranges it is handed until told to end; SIGTERM stops it between
    messages; Ctrl-C is left to the daemon."""
    stopping = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    apps: dict[str, App] = {}
    try:
        while not stopping.is_set():
            try:
                task: RangeTask | None = connection.recv()
            except (EOFError, OSError):  # the daemon is gone
                break
            if task is None:
                break
            counts, done = RunCounts(), threading.Event()
            telling = threading.Thread(target=_tell_progress, args=(connection, task.number, counts, done),
                                       daemon=True)
            telling.start()
            try:
                result = _plan_range(apps, task, processes, stopping, counts)
            except BaseException as exc:  # reported to the daemon, which fails the run with it
                result = failed_result(task, exc)
            done.set()
            telling.join()
            connection.send(result)
    finally:
        for app in apps.values():
            app.engine.dispose()
        connection.close()


def _tell_progress(connection: Connection, number: int, counts: RunCounts, done: threading.Event) -> None:
    """Send (range, accounts read, attempts planned) to the daemon every :data:`PROGRESS_EVERY` s until ``done``."""
    while not done.wait(PROGRESS_EVERY):
        connection.send((number, counts.accounts, counts.planned))


def _plan_range(apps: dict[str, App], task: RangeTask, processes: int, stopping: threading.Event,
                counts: RunCounts) -> RangeResult:
    """Plan ``task``'s range with the app of its version (wired once per process and version)."""
    app = apps.get(task.version)
    if app is None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, log_format(settings.env))
        offset = timedelta(seconds=task.clock_offset)
        app = build_app(settings, load_version(settings, task.version), migrate=False,
                        clock=lambda: utc_now() + offset)
        app.rate_share = processes
        apps[task.version] = app

    async def book() -> RangeResult:
        executor = app.executor(app.pipeline, stopping, task.run_id)
        try:
            return await run_range(app, executor, task, stopping, counts)
        finally:
            await executor.aclose()

    result = loops.run(book(), app.settings.event_loop)
    log.info("%s", describe(task, result), extra={"run_id": task.run_id})
    return result
