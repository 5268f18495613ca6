"""Contacts per day, and how close borrowers came to the compliance caps.

A contact is what the ``cap`` rule counts (:data:`dispatcher.pipeline.history.CONTACT_STATUSES`, hand-off
attempts excluded) plus a hand-off closed with a contact outcome (a person reached the borrower).
Borrowers are told apart as the caps count them: per debt (the account) under a ``debt`` scope,
else by the borrower's key recorded on each contact (its account when none was recorded).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Engine, select

from dispatcher.channel_kind import ChannelKind
from dispatcher.ledger.handoffs import CONTACT_OUTCOMES
from dispatcher.ledger.tables import attempts, handoffs
from dispatcher.pipeline.history import CONTACT_STATUSES
from dispatcher.report.period import Period
from dispatcher.rules.policy import Policy
from dispatcher.schedule.models import Cap

PERSON = "person"
"""The channel shown for a hand-off closed with a contact outcome."""


@dataclass(frozen=True, slots=True)
class Contact:
    """One contact: when, on which channel, to whom (the key the caps count by)."""

    at: datetime
    channel: str
    borrower: str


@dataclass(frozen=True, slots=True)
class Day:
    """One local day: contacts per channel and the most any one borrower received."""

    day: date
    by_channel: dict[str, int]
    busiest: int
    """The most contacts one borrower received that day."""

    @property
    def total(self) -> int:
        return sum(self.by_channel.values())


@dataclass(frozen=True, slots=True)
class CapUse:
    """A cap in force and the most contacts one borrower received within any one of its windows."""

    label: str
    cap: Cap
    highest: int


def contacts(engine: Engine, period: Period, per_debt: bool) -> list[Contact]:
    """Every contact of the period, oldest first."""
    made = (select(attempts.c.attempted_at, attempts.c.channel, attempts.c.account_id, attempts.c.borrower_hash)
            .where(attempts.c.status.in_(sorted(CONTACT_STATUSES)), attempts.c.channel != ChannelKind.HANDOFF.value,
                   attempts.c.attempted_at >= period.since, attempts.c.attempted_at < period.until))
    closed = (select(handoffs.c.closed_at, handoffs.c.account_id, handoffs.c.borrower_hash)
              .where(handoffs.c.outcome.in_(sorted(CONTACT_OUTCOMES)), handoffs.c.closed_at >= period.since,
                     handoffs.c.closed_at < period.until))
    found: list[Contact] = []
    with engine.connect() as connection:
        for at, channel, account, borrower in connection.execution_options(yield_per=5000).execute(made):
            found.append(Contact(at, channel, account if per_debt else borrower or account))
        for at, account, borrower in connection.execute(closed):
            found.append(Contact(at, PERSON, account if per_debt else borrower or account))
    return sorted(found, key=lambda contact: contact.at)


def daily(found: Sequence[Contact], period: Period) -> list[Day]:
    """Each day of ``period`` (in its zone), empty days included."""
    per_channel: dict[date, Counter[str]] = defaultdict(Counter)
    per_borrower: dict[date, Counter[str]] = defaultdict(Counter)
    for contact in found:
        day = contact.at.astimezone(period.zone).date()
        per_channel[day][contact.channel] += 1
        per_borrower[day][contact.borrower] += 1
    return [Day(day, dict(sorted(per_channel[day].items())), max(per_borrower[day].values(), default=0))
            for day in period.days()]


def channels_of(days: Iterable[Day]) -> list[str]:
    """The channels contacts were made on, in the order of :class:`ChannelKind`, a person's last."""
    used = {channel for day in days for channel in day.by_channel}
    order = [kind.value for kind in ChannelKind] + [PERSON]
    return [channel for channel in order if channel in used] + sorted(used - set(order))


def cap_uses(found: Sequence[Contact], policy: Policy) -> list[CapUse]:
    """Each cap of ``policy`` with the most contacts one borrower received inside one rolling window of it."""
    return [CapUse(cap_label(cap), cap, _highest(found, cap)) for cap in policy.caps]


def cap_label(cap: Cap) -> str:
    """``3 a day``, ``1 sms a day``, ``10 in 7 days``."""
    what = f"{cap.channel.value} " if cap.channel else ""
    return f"{cap.max} {what}{'a day' if cap.per == timedelta(days=1) else 'in ' + _span(cap.per)}"


def daily_caps(policy: Policy) -> list[Cap]:
    """The caps whose window is one day: what a day's busiest borrower is drawn against."""
    return [cap for cap in policy.caps if cap.per == timedelta(days=1)]


def _span(per: timedelta) -> str:
    if per.days and not per.seconds:
        return f"{per.days} days"
    return f"{int(per.total_seconds() // 3600)} hours"


def _highest(found: Sequence[Contact], cap: Cap) -> int:
    """The most contacts of one borrower within any window ``(t - per, t]``."""
    times: dict[str, list[datetime]] = defaultdict(list)
    for contact in found:
        if cap.channel is None or contact.channel == cap.channel.value:
            times[contact.borrower].append(contact.at)
    return max((_densest(moments, cap.per) for moments in times.values()), default=0)


def _densest(moments: list[datetime], per: timedelta) -> int:
    """The most of the sorted ``moments`` falling in one window of length ``per`` ending at one of them."""
    return max((index + 1 - bisect_right(moments, end - per) for index, end in enumerate(moments)), default=0)

