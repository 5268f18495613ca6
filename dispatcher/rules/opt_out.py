"""``opt-out`` and ``bad-address``: a channel the borrower opted out of, or an address that does not work.

Sources: the account's ``opt_out_channels`` column, inbound STOP replies, Twilio
error 21610, one-click email unsubscribes (``opt-out``); invalid numbers and dead
push tokens reported by a provider, numbers a collector found to be wrong (``bad-address``).
Only that channel is blocked.
"""

from __future__ import annotations

from datetime import datetime

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import BatchHistory
from dispatcher.rules.base import Block

DEAD_ADDRESS_SOURCES = frozenset({"bad_address", "dead_token", "wrong_number"})
"""Suppression sources that mean the address does not work, rather than that the borrower said stop."""


class OptOutRule:
    """Suppresses a channel the borrower opted out of or whose address is dead."""

    rule_id = "opt-out"

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None:
        if channel.value in account.opt_out_channels:
            return Block(self.rule_id, f"the borrower opted out of {channel.value} (source)")
        found = history.suppression(channel.value, address)
        if found is None:
            return None
        rule_id = "bad-address" if found.source in DEAD_ADDRESS_SOURCES else self.rule_id
        return Block(rule_id, f"{channel.value} suppressed since {found.since:%Y-%m-%d %H:%M} UTC ({found.source})")
