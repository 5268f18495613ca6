"""Where delivery runs: in this process, or on Celery workers through the broker.

Both take the jobs a batch booked. In-process delivery returns what happened;
Celery delivery only enqueues (``task_batch`` jobs per task: one task per message
would cap throughput at the broker's task rate) and the runner then follows the
ledger until the run's attempts are done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dispatcher.delivery import Deliverer
from dispatcher.jobs import DeliveryJob, RunCounts

QUEUE = "dispatcher"
"""The queue the daemon publishes to and workers consume (its Redis list has the same name)."""

PUBLISH_RETRY_POLICY = {"max_retries": None, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 3.0}
"""Publishing waits for the broker to come back (a restarted Redis) instead of failing the run."""


class Executor(Protocol):
    """Hands booked jobs to delivery."""

    remote: bool

    async def submit(self, jobs: Sequence[DeliveryJob]) -> RunCounts: ...

    async def aclose(self) -> None: ...


class InProcessExecutor:
    """Delivers in this process, on this event loop."""

    remote = False

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer

    async def submit(self, jobs: Sequence[DeliveryJob]) -> RunCounts:
        return await self.deliverer.deliver(jobs) if jobs else RunCounts()

    async def aclose(self) -> None:
        await self.deliverer.aclose()


class CeleryExecutor:
    """Enqueues jobs for Celery workers, ``task_batch`` per task."""

    remote = True

    def __init__(self, task: Any, task_batch: int, config_version: str) -> None:
        self.task = task
        self.task_batch = task_batch
        self.config_version = config_version

    async def submit(self, jobs: Sequence[DeliveryJob]) -> RunCounts:
        for start in range(0, len(jobs), self.task_batch):
            chunk = jobs[start : start + self.task_batch]
            payload = {"version": self.config_version, "jobs": [job.to_dict() for job in chunk]}
            self.task.apply_async(args=[payload], retry=True, retry_policy=PUBLISH_RETRY_POLICY)
        return RunCounts()

    async def aclose(self) -> None:
        return None
