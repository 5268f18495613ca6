"""Provider status callbacks: move an attempt's status forward only, whatever order they arrive in.

A callback can beat the ledger: the provider answers the send, then calls back
before the batch's outcomes (with the provider id) are written. Such a callback
is parked in ``early_callbacks`` and applied when the provider id is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import attempts, early_callbacks

STATUS_RANK = {"planned": 0, "sending": 1, "sent": 2, "unknown": 2, "delivered": 3, "undelivered": 3,
               "failed": 3}
"""Statuses in the order they may follow each other; a callback only moves an attempt to a higher rank."""


def _advance(connection: Connection, provider_message_id: str, status: str, now: datetime,
             error_code: str | None) -> int:
    lower = [name for name, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
    values: dict[str, object] = {"status": status, "updated_at": now}
    if error_code:
        values.update(error_code=error_code, error_class="permanent")
    return int(connection.execute(
        update(attempts)
        .where(attempts.c.provider_message_id == provider_message_id, attempts.c.status.in_(lower))
        .values(**values)
    ).rowcount)


def advance_status(engine: Engine, provider_message_id: str, status: str, now: datetime, *,
                   error_code: str | None = None) -> int | None:
    """Move the attempt with ``provider_message_id`` forward to ``status``.

    Returns the rows moved (0 when the callback is old news: a repeat or out of
    order), or ``None`` when no attempt has that provider id yet: the callback is
    then parked and applied once the id is recorded.
    """
    try:
        with engine.begin() as connection:
            moved = _advance(connection, provider_message_id, status, now, error_code)
            if moved:
                return moved
            known = connection.execute(
                select(attempts.c.id).where(attempts.c.provider_message_id == provider_message_id)).first()
            if known is None:
                connection.execute(early_callbacks.insert().values(
                    provider_message_id=provider_message_id, status=status, error_code=error_code, received_at=now))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record a status callback: {exc}") from exc
    return 0 if known is not None else None


def apply_parked(connection: Connection, provider_message_ids: Sequence[str], now: datetime) -> int:
    """Apply and forget the parked callbacks of these provider ids; returns how many moved a status."""
    moved = 0
    for start in range(0, len(provider_message_ids), 500):
        chunk = list(provider_message_ids[start : start + 500])
        parked = connection.execute(
            select(early_callbacks).where(early_callbacks.c.provider_message_id.in_(chunk))
            .order_by(early_callbacks.c.id)).mappings().all()
        for row in parked:
            moved += _advance(connection, row["provider_message_id"], row["status"], now, row["error_code"])
        if parked:
            connection.execute(delete(early_callbacks).where(early_callbacks.c.id.in_([r["id"] for r in parked])))
    return moved
