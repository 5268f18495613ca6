"""A value computed by blocking code off the event loop, kept for a while, shared by concurrent readers.

``/metrics`` and ``/healthz`` read the ledger and the broker. Done per request,
100 parallel scrapes took every thread of the loop's default executor and
``/healthz`` queued behind them. A :class:`Refreshed` value is computed in a
thread of its own (one at a time), kept for ``max_age`` seconds, and every
request arriving while it is being computed waits for that same computation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Refreshed(Generic[T]):
    """``compute()`` run in a dedicated thread at most once per ``max_age`` seconds (failures are not kept)."""

    def __init__(self, compute: Callable[[], T], max_age: float, name: str) -> None:
        self._compute = compute
        self._max_age = max_age
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._kept: tuple[float, T] | None = None
        self._pending: asyncio.Future[T] | None = None

    async def get(self, wait: float) -> T:
        """The kept value while it is fresh, else the one being computed; TimeoutError after ``wait`` seconds.

        A computation that outlasts ``wait`` goes on in its thread and serves the requests after it.
        """
        if self._kept is not None and time.monotonic() - self._kept[0] < self._max_age:
            return self._kept[1]
        if self._pending is None:
            self._pending = self._start()
        return await asyncio.wait_for(asyncio.shield(self._pending), wait)

    def _start(self) -> asyncio.Future[T]:
        started = time.monotonic()
        pending = asyncio.get_running_loop().run_in_executor(self._executor, self._compute)

        def settle(done: asyncio.Future[T]) -> None:
            self._pending = None
            if not done.cancelled() and done.exception() is None:
                self._kept = (started, done.result())

        pending.add_done_callback(settle)
        return pending

    def close(self) -> None:
        """Let the thread end once a computation in progress returns."""
        self._executor.shutdown(wait=False, cancel_futures=True)
