"""``cap``: at most N contacts per rolling window, across channels or on one channel.

Contacts are counted from the ledger (plus what this run already planned), per
borrower (every account sharing the borrower's phone, email or push token) or
per debt (this account only), as the profile says. Over a cap, the reminder is
deferred until the oldest counted contact leaves the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import BatchHistory, Contact
from dispatcher.rules.base import Block
from dispatcher.schedule.models import Cap


def _span(cap: Cap) -> str:
    days = cap.per.days
    return f"{days} day(s)" if days and not cap.per.seconds else f"{int(cap.per.total_seconds() // 3600)} hour(s)"


class CapRule:
    """Defers a contact that would exceed one of ``caps``."""

    rule_id = "cap"

    def __init__(self, caps: Sequence[Cap], per_debt: bool) -> None:
        self.caps = tuple(caps)
        self.per_debt = per_debt

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None:
        if not self.caps:
            return None
        contacts = history.contacts_of(account, per_debt=self.per_debt)
        for cap in self.caps:
            if cap.channel is not None and cap.channel is not channel:
                continue
            block = self._over(cap, contacts, now)
            if block is not None:
                return block
        return None

    def _over(self, cap: Cap, contacts: Sequence[Contact], now: datetime) -> Block | None:
        since = now - cap.per
        counted = sorted(c.at for c in contacts
                         if since < c.at <= now and (cap.channel is None or c.channel == cap.channel.value))
        if len(counted) < cap.max:
            return None
        what = f"{cap.channel.value} messages" if cap.channel else "contacts"
        scope = "this debt" if self.per_debt else "this borrower"
        frees_at = counted[len(counted) - cap.max] + cap.per if cap.max else None
        return Block(self.rule_id, f"{len(counted)} {what} to {scope} in the last {_span(cap)} (max {cap.max})",
                     defer=cap.max > 0, not_before=frees_at)
