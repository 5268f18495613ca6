"""Repayment plans agreed with a borrower at a hand-off: instalments, and whether the plan still holds.

A plan is a list of instalments (a day and an amount) and the starting amount: the
account's overdue amount in the source when it was agreed (the plan's total when
that is unknown). The rule, checked at each run against the source's overdue amount:

* an instalment is *due* from the day after its date (its date is the last day to pay);
* the plan holds while ``overdue_amount <= start - (the instalments due so far)``;
* otherwise an instalment was missed: the plan is broken and the ladder resumes
  with the step then due. After the last instalment's day the plan ends either way.

So paying early or more is always fine, and a borrower who pays each instalment by
its day is never reminded while the plan runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

MAX_INSTALMENTS = 36
"""The most instalments a plan may have."""

TOLERANCE = Decimal("0.005")
"""Rounding the comparison forgives (half a cent)."""


class PlanError(ValueError):
    """An instalment or a plan is malformed; the message says which."""


@dataclass(frozen=True, slots=True)
class Instalment:
    """One agreed payment: ``amount`` by the end of ``day``."""

    day: date
    amount: Decimal

    @classmethod
    def parse(cls, text: str) -> Instalment:
        """``"2026-12-15:500.00"``; raises :class:`PlanError`."""
        day_text, _, amount_text = text.strip().partition(":")
        try:
            day, amount = date.fromisoformat(day_text), Decimal(amount_text)
        except (ValueError, InvalidOperation):
            raise PlanError(f"instalment {text!r}: give it as DATE:AMOUNT, like 2026-12-15:500.00") from None
        if not amount.is_finite() or amount <= 0:
            raise PlanError(f"instalment {text!r}: the amount must be above zero")
        return cls(day, amount)


@dataclass(frozen=True, slots=True)
class RepaymentPlan:
    """Instalments in date order and the overdue amount they start from."""

    instalments: tuple[Instalment, ...]
    start: Decimal

    @classmethod
    def agreed(cls, instalments: tuple[Instalment, ...], start: Decimal | None, today: date) -> RepaymentPlan:
        """A plan checked for today; raises :class:`PlanError`."""
        if not instalments:
            raise PlanError("a repayment plan needs its instalments (--instalment DATE:AMOUNT, repeatable)")
        if len(instalments) > MAX_INSTALMENTS:
            raise PlanError(f"a repayment plan has at most {MAX_INSTALMENTS} instalments ({len(instalments)} given)")
        ordered = tuple(sorted(instalments, key=lambda i: i.day))
        if len({i.day for i in ordered}) != len(ordered):
            raise PlanError("two instalments fall on the same day: give one per day")
        if ordered[0].day < today:
            raise PlanError(f"instalment {ordered[0].day.isoformat()} is in the past (today is {today})")
        total = sum((i.amount for i in ordered), Decimal(0))
        return cls(ordered, start if start is not None and start > 0 else total)

    @property
    def last_day(self) -> date:
        return self.instalments[-1].day

    def due_by(self, today: date) -> Decimal:
        """The instalments whose day has passed."""
        return sum((i.amount for i in self.instalments if i.day < today), Decimal(0))

    def holds(self, overdue_amount: Decimal, today: date) -> bool:
        """Whether no instalment is missed: the overdue amount is down by the instalments due so far."""
        return overdue_amount <= self.start - self.due_by(today) + TOLERANCE

    def explain(self, overdue_amount: Decimal, today: date) -> str:
        """One line for ``plan``: what holds the ladder, or which instalment was missed."""
        allowed = self.start - self.due_by(today)
        if not self.holds(overdue_amount, today):
            missed = [i for i in self.instalments if i.day < today][-1]
            return (f"repayment plan broken: instalment {missed.day.isoformat()} ({missed.amount}) missed, "
                    f"{overdue_amount} still overdue (at most {allowed} kept the plan)")
        upcoming = next((i for i in self.instalments if i.day >= today), None)
        then = f"next instalment {upcoming.amount} by {upcoming.day.isoformat()}" if upcoming else "no more due"
        return f"repayment plan until {self.last_day.isoformat()}: kept so far, {then}"

    def to_json(self) -> str:
        return json.dumps({"start": str(self.start),
                           "instalments": [[i.day.isoformat(), str(i.amount)] for i in self.instalments]})

    @classmethod
    def from_json(cls, text: str) -> RepaymentPlan:
        data = json.loads(text)
        return cls(tuple(Instalment(date.fromisoformat(d), Decimal(a)) for d, a in data["instalments"]),
                   Decimal(data["start"]))
