"""A step's ``when:`` conditions on an account: whether they hold, and in words why not."""

from __future__ import annotations

from dispatcher.accounts import Account
from dispatcher.schedule.models import When

LISTED_FIELDS = ("product", "segment", "risk_band")
"""Optional columns of the account contract a step may list values of."""


def mismatch(when: When | None, account: Account) -> str | None:
    """``None`` when every condition of ``when`` holds for ``account``; else the first that does not, in words."""
    if when is None:
        return None
    amount = when.amount
    if amount is not None:
        if amount.currency is not None and account.currency != amount.currency:
            return f"amount in {amount.currency} (account: {account.currency})"
        shown = f"{account.overdue_amount} {account.currency}"
        if amount.min is not None and account.overdue_amount < amount.min:
            return f"amount at least {amount.min} (account: {shown})"
        if amount.max is not None and account.overdue_amount >= amount.max:
            return f"amount below {amount.max} (account: {shown})"
    for name in LISTED_FIELDS:
        wanted: list[str] | None = getattr(when, name)
        if wanted is None:
            continue
        value = account.field_value(name)
        if value not in wanted:
            return f"{name} in {', '.join(wanted)} (account: {value if value is not None else 'none'})"
    return None
