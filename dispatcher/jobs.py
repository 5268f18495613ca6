"""A delivery job: one planned attempt, with what the deliverer needs to render and send it.

Jobs travel from the planning daemon to the deliverer, in the same process or
through Celery, so they convert to and from plain JSON-able dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from dispatcher.accounts import Account
from dispatcher.channels.base import ChannelKind


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """Send ``channel`` of reminder ``reminder_key``; ``fallbacks`` are the step's later channels."""

    attempt_id: int
    try_no: int
    reminder_key: str
    account: Account
    step: str
    occurrence: int
    days_overdue: int
    local_today: date
    channel: ChannelKind
    address: str
    fallbacks: tuple[ChannelKind, ...] = ()
    parent_id: int | None = None
    run_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, built field by field (``dataclasses.asdict`` deep-copies: a tenth of a
        planning daemon's CPU with a broker)."""
        a = self.account
        account = {
            "account_id": a.account_id, "name": a.name, "phone": a.phone, "email": a.email,
            "push_token": a.push_token, "locale": a.locale, "timezone": a.timezone, "currency": a.currency,
            "overdue_amount": str(a.overdue_amount), "due_date": a.due_date.isoformat(),
            "deadline": _iso(a.deadline), "repayment_account": a.repayment_account,
            "do_not_contact": a.do_not_contact, "dispute": a.dispute,
            "promise_to_pay_until": _iso(a.promise_to_pay_until),
            "opt_out_channels": sorted(a.opt_out_channels), "pause_flags": sorted(a.pause_flags),
        }
        return {
            "attempt_id": self.attempt_id, "try_no": self.try_no, "reminder_key": self.reminder_key,
            "account": account, "step": self.step, "occurrence": self.occurrence,
            "days_overdue": self.days_overdue, "local_today": self.local_today.isoformat(),
            "channel": self.channel.value, "address": self.address,
            "fallbacks": [c.value for c in self.fallbacks], "parent_id": self.parent_id, "run_id": self.run_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryJob:
        raw = dict(data["account"])
        raw["overdue_amount"] = Decimal(raw["overdue_amount"])
        raw["opt_out_channels"] = frozenset(raw["opt_out_channels"])
        raw["pause_flags"] = frozenset(raw.get("pause_flags", ()))
        for key in ("due_date", "deadline", "promise_to_pay_until"):
            raw[key] = date.fromisoformat(raw[key]) if raw[key] else None
        values = dict(data)
        values["account"] = Account(**raw)
        values["local_today"] = date.fromisoformat(data["local_today"])
        values["channel"] = ChannelKind(data["channel"])
        values["fallbacks"] = tuple(ChannelKind(c) for c in data["fallbacks"])
        return cls(**values)


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


@dataclass(slots=True)
class RunCounts:
    """What a run did, by outcome (stored as JSON on the run row)."""

    accounts: int = 0
    rejected: int = 0
    planned: int = 0
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    deferred: int = 0
    skipped: int = 0

    def add(self, other: RunCounts) -> None:
        for name in ("accounts", "rejected", "planned", "sent", "failed", "suppressed", "deferred", "skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return dict(asdict(self))
