"""``window`` and ``holiday``: contact only inside the allowed local hours, never on a listed holiday.

A borrower may be in any of several zones (the account's, the phone region's);
a moment is allowed only if it is inside the window in every one of them. A
reminder due outside is deferred to the next allowed moment, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import phonenumbers

from dispatcher import phones
from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import BatchHistory
from dispatcher.rules.base import Block
from dispatcher.schedule.models import ClockRange
from dispatcher.zones import candidate_zones, zone

SEARCH_STEP = timedelta(minutes=15)
"""Granularity of the search for the next allowed moment."""

SEARCH_LIMIT = timedelta(days=14)
"""How far ahead the search for the next allowed moment looks."""

MINUTES_PER_DAY = 24 * 60

ONE_MINUTE = timedelta(minutes=1)


def allowed(now: datetime, zones: Sequence[str], window: ClockRange) -> bool:
    """Whether ``now`` is inside ``window`` in every zone of ``zones``."""
    for name in zones:
        local = now.astimezone(zone(name))
        if not window.contains(local.hour * 60 + local.minute):
            return False
    return True


def next_allowed(now: datetime, zones: Sequence[str], window: ClockRange,
                 holiday: Callable[[datetime], bool] | None = None) -> datetime | None:
    """The first moment after ``now`` allowed in every zone (and not a holiday), on a 15-minute grid."""
    now = now.astimezone(UTC)  # step in absolute time: wall-clock steps would skip or repeat DST hours
    probe = now.replace(second=0, microsecond=0) + SEARCH_STEP - timedelta(minutes=now.minute % 15)
    end = now + SEARCH_LIMIT
    while probe <= end:
        if allowed(probe, zones, window) and not (holiday and holiday(probe)):
            return probe
        probe += SEARCH_STEP
    return None


@lru_cache(maxsize=16384)
def _phone_region(phone: str) -> str | None:
    number = phones.parse(phone)
    if isinstance(number, str):
        return None
    region = phonenumbers.region_code_for_number(number)
    return str(region) if region else None


class Holidays:
    """Public holidays by region; a borrower's region is the phone number's, else the default."""

    def __init__(self, days: Mapping[str, frozenset[date]], default_region: str | None) -> None:
        self.days = days
        self.default_region = default_region

    def region_of(self, account: Account) -> str | None:
        if self.days and account.phone:
            return _phone_region(account.phone) or self.default_region
        return self.default_region

    def predicate(self, region: str | None, zones: Sequence[str]) -> Callable[[datetime], bool] | None:
        """Whether a moment falls on a holiday of ``region`` in any of ``zones`` (None: no holidays there)."""
        days = self.days.get(region or "")
        if not days:
            return None
        return lambda moment: any(moment.astimezone(zone(z)).date() in days for z in zones)


class _Decided:
    """A rule's answers by (minute, zones, holiday region): planning checks one moment for thousands of borrowers
    who share a few zones, and the re-check at sending a new moment for each message, on the real clock.

    An answer is the same for every moment of a minute: the window is in whole minutes, zones are whole minutes off
    UTC, holidays are whole days, :func:`next_allowed` steps from the minute and a deferral's detail shows hours and
    minutes. So moments are kept by their minute, and a run's re-checks share them.
    """

    LIMIT = 4096
    """Answers kept; all are forgotten when there are more (a long-lived process checks ever new minutes)."""

    def __init__(self, decide: Callable[[datetime, tuple[str, ...], str | None], Block | None]) -> None:
        self._decide = decide
        self._answers: dict[tuple[datetime, tuple[str, ...], str | None], Block | None] = {}
        self._minute = (datetime.min.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC))  # [start, end)

    def get(self, now: datetime, zones: tuple[str, ...], region: str | None) -> Block | None:
        start, end = self._minute
        if not start <= now < end:  # on the real clock most checks fall in the minute of the one before
            start = now.astimezone(UTC).replace(second=0, microsecond=0)  # in UTC: compared by the absolute moment
            self._minute = (start, start + ONE_MINUTE)
        key = (start, zones, region)
        try:
            return self._answers[key]
        except KeyError:
            if len(self._answers) > self.LIMIT:
                self._answers.clear()
            answer = self._answers[key] = self._decide(start, zones, region)
            return answer


class WindowRule:
    """Defers contact outside the local contact window (``window``), to the next allowed non-holiday moment."""

    rule_id = "window"

    def __init__(self, window: ClockRange, default_zone: str, holidays: Holidays) -> None:
        self.window = window
        self.default_zone = default_zone
        self.holidays = holidays
        self._decided = _Decided(self._decide)

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None:
        if self.window.start == 0 and self.window.end == MINUTES_PER_DAY:  # any time of day, in any zone
            return None
        return self._decided.get(now, candidate_zones(account, self.default_zone), self.holidays.region_of(account))

    def _decide(self, now: datetime, zones: tuple[str, ...], region: str | None) -> Block | None:
        if allowed(now, zones, self.window):
            return None
        local = ", ".join(f"{now.astimezone(zone(z)):%H:%M} {z}" for z in zones)
        return Block(self.rule_id, f"outside the contact window {self.window} ({local})", defer=True,
                     not_before=next_allowed(now, zones, self.window, self.holidays.predicate(region, zones)))


class HolidayRule:
    """Defers contact on the borrower's public holidays (``holiday``) to the next allowed working moment."""

    rule_id = "holiday"

    def __init__(self, holidays: Holidays, window: ClockRange, default_zone: str) -> None:
        self.holidays = holidays
        self.window = window
        self.default_zone = default_zone
        self._decided = _Decided(self._decide)

    def check(self, account: Account, channel: ChannelKind, address: str, now: datetime,
              history: BatchHistory) -> Block | None:
        if not self.holidays.days:
            return None
        return self._decided.get(now, candidate_zones(account, self.default_zone), self.holidays.region_of(account))

    def _decide(self, now: datetime, zones: tuple[str, ...], region: str | None) -> Block | None:
        on_holiday = self.holidays.predicate(region, zones)
        if on_holiday is None or not on_holiday(now):
            return None
        return Block(self.rule_id, f"public holiday in {region}", defer=True,
                     not_before=next_allowed(now, zones, self.window, on_holiday))
