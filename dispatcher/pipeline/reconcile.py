"""Reconciling attempts whose outcome was never recorded: did the message go out or not?

An attempt is ``claimed`` while a deliverer prepares it and ``sending`` from just
before the provider call until its outcome is recorded. One that stays so longer
than ``DISPATCHER_RECONCILE_AFTER`` was cut off (a crash, a killed worker, a
provider that could not be asked after a timeout). It is never blindly sent again:

* ``claimed``: taken by a deliverer. The channels whose provider can be asked (the
  outbox, Twilio) take messages without a hand-over marker, so the provider is asked
  as below (since the claim); on the other channels it was never handed over and
  goes back to ``planned``: the next pass delivers it.
* ``sending`` (handed over) on a channel that can say whether it took the message: the outbox
  (it is the provider: the attempt is looked up in its files) and Twilio (its
  message list to that number since the attempt began). Found → ``sent`` with the
  provider's id; not found → ``planned`` again.
* ``sending`` on a channel nobody can answer for (SMTP relays, FCM):
  ``DISPATCHER_UNKNOWN_OUTCOME`` decides: ``mark-unknown`` (default: ``unknown``,
  visible in ``dispatcher attempts`` and the metrics; ``dispatcher retry`` can send
  it again) or ``resend``. Emails carry a Message-ID derived from the attempt, so a
  resend is recognisable downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, or_, select, update

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import AttemptLookup, Channel, SentLookup
from dispatcher.errors import DeliveryError
from dispatcher.ledger.tables import attempts
from dispatcher.masking import address_hash
from dispatcher.pipeline.source import AccountSource

log = logging.getLogger(__name__)

LOOKUP_SLACK = timedelta(minutes=1)
"""Messages created this long before the attempt's start still count (clock skew)."""


STALE_BATCH = 5000
"""Attempts settled per round of reconciliation."""


@dataclass
class ReconcileCounts:
    given_back: int = 0
    found_sent: int = 0
    resent: int = 0
    unknown: int = 0
    left: int = 0


class Reconciler:
    """Settles stale ``claimed`` and ``sending`` attempts, asking the channels that can tell."""

    def __init__(self, engine: Engine, source: AccountSource, channels: Mapping[ChannelKind, Channel],
                 unknown_outcome: str) -> None:
        self.engine = engine
        self.source = source
        self.channels = channels
        self.unknown_outcome = unknown_outcome

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()

    def stale(self, older_than: datetime, limit: int = STALE_BATCH) -> list[dict[str, Any]]:
        """Attempts ``sending`` since before ``older_than`` (oldest first)."""
        query = (select(attempts.c.id, attempts.c.account_id, attempts.c.channel, attempts.c.address_hash,
                        attempts.c.attempted_at)
                 .where(attempts.c.status == "sending", attempts.c.attempted_at < older_than)
                 .order_by(attempts.c.id).limit(limit))
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def stale_claims(self, older_than: datetime) -> list[dict[str, Any]]:
        """Attempts ``claimed`` since before ``older_than``: their deliverer stopped before sending them or
        (on a channel that needs no hand-over marker) while sending them."""
        query = (select(attempts.c.id, attempts.c.account_id, attempts.c.channel, attempts.c.address_hash,
                        attempts.c.updated_at)
                 .where(attempts.c.status == "claimed", attempts.c.updated_at < older_than).order_by(attempts.c.id))
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    async def reconcile(self, older_than: datetime, now: datetime) -> ReconcileCounts:
        counts = ReconcileCounts()
        await self._settle_claims(older_than, now, counts)
        seen: set[int] = set()
        known_sids: set[str] = set()
        while rows := [row for row in self.stale(older_than) if row["id"] not in seen]:
            seen.update(row["id"] for row in rows)
            await self._settle_all(rows, older_than, now, known_sids, counts)
        if seen:
            log.warning("reconciled %d attempt(s) handed over without a recorded outcome (a crash, a stop, or a "
                        "provider that could not be asked): %d found sent, %d not taken (to send again), "
                        "%d unknown, %d left for later", len(seen), counts.found_sent, counts.resent,
                        counts.unknown, counts.left)
        return counts

    async def _settle_claims(self, older_than: datetime, now: datetime, counts: ReconcileCounts) -> None:
        """Claims of a deliverer that stopped: a provider that can be asked is asked (the outbox, Twilio: they
        take messages without a hand-over marker); the others were never handed over and go back to
        ``planned``."""
        rows = self.stale_claims(older_than)
        if not rows:
            return
        accounts = self._accounts(rows)
        found = 0
        for row in rows:
            row["older_than"], row["attempted_at"] = older_than, row["updated_at"]
            status, sid = await self._ask(row, accounts.get(row["account_id"]), set())
            if status == "sending":  # cannot tell yet
                continue
            self._settle_claim(row, sid if status == "sent" else None, now)
            found += status == "sent"
            counts.given_back += status != "sent"
        counts.found_sent += found
        log.warning("reconciled %d attempt(s) claimed by a deliverer that stopped: %d had reached the provider "
                    "(sent), %d had not (sent by the next pass)", len(rows), found, counts.given_back)

    async def _ask(self, row: dict[str, Any], account: Account | None, known: set[str]) -> tuple[str, str | None]:
        """``sent`` with the provider's id, ``planned`` (never taken) or ``sending`` (cannot tell now); ``unknown``
        when the channel cannot be asked at all."""
        channel = self.channels.get(ChannelKind(row["channel"]))
        try:
            if isinstance(channel, AttemptLookup):
                sid = await channel.find_attempt(int(row["id"]))
                return ("sent", sid) if sid else ("planned", None)
            phone = account.phone if account else None
            if isinstance(channel, SentLookup) and phone and address_hash(phone) == row["address_hash"]:
                return await self._ask_messages(channel, row, phone, known)
        except DeliveryError as exc:
            log.warning("attempt %s: cannot ask the provider (%s); left for the next reconciliation", row["id"], exc)
            return "sending", None
        return "unknown", None

    def _settle_claim(self, row: dict[str, Any], sid: str | None, now: datetime) -> None:
        if sid is None:
            values: dict[str, Any] = {"status": "planned", "attempted_at": None, "updated_at": now}
        else:
            values = {"status": "sent", "provider_message_id": sid, "attempted_at": row["updated_at"],
                      "updated_at": now, "detail": "reconciled: the provider had taken it"}
        with self.engine.begin() as connection:
            connection.execute(update(attempts).where(attempts.c.id == row["id"], attempts.c.status == "claimed")
                               .values(**values))

    async def _settle_all(self, rows: list[dict[str, Any]], older_than: datetime, now: datetime,
                          known_sids: set[str], counts: ReconcileCounts) -> None:
        accounts = self._accounts(rows)
        for row in rows:
            row["older_than"] = older_than
            status, sid = await self._settle(row, accounts.get(row["account_id"]), known_sids)
            self._set(row["id"], status, sid, now)
            if sid:
                known_sids.add(sid)
            counts.found_sent += status == "sent"
            counts.resent += status == "planned"
            counts.unknown += status == "unknown"
            counts.left += status == "sending"

    def _accounts(self, rows: Sequence[dict[str, Any]]) -> dict[str, Account]:
        sms = self.channels.get(ChannelKind.SMS)
        if not isinstance(sms, SentLookup) or not any(r["channel"] == ChannelKind.SMS.value for r in rows):
            return {}
        fresh = self.source.fetch(sorted({r["account_id"] for r in rows if r["channel"] == "sms"}))
        return {key: value for key, value in fresh.items() if isinstance(value, Account)}

    async def _settle(self, row: dict[str, Any], account: Account | None,
                      known: set[str]) -> tuple[str, str | None]:
        status, sid = await self._ask(row, account, known)
        if status == "unknown" and self.unknown_outcome == "resend":
            return "planned", None
        return status, sid

    async def _ask_messages(self, channel: SentLookup, row: dict[str, Any], phone: str,
                            known: set[str]) -> tuple[str, str | None]:
        if self._in_flight_to(row):  # its message could be mistaken for this one's: decide next time
            return "sending", None
        sids = await channel.find_sent(phone, row["attempted_at"] - LOOKUP_SLACK)
        fresh = [sid for sid in sids if sid not in known and not self._recorded(sid)]
        return ("sent", fresh[0]) if fresh else ("planned", None)

    def _in_flight_to(self, row: dict[str, Any]) -> bool:
        """Whether another attempt to the same number is being sent right now (not stale)."""
        recent = or_(and_(attempts.c.status == "sending", attempts.c.attempted_at >= row["older_than"]),
                     and_(attempts.c.status == "claimed", attempts.c.updated_at >= row["older_than"]))
        query = select(attempts.c.id).where(attempts.c.address_hash == row["address_hash"], recent,
                                            attempts.c.id != row["id"])
        with self.engine.connect() as connection:
            return connection.execute(query.limit(1)).first() is not None

    def _recorded(self, sid: str) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(
                select(attempts.c.id).where(attempts.c.provider_message_id == sid)).first() is not None

    def _set(self, attempt_id: int, status: str, sid: str | None, now: datetime) -> None:
        if status == "sending":
            return
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status == "sent":
            values.update(provider_message_id=sid, detail="reconciled: the provider had taken it")
        elif status == "unknown":
            values.update(error_code="outcome_unknown",
                          detail="handed over, outcome not recorded, and the provider cannot be asked; not resent "
                                 "(DISPATCHER_UNKNOWN_OUTCOME=mark-unknown)")
        else:
            values.update(attempted_at=None, detail="reconciled: the provider never took it; sent again")
        with self.engine.begin() as connection:
            connection.execute(update(attempts).where(attempts.c.id == attempt_id, attempts.c.status == "sending")
                               .values(**values))
