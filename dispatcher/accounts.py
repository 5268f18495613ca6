"""Overdue accounts: the record the pipeline works on, and the checks a source row must pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from dispatcher.records import record


@record
class Account:
    """One overdue loan account, validated against the account contract (PRODUCT.md).

    ``phone`` is E.164 or ``None``; ``timezone`` is a valid IANA name or ``None``
    (then derived from the phone's region, else the schedule's default);
    ``locale`` ``None`` means the one of the phone's country, else the schedule's default;
    ``country`` (ISO 3166 alpha-2) is where the borrower lives, ``None``: the phone's region.
    ``card_last4`` is the borrower's own card, only ever shown masked.
    """

    account_id: str
    name: str
    phone: str | None
    email: str | None
    push_token: str | None
    locale: str | None
    timezone: str | None
    currency: str
    overdue_amount: Decimal
    due_date: date
    deadline: date | None
    repayment_account: str
    do_not_contact: str | None = None
    dispute: bool = False
    promise_to_pay_until: date | None = None
    opt_out_channels: frozenset[str] = field(default_factory=frozenset)
    pause_flags: frozenset[str] = field(default_factory=frozenset)
    pay_link: str | None = None
    country: str | None = None
    product: str | None = None
    segment: str | None = None
    risk_band: str | None = None
    card_last4: str | None = None

    def field_value(self, name: str) -> str | None:
        """An optional segment column (``product``, ``segment``, ``risk_band``) by name."""
        value: str | None = getattr(self, name)
        return value

    @property
    def settled(self) -> bool:
        return self.overdue_amount <= 0


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A source row that failed the contract: recorded and skipped, never silently dropped."""

    account_id: str | None
    field: str
    reason: str
