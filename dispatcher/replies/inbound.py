"""Receiving one inbound SMS reply: read it, keep it in the ledger, or in the spool when the ledger cannot take it.

The sender is normalised to E.164 with the number's region (Twilio's ``FromCountry``,
else the region of the number it was sent to, else the schedule's region) before it
is hashed, so every spelling of a borrower's number matches the same suppression.
The ledger and the spool hold the masked sender and masked text only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from dispatcher import phones
from dispatcher.errors import LedgerError
from dispatcher.ledger.replies import InboundReply, record_reply
from dispatcher.masking import address_hash, mask_phone, mask_text
from dispatcher.replies.spool import Entry, Spool, spool_path
from dispatcher.replies.words import Vocabulary

log = logging.getLogger(__name__)

SPOOLED = "spooled"
"""The outcome of a reply the ledger could not take: it waits in the spool."""

DUPLICATE = "duplicate"
"""The outcome of a reply whose message id was already kept: nothing changes."""


def read_reply(form: Mapping[str, str], vocabulary: Vocabulary, default_region: str | None,
               received_at: datetime) -> InboundReply | None:
    """The reply a provider posted (Twilio's form fields); ``None`` without a message id or sender."""
    sid, sender = form.get("MessageSid", "").strip()[:64], form.get("From", "").strip()
    if not sid or not sender:
        return None
    regions = (form.get("FromCountry"), phones.region_of(form.get("To", "").strip()), default_region)
    number = phones.to_e164(sender, regions)
    body = form.get("Body", "")
    recognised = vocabulary.recognise(body)
    return InboundReply(
        message_sid=sid, channel="sms", sender=mask_phone(number), address_hash=address_hash(number),
        text=mask_text(body), decision=recognised.decision.value, keyword=recognised.keyword,
        received_at=received_at)


def to_entry(reply: InboundReply) -> Entry:
    entry = asdict(reply)
    entry["received_at"] = reply.received_at.isoformat()
    return entry


def from_entry(entry: Entry) -> InboundReply:
    return InboundReply(**{**entry, "received_at": datetime.fromisoformat(entry["received_at"])})


class Inbox:
    """Keeps replies: in the ledger when it answers within its lock timeout, else in the spool."""

    def __init__(self, engine: Engine, spool: Spool) -> None:
        self.engine = engine
        self.spool = spool

    def receive(self, reply: InboundReply, now: datetime) -> str:
        """Keep ``reply`` durably; its outcome. Raises :class:`LedgerError` only when the spool failed too."""
        try:
            outcome = record_reply(self.engine, reply, now)
        except LedgerError as exc:
            self.spool.append(to_entry(reply))
            log.warning("inbound %s from %s kept in the spool %s: %s", reply.decision, reply.sender,
                        self.spool.path, exc)
            return SPOOLED
        return DUPLICATE if outcome is None else outcome

    def drain(self, now: datetime) -> int:
        """Apply the spooled replies the ledger takes now; how many."""
        def apply(entry: Entry) -> None:
            reply = from_entry(entry)
            outcome = record_reply(self.engine, reply, now)
            log.info("inbound %s from %s applied from the spool: %s", reply.decision, reply.sender,
                     outcome or DUPLICATE)

        return self.spool.drain(apply)


def drain_spool(engine: Engine, database_url: str, outbox_dir: Path, now: datetime) -> int:
    """Apply the replies a web app on this machine spooled while the ledger was locked or down; how many."""
    return Inbox(engine, Spool(spool_path(database_url, outbox_dir))).drain(now)
