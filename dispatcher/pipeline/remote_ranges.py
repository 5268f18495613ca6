"""One run's key ranges planned, booked and delivered by Celery workers (with a broker).

The daemon splits the source, records the ranges in the ledger (:mod:`dispatcher.ledger.ranges`), publishes one
``dispatcher.plan_range`` task per range and follows the ranges' rows; each worker claims its range, beats it every
few seconds and records its result there (:mod:`dispatcher.worker`). What holds across ranges is what holds across
local processes (:mod:`dispatcher.pipeline.parallel`); rate limits are shared through Redis.

A worker killed mid-range: once the range's heartbeat is stale (:data:`STALE_AFTER`), its task is published again
when nothing waits in the queue (at most every ``DISPATCHER_SWEEP_AFTER`` seconds), or redelivered by the broker
(late acknowledgement); whoever runs it next claims the range and runs it again from its start. Planning it again
books nothing twice (the ledger's unique keys), hands over what the dead worker booked and did not claim, and leaves
what it had claimed to the reconciler; the run then follows its attempts as any run with a broker does. A range
that fails fails the run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from array import array
from datetime import timedelta
from typing import Any

from kombu.exceptions import KombuError

from dispatcher.app import App, Pipeline, utc_now
from dispatcher.errors import BrokerError
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.ledger.ranges import ENDED, RangeRow, keep_results, open_ranges, read_ranges, read_result, stop_ranges
from dispatcher.masking import mask_url
from dispatcher.pipeline.executors import PUBLISH_RETRY_POLICY, Executor
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.ranges import STOPPED, RangeResult, RangeTask, merge_results
from dispatcher.pipeline.reject_limit import RejectLimit
from dispatcher.pipeline.run import POLL_INTERVAL, RunFailed
from dispatcher.pipeline.run_progress import RangeProgress
from dispatcher.pipeline.source import KeyRange

log = logging.getLogger(__name__)

BEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of a range's worker."""

STALE_AFTER = timedelta(seconds=15)
"""A range whose heartbeat is this old is taken to have lost its worker: another task may claim it."""


async def plan_on_workers(app: App, run_id: int, pipeline: Pipeline, executor: Executor, ranges: list[KeyRange],
                          counts: RunCounts, jobs: array[int], halt: threading.Event, limit: RejectLimit,
                          outcomes: CureTracker, progress: RangeProgress) -> bool:
    """Publish one task per range, follow the ranges until each ended and merge their results; False when halted.

    Raises :class:`~dispatcher.pipeline.reject_limit.TooManyRejects` when a range crossed the reject limit,
    :class:`~dispatcher.pipeline.ranges.RangeFailed` when one failed, :class:`RunFailed` when they make no
    progress for ``DISPATCHER_STALL_TIMEOUT`` seconds and :class:`BrokerError` when the broker cannot be reached.
    """
    from dispatcher.celery_app import range_task  # imports Celery only with a broker

    app.share_version(pipeline.loaded)  # a worker whose schedules.yaml differs runs the ledger's copy
    offset = (app.clock() - utc_now()).total_seconds()
    ratio = pipeline.loaded.schedule.source.max_reject_ratio
    tasks = [RangeTask(run_id, pipeline.loaded.version, r, n, len(ranges), offset, ratio)
             for n, r in enumerate(ranges, 1)]
    open_ranges(app.engine, run_id, len(tasks), app.clock())
    signature = range_task()
    expires = float(app.settings.run_timeout)
    for task in tasks:
        _publish(signature, task, expires)
    log.info("run #%s: %d key ranges handed to the workers", run_id, len(tasks), extra={"run_id": run_id})
    follower = _Follower(app, run_id, tasks, executor, signature, expires)
    results = await follower.follow(halt, progress)
    progress.clear()  # their counts join the run's
    keep_results(app.engine, run_id, {n: r.counts_only().to_json() for n, r in results.items()
                                      if isinstance(r, RangeResult)})  # the ids were needed only until now
    return merge_results(results, len(tasks), counts, jobs, limit, outcomes) and not halt.is_set()


def _publish(signature: Any, task: RangeTask, expires: float) -> None:
    try:
        signature.apply_async(args=[task.to_json()], expires=expires, retry=True, retry_policy=PUBLISH_RETRY_POLICY)
    except (KombuError, OSError) as exc:
        raise BrokerError(f"the broker at {mask_url(str(signature.app.conf.broker_url))} cannot be reached "
                          f"({str(exc).rstrip('.')}); key range {task.number} of {task.ranges} was not handed "
                          "over") from exc


class _Follower:
    """Reads the ranges' rows until each ended; publishes again the tasks of ranges whose workers died."""

    def __init__(self, app: App, run_id: int, tasks: list[RangeTask], executor: Executor, signature: Any,
                 expires: float) -> None:
        self.app, self.run_id, self.tasks = app, run_id, tasks
        self.executor, self.signature, self.expires = executor, signature, expires

    async def follow(self, halt: threading.Event, progress: RangeProgress) -> dict[int, RangeResult | str]:
        settings = self.app.settings
        results: dict[int, RangeResult | str] = {}
        stopping_since: float | None = None
        last_seen: tuple[Any, ...] = ()
        last_change = last_sweep = time.monotonic()
        while True:
            rows = read_ranges(self.app.engine, self.run_id, results=False)
            for row in rows:
                progress.update(row.number, row.accounts, row.planned)
                if row.status in ENDED and row.number not in results:
                    text = read_result(self.app.engine, self.run_id, row.number)
                    results[row.number] = RangeResult.from_json(text) if text else STOPPED
            if len(results) == len(self.tasks):
                return results
            failed = any(isinstance(r, RangeResult) and r.error is not None for r in results.values())
            if (halt.is_set() or failed) and stopping_since is None:
                stop_ranges(self.app.engine, self.run_id, self.app.clock())  # between messages, on every worker
                stopping_since = time.monotonic()
            seen = tuple((r.number, r.status, r.worker, r.updated_at) for r in rows)
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            lost = self._lost(rows)
            unfinished = [r for r in rows if r.status not in ENDED]
            if stopping_since is not None and (len(lost) == len(unfinished)
                                               or time.monotonic() - stopping_since > settings.stall_timeout):
                for row in rows:  # every range still alive reported; those whose worker is gone cannot: stopped
                    results.setdefault(row.number, STOPPED)
                return results
            if time.monotonic() - last_change > settings.stall_timeout:
                pending = [r.number for r in rows if r.status not in ENDED]
                raise RunFailed(f"key ranges {pending} made no progress for {settings.stall_timeout:.0f} s "
                                f"({self.executor.describe_queue()})")
            if lost and time.monotonic() - last_sweep > settings.sweep_after:
                last_sweep = time.monotonic()
                self._sweep(lost)
            await asyncio.sleep(POLL_INTERVAL)

    def _lost(self, rows: list[RangeRow]) -> list[RangeRow]:
        """Ranges not ended whose heartbeat is stale (or that no worker took yet)."""
        now = self.app.clock()
        return [r for r in rows if r.status not in ENDED and r.updated_at < now - STALE_AFTER]

    def _sweep(self, lost: list[RangeRow]) -> None:
        """Publish the lost ranges' tasks again, unless tasks wait in the queue (no worker takes them yet)."""
        try:
            waiting = self.executor.queued()
        except Exception as exc:  # kombu and the transports raise many kinds
            log.warning("run #%s: the broker cannot be asked how many tasks wait (%s); looking again later",
                        self.run_id, exc, extra={"run_id": self.run_id})
            return
        if waiting:
            log.warning("run #%s: key ranges %s have no live worker and %d task(s) wait in the queue: no worker "
                        "is taking them", self.run_id, [r.number for r in lost], waiting,
                        extra={"run_id": self.run_id})
            return
        log.warning("run #%s: key ranges %s lost their workers and the queue is empty; their tasks are published "
                    "again", self.run_id, [r.number for r in lost], extra={"run_id": self.run_id})
        for row in lost:
            _publish(self.signature, self.tasks[row.number - 1], self.expires)
