"""Measures read from the ledger: cure rates, the promise-kept rate and variant comparisons.

Definitions (README "Measures"):

* a delinquency (account, due date) is *reminded* under a key (step, channel, bucket or
  ``step/variant``) when an attempt of that key was ``sent`` or ``delivered`` in
  ``[since, until)``; its first such attempt is its reminder time t;
* it is *cured within N days* when its ``cured_at`` falls in ``[t, t + N days)``;
* cure rate = cured / reminded, with a Wilson 95 % interval;
* variants are compared with a pooled two-proportion z-test, two-sided.

The statistics use :mod:`math` only (``erfc`` for the normal tail).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, and_, func, select, type_coerce

from dispatcher.ledger.tables import UtcDateTime, attempts, delinquencies, handoffs, reminders

Key = Literal["step", "channel", "bucket", "variant"]

REACHED = ("sent", "delivered")
"""Attempt statuses that count as a reminder given (a message handed to the provider, or a work item opened)."""

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95 % interval."""

MIN_REMINDED = 30
"""Reminded delinquencies each side needs before a comparison may be called significant."""


@dataclass(frozen=True, slots=True)
class Rate:
    """Cured of reminded delinquencies under one key, with the Wilson 95 % interval of the share."""

    key: str
    reminded: int
    cured: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.cured / self.reminded if self.reminded else 0.0


@dataclass(frozen=True, slots=True)
class Comparison:
    """Variant ``b`` against the step's control ``a``: z = (p_b − p_a) / pooled standard error."""

    step: str
    a: Rate
    b: Rate
    z: float
    p_value: float
    significant: bool  # p_value < alpha and enough_data
    enough_data: bool  # both sides reminded at least MIN_REMINDED delinquencies


def wilson(cured: int, reminded: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of cured/reminded; (0, 1) when nothing was reminded."""
    if reminded <= 0:
        return 0.0, 1.0
    p = cured / reminded
    z2 = z * z
    denominator = 1 + z2 / reminded
    centre = (p + z2 / (2 * reminded)) / denominator
    half = z * math.sqrt(p * (1 - p) / reminded + z2 / (4 * reminded * reminded)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def make_rate(key: str, reminded: int, cured: int) -> Rate:
    low, high = wilson(cured, reminded)
    return Rate(key, reminded, cured, low, high)


def two_proportion(a: Rate, b: Rate) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test; (0, 1) when it cannot be computed."""
    if not a.reminded or not b.reminded:
        return 0.0, 1.0
    pooled = (a.cured + b.cured) / (a.reminded + b.reminded)
    error = math.sqrt(pooled * (1 - pooled) * (1 / a.reminded + 1 / b.reminded))
    if error == 0:
        return 0.0, 1.0
    z = (b.rate - a.rate) / error
    return z, math.erfc(abs(z) / math.sqrt(2))


def _reminded(engine: Engine, columns: Sequence[Any], statuses: Sequence[str], since: datetime,
              until: datetime) -> list[Any]:
    """(key columns…, account_id, due_date, first reminder time, cured_at) per reminded delinquency and key."""
    at = func.coalesce(attempts.c.attempted_at, attempts.c.created_at)
    first = type_coerce(func.min(at), UtcDateTime).label("first_at")
    source = attempts.join(reminders, reminders.c.key == attempts.c.reminder_key).outerjoin(
        delinquencies, and_(delinquencies.c.account_id == reminders.c.account_id,
                            delinquencies.c.due_date == reminders.c.due_date))
    group = [*columns, reminders.c.account_id, reminders.c.due_date, delinquencies.c.cured_at]
    query = (select(*group, first).select_from(source)
             .where(attempts.c.status.in_(statuses), at >= since, at < until,
                    *(column.is_not(None) for column in columns))
             .group_by(*group))
    with engine.connect() as connection:
        return list(connection.execute(query))


def _tally(rows: Sequence[Any], key_of: Any, days: int) -> dict[str, tuple[int, int]]:
    window = timedelta(days=days)
    counts: dict[str, tuple[int, int]] = {}
    for row in rows:
        key = key_of(row)
        reminded, cured = counts.get(key, (0, 0))
        hit = row.cured_at is not None and row.first_at <= row.cured_at < row.first_at + window
        counts[key] = (reminded + 1, cured + int(hit))
    return counts


def cure_rates(engine: Engine, by: Key, since: datetime, until: datetime, days: int = 7) -> list[Rate]:
    """Cure rates within ``days`` of the first reminder, one per key (``step/variant`` for variants), by key."""
    if by == "variant":
        rows = _reminded(engine, [attempts.c.step, attempts.c.variant], REACHED, since, until)
        counts = _tally(rows, lambda r: f"{r.step}/{r.variant}", days)
    else:
        column = {"step": attempts.c.step, "channel": attempts.c.channel, "bucket": reminders.c.bucket}[by]
        rows = _reminded(engine, [column.label("key")], REACHED, since, until)
        counts = _tally(rows, lambda r: str(r.key), days)
    return [make_rate(key, reminded, cured) for key, (reminded, cured) in sorted(counts.items())]


def promise_kept_rate(engine: Engine, since: datetime, until: datetime) -> Rate:
    """Promises to pay (hand-offs closed ``promise_to_pay`` in ``[since, until)``) whose date passed before
    ``until``'s day, and how many of them saw their delinquency cured by the end of that date (UTC)."""
    query = (select(handoffs.c.until, delinquencies.c.cured_at)
             .select_from(handoffs.outerjoin(delinquencies, and_(
                 delinquencies.c.account_id == handoffs.c.account_id,
                 delinquencies.c.due_date == handoffs.c.due_date)))
             .where(handoffs.c.outcome == "promise_to_pay", handoffs.c.closed_at >= since,
                    handoffs.c.closed_at < until, handoffs.c.until < until.astimezone(UTC).date()))
    made = kept = 0
    with engine.connect() as connection:
        for promised, cured_at in connection.execute(query):
            made += 1
            end = datetime.combine(promised + timedelta(days=1), time(), UTC)
            kept += int(cured_at is not None and cured_at < end)
    return make_rate("promise_to_pay", made, kept)


def compare_variants(engine: Engine, since: datetime, until: datetime, days: int = 7, alpha: float = 0.05,
                     order: Mapping[str, Sequence[str]] | None = None) -> list[Comparison]:
    """Per step with variants, each variant against the first (the control): ``order`` gives a step's variants
    in schedule order (the first is the control); without it they are taken by name."""
    by_step: dict[str, dict[str, Rate]] = {}
    for rate in cure_rates(engine, "variant", since, until, days):
        step, variant = rate.key.split("/", 1)
        by_step.setdefault(step, {})[variant] = rate
    found: list[Comparison] = []
    for step, rates in sorted(by_step.items()):
        named = [v for v in (order or {}).get(step, ()) if v in rates] or sorted(rates)
        names = named + sorted(set(rates) - set(named))
        control = rates[names[0]]
        for name in names[1:]:
            other = rates[name]
            z, p_value = two_proportion(control, other)
            enough = control.reminded >= MIN_REMINDED and other.reminded >= MIN_REMINDED
            found.append(Comparison(step, control, other, z, p_value, enough and p_value < alpha, enough))
    return found
