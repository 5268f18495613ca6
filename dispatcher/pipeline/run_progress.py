"""A run's progress in the log at a steady interval (``DISPATCHER_PROGRESS_INTERVAL``, 10 s by default).

A long run (a million accounts, a slow provider) otherwise logs nothing between
"started" and its summary. Every interval one line says the accounts read and
the attempts planned so far (the run's own counts, and those its key ranges
reported so far when it is split) and what the ledger shows of
the run's messages: sent, failed, still pending. It is a task on the run's event
loop (not a thread of its own), woken by a timer; the ledger count reads the
run's rows through the ``(run_id, status)`` index, so it costs the same on any
ledger size, and runs in the loop's executor so that sends go on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.jobs import RunCounts

log = logging.getLogger("dispatcher.pipeline.run")

SENT = ("sent", "delivered")
FAILED = ("failed", "undelivered")
PENDING = ("planned", "claimed", "sending")
"""The ledger statuses a progress line adds up as sent, failed and pending."""


def run_statuses(engine: Engine, run_id: int) -> Counter[str]:
    """The run's attempts (every try) by status."""
    query = (select(attempts.c.status, func.count()).where(attempts.c.run_id == run_id)
             .group_by(attempts.c.status))
    with engine.connect() as connection:
        return Counter({status: int(count) for status, count in connection.execute(query)})


class RangeProgress:
    """What each key range of a split run has read and booked so far, until its counts join the run's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_range: dict[int, tuple[int, int]] = {}

    def update(self, number: int, accounts: int, planned: int) -> None:
        with self._lock:
            self._by_range[number] = (accounts, planned)

    def clear(self) -> None:
        """The ranges' counts were added to the run's."""
        with self._lock:
            self._by_range.clear()

    def totals(self) -> tuple[int, int]:
        """Accounts read and attempts planned over every range."""
        with self._lock:
            return sum(a for a, _ in self._by_range.values()), sum(p for _, p in self._by_range.values())


class RunProgress:
    """Logs the progress of run ``run_id`` every ``interval`` seconds while :meth:`every_interval` runs."""

    def __init__(self, engine: Engine, run_id: int, counts: RunCounts, interval: float,
                 ranges: RangeProgress | None = None) -> None:
        self.engine, self.run_id, self.counts, self.interval = engine, run_id, counts, interval
        self.ranges = ranges or RangeProgress()

    async def every_interval(self) -> None:
        """Sleep ``interval``, log one line, again, until cancelled (the run ends)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.log_once()

    async def log_once(self) -> None:
        try:
            statuses = await asyncio.to_thread(run_statuses, self.engine, self.run_id)
        except SQLAlchemyError as exc:  # a busy ledger must not stop the run; the next line will tell
            log.warning("run #%s: cannot read its progress: %s", self.run_id, type(exc).__name__,
                        extra={"run_id": self.run_id})
            return
        accounts, planned = self.ranges.totals()  # a split run's ranges, until their counts join the run's
        log.info("run #%s in progress: %d account(s) read, %d attempt(s) planned; sent %d, failed %d, pending %d",
                 self.run_id, self.counts.accounts + accounts, self.counts.planned + planned,
                 sum(statuses[s] for s in SENT),
                 sum(statuses[s] for s in FAILED), sum(statuses[s] for s in PENDING), extra={"run_id": self.run_id})
