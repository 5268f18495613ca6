"""Suppressions: addresses that must not be used (opt-outs, dead numbers and tokens), and lifting them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import suppressions
from dispatcher.masking import address_hash, mask_address


def suppress(engine: Engine, channel: str, address: str, source: str, now: datetime, *,
             account_id: str | None = None, detail: str | None = None) -> bool:
    """Record that ``address`` must not be used on ``channel``; False if it already was."""
    try:
        with engine.begin() as connection:
            return suppress_hash(connection, channel, address_hash(address), mask_address(channel, address), source,
                                 now, account_id=account_id, detail=detail)
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record a suppression: {exc}") from exc


def suppress_hash(connection: Connection, channel: str, digest: str, masked: str, source: str, now: datetime, *,
                  account_id: str | None = None, detail: str | None = None) -> bool:
    """:func:`suppress` inside ``connection``'s transaction, given the address's hash and masked form."""
    active = connection.execute(
        select(suppressions.c.id).where(suppressions.c.channel == channel, suppressions.c.address_hash == digest,
                                        suppressions.c.lifted_at.is_(None))
    ).first()
    if active is not None:
        return False
    connection.execute(suppressions.insert().values(
        channel=channel, address_hash=digest, address=masked, account_id=account_id, source=source, detail=detail,
        created_at=now))
    return True


def lift(engine: Engine, channel: str, address: str, now: datetime, *, sources: tuple[str, ...]) -> int:
    """End the active suppressions of ``address`` on ``channel`` that came from ``sources``."""
    try:
        with engine.begin() as connection:
            return lift_hash(connection, channel, address_hash(address), now, sources=sources)
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot lift a suppression: {exc}") from exc


def lift_hash(connection: Connection, channel: str, digest: str, now: datetime, *, sources: tuple[str, ...],
              created_before: datetime | None = None) -> int:
    """:func:`lift` inside ``connection``'s transaction; only suppressions made before ``created_before`` if given."""
    query = (update(suppressions)
             .where(suppressions.c.channel == channel, suppressions.c.address_hash == digest,
                    suppressions.c.lifted_at.is_(None), suppressions.c.source.in_(sources)))
    if created_before is not None:
        query = query.where(suppressions.c.created_at <= created_before)
    return int(connection.execute(query.values(lifted_at=now)).rowcount)
