"""What every compliance rule is: a check that lets a reminder through or returns a :class:`Block`."""

from __future__ import annotations

from datetime import date, datetime
from typing import Protocol

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import BatchHistory
from dispatcher.records import record


@record
class Block:
    """A rule's refusal: ``defer`` until ``not_before`` or suppress for good."""

    rule_id: str
    detail: str
    defer: bool = False
    not_before: datetime | None = None


class AccountRule(Protocol):
    """A rule about the borrower as a whole (pauses, disputes)."""

    def check(self, account: Account, today: date) -> Block | None: ...


class HistoryRule(Protocol):
    """A rule about the borrower as a whole that reads the ledger's history (pauses agreed at a hand-off)."""

    def check(self, account: Account, today: date, history: BatchHistory) -> Block | None: ...


class ChannelRule(Protocol):
    """A rule about one channel of one reminder (opt-outs, windows, caps); ``history`` is the batch's."""

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None: ...
