"""Ladder arithmetic: local dates, days overdue, the step due, and occurrence identity.

Pure functions; the moment ``now`` is always an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dispatcher.accounts import Account
from dispatcher.pipeline.conditions import mismatch
from dispatcher.records import record
from dispatcher.schedule.models import Step


@record
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
    """Days since the first missed due date: 0 on the due date itself, 1 the day after, -3 three days before."""
    return (today - due_date).days


def occurrence_of(step: Step, days: int) -> int | None:
    """Which occurrence of ``step`` is due on day ``days``, or ``None`` outside its window.

    A step without ``every`` has a single occurrence 0 for its whole window; with
    ``every: Nd`` occurrence k starts on day ``first + k*N``. A run that misses the
    first day of an occurrence still sends it later in that occurrence's span. An open-ended step ends
    where its ``until`` says: after that many occurrences, or after that day.
    """
    if not step.days_overdue.contains(days):
        return None
    last = step.last_day
    if last is not None and days > last:
        return None
    every = step.every_days
    if every is None:
        return 0
    occurrence = (days - step.days_overdue.first) // every
    until = step.until.occurrences if step.until is not None else None
    return occurrence if until is None or occurrence < until else None


def due_step(ladder: Sequence[Step], days: int, account: Account | None = None) -> DueStep | None:
    """The first step whose window holds ``days`` and whose ``when`` holds for ``account``.

    Windows of steps without ``when`` never overlap once validated; a step with ``when`` may share
    days with the steps after it, which then take the accounts it does not match.
    """
    for step in ladder:
        occurrence = occurrence_of(step, days)
        if occurrence is not None and (account is None or mismatch(step.when, account) is None):
            return DueStep(step, days, occurrence)
    return None


def why_no_step(ladder: Sequence[Step], days: int, account: Account) -> str:
    """Why no step is due on day ``days`` for ``account``: the steps whose window holds it and the condition
    each one missed, or that no window holds the day."""
    missed = [f"{step.step} needs {reason}" for step in ladder
              if occurrence_of(step, days) is not None and (reason := mismatch(step.when, account)) is not None]
    if missed:
        return f"day {days}: " + "; ".join(missed)
    ended = [step.step for step in ladder if step.days_overdue.contains(days)]
    if ended:
        return f"day {days}: step {ended[0]} has ended (until)"
    return f"no step of the ladder covers day {days}"


def reminder_key(account_id: str, due_date: date, step: str, occurrence: int) -> str:
    """The identity of a reminder. The due date is part of it, so a new delinquency starts afresh."""
    return f"{account_id}|{due_date.isoformat()}|{step}|{occurrence}"


def pay_by(account: Account, step: Step, today: date, days: int) -> date:
    """The pay-by date shown: the account's deadline, else the due date itself for a reminder on or before it,
    else ``deadline_days`` after today."""
    if account.deadline is not None:
        return account.deadline
    if days <= 0:
        return account.due_date
    return today + timedelta(days=step.deadline_days)
