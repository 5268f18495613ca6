"""Claims ahead of the places in flight: a batch's first tries are claimed a group at a time, in order.

At most :data:`AHEAD_PER_PLACE` times the places in flight (``DISPATCHER_CONCURRENCY``)
are claimed and not yet in flight. When those waiting for a place fall to a quarter of
that window, the next group (at least three quarters of it) is claimed in one statement,
so a claim and its commit cover many messages and a message that gets a place seldom
waits for it.
A stop claims nothing more; what was claimed and not yet in flight is given back by
the deliverer.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence

from dispatcher.ledger.group_commit import GroupCommitter

AHEAD_PER_PLACE = 4
"""Attempts claimed and waiting, at most, per place in flight. Each claim is a commit that every message in flight
joins (:class:`~dispatcher.ledger.group_commit.GroupCommitter`): with one place's worth ahead, a run of 20,000
accounts made 1,100 of them, with four 420 and 6 % less CPU (``bench/pipeline.py``). What a crash leaves claimed and
not in flight never reached a channel; the reconciler gives it back or, where the channel can be asked, asks."""


class ClaimAhead:
    """Claims the given attempts in order, keeping at most :data:`AHEAD_PER_PLACE` times ``places`` claimed and
    waiting for a place."""

    def __init__(self, commit: GroupCommitter, attempt_ids: Sequence[int], places: int,
                 stopping: threading.Event) -> None:
        self._commit = commit
        self._pending = deque(attempt_ids)
        self._window = max(1, AHEAD_PER_PLACE * places)
        self._stopping = stopping
        self._owned: dict[int, asyncio.Future[bool]] = {}
        self._waiting = 0  # claimed, not yet in flight
        self._claiming = False

    async def claim(self, attempt_id: int) -> bool:
        """Whether this deliverer owns ``attempt_id`` (False: someone else has it, or a stop came first)."""
        future = self._future(attempt_id)
        self._refill()
        return await future

    def started(self) -> None:
        """A claimed attempt got its place in flight (or gave its claim back)."""
        self._waiting -= 1
        self._refill()

    def _future(self, attempt_id: int) -> asyncio.Future[bool]:
        future = self._owned.get(attempt_id)
        if future is None:
            future = self._owned[attempt_id] = asyncio.get_running_loop().create_future()
        return future

    def _refill(self) -> None:
        if self._stopping.is_set():
            self._release_pending()
            return
        if self._claiming or not self._pending or self._waiting > self._window // 4:
            return
        group = [self._pending.popleft() for _ in range(min(self._window - self._waiting, len(self._pending)))]
        self._waiting += len(group)
        self._claiming = True
        asyncio.get_running_loop().create_task(self._claim(group))

    async def _claim(self, group: list[int]) -> None:
        try:
            owned = await self._commit.claim(group)
        except BaseException as exc:
            for attempt_id in group:
                future = self._future(attempt_id)
                if not future.done():
                    future.set_exception(exc)
            self._waiting -= len(group)
            raise
        finally:
            self._claiming = False
        for attempt_id in group:
            self._future(attempt_id).set_result(attempt_id in owned)
        self._waiting -= len(group) - len(owned)
        self._refill()

    def _release_pending(self) -> None:
        """A stop: nothing more is claimed; every attempt not claimed yet is told so."""
        while self._pending:
            future = self._future(self._pending.popleft())
            if not future.done():
                future.set_result(False)
