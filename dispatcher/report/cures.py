"""What reminders led to, from :mod:`dispatcher.outcomes.measures`: cure rates with their intervals, experiments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from dispatcher.outcomes.measures import Comparison, Key, Rate, compare_variants, cure_rates, promise_kept_rate
from dispatcher.report.period import Period
from dispatcher.report.queries import ordered

DIMENSIONS: tuple[Key, ...] = ("step", "channel", "bucket", "variant")
"""What cure rates are shown by, in the page's order."""

DEFAULT_CURE_DAYS = 7
"""A delinquency counts as cured by a reminder when it is settled within this many days of it."""


@dataclass(frozen=True, slots=True)
class Cures:
    """Cure rates by each of :data:`DIMENSIONS`, the variants' comparisons and the promises kept."""

    days: int
    rates: dict[str, list[Rate]]
    comparisons: list[Comparison]
    promises: Rate

    def cured_by_step(self) -> dict[str, Rate]:
        return {rate.key: rate for rate in self.rates["step"]}


def read_cures(engine: Engine, period: Period, steps: Sequence[str] = (),
               variants: Mapping[str, Sequence[str]] | None = None, days: int = DEFAULT_CURE_DAYS) -> Cures:
    """Every cure figure of ``period``; steps in ladder order (``steps``), variants in schedule order."""
    rates: dict[str, list[Rate]] = {}
    for by in DIMENSIONS:
        found = {rate.key: rate for rate in cure_rates(engine, by, period.since, period.until, days)}
        first = steps if by == "step" else _variant_keys(steps, variants) if by == "variant" else ()
        rates[by] = [found[key] for key in ordered(found, first)]
    comparisons = compare_variants(engine, period.since, period.until, days, order=variants)
    return Cures(days, rates, comparisons, promise_kept_rate(engine, period.since, period.until))


def _variant_keys(steps: Sequence[str], variants: Mapping[str, Sequence[str]] | None) -> list[str]:
    """``step/variant`` keys in ladder order, each step's variants in schedule order."""
    return [f"{step}/{name}" for step in steps for name in (variants or {}).get(step, ())]
