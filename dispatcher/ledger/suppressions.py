"""Suppressions (opt-outs, dead addresses) and provider status callbacks: small writes from the web side."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import attempts, suppressions
from dispatcher.masking import address_hash, mask_address

STATUS_RANK = {"planned": 0, "sending": 1, "sent": 2, "unknown": 2, "delivered": 3, "undelivered": 3,
               "failed": 3}
"""Statuses in the order they may follow each other; a callback only moves an attempt to a higher rank."""


def suppress(engine: Engine, channel: str, address: str, source: str, now: datetime, *,
             account_id: str | None = None, detail: str | None = None) -> bool:
    """Record that ``address`` must not be used on ``channel``; False if it already was."""
    digest = address_hash(address)
    try:
        with engine.begin() as connection:
            active = connection.execute(
                select(suppressions.c.id).where(suppressions.c.channel == channel,
                                                suppressions.c.address_hash == digest,
                                                suppressions.c.lifted_at.is_(None))
            ).first()
            if active is not None:
                return False
            connection.execute(suppressions.insert().values(
                channel=channel, address_hash=digest, address=mask_address(channel, address),
                account_id=account_id, source=source, detail=detail, created_at=now))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record a suppression: {exc}") from exc
    return True


def lift(engine: Engine, channel: str, address: str, now: datetime, *, sources: tuple[str, ...]) -> int:
    """End the active suppressions of ``address`` on ``channel`` that came from ``sources``."""
    try:
        with engine.begin() as connection:
            result = connection.execute(
                update(suppressions)
                .where(suppressions.c.channel == channel, suppressions.c.address_hash == address_hash(address),
                       suppressions.c.lifted_at.is_(None), suppressions.c.source.in_(sources))
                .values(lifted_at=now)
            )
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot lift a suppression: {exc}") from exc
    return int(result.rowcount)


def advance_status(engine: Engine, provider_message_id: str, status: str, now: datetime, *,
                   error_code: str | None = None) -> int | None:
    """Move the attempt with ``provider_message_id`` forward to ``status``.

    Returns the number of rows moved (0 when the callback is old news: a repeat or
    out of order), or ``None`` when no attempt has that provider id.
    """
    lower = [name for name, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
    values: dict[str, object] = {"status": status, "updated_at": now}
    if error_code:
        values.update(error_code=error_code, error_class="permanent")
    try:
        with engine.begin() as connection:
            moved = connection.execute(
                update(attempts)
                .where(attempts.c.provider_message_id == provider_message_id, attempts.c.status.in_(lower))
                .values(**values)
            ).rowcount
            if moved:
                return int(moved)
            known = connection.execute(
                select(attempts.c.id).where(attempts.c.provider_message_id == provider_message_id)
            ).first()
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record a status callback: {exc}") from exc
    return 0 if known is not None else None
