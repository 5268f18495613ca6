"""One key range of a run, planned, booked and delivered on its own: what it is told, what it reports.

A run whose source is large enough is split into key ranges
(:meth:`~dispatcher.pipeline.source.AccountSource.split`). Each range runs :meth:`Runner.book_range` with delivery
in the process that runs it: the daemon's or a helper process on its machine without a broker
(:mod:`dispatcher.pipeline.parallel`), a Celery worker with one (:mod:`dispatcher.pipeline.remote_ranges`). Both
carry the same :class:`RangeTask` there and the same :class:`RangeResult` back, and the daemon merges the results
with :func:`merge_results`. What holds across ranges is written in :mod:`dispatcher.pipeline.parallel`.
"""

from __future__ import annotations

import json
import threading
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dispatcher.app import App
from dispatcher.errors import DispatcherError
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.pipeline.executors import Executor
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.reject_limit import RejectLimit, TooManyRejects
from dispatcher.pipeline.run import Halt, RunFailed, Runner
from dispatcher.pipeline.source import KeyRange

STOPPED = "stopped by SIGTERM"
"""What is reported of a range process that SIGTERM ended before it could stop between messages."""


class RangeFailed(RunFailed):
    """A process planning one of the run's key ranges failed or died (the message names the range)."""


@dataclass(frozen=True, slots=True)
class RangeTask:
    """What a range is told: no personal data, only ids, the version and the range's bounds."""

    run_id: int
    version: str
    key_range: KeyRange
    number: int
    """1-based, of ``ranges``."""
    ranges: int
    clock_offset: float
    """Seconds the run's clock is ahead of the real one (0 in production; a test's fixed clock otherwise)."""
    reject_ratio: float

    def to_json(self) -> dict[str, Any]:
        """The task as a Celery payload (JSON): the range's bounds keep their type (integer, text or decimal)."""
        return {"run_id": self.run_id, "version": self.version, "number": self.number, "ranges": self.ranges,
                "key_range": self.key_range.to_json(), "clock_offset": self.clock_offset,
                "reject_ratio": self.reject_ratio}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RangeTask:
        key_range = KeyRange.from_json(payload["key_range"])
        return cls(int(payload["run_id"]), str(payload["version"]), key_range, int(payload["number"]),
                   int(payload["ranges"]), float(payload["clock_offset"]), float(payload["reject_ratio"]))


@dataclass(slots=True)
class RangeResult:
    """What a range reports when it is done (or stopped)."""

    finished: bool
    counts: dict[str, int]
    jobs: array[int]
    """The ids of the attempts it booked (8 bytes each: a million-account run's daemon holds them all)."""
    seen: array[int]
    """The fingerprints of the accounts it read (:meth:`~dispatcher.ledger.outcomes.CureTracker.seen`)."""
    read: bool
    limit: RejectLimit
    error: tuple[str, str] | None = None
    """(exception class, message) when the range failed."""

    def counts_only(self) -> RangeResult:
        """The result without its attempt ids and accounts, as the ledger keeps it once the run merged it."""
        return RangeResult(self.finished, self.counts, array("q"), array("q"), self.read, self.limit, self.error)

    def to_json(self) -> str:
        limit = {"ratio": self.limit.ratio, "rows": self.limit.rows, "rejected": self.limit.rejected,
                 "without_id": self.limit.without_id, "fields": dict(self.limit.fields)}
        return json.dumps({"finished": self.finished, "counts": self.counts, "jobs": self.jobs.tolist(),
                           "seen": self.seen.tolist(), "read": self.read, "limit": limit,
                           "error": list(self.error) if self.error else None}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RangeResult:
        data = json.loads(text)
        given = data["limit"]
        limit = RejectLimit(float(given["ratio"]))
        limit.rows, limit.rejected, limit.without_id = int(given["rows"]), int(given["rejected"]), int(
            given["without_id"])
        limit.fields = Counter({str(k): int(v) for k, v in given["fields"].items()})
        error = tuple(data["error"]) if data.get("error") else None
        return cls(bool(data["finished"]), {str(k): int(v) for k, v in data["counts"].items()},
                   array("q", data["jobs"]), array("q", data["seen"]), bool(data["read"]), limit,
                   (str(error[0]), str(error[1])) if error else None)


def failed_result(task: RangeTask, exc: BaseException) -> RangeResult:
    """The report of a range that raised before it could report anything."""
    return RangeResult(False, {}, array("q"), array("q"), False, RejectLimit(task.reject_ratio),
                       error=(type(exc).__name__, str(exc)))


async def run_range(app: App, executor: Executor, task: RangeTask, stopping: threading.Event,
                    counts: RunCounts) -> RangeResult:
    """Plan, book and deliver ``task``'s range with ``app`` (wired with the task's version) through ``executor``,
    adding to ``counts`` as it goes (another thread may read them for progress).

    A :class:`DispatcherError` is reported in the result (the daemon fails the run with it); the executor is left
    open for its owner to close.
    """
    jobs = array("q")
    limit = RejectLimit(task.reject_ratio)
    outcomes = CureTracker(app.engine, task.run_id, app.clock())
    halt = Halt(stopping)
    finished, error = False, None
    try:
        finished = await Runner(app, stopping).book_range(task.run_id, app.pipeline, executor, task.key_range,
                                                          counts, jobs, halt, limit, outcomes, shared=True)
    except DispatcherError as exc:
        error = (type(exc).__name__, str(exc))
    return RangeResult(finished, counts.as_dict(), jobs, outcomes.seen(), outcomes.read, limit, error)


def describe(task: RangeTask, result: RangeResult) -> str:
    """The range's line for the log: what it read, rejected and booked."""
    counts = RunCounts(**result.counts) if result.counts else RunCounts()
    state = "done" if result.finished and result.error is None else "stopped"
    return (f"run #{task.run_id}: key range {task.number} of {task.ranges} {state}: {counts.accounts} account(s) "
            f"read, {counts.rejected} rejected, {counts.planned} attempt(s) booked; not contacted at planning: "
            f"{counts.suppressed} suppressed, {counts.deferred} deferred (the run's summary counts what was sent)")


def merge_results(results: dict[int, RangeResult | str], ranges: int, counts: RunCounts, jobs: array[int],
                  limit: RejectLimit, outcomes: CureTracker) -> bool:
    """Add every range's report to the run's; whether every range finished.

    ``results`` maps range numbers to reports, or to a description of a range that died (:data:`STOPPED` for one
    stopped before it could report). Raises :class:`TooManyRejects` or :class:`RangeFailed` after merging.
    """
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
