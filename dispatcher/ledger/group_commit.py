"""Group commit of the ledger writes of the messages in flight.

Every message in flight writes to the ledger three times: its claim, its hand-over
to the channel and its outcome. Each write must be committed before the message
moves on (a claim before anything is rendered for it, a hand-over before the
provider is called, an outcome before its place in flight is freed), so that a
crash leaves at most the messages in flight in doubt. One statement per write
would cost a commit per write; instead the writes made by every coroutine that
runs in one turn of the event loop are gathered and committed together at the
end of that turn. (The commit runs on the event loop's thread: a writer thread
would wait for the GIL behind the CPU-bound loop for a switch interval per
statement, which cost more than it saved.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger import claims
from dispatcher.ledger.claims import AttemptOutcome, GiveBack
from dispatcher.ledger.tables import attempts
from dispatcher.records import record

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

LAG_LIMIT = 256
"""Writes nobody waits for (outcomes the provider can be asked about) that make a commit start at once. At a real
provider's pace :data:`LAG_SECONDS` comes first (256 outcomes in 0.1 s is 2,560 messages a second per process); on the
outbox, which answers at once, a limit of 256 instead of 64 made a 20,000-account run commit 297 times instead of
419, with 2 % less CPU (7 alternating runs, faster in each). What a crash leaves uncommitted, the reconciler asks
the channel about."""

LAG_SECONDS = 0.1
"""The longest such a write waits for a commit."""


@record
class _Write:
    kind: str  # claim | hand_over | outcome | try | give_back | decision
    payload: Any
    future: asyncio.Future[Any] | None  # None: nobody waits for it


class GroupCommitter:
    """Commits the writes of concurrent messages together.

    A write that is waited for is committed at the end of the current turn of the
    event loop, with every other write made meanwhile; a write nobody waits for (the
    outcome of a message whose provider can be asked after a crash) waits at most
    :data:`LAG_SECONDS` or :data:`LAG_LIMIT` writes for a commit. Waiting calls raise
    :class:`LedgerError` when the transaction holding their write failed.
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self._queue: list[_Write] = []
        self._lagging = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._connection: Connection | None = None  # one, kept: a pool checkout per commit adds up
        self.commits = 0

    async def claim(self, attempt_ids: Sequence[int]) -> set[int]:
        """``planned → claimed``: the ids this caller now owns."""
        return set(await self._submit("claim", list(attempt_ids)))

    async def hand_over(self, attempt_id: int) -> bool:
        """``claimed → sending``, committed before the channel is called."""
        return bool(await self._submit("hand_over", attempt_id))

    async def record(self, outcome: AttemptOutcome, next_try: Mapping[str, Any] | None = None) -> int | None:
        """Write an outcome, with the row of the next try (``planned``) in the same transaction.

        Returns the next try's id, or ``None`` (no next try, or it exists already).
        """
        return await self._submit("outcome", (outcome, next_try))  # type: ignore[no-any-return]

    def record_soon(self, outcome: AttemptOutcome) -> None:
        """Write a final outcome without waiting for it (committed within :data:`LAG_SECONDS`)."""
        self._submit("outcome", (outcome, None), wait=False)

    async def insert_try(self, row: Mapping[str, Any]) -> int | None:
        """Insert a further try (a fallback channel); ``None`` when it exists already."""
        return await self._submit("try", row)  # type: ignore[no-any-return]

    async def give_back(self, back: GiveBack) -> None:
        """``claimed → planned``: the claim never reached a channel."""
        await self._submit("give_back", back)

    async def decide(self, row: Mapping[str, Any]) -> None:
        """Insert a decision row (try 0: a deferral)."""
        await self._submit("decision", row)

    def flush(self) -> None:
        """Commit every write still waiting, now."""
        self._flush()

    def close(self) -> None:
        """Commit what waits and give the connection back to the pool."""
        if self._queue:
            self._flush()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _submit(self, kind: str, payload: Any, *, wait: bool = True) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Write(kind, payload, future if wait else None))
        self._lagging += not wait
        if wait or self._lagging >= LAG_LIMIT:
            if self._soon is None:
                self._soon = loop.call_soon(self._flush)  # after the callbacks ready now: their writes join
        elif self._timer is None:
            self._timer = loop.call_later(LAG_SECONDS, self._flush)
        return future

    def _flush(self) -> None:
        """Commit what has gathered in one transaction and wake the writers."""
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None
        group, self._queue, self._lagging = self._queue, [], 0
        if not group:
            return
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            with self._connection.begin():
                results = _apply(self._connection, group, self.clock())
        except SQLAlchemyError as exc:
            if self._connection is not None:  # a broken connection is not reused
                self._connection.close()
                self._connection = None
            log.error("ledger: cannot commit %d write(s) of messages in flight: %s", len(group), exc)
            error = LedgerError(f"ledger: cannot record delivery: {exc}")
            for write in group:
                if write.future is not None and not write.future.done():
                    write.future.set_exception(error)
            return
        self.commits += 1
        for write, result in zip(group, results, strict=True):
            if write.future is not None and not write.future.done():
                write.future.set_result(result)


def _apply(connection: Connection, group: Sequence[_Write], now: datetime) -> list[Any]:
    by_kind: dict[str, list[_Write]] = {}
    for write in group:
        by_kind.setdefault(write.kind, []).append(write)
    results: dict[int, Any] = {}
    if "claim" in by_kind:
        moved = claims.claim(connection, [i for w in by_kind["claim"] for i in w.payload], now)
        results.update((id(w), moved.intersection(w.payload)) for w in by_kind["claim"])
    if "hand_over" in by_kind:
        moved = claims.hand_over(connection, [w.payload for w in by_kind["hand_over"]], now)
        results.update((id(w), w.payload in moved) for w in by_kind["hand_over"])
    outcomes = by_kind.get("outcome", [])
    claims.write_outcomes(connection, [w.payload[0] for w in outcomes], now)
    for write in outcomes:
        following = write.payload[1]
        results[id(write)] = claims.insert_try(connection, following) if following is not None else None
    for write in by_kind.get("try", []):
        results[id(write)] = claims.insert_try(connection, write.payload)
    if "give_back" in by_kind:
        claims.give_back(connection, [w.payload for w in by_kind["give_back"]], now)
    if "decision" in by_kind:
        connection.execute(attempts.insert(), [dict(w.payload) for w in by_kind["decision"]])
    return [results.get(id(write)) for write in group]
