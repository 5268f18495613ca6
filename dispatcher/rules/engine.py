"""The compliance engine: run when a reminder is planned and again just before it is sent.

A rule either lets a reminder through or returns a :class:`Block` naming its rule id,
whether it defers (try again later) or suppresses (never for this occurrence), and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from dispatcher.accounts import Account
from dispatcher.channels.base import ChannelKind
from dispatcher.history import BatchHistory

DEAD_ADDRESS_SOURCES = frozenset({"bad_address", "dead_token"})
"""Suppression sources that mean the address does not work, rather than that the borrower said stop."""


@dataclass(frozen=True, slots=True)
class Block:
    """A rule's refusal: ``defer`` until ``not_before`` or suppress for good."""

    rule_id: str
    detail: str
    defer: bool = False
    not_before: datetime | None = None


class AccountRule(Protocol):
    """A rule about the borrower as a whole (pauses, disputes)."""

    def check(self, account: Account, today: date) -> Block | None: ...


class ChannelRule(Protocol):
    """A rule about one channel of one reminder (opt-outs, windows, caps); ``history`` is the batch's."""

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None: ...


class PauseRule:
    """``pause``: do-not-contact, dispute or a promise to pay stop all reminders for the account."""

    rule_id = "pause"

    def check(self, account: Account, today: date) -> Block | None:
        if account.do_not_contact:
            return Block(self.rule_id, f"do not contact: {account.do_not_contact}")
        if account.dispute:
            return Block(self.rule_id, "the borrower disputes the debt")
        if account.promise_to_pay_until is not None and today <= account.promise_to_pay_until:
            return Block(self.rule_id, f"promise to pay until {account.promise_to_pay_until.isoformat()}")
        return None


class OptOutRule:
    """``opt-out``: a channel the borrower opted out of (source flag, STOP, 21610, unsubscribe) is never used.

    Addresses found dead by a provider (invalid number, unregistered token) are
    suppressed the same way under the rule id ``bad-address``.
    """

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


@dataclass(frozen=True)
class RuleEngine:
    """Runs the account rules, then the channel rules, in order; the first refusal wins."""

    account_rules: Sequence[AccountRule]
    channel_rules: Sequence[ChannelRule]

    def check_account(self, account: Account, today: date) -> Block | None:
        for rule in self.account_rules:
            block = rule.check(account, today)
            if block is not None:
                return block
        return None

    def check_channel(self, account: Account, channel: ChannelKind, address: str, now: datetime,
                      history: BatchHistory) -> Block | None:
        for rule in self.channel_rules:
            block = rule.check(account, channel, address, now, history)
            if block is not None:
                return block
        return None


def default_engine() -> RuleEngine:
    """The rules every profile applies."""
    return RuleEngine(account_rules=[PauseRule()], channel_rules=[OptOutRule()])
