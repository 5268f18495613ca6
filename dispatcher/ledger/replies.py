"""Inbound replies: each kept once (by the provider's message id), and the opt-out or opt-in it carries applied.

STOP and START of one number are ordered by when the web app received them (the
spool keeps that time): a reply older than the number's latest reply of the other
kind changes nothing (``superseded``). A START lifts only opt-outs recorded before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.suppressions import lift_hash, suppress_hash
from dispatcher.ledger.tables import inbound_replies

OPT_OUT_SOURCES = ("inbound_stop", "provider_opt_out")
"""Suppression sources an opt-in reply lifts (not dead numbers, not unsubscribes by email)."""

REPLY_COLUMNS = ("id", "received_at", "channel", "sender", "decision", "keyword", "outcome", "text", "read_at")
"""What ``dispatcher replies`` shows, in order."""


@dataclass(frozen=True)
class InboundReply:
    """One reply as the ledger keeps it: no personal data but the masked sender and masked text."""

    message_sid: str
    channel: str
    sender: str  # masked
    address_hash: str  # of the normalised sender
    text: str  # masked
    decision: str  # opt_out | opt_in | unclear | other
    keyword: str | None
    received_at: datetime


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the write lock from its start (SQLite ``BEGIN IMMEDIATE``), committed on exit."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            yield connection
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def record_reply(engine: Engine, reply: InboundReply, now: datetime) -> str | None:
    """Keep ``reply`` and apply what it asks; its outcome, or ``None`` when its message id was already kept.

    Raises :class:`LedgerError` when the ledger cannot be written (locked, down).
    """
    try:
        with _write_transaction(engine) as connection:
            if _known(connection, reply.message_sid):
                return None
            outcome = _apply(connection, reply)
            connection.execute(inbound_replies.insert().values(
                message_sid=reply.message_sid, channel=reply.channel, sender=reply.sender,
                address_hash=reply.address_hash, text=reply.text, decision=reply.decision, keyword=reply.keyword,
                outcome=outcome, received_at=reply.received_at, recorded_at=now))
    except IntegrityError:  # another process kept the same message id meanwhile
        return None
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record an inbound reply: {exc}") from exc
    return outcome


def _known(connection: Connection, message_sid: str) -> bool:
    found = connection.execute(select(inbound_replies.c.id).where(inbound_replies.c.message_sid == message_sid))
    return found.first() is not None


def _newer(connection: Connection, reply: InboundReply, decision: str) -> bool:
    """Whether the same sender sent a reply of ``decision`` after ``reply``."""
    found = connection.execute(select(inbound_replies.c.id).where(
        inbound_replies.c.channel == reply.channel, inbound_replies.c.address_hash == reply.address_hash,
        inbound_replies.c.decision == decision, inbound_replies.c.received_at > reply.received_at).limit(1))
    return found.first() is not None


def _apply(connection: Connection, reply: InboundReply) -> str:
    """Suppress or lift as the reply asks, unless a newer reply asked otherwise; what was done."""
    if reply.decision == "opt_out":
        if _newer(connection, reply, "opt_in"):
            return "superseded"
        done = suppress_hash(connection, reply.channel, reply.address_hash, reply.sender, "inbound_stop",
                             reply.received_at, detail=f"replied {reply.keyword}")
        return "suppressed" if done else "already"
    if reply.decision == "opt_in":
        if _newer(connection, reply, "opt_out"):
            return "superseded"
        lifted = lift_hash(connection, reply.channel, reply.address_hash, reply.received_at,
                           sources=OPT_OUT_SOURCES, created_before=reply.received_at)
        return "lifted" if lifted else "none"
    return "none"


def list_replies(engine: Engine, *, unclear: bool = False, unread: bool = False) -> list[dict[str, Any]]:
    """Kept replies, oldest first; only ``unclear`` ones, only unread ones when asked."""
    query = select(*(inbound_replies.c[name] for name in REPLY_COLUMNS)).order_by(inbound_replies.c.id)
    if unclear:
        query = query.where(inbound_replies.c.decision == "unclear")
    if unread:
        query = query.where(inbound_replies.c.read_at.is_(None))
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot list inbound replies: {exc}") from exc


def mark_read(engine: Engine, ids: Sequence[int], now: datetime) -> int:
    """Mark replies read by a person; how many were unread."""
    try:
        with engine.begin() as connection:
            result = connection.execute(update(inbound_replies).where(
                inbound_replies.c.id.in_(list(ids)), inbound_replies.c.read_at.is_(None)).values(read_at=now))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot mark replies read: {exc}") from exc
    return int(result.rowcount)
