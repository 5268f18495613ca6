"""The event loop and the heap delivery runs on.

Delivery is CPU-bound on many small provider requests; uvloop's transports and
task scheduling cost about a third less per request than asyncio's selector loop
(``bench/delivery.py``). ``DISPATCHER_EVENT_LOOP=asyncio`` keeps the standard loop.

The wired app (SQLAlchemy, phonenumbers' metadata, Babel's locale data, compiled
templates) is a large heap of long-lived objects that every full garbage
collection walks again: an eighth of a run's CPU. :func:`settle_heap` takes them
out of the collector's sight before a run (``gc.freeze``), and has the young generation collected less often
(:data:`YOUNG_THRESHOLD`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the young generation (Python's default: 700). A run allocates millions of
objects that live for one message or one batch; most are freed by their reference counts before a collection
looks at them when collections are this far apart. The collector's share of a 20,000-account run fell from
0.37-0.47 s to about 0.2 s, and the full collections during the run from 9 to none (the one left is this
function's), for at most that many objects more waiting to be looked at."""


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of ``kind`` loops (``uvloop`` or ``asyncio``); uvloop falls back when it is not installed."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.debug("uvloop is not installed; using the asyncio event loop")
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coroutine: Coroutine[Any, Any, T], kind: str) -> T:
    """``asyncio.run`` on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(coroutine)


def settle_heap() -> None:
    """Collect garbage, then freeze what is alive (the app, its caches) out of later collections.

    Called before each run and when a worker has wired itself; unfreezing first lets
    the collection reach what an earlier freeze kept (an old pipeline after a reload).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
