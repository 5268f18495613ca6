"""Properties of the window and cap arithmetic, over random instants, zones, windows and contact histories."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.pipeline.history import BatchHistory, Contact
from dispatcher.rules.cap import CapRule
from dispatcher.rules.window import SEARCH_LIMIT, SEARCH_STEP, allowed, next_allowed
from dispatcher.schedule.models import Cap, ClockRange

ZONES = ("Pacific/Kiritimati", "Pacific/Pago_Pago", "America/New_York", "Europe/London", "Asia/Kolkata",
         "Australia/Lord_Howe", "Asia/Shanghai", "Asia/Kathmandu")
"""UTC+14 and UTC-11 (25 hours apart), two DST zones, +05:30, Lord Howe's half-hour DST, +08:00, +05:45."""

DST_ZONES = ("America/New_York", "Europe/London", "Australia/Lord_Howe")
START, END = datetime(2020, 1, 1, tzinfo=UTC), datetime(2035, 12, 31, tzinfo=UTC)
PROPERTIES = settings(max_examples=60, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def minute_of_day(moment: datetime, name: str) -> int:
    local = moment.astimezone(zone(name))
    return local.hour * 60 + local.minute


def expected_allowed(moment: datetime, zones: Sequence[str], window: ClockRange) -> bool:
    return all(window.start <= minute_of_day(moment, z) < window.end for z in zones)


def transitions(name: str) -> list[datetime]:
    """Every UTC instant from 2020 to 2035 at which ``name`` changes its offset (found day by day, then bisected)."""
    tz = zone(name)
    found: list[datetime] = []
    day = START
    while day < END:
        nxt = day + timedelta(days=1)
        if day.astimezone(tz).utcoffset() != nxt.astimezone(tz).utcoffset():
            low, high = day, nxt
            while high - low > timedelta(minutes=1):
                mid = low + (high - low) / 2
                if mid.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
                    low = mid
                else:
                    high = mid
            found.append(high)
        day = nxt
    return found


TRANSITIONS = sorted(t for name in DST_ZONES for t in transitions(name))

instants = st.datetimes(min_value=START.replace(tzinfo=None), max_value=END.replace(tzinfo=None),
                        timezones=st.just(UTC))
near_transitions = st.builds(lambda t, minutes, seconds: t + timedelta(minutes=minutes, seconds=seconds),
                             st.sampled_from(TRANSITIONS), st.integers(-36 * 60, 36 * 60), st.integers(0, 59))
moments = st.one_of(instants, near_transitions)
zone_lists = st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True)


@st.composite
def windows(draw: st.DrawFn) -> ClockRange:
    """Any window within a day; half of them on a quarter-hour grid like real configurations."""
    if draw(st.booleans()):
        start = draw(st.integers(0, 95)) * 15
        end = draw(st.integers(start // 15 + 1, 96)) * 15
    else:
        start = draw(st.integers(0, 24 * 60 - 1))
        end = draw(st.integers(start + 1, 24 * 60))
    return ClockRange(start, end)


def test_transitions_were_found() -> None:
    """New York and London change twice a year, Lord Howe by half an hour: the DST strategy is not empty."""
    assert len(TRANSITIONS) >= 3 * 2 * 15
    lord_howe = [t for t in transitions("Australia/Lord_Howe") if t.year == 2026]
    offsets = {(t - timedelta(minutes=1)).astimezone(zone("Australia/Lord_Howe")).utcoffset() for t in lord_howe}
    assert offsets == {timedelta(hours=10, minutes=30), timedelta(hours=11)}


# allowed ---------------------------------------------------------------------------------------------------------
@PROPERTIES
@given(moments, zone_lists, windows())
def test_allowed_iff_every_zones_local_minute_is_in_the_window(now: datetime, zones: list[str],
                                                               window: ClockRange) -> None:
    assert allowed(now, zones, window) == expected_allowed(now, zones, window)


@PROPERTIES
@given(moments, st.sampled_from(ZONES), st.sampled_from(ZONES))
def test_allowed_in_a_pair_of_zones_is_allowed_in_each(now: datetime, first: str, second: str) -> None:
    window = ClockRange(8 * 60, 21 * 60)
    assert allowed(now, [first, second], window) == (allowed(now, [first], window) and
                                                     allowed(now, [second], window))


# next_allowed ----------------------------------------------------------------------------------------------------
def grid_after(now: datetime) -> datetime:
    """The first quarter-hour point of UTC strictly after ``now``."""
    utc_now = now.astimezone(UTC)
    floor = utc_now.replace(minute=utc_now.minute - utc_now.minute % 15, second=0, microsecond=0)
    return floor + SEARCH_STEP


def check_next_allowed(now: datetime, zones: Sequence[str], window: ClockRange) -> None:
    found = next_allowed(now, zones, window)
    probe = grid_after(now)
    if found is None:
        # nothing in the search horizon: every grid point of it is refused
        while probe <= now + SEARCH_LIMIT:
            assert not expected_allowed(probe, zones, window), probe
            probe += SEARCH_STEP
        return
    assert found > now
    assert expected_allowed(found, zones, window)
    found_utc = found.astimezone(UTC)
    assert (found_utc.minute % 15, found_utc.second, found_utc.microsecond) == (0, 0, 0)
    assert found - now <= SEARCH_LIMIT + SEARCH_STEP
    while probe < found:  # no earlier quarter hour is allowed
        assert not expected_allowed(probe, zones, window), f"{probe} is allowed and earlier than {found}"
        probe += SEARCH_STEP
    assert probe == found


@PROPERTIES
@given(moments, zone_lists, windows())
@example(datetime(2026, 3, 10, 14, 0, tzinfo=UTC), ["Asia/Shanghai"], ClockRange(480, 1260))
@example(datetime(2026, 12, 1, 5, 0, tzinfo=UTC), ["America/New_York", "Asia/Shanghai"], ClockRange(480, 1260))
@example(datetime(2026, 6, 1, 0, 0, tzinfo=UTC), ["Pacific/Kiritimati", "Pacific/Pago_Pago"], ClockRange(480, 1260))
@example(datetime(2026, 6, 1, 0, 0, tzinfo=UTC), ["Pacific/Kiritimati", "Pacific/Pago_Pago"], ClockRange(480, 510))
@example(datetime(2026, 4, 4, 14, 50, tzinfo=UTC), ["Australia/Lord_Howe"], ClockRange(90, 120))
def test_next_allowed_is_the_first_allowed_quarter_hour_after_now(now: datetime, zones: list[str],
                                                                  window: ClockRange) -> None:
    check_next_allowed(now, zones, window)


@PROPERTIES
@given(near_transitions, st.sampled_from(DST_ZONES), zone_lists, windows())
def test_next_allowed_over_dst_transitions(now: datetime, dst_zone: str, zones: list[str],
                                           window: ClockRange) -> None:
    check_next_allowed(now, [dst_zone, *(z for z in zones if z != dst_zone)], window)


@PROPERTIES
@given(moments, zone_lists)
def test_next_allowed_with_the_whole_day_is_the_next_quarter_hour(now: datetime, zones: list[str]) -> None:
    assert next_allowed(now, zones, ClockRange(0, 24 * 60)) == grid_after(now)


def test_next_allowed_never_when_the_zones_never_share_the_window() -> None:
    """Kiritimati is 25 hours ahead of Pago Pago: a half-hour window at 08:00 never holds in both."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert next_allowed(now, ["Pacific/Kiritimati", "Pacific/Pago_Pago"], ClockRange(480, 510)) is None
    check_next_allowed(now, ["Pacific/Kiritimati", "Pacific/Pago_Pago"], ClockRange(480, 510))


def test_next_allowed_honours_a_holiday_predicate() -> None:
    shanghai = ["Asia/Shanghai"]
    holidays = {date(2026, 10, 1), date(2026, 10, 2)}
    found = next_allowed(datetime(2026, 9, 30, 14, tzinfo=UTC), shanghai, ClockRange(480, 1260),
                         lambda m: m.astimezone(zone("Asia/Shanghai")).date() in holidays)
    assert found == datetime(2026, 10, 3, 0, tzinfo=UTC)


def test_next_allowed_is_the_same_instant_whatever_the_zone_of_now() -> None:
    """`dispatcher plan --at 2026-11-01T00:50` in a New York schedule passes a ZoneInfo-aware moment."""
    utc_now = datetime(2026, 11, 1, 4, 50, tzinfo=UTC)
    local_now = utc_now.astimezone(zone("America/New_York"))
    window = ClockRange(6 * 60, 6 * 60 + 30)  # London 06:00-06:30 = 01:00-01:30 EST, the second 01:00 of that night
    expected = next_allowed(utc_now, ["Europe/London"], window)
    assert expected == datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    assert next_allowed(local_now, ["Europe/London"], window) == expected


# cap -------------------------------------------------------------------------------------------------------------
ACCOUNT = Account(
    account_id="L1", name="王伟", phone="+8613812345678", email="wang@example.cn", push_token="fcm:token",
    locale="zh-CN", timezone="Asia/Shanghai", currency="CNY", overdue_amount=Decimal("500.00"),
    due_date=date(2026, 3, 1), deadline=None, repayment_account="6222 0212 1234 5678",
)
NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)
CHANNELS = tuple(ChannelKind)


def history_of(contacts: Sequence[tuple[int, ChannelKind]], now: datetime = NOW) -> BatchHistory:
    """Contacts ``seconds`` before ``now`` on a channel."""
    history = BatchHistory()
    for n, (seconds, kind) in enumerate(contacts, start=1):
        history.add_contact(Contact(n, ACCOUNT.account_id, kind.value, None, now - timedelta(seconds=seconds)))
    return history


def counted(history: BatchHistory, cap: Cap, at: datetime) -> int:
    """Contacts in (at - per, at] on the cap's channel (any channel when it has none)."""
    return sum(1 for c in history.by_account.get(ACCOUNT.account_id, [])
               if at - cap.per < c.at <= at and (cap.channel is None or c.channel == cap.channel.value))


caps = st.builds(Cap, max=st.integers(1, 6), per=st.integers(1, 14 * 24).map(lambda h: timedelta(hours=h)),
                 channel=st.sampled_from([None, ChannelKind.SMS]))
contact_lists = st.lists(st.tuples(st.integers(0, 16 * 86400), st.sampled_from(CHANNELS)), max_size=14)


@PROPERTIES
@given(contact_lists, caps, st.sampled_from(CHANNELS), st.booleans())
def test_cap_blocks_iff_the_window_holds_max_contacts(contacts: list[tuple[int, ChannelKind]], cap: Cap,
                                                      kind: ChannelKind, per_debt: bool) -> None:
    history = history_of(contacts)
    rule = CapRule([cap], per_debt=per_debt)
    block = rule.check(ACCOUNT, kind, "+8613812345678", NOW, history)
    applies = cap.channel is None or cap.channel is kind
    assert (block is not None) == (applies and counted(history, cap, NOW) >= cap.max)
    if block is None:
        return
    assert (block.rule_id, block.defer) == ("cap", True)
    assert block.not_before is not None and block.not_before > NOW - cap.per
    # at not_before the count is one below the max (one fewer with distinct times), so a run then goes ahead
    at = block.not_before
    times = [c.at for c in history.by_account[ACCOUNT.account_id]]
    distinct = len(set(times)) == len(times)
    assert counted(history, cap, at) <= cap.max - 1
    if distinct:
        assert counted(history, cap, at) == cap.max - 1
    assert rule.check(ACCOUNT, kind, "+8613812345678", at, history) is None
    # ... and not a moment earlier
    if at - timedelta(microseconds=1) >= NOW:
        assert rule.check(ACCOUNT, kind, "+8613812345678", at - timedelta(microseconds=1), history) is not None


@PROPERTIES
@given(contact_lists, st.lists(caps, min_size=1, max_size=3))
def test_cap_several_caps_block_iff_one_does(contacts: list[tuple[int, ChannelKind]], several: list[Cap]) -> None:
    history = history_of(contacts)
    together = CapRule(several, per_debt=True).check(ACCOUNT, ChannelKind.SMS, "x", NOW, history)
    alone = [CapRule([cap], per_debt=True).check(ACCOUNT, ChannelKind.SMS, "x", NOW, history) for cap in several]
    assert (together is None) == all(b is None for b in alone)
    if together is not None:
        assert together == next(b for b in alone if b is not None)  # the first cap that refuses


def test_cap_a_contact_exactly_per_ago_has_left_the_window() -> None:
    cap = Cap(max=1, per=timedelta(days=1))
    history = history_of([(86400, ChannelKind.SMS)])
    assert CapRule([cap], per_debt=True).check(ACCOUNT, ChannelKind.SMS, "x", NOW, history) is None
    history = history_of([(86399, ChannelKind.SMS)])
    block = CapRule([cap], per_debt=True).check(ACCOUNT, ChannelKind.SMS, "x", NOW, history)
    assert block is not None and block.not_before == NOW + timedelta(seconds=1)


def test_cap_does_not_count_contacts_after_now() -> None:
    cap = Cap(max=1, per=timedelta(days=1))
    later = BatchHistory()
    later.add_contact(Contact(1, ACCOUNT.account_id, "sms", None, NOW + timedelta(hours=2)))
    assert CapRule([cap], per_debt=True).check(ACCOUNT, ChannelKind.SMS, "x", NOW, later) is None
