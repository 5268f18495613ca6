"""Ladder arithmetic: local dates, days overdue, the step due, and occurrence identity.

Pure functions; the moment ``now`` is always an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from dispatcher.schedule.models import Step


@dataclass(frozen=True, slots=True)
class DueStep:
    """The step an account is in today, and which occurrence of it is due."""

    step: Step
    days_overdue: int
    occurrence: int


def local_date(now: datetime, zone: ZoneInfo) -> date:
    """The calendar date at ``now`` in ``zone`` (``now`` must be timezone-aware)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(zone).date()


def days_overdue(due_date: date, today: date) -> int:
    """Days since the first missed due date: 0 on the due date itself, 1 the day after."""
    return (today - due_date).days


def occurrence_of(step: Step, days: int) -> int | None:
    """Which occurrence of ``step`` is due on day ``days``, or ``None`` outside its window.

    A step without ``every`` has a single occurrence 0 for its whole window; with
    ``every: Nd`` occurrence k starts on day ``first + k*N``. A run that misses the
    first day of an occurrence still sends it later in that occurrence's span.
    """
    if not step.days_overdue.contains(days):
        return None
    every = step.every_days
    if every is None:
        return 0
    return (days - step.days_overdue.first) // every


def due_step(ladder: Sequence[Step], days: int) -> DueStep | None:
    """The first step whose window holds ``days`` (windows never overlap once validated)."""
    for step in ladder:
        occurrence = occurrence_of(step, days)
        if occurrence is not None:
            return DueStep(step, days, occurrence)
    return None


def reminder_key(account_id: str, due_date: date, step: str, occurrence: int) -> str:
    """The identity of a reminder. The due date is part of it, so a new delinquency starts afresh."""
    return f"{account_id}|{due_date.isoformat()}|{step}|{occurrence}"
