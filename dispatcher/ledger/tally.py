"""What became of the attempts a run booked to send: one outcome per job, retries and fallbacks followed.

A job is a booked first try (reminder × channel). Its outcome is that of the
last try of its chain: further tries of the same channel, then the fallback
channel a permanent failure led to (``parent_id``), and so on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, select

from dispatcher.ledger.among import rows_among
from dispatcher.ledger.claims import chunks
from dispatcher.ledger.tables import attempts

HELD_CLASS = "template"
"""The error class of a claim given back because its message cannot be rendered (or breaks a content rule)."""

_CATEGORY = {"sent": "sent", "delivered": "sent", "failed": "failed", "undelivered": "failed",
             "suppressed": "suppressed", "unknown": "unknown", "claimed": "in_doubt", "sending": "in_doubt"}


_CHAINED = frozenset({"failed", "undelivered"})
"""First-try statuses that further tries or a fallback channel may follow; any other first try is its job's end."""

_COLUMNS = (attempts.c.id, attempts.c.reminder_key, attempts.c.channel, attempts.c.try_no, attempts.c.status,
            attempts.c.parent_id, attempts.c.rule_id, attempts.c.error_class)

_ROOTS = select(attempts.c.id, attempts.c.status, attempts.c.rule_id, attempts.c.error_class)
"""What :func:`_category` reads of a job's first try (a chain's tries are read with :data:`_COLUMNS`)."""


def job_outcomes(engine: Engine, job_ids: Sequence[int]) -> Counter[str]:
    """Jobs by outcome: sent, failed, suppressed, deferred, unknown, held, in_doubt or pending."""
    found: Counter[str] = Counter()
    with engine.connect() as connection:
        for part in chunks(job_ids):  # chunk by chunk: a million ids sorted at once would cost 40 MB
            chunk = sorted(part)
            roots = {row.id: row for row in rows_among(connection, _ROOTS, attempts.c.id, chunk)}
            chained = [job_id for job_id, row in roots.items() if row.status in _CHAINED]
            found.update(_category(row) for row in roots.values() if row.status not in _CHAINED)
            found["pending"] += len(chunk) - len(roots)
            if chained:
                found.update(_chain_outcomes(connection, chained))
    return found


def _chain_outcomes(connection: Connection, job_ids: Sequence[int]) -> Iterable[str]:
    """The outcomes of jobs whose first try failed: the last try of each chain, fallbacks followed."""
    keys = select(attempts.c.reminder_key).where(attempts.c.id.in_(job_ids)).scalar_subquery()
    by_key: dict[str, list[Any]] = {}
    by_id: dict[int, Any] = {}
    for row in connection.execute(select(*_COLUMNS).where(attempts.c.reminder_key.in_(keys), attempts.c.try_no >= 1)):
        by_key.setdefault(row.reminder_key, []).append(row)
        by_id[row.id] = row
    return [_outcome(by_key, by_id.get(job_id)) for job_id in job_ids]


def _outcome(by_key: dict[str, list[Any]], root: Any) -> str:
    if root is None:
        return "pending"
    same_key = by_key[root.reminder_key]
    last = _last_try(same_key, root.channel)
    while last.status in ("failed", "undelivered"):
        tries = {row.id for row in same_key if row.channel == last.channel}
        children = [row for row in same_key if row.parent_id in tries and row.channel != last.channel]
        if not children:
            break
        child = max(children, key=lambda row: row.id)
        last = _last_try(same_key, child.channel)
    return _category(last)


def _last_try(rows: Iterable[Any], channel: str) -> Any:
    return max((row for row in rows if row.channel == channel), key=lambda row: row.try_no)


def _category(row: Any) -> str:
    if row.status == "planned":
        if row.error_class == HELD_CLASS:
            return "held"
        return "deferred" if row.rule_id else "pending"
    return _CATEGORY.get(row.status, "pending")
