"""Where delivery runs: in this process, or on Celery workers through the broker.

Both take the jobs a batch booked. In-process delivery returns what happened;
Celery delivery only enqueues their attempt ids (``task_batch`` per task: one task
per message would cap throughput at the broker's task rate) and the runner then
follows the ledger until the run's attempts are done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from kombu.exceptions import ChannelError, KombuError

from dispatcher.errors import BrokerError
from dispatcher.masking import mask_url
from dispatcher.pipeline.deliver import Deliverer
from dispatcher.pipeline.job_loader import JobLoader
from dispatcher.pipeline.jobs import DeliveryJob, RunCounts

QUEUE = "dispatcher"
"""The queue the daemon publishes to and workers consume (its Redis list has the same name)."""

PUBLISH_RETRY_POLICY = {"max_retries": None, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 3.0}
"""Publishing waits for the broker to come back (a restarted Redis) instead of failing the run."""


class Executor(Protocol):
    """Hands booked jobs (or planned attempt ids) to delivery."""

    remote: bool

    async def submit(self, jobs: Sequence[DeliveryJob]) -> RunCounts: ...

    async def submit_ids(self, attempt_ids: Sequence[int]) -> RunCounts: ...

    def queued(self) -> int: ...

    def describe_queue(self) -> str: ...

    async def aclose(self) -> None: ...


class InProcessExecutor:
    """Delivers in this process, on this event loop."""

    remote = False

    def __init__(self, deliverer: Deliverer, loader: JobLoader, clock: Callable[[], datetime]) -> None:
        self.deliverer = deliverer
        self.loader = loader
        self.clock = clock

    async def submit(self, jobs: Sequence[DeliveryJob]) -> RunCounts:
        return await self.deliverer.deliver(jobs) if jobs else RunCounts()

    async def submit_ids(self, attempt_ids: Sequence[int]) -> RunCounts:
        loaded = self.loader.load(attempt_ids, self.clock())
        counts = await self.deliverer.deliver(loaded.jobs, loaded.accounts)
        counts.suppressed += loaded.gone
        return counts

    def queued(self) -> int:
        return 0

    def describe_queue(self) -> str:
        return "delivery in this process"

    async def aclose(self) -> None:
        await self.deliverer.aclose()


class CeleryExecutor:
    """Enqueues attempt ids for Celery workers, ``task_batch`` per task; tasks expire when the run would."""

    remote = True

    def __init__(self, task: Any, task_batch: int, config_version: str, run_id: int | None,
                 expires_after: float) -> None:
        self.task = task
        self.task_batch = task_batch
        self.config_version = config_version
        self.run_id = run_id
        self.expires_after = expires_after

    async def submit(self, jobs: Sequence[DeliveryJob]) -> RunCounts:
        return await self.submit_ids([job.attempt_id for job in jobs])

    async def submit_ids(self, attempt_ids: Sequence[int]) -> RunCounts:
        """Enqueue the ids; raises :class:`BrokerError` when the broker cannot be reached (they stay planned)."""
        for start in range(0, len(attempt_ids), self.task_batch):
            payload = task_payload(self.config_version, self.run_id, attempt_ids[start : start + self.task_batch])
            try:
                self.task.apply_async(args=[payload], expires=self.expires_after, retry=True,
                                      retry_policy=PUBLISH_RETRY_POLICY)
            except (KombuError, OSError) as exc:  # kombu re-raises the transport's connection errors as its own
                raise BrokerError(f"the broker at {mask_url(str(self.task.app.conf.broker_url))} cannot be "
                                  f"reached ({str(exc).rstrip('.')}); the attempts not handed over stay planned "
                                  "for the next run") from exc
        return RunCounts()

    def queued(self) -> int:
        """Tasks waiting in the broker's queue (not those a worker holds)."""
        with self.task.app.connection_for_read() as connection, connection.channel() as channel:
            try:
                return int(channel.queue_declare(QUEUE, passive=True).message_count)
            except ChannelError:  # no such queue: Redis drops an empty list, so nothing waits
                return 0

    def describe_queue(self) -> str:
        try:
            return f"{self.queued()} task(s) waiting in the queue {QUEUE!r}"
        except Exception as exc:  # kombu and the transports raise many kinds
            return f"the broker cannot be asked: {exc}"

    async def aclose(self) -> None:
        return None


def task_payload(version: str, run_id: int | None, attempt_ids: Sequence[int]) -> dict[str, Any]:
    """What a delivery task carries: the configuration version, the run and attempt ids; no personal data."""
    return {"version": version, "run_id": run_id, "attempts": [int(i) for i in attempt_ids]}
