"""Suppressions: addresses that must not be used (opt-outs, dead numbers and tokens), and lifting them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.tables import suppressions
from dispatcher.masking import address_hash, mask_address


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
