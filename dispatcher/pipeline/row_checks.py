"""Turning one source row into an :class:`Account`, or a :class:`RejectedRow` naming the field and reason."""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from dispatcher import phones
from dispatcher.accounts import Account, RejectedRow

_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_LOCALE_RE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z]{4})?(?:[-_](?:[A-Z]{2}|\d{3}))?$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_PAY_LINK_RE = re.compile(r"^https://[^\s<>\"']{1,500}$")
_LAST4_RE = re.compile(r"^\d{4}$")
_LABEL_MAX = 64
_CHANNELS = frozenset({"sms", "email", "push"})
_TRUE = frozenset({"1", "true", "t", "yes", "y", "是"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "否"})

FLAGGED = "flagged in the source"
"""The reason recorded for a ``do_not_contact`` column that holds a flag (true, 1, yes) instead of a reason."""

MAX_ACCOUNT_ID = 100
"""Longest account id accepted (the ledger's reminder key also holds the step and the due date)."""

PAUSE_FLAGS = ("cease_request", "attorney", "deceased", "bankruptcy")
"""Optional boolean columns of the source; any of them set stops all reminders (rule ``pause``)."""


class BadField(ValueError):
    """A field of a source row fails the account contract."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _text(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@lru_cache(maxsize=16384)
def _phone(raw: str) -> str:
    number = phones.parse(raw)
    if isinstance(number, str):
        raise BadField("phone", f"not an E.164 phone number: {number}")
    if phones.kind(raw) == phonenumbers.PhoneNumberType.UNKNOWN:  # is_valid_number's own test, its answer shared
        raise BadField("phone", "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=1024)
def _zone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadField("timezone", f"unknown time zone {raw!r}") from None
    return raw


def _decimal(raw: Any) -> Decimal:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise BadField("overdue_amount", "missing")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise BadField("overdue_amount", f"not a number: {raw!r}") from None
    if not value.is_finite():
        raise BadField("overdue_amount", f"not a finite number: {raw!r}")
    return value


def _date(row: Mapping[str, Any], name: str, *, required: bool) -> date | None:
    raw = row.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if required:
            raise BadField(name, "missing")
        return None
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    try:
        return date.fromisoformat(str(raw).strip()[:10])
    except ValueError:
        raise BadField(name, f"not a date: {raw!r}") from None


def _matching(row: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str, *,
              personal: bool = False) -> str | None:
    value = _text(row, name)
    if value is not None and not pattern.match(value):
        shown = f"{len(value)} characters" if personal else repr(value)  # never copy an address into the ledger
        raise BadField(name, f"not {what} ({shown})")
    return value


def _opt_outs(row: Mapping[str, Any]) -> frozenset[str]:
    value = _text(row, "opt_out_channels")
    if value is None:
        return frozenset()
    channels = frozenset(part.strip().lower() for part in value.replace(";", ",").split(",") if part.strip())
    unknown = channels - _CHANNELS
    if unknown:
        raise BadField("opt_out_channels", f"unknown channel(s) {sorted(unknown)}")
    return channels


def _flag(row: Mapping[str, Any], name: str) -> bool:
    """A boolean, 0 or 1, or a recognised text (yes/no, true/false, 1/0, empty); anything else is refused,
    never read as "not set"."""
    value = row.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float, Decimal)):
        if value in (0, 1):
            return bool(value)
        raise BadField(name, f"not a flag (0 or 1): {value!r}")
    word = str(value).strip().lower()
    if word in _TRUE or word in _FALSE or not word:
        return word in _TRUE
    raise BadField(name, f"not a flag (true/false, yes/no, 1/0): {value!r}")


def _do_not_contact(row: Mapping[str, Any]) -> str | None:
    """The reason not to contact: a reason text as written, :data:`FLAGGED` for a set flag, ``None`` for a
    false one (a boolean ``False``, 0, ``no``) or an empty value."""
    value = row.get("do_not_contact")
    if value is None or isinstance(value, (bool, int, float, Decimal)):
        return FLAGGED if _flag(row, "do_not_contact") else None
    reason = str(value).strip()
    if reason.lower() in _FALSE or not reason:
        return None
    return FLAGGED if reason.lower() in _TRUE else reason


def _optional(parse: Callable[[str], str], value: str | None) -> str | None:
    return None if value is None else parse(value)


def parse_row(row: Mapping[Any, Any], known_phones: Container[str] = ()) -> Account | RejectedRow:
    """Validate one row of the account contract; never raises for bad data.

    A phone in ``known_phones`` (E.164 numbers this process validated or was handed
    validated, e.g. by the planner of a job) is taken as is instead of parsed again.
    """
    account_id = _text(row, "account_id")
    if account_id is None:
        return RejectedRow(None, "account_id", "missing")
    if len(account_id) > MAX_ACCOUNT_ID:
        return RejectedRow(account_id[:MAX_ACCOUNT_ID], "account_id", f"longer than {MAX_ACCOUNT_ID} characters")
    try:
        return _account(account_id, row, known_phones)
    except BadField as bad:
        return RejectedRow(account_id, bad.field, bad.reason)


def _account(account_id: str, row: Mapping[str, Any], known_phones: Container[str]) -> Account:
    currency = _matching(row, "currency", _CURRENCY_RE, "an ISO 4217 currency code")
    if currency is None:
        raise BadField("currency", "missing")
    due_date = _date(row, "due_date", required=True)
    assert due_date is not None
    phone = _text(row, "phone")
    return Account(
        account_id=account_id,
        name=_text(row, "name") or "",
        phone=phone if phone in known_phones else _optional(_phone, phone),
        email=_matching(row, "email", _EMAIL_RE, "an email address", personal=True),
        push_token=_text(row, "push_token"),
        locale=_matching(row, "locale", _LOCALE_RE, "a locale like zh-CN"),
        timezone=_optional(_zone, _text(row, "timezone")),
        currency=currency,
        overdue_amount=_decimal(row.get("overdue_amount")),
        due_date=due_date,
        deadline=_date(row, "deadline", required=False),
        repayment_account=_text(row, "repayment_account") or "",
        do_not_contact=_do_not_contact(row),
        dispute=_flag(row, "dispute"),
        promise_to_pay_until=_date(row, "promise_to_pay_until", required=False),
        opt_out_channels=_opt_outs(row),
        pause_flags=frozenset(flag for flag in PAUSE_FLAGS if _flag(row, flag)),
        pay_link=_matching(row, "pay_link", _PAY_LINK_RE, "an https:// link"),
        country=_country(row),
        product=_label(row, "product"),
        segment=_label(row, "segment"),
        risk_band=_label(row, "risk_band"),
        card_last4=_matching(row, "card_last4", _LAST4_RE, "the last 4 digits of a card", personal=True),
    )


def _country(row: Mapping[str, Any]) -> str | None:
    value = _text(row, "country")
    if value is None:
        return None
    if not _COUNTRY_RE.match(value.upper()):
        raise BadField("country", f"not an ISO 3166 country code like CN or US: {value!r}")
    return value.upper()


def _label(row: Mapping[str, Any], name: str) -> str | None:
    value = _text(row, name)
    if value is not None and len(value) > _LABEL_MAX:
        raise BadField(name, f"longer than {_LABEL_MAX} characters")
    return value
