"""The period a report covers: ``[since, until)``, read from ``--since`` / ``--until`` dates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select, type_coerce

from dispatcher.errors import ConfigError
from dispatcher.ledger.tables import UtcDateTime, attempts


@dataclass(frozen=True, slots=True)
class Period:
    """From ``since`` (included) to ``until`` (excluded), aware datetimes; ``zone`` is where days are counted."""

    since: datetime
    until: datetime
    zone: ZoneInfo

    def days(self) -> list[date]:
        """Every local day the period touches, in order."""
        first, last = self.since.astimezone(self.zone).date(), (self.until - timedelta(microseconds=1)).astimezone(
            self.zone).date()
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def read_day(text: str, option: str) -> date:
    """An ISO date given to ``option``; a :class:`ConfigError` naming the option otherwise."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not an ISO date like 2026-12-01") from None


def report_period(engine: Engine, zone: ZoneInfo, now: datetime, since: str | None = None,
                  until: str | None = None) -> Period:
    """The period of ``--since DAY`` (from its start) to ``--until DAY`` (to its end), days read in ``zone``.

    Without ``--since`` the period starts with the day of the ledger's first attempt, without
    ``--until`` it ends with the day of its last one: a report covers everything recorded. With
    an empty ledger both default to the day of ``now``.
    """
    first, last = _attempt_span(engine)
    start = _start_of(read_day(since, "--since") if since else _day(first or now, zone), zone)
    end = _start_of((read_day(until, "--until") if until else _day(last or now, zone)) + timedelta(days=1), zone)
    if end <= start:
        raise ConfigError(f"--until {until} is before the first day of the report, {start.date()}")
    return Period(start, end, zone)


def _day(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def _start_of(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), zone)


def _attempt_span(engine: Engine) -> tuple[datetime | None, datetime | None]:
    """The first and the last moment an attempt was created or made."""
    query = select(*(type_coerce(aggregate(column), UtcDateTime) for aggregate, column in (
        (func.min, attempts.c.created_at), (func.max, attempts.c.created_at), (func.max, attempts.c.attempted_at))))
    with engine.connect() as connection:
        first, *lasts = connection.execute(query).one()
    known: list[datetime] = [moment for moment in lasts if moment is not None]
    return first, max(known, default=None)
