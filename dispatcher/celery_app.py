"""The Celery app: the broker from ``DISPATCHER_BROKER_URL`` and the delivery guarantees.

The daemon sends ``dispatcher.deliver_batch`` and ``dispatcher.plan_range`` tasks through it by name; the tasks
themselves live in :mod:`dispatcher.worker`, which the workers load (``celery -A
dispatcher.worker``). Keeping the app apart means the daemon's object graph never
imports the worker's, and the worker's imports :mod:`dispatcher.app` one way only.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from dispatcher.pipeline.executors import QUEUE
from dispatcher.settings import Settings

TASK_NAME = "dispatcher.deliver_batch"
RANGE_TASK_NAME = "dispatcher.plan_range"


def configure(celery: Celery, settings: Settings) -> Celery:
    """Broker and delivery guarantees: late acks, requeue on a lost worker, one task prefetched."""
    celery.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    return celery


app = Celery("dispatcher")
configure(app, Settings.from_env())


def delivery_task() -> Any:
    """``dispatcher.deliver_batch`` as a signature to send (``apply_async``), by name."""
    return app.signature(TASK_NAME)


def range_task() -> Any:
    """``dispatcher.plan_range`` (one key range of a run planned, booked and delivered) as a signature, by name."""
    return app.signature(RANGE_TASK_NAME)
