"""Claiming a Redis database (1-15) for one test or benchmark, so that sessions running side by side never share one.

The claim is a key set with NX in the database; whoever holds it empties the
database when done, and nobody else ever flushes a claimed database. Used by
the ``broker_url_db`` fixture, the fault tests and ``bench/delivery.py``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import redis

CLAIM_KEY = "dispatcher-tests:claimed"
"""Marks a Redis database as taken by one test, of this session or another one running beside it."""


@contextlib.contextmanager
def claimed_database(redis_url: str, preferred: int | None = None) -> Iterator[str]:
    """An empty Redis database of ``redis_url``'s server, emptied again afterwards.

    With ``preferred``, that database comes first and is flushed first unless someone
    holds it (a dedicated database: leftovers of an interrupted run); otherwise, and
    when it is taken, the first empty one from 15 down.
    """
    token = secrets.token_hex(8)
    candidates = [n for n in range(15, 0, -1) if n != preferred]
    for number in ([preferred] if preferred is not None else []) + candidates:
        client = redis.Redis.from_url(with_db(redis_url, number), socket_timeout=2)
        try:
            if number == preferred and not client.exists(CLAIM_KEY):
                client.flushdb()
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=900):
                break
        finally:
            client.close()
    else:
        raise RuntimeError("no free Redis database among 1-15")
    url = with_db(redis_url, number)
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            if client.get(CLAIM_KEY) == token.encode():
                client.flushdb()
        finally:
            client.close()


def with_db(url: str, db: int) -> str:
    """The same Redis server, database ``db``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
