"""Reconciling attempts left ``sending`` by a crash: did the message go out or not?

An attempt is ``sending`` from just before the provider call until its outcome is
recorded. One that stays so longer than ``DISPATCHER_RECONCILE_AFTER`` was cut off
by a crash, and nobody knows whether the provider took it. It is never blindly
sent again:

* SMS through Twilio: the provider is asked for messages to that number since the
  attempt began. Found → ``sent`` with its SID; not found → ``planned`` again, so
  the next pass delivers it.
* other channels: ``DISPATCHER_UNKNOWN_OUTCOME`` decides: ``mark-unknown`` (default:
  ``unknown``, visible in ``dispatcher attempts`` and the metrics) or ``resend``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from dispatcher.accounts import Account
from dispatcher.channels.base import ChannelKind
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.errors import DeliveryError
from dispatcher.ledger.tables import attempts
from dispatcher.masking import address_hash
from dispatcher.source import AccountSource

log = logging.getLogger(__name__)

LOOKUP_SLACK = timedelta(minutes=1)
"""Messages created this long before the attempt's start still count (clock skew)."""


@dataclass
class ReconcileCounts:
    found_sent: int = 0
    resent: int = 0
    unknown: int = 0


class Reconciler:
    """Settles stale ``sending`` attempts, asking Twilio where it can."""

    def __init__(self, engine: Engine, source: AccountSource, twilio: TwilioSmsChannel | None,
                 unknown_outcome: str) -> None:
        self.engine = engine
        self.source = source
        self.twilio = twilio
        self.unknown_outcome = unknown_outcome

    def stale(self, older_than: datetime, limit: int = 5000) -> list[dict[str, Any]]:
        query = (select(attempts.c.id, attempts.c.account_id, attempts.c.channel, attempts.c.address_hash,
                        attempts.c.attempted_at)
                 .where(attempts.c.status == "sending", attempts.c.attempted_at < older_than)
                 .order_by(attempts.c.id).limit(limit))
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    async def reconcile(self, older_than: datetime, now: datetime) -> ReconcileCounts:
        counts = ReconcileCounts()
        rows = self.stale(older_than)
        if not rows:
            return counts
        accounts = self._accounts(rows)
        known_sids: set[str] = set()
        for row in rows:
            row["older_than"] = older_than
            status, sid = await self._settle(row, accounts.get(row["account_id"]), known_sids)
            self._set(row["id"], status, sid, now)
            if sid:
                known_sids.add(sid)
            counts.found_sent += status == "sent"
            counts.resent += status == "planned"
            counts.unknown += status == "unknown"
        log.warning("reconciled %d attempt(s) left sending by a crash: %d found sent, %d to send again, "
                    "%d unknown", len(rows), counts.found_sent, counts.resent, counts.unknown)
        return counts

    def _accounts(self, rows: Sequence[dict[str, Any]]) -> dict[str, Account]:
        if self.twilio is None or not any(r["channel"] == ChannelKind.SMS.value for r in rows):
            return {}
        fresh = self.source.fetch(sorted({r["account_id"] for r in rows if r["channel"] == "sms"}))
        return {key: value for key, value in fresh.items() if isinstance(value, Account)}

    async def _settle(self, row: dict[str, Any], account: Account | None,
                      known: set[str]) -> tuple[str, str | None]:
        phone = account.phone if account else None
        if row["channel"] == "sms" and self.twilio is not None and phone and \
                address_hash(phone) == row["address_hash"]:
            if self._in_flight_to(row):  # its message could be mistaken for this one's: decide next time
                return "sending", None
            try:
                sids = await self.twilio.find_sent(phone, row["attempted_at"] - LOOKUP_SLACK)
            except DeliveryError as exc:
                log.warning("attempt %s: cannot ask Twilio (%s); left for the next reconciliation", row["id"], exc)
                return "sending", None
            fresh = [sid for sid in sids if sid not in known and not self._recorded(sid)]
            return ("sent", fresh[0]) if fresh else ("planned", None)
        return ("planned", None) if self.unknown_outcome == "resend" else ("unknown", None)

    def _in_flight_to(self, row: dict[str, Any]) -> bool:
        """Whether another attempt to the same number is being sent right now (not stale)."""
        query = select(attempts.c.id).where(
            attempts.c.address_hash == row["address_hash"], attempts.c.status == "sending",
            attempts.c.id != row["id"], attempts.c.attempted_at >= row["older_than"])
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
            values.update(provider_message_id=sid, detail="reconciled: found at the provider after a crash")
        elif status == "unknown":
            values.update(error_code="outcome_unknown", detail="cut off by a crash; not resent (policy)")
        else:
            values.update(attempted_at=None, detail="cut off by a crash before the provider took it; resent")
        with self.engine.begin() as connection:
            connection.execute(update(attempts).where(attempts.c.id == attempt_id, attempts.c.status == "sending")
                               .values(**values))
