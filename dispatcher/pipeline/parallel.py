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
from datetime import datetime, timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import cast

from dispatcher.app import App, Pipeline, build_app, load_version, utc_now
from dispatcher.errors import DispatcherError
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.logs import configure_logging
from dispatcher.pipeline import loops
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.ranges import (
    STOPPED,
    RangeFailed,
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
    wanted = min(processes, len(ranges)) - 1
    planners = app.planners
    helpers = (planners.lend(wanted) if planners is not None
               else [_Helper.start(f"run-{run_id}-planner-{n}") for n in range(1, wanted + 1)])
    log.info("run #%s: %d key ranges planned in %d processes", run_id, len(ranges), len(helpers) + 1,
             extra={"run_id": run_id})
    follower = threading.Thread(target=board.follow, args=(helpers, processes), name=f"run-{run_id}-ranges",
                                daemon=True)
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
        if planners is not None:
            planners.give_back(helpers)
        else:
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

    def follow(self, helpers: list[_Helper], share: int) -> None:
        """The follower thread: hand each helper a range, and the next each time it reports, until none is left;
        relay their progress; ask them to stop (SIGTERM) when the run stops or a range failed. Each takes
        1/``share`` of the provider rate limits."""
        try:
            self._follow(helpers, share)
        except BaseException as exc:  # raised in the daemon's loop once the helpers ended
            self.error = exc
            self.abort()
            for helper in helpers:
                helper.stop()

    def _follow(self, helpers: list[_Helper], share: int) -> None:
        busy = {helper.connection: helper for helper in helpers if helper.give(self.take(), share)}
        stopped = False
        while busy:
            if self.failed.is_set() and not stopped:
                stopped = True
                for helper in busy.values():
                    helper.stop()
            for ready in wait(list(busy), FOLLOW_INTERVAL):
                helper = busy[cast(Connection, ready)]
                message = helper.receive()
                if message is None:  # it is ready (wired for the version it was started with)
                    continue
                if isinstance(message, tuple):
                    self.progress.update(*message)
                    continue
                assert helper.task is not None
                self.report(helper.task.number, message)
                if isinstance(message, str) or not helper.give(self.take(), share):
                    del busy[helper.connection]
            here = self._here
            if here is not None:
                self.progress.update(here[0], here[1].accounts, here[1].planned)


@dataclasses.dataclass
class _Helper:
    """A helper process and the daemon's end of its pipe."""

    process: BaseProcess
    connection: Connection
    task: RangeTask | None = None
    """The range it plans now."""
    warming: bool = False
    """Told to wire a version before its first range; it says so (None) when it has."""
    stopped: bool = False
    """Asked to stop: it ends after its messages in flight."""

    @classmethod
    def start(cls, name: str, version: str | None = None) -> _Helper:
        """A new helper process; with ``version``, told to wire that version of schedules.yaml right away."""
        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        process = context.Process(target=_helper_main, args=(theirs,), name=name)
        process.start()
        theirs.close()  # its death then reads as the end of the pipe
        helper = cls(process, mine)
        if version is not None:
            helper.warm(version)
        return helper

    def warm(self, version: str) -> None:
        """Have it wire ``version`` now, between runs (it says when it has)."""
        with contextlib.suppress(OSError):  # it ended: the next run replaces it
            self.connection.send(version)
            self.warming = True

    def give(self, task: RangeTask | None, share: int) -> bool:
        """Hand it ``task`` (taking 1/``share`` of the rate limits); whether it now plans a range."""
        self.task = task
        if task is None:
            return False
        try:
            self.connection.send((task, share))
        except OSError:  # it ended (a stop request reached it between ranges)
            self.task = None
            return False
        return True

    def receive(self) -> RangeResult | tuple[int, int, int] | str | None:
        """Its next message: progress (range, accounts read, attempts planned), its range's result, None when it is
        ready, or a description of its death."""
        try:
            message: RangeResult | tuple[int, int, int] | None = self.connection.recv()
        except (EOFError, OSError):  # it closed its end without reporting: it died
            self.process.join()
            if self.process.exitcode == -signal.SIGTERM:
                return STOPPED  # asked to stop (by the daemon or the system) before its handler was installed
            return f"its process (pid {self.process.pid}) died with exit code {self.process.exitcode}"
        if message is None:
            self.warming = False
        return message

    def stop(self) -> None:
        """Ask it to stop between messages (SIGTERM, as a stop of the daemon)."""
        self.stopped = True
        if self.process.is_alive():
            self.process.terminate()

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):  # it ended meanwhile
                self.connection.send(None)
        self.process.join()
        self.connection.close()


class Planners:
    """The daemon's helper processes, kept between runs.

    The first run that is split starts them (as a run without them does); it gives them back when it ends, and the
    next runs borrow them (:func:`plan_in_processes`): they plan at once instead of waiting for new processes to
    start Python, import the dispatcher and wire the pipeline (a second or more on a 2-core machine). One that
    died or was asked to stop is replaced by the next run; a reload has them wire the new version between runs.
    Without them (a one-off run, a test), each run starts its own and ends them.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._idle: list[_Helper] = []
        self._started = 0
        self._lock = threading.Lock()

    def start(self, version: str) -> None:
        """Start every helper now, each wiring ``version`` at once (what a daemon has after its first split run)."""
        with self._lock:
            while len(self._idle) < self.count:
                self._idle.append(self._new(version))

    def warm(self, version: str) -> None:
        """Have the idle helpers wire ``version`` (a reload's) now, dropping the versions they wired before."""
        with self._lock:
            for helper in self._idle:
                helper.warm(version)

    def wait_ready(self) -> None:
        """Until every idle helper has wired its version (a benchmark times runs, not the daemon's start)."""
        with self._lock:
            for helper in self._idle:
                while helper.warming:
                    if helper.receive() is not None:
                        raise RangeFailed(f"a planning helper did not start: {helper.process.name}")

    def lend(self, count: int) -> list[_Helper]:
        """``count`` helpers for a run: idle ones still alive, new ones for the rest."""
        with self._lock:
            alive = [helper for helper in self._idle if helper.process.is_alive()]
            for helper in self._idle:
                if helper not in alive:
                    helper.close()
            lent, self._idle = alive[:count], alive[count:]
            return lent + [self._new() for _ in range(count - len(lent))]

    def give_back(self, helpers: list[_Helper]) -> None:
        """Keep the ones that ended the run between ranges; end the others (stopped, died)."""
        with self._lock:
            for helper in helpers:
                helper.task = None
                if helper.stopped or not helper.process.is_alive():
                    helper.close()
                else:
                    self._idle.append(helper)

    def close(self) -> None:
        """End every idle helper (the daemon stops)."""
        with self._lock:
            for helper in self._idle:
                helper.close()
            self._idle.clear()

    def _new(self, version: str | None = None) -> _Helper:
        self._started += 1
        return _Helper.start(f"planner-{self._started}", version)


# in a helper process ----------------------------------------------------------------------------------------------
def _helper_main(connection: Connection) -> None:
    """A helper process's entry point: wires the version it is told (a str) and plans the ranges it is handed
    (with its share of the rate limits) until told to end (None); SIGTERM stops it between messages; Ctrl-C is left
    to the daemon."""
    stopping = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    apps: dict[str, _Wired] = {}
    run_id: int | None = None  # the run of the last range: the heap is settled once per run, as the daemon's is
    try:
        while not stopping.is_set():
            try:
                message: tuple[RangeTask, int] | str | None = connection.recv()
            except (EOFError, OSError):  # the daemon is gone
                break
            if message is None:
                break
            if isinstance(message, str):  # the daemon's version (at its start, after a reload): the others go
                for version in [v for v in apps if v != message]:
                    apps.pop(version).app.engine.dispose()
                try:
                    _wired(apps, message)
                except DispatcherError as exc:  # a range of it reports this again, and its run fails with it
                    log.error("configuration version %s could not be wired ahead of a run: %s", message, exc)
                try:
                    connection.send(None)
                except OSError:  # the daemon is gone
                    break
                continue
            task, share = message
            if run_id is not None and task.run_id != run_id:  # a kept helper's next run
                loops.settle_heap()
            run_id = task.run_id
            counts, done = RunCounts(), threading.Event()
            telling = threading.Thread(target=_tell_progress,
                                       args=(connection, task.number, counts, done, stopping), daemon=True)
            telling.start()
            try:
                result = _plan_range(apps, task, share, stopping, counts)
            except BaseException as exc:  # reported to the daemon, which fails the run with it
                result = failed_result(task, exc)
            done.set()
            telling.join()
            try:
                connection.send(result)
            except OSError:  # the daemon is gone (its next run reconciles what this range left in flight)
                break
    finally:
        for wired in apps.values():
            wired.app.engine.dispose()
        connection.close()


def _tell_progress(connection: Connection, number: int, counts: RunCounts, done: threading.Event,
                   stopping: threading.Event) -> None:
    """Send (range, accounts read, attempts planned) to the daemon every :data:`PROGRESS_EVERY` s until ``done``;
    when the daemon is gone (``kill -9``), stop the range between messages, as its SIGTERM would."""
    while not done.wait(PROGRESS_EVERY):
        try:
            connection.send((number, counts.accounts, counts.planned))
        except OSError:
            log.warning("key range %d: the daemon is gone; stopping between messages", number)
            stopping.set()
            return


class _RunClock:
    """The run's clock in a helper: the real one, ahead by what the range says (0 in production; a test's or a
    benchmark's fixed moment moves on here)."""

    def __init__(self) -> None:
        self.ahead = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.ahead


@dataclasses.dataclass(frozen=True)
class _Wired:
    """A version's app in a helper and its clock."""

    app: App
    clock: _RunClock


def _wired(apps: dict[str, _Wired], version: str) -> _Wired:
    """``version``'s app, wired once per process and version."""
    wired = apps.get(version)
    if wired is None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, log_format(settings.env))
        clock = _RunClock()
        app = build_app(settings, load_version(settings, version), migrate=False, clock=clock)
        app.pipeline.composer.compile_all()  # its first range renders at once, not after compiling
        wired = apps[version] = _Wired(app, clock)
        loops.settle_heap()  # the wired app out of the collector's sight: unfrozen, a run's full collections walked it
    return wired


def _plan_range(apps: dict[str, _Wired], task: RangeTask, share: int, stopping: threading.Event,
                counts: RunCounts) -> RangeResult:
    """Plan ``task``'s range with the app of its version, on the run's clock."""
    wired = _wired(apps, task.version)
    wired.clock.ahead = timedelta(seconds=task.clock_offset)
    app = wired.app
    app.rate_share = share

    async def book() -> RangeResult:
        executor = app.executor(app.pipeline, stopping, task.run_id)
        try:
            return await run_range(app, executor, task, stopping, counts)
        finally:
            await executor.aclose()

    result = loops.run(book(), app.settings.event_loop)
    log.info("%s", describe(task, result), extra={"run_id": task.run_id})
    return result
