"""Ladder arithmetic: days overdue in the borrower's local date, windows, occurrences, reminder keys."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.ladder import days_overdue, due_step, local_date, occurrence_of, reminder_key
from dispatcher.schedule.models import Step

NEW_YORK = ZoneInfo("America/New_York")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14
PAGO_PAGO = ZoneInfo("Pacific/Pago_Pago")  # UTC-11


def step(name: str, window: str, every: str | None = None) -> Step:
    return Step.model_validate({"step": name, "days_overdue": window, "every": every, "channels": ["sms"]})


LADDER = [step("gentle", "1-3"), step("firm", "4-14", "3d"), step("final", "15-", "7d")]


@pytest.mark.parametrize(
    ("due", "today", "expected"),
    [
        (date(2026, 1, 31), date(2026, 1, 31), 0),
        (date(2026, 1, 31), date(2026, 2, 1), 1),
        (date(2026, 1, 31), date(2026, 3, 1), 29),
        (date(2026, 2, 28), date(2026, 3, 1), 1),
        (date(2028, 2, 28), date(2028, 2, 29), 1),
        (date(2028, 2, 29), date(2028, 3, 1), 1),
        (date(2028, 2, 29), date(2029, 2, 28), 365),
        (date(2026, 12, 31), date(2027, 1, 1), 1),
        (date(2026, 3, 10), date(2026, 3, 9), -1),
    ],
)
def test_days_overdue_across_month_and_year_ends(due: date, today: date, expected: int) -> None:
    assert days_overdue(due, today) == expected


def test_local_date_needs_an_aware_moment() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        local_date(datetime(2026, 1, 1, 12), NEW_YORK)


def test_the_date_line_gives_different_days_at_the_same_instant() -> None:
    now = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    due = date(2026, 1, 1)
    east, west = local_date(now, KIRITIMATI), local_date(now, PAGO_PAGO)
    assert (east, west) == (date(2026, 1, 6), date(2026, 1, 4))
    assert (days_overdue(due, east), days_overdue(due, west)) == (5, 3)
    east_step, west_step = due_step(LADDER, 5), due_step(LADDER, 3)
    assert east_step is not None and west_step is not None
    assert (east_step.step.step, west_step.step.step) == ("firm", "gentle")


@pytest.mark.parametrize("first", [date(2026, 3, 4), date(2026, 10, 28)], ids=["spring-forward", "fall-back"])
def test_a_daily_run_at_nine_local_counts_each_day_once_across_dst(first: date) -> None:
    due = first - timedelta(days=1)
    counted = []
    for offset in range(10):
        day = first + timedelta(days=offset)
        now = datetime(day.year, day.month, day.day, 9, tzinfo=NEW_YORK).astimezone(UTC)
        counted.append(days_overdue(due, local_date(now, NEW_YORK)))
    assert counted == list(range(1, 11))


def test_the_dst_changes_fall_inside_those_runs() -> None:
    offsets = {datetime(2026, 3, d, 9, tzinfo=NEW_YORK).utcoffset() for d in (7, 9)}
    assert offsets == {timedelta(hours=-5), timedelta(hours=-4)}
    offsets = {datetime(2026, 10, 31, 9, tzinfo=NEW_YORK).utcoffset(), datetime(2026, 11, 2, 9, tzinfo=NEW_YORK)
               .utcoffset()}
    assert offsets == {timedelta(hours=-4), timedelta(hours=-5)}


def test_the_hour_around_midnight_on_a_dst_day_belongs_to_the_local_date() -> None:
    # 2026-11-01 00:30 EDT and 23:30 EST of the same day
    assert local_date(datetime(2026, 11, 1, 4, 30, tzinfo=UTC), NEW_YORK) == date(2026, 11, 1)
    assert local_date(datetime(2026, 11, 2, 4, 30, tzinfo=UTC), NEW_YORK) == date(2026, 11, 1)
    assert local_date(datetime(2026, 11, 2, 5, 30, tzinfo=UTC), NEW_YORK) == date(2026, 11, 2)


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("1-3", [1, 2, 3], [0, 4, 15]),
        ("15-", [15, 16, 400], [0, 1, 14]),
        ("7", [7], [6, 8]),
    ],
)
def test_windows(window: str, inside: list[int], outside: list[int]) -> None:
    once = step("s", window)
    assert [occurrence_of(once, d) for d in inside] == [0] * len(inside)
    assert [occurrence_of(once, d) for d in outside] == [None] * len(outside)


@pytest.mark.parametrize(
    ("days", "occurrence"),
    [(3, None), (4, 0), (5, 0), (6, 0), (7, 1), (9, 1), (10, 2), (12, 2), (13, 3), (14, 3), (15, None)],
)
def test_every_three_days_occurrences(days: int, occurrence: int | None) -> None:
    assert occurrence_of(step("firm", "4-14", "3d"), days) == occurrence


def test_every_week_in_an_open_window() -> None:
    final = step("final", "15-", "1w")
    assert [occurrence_of(final, d) for d in (15, 21, 22, 28, 29, 85)] == [0, 0, 1, 1, 2, 10]


@pytest.mark.parametrize(
    ("days", "name", "occurrence"),
    [(0, None, None), (1, "gentle", 0), (3, "gentle", 0), (4, "firm", 0), (7, "firm", 1), (14, "firm", 3),
     (15, "final", 0), (22, "final", 1), (100, "final", 12)],
)
def test_due_step(days: int, name: str | None, occurrence: int | None) -> None:
    due = due_step(LADDER, days)
    if name is None:
        assert due is None
        return
    assert due is not None
    assert (due.step.step, due.days_overdue, due.occurrence) == (name, days, occurrence)


def test_due_step_in_a_gap_of_the_ladder() -> None:
    gappy = [step("gentle", "1-3"), step("final", "10-")]
    assert due_step(gappy, 5) is None
    found = due_step(gappy, 10)
    assert found is not None and found.step.step == "final"


def test_reminder_key_is_stable_and_distinguishes_its_parts() -> None:
    key = reminder_key("L1", date(2026, 1, 31), "firm", 2)
    assert key == reminder_key("L1", date(2026, 1, 31), "firm", 2) == "L1|2026-01-31|firm|2"
    others = {
        reminder_key("L2", date(2026, 1, 31), "firm", 2),
        reminder_key("L1", date(2026, 2, 28), "firm", 2),
        reminder_key("L1", date(2026, 1, 31), "final", 2),
        reminder_key("L1", date(2026, 1, 31), "firm", 3),
    }
    assert key not in others and len(others) == 4


def test_the_key_is_the_same_for_every_day_of_one_occurrence() -> None:
    firm = LADDER[1]
    keys = {d: reminder_key("L1", date(2026, 1, 1), "firm", occurrence_of(firm, d) or 0) for d in range(4, 15)}
    assert keys[4] == keys[5] == keys[6] != keys[7]
    assert len(set(keys.values())) == 4


FIXED_ZONES = [ZoneInfo("UTC"), *(ZoneInfo(f"Etc/GMT{h:+d}") for h in range(-14, 13) if h)]


@given(
    now=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from(FIXED_ZONES),
    due=st.dates(min_value=date(1989, 1, 1), max_value=date(2101, 1, 1)),
)
def test_a_day_later_in_a_fixed_offset_zone_is_one_more_day_overdue(now: datetime, zone: ZoneInfo, due: date) -> None:
    before = days_overdue(due, local_date(now, zone))
    after = days_overdue(due, local_date(now + timedelta(hours=24), zone))
    assert after == before + 1
