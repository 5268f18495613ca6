"""Source rows against the account contract: bad rows name their field, good rows become accounts."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType
from phonenumbers.timezone import time_zones_for_number

from dispatcher.accounts import Account, RejectedRow
from dispatcher.pipeline.row_checks import FLAGGED, parse_row
from dispatcher.zones import candidate_zones

GOOD: dict[str, Any] = {
    "account_id": "L00000001",
    "name": "王伟",
    "phone": "+8613812345678",
    "email": "wang.wei@example.cn",
    "push_token": "fcm:abc",
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "currency": "CNY",
    "overdue_amount": "1234.50",
    "due_date": "2026-01-31",
    "deadline": None,
    "repayment_account": "6222 0212 1234 5678",
    "do_not_contact": None,
    "dispute": None,
    "promise_to_pay_until": None,
    "opt_out_channels": None,
}


def row(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("changes", "account_id", "field"),
    [
        ({"overdue_amount": "12,3O.00"}, "L00000001", "overdue_amount"),
        ({"overdue_amount": "NaN"}, "L00000001", "overdue_amount"),
        ({"overdue_amount": ""}, "L00000001", "overdue_amount"),
        ({"overdue_amount": None}, "L00000001", "overdue_amount"),
        ({"timezone": "Asia/Beijing"}, "L00000001", "timezone"),
        ({"timezone": "../etc/passwd"}, "L00000001", "timezone"),
        ({"phone": "+86 123"}, "L00000001", "phone"),
        ({"phone": "13812345678"}, "L00000001", "phone"),
        ({"phone": "call me"}, "L00000001", "phone"),
        ({"email": "wang.at.example.com"}, "L00000001", "email"),
        ({"email": "wang@localhost"}, "L00000001", "email"),
        ({"account_id": None}, None, "account_id"),
        ({"account_id": "   "}, None, "account_id"),
        ({"due_date": None}, "L00000001", "due_date"),
        ({"due_date": ""}, "L00000001", "due_date"),
        ({"due_date": "2026-02-30"}, "L00000001", "due_date"),
        ({"deadline": "soon"}, "L00000001", "deadline"),
        ({"promise_to_pay_until": "next week"}, "L00000001", "promise_to_pay_until"),
        ({"currency": "cny"}, "L00000001", "currency"),
        ({"currency": "YUAN"}, "L00000001", "currency"),
        ({"currency": None}, "L00000001", "currency"),
        ({"opt_out_channels": "sms,fax"}, "L00000001", "opt_out_channels"),
        ({"locale": "Chinese"}, "L00000001", "locale"),
    ],
)
def test_bad_rows_are_rejected_with_field_and_reason(changes: dict[str, Any], account_id: str | None,
                                                     field: str) -> None:
    parsed = parse_row(row(**changes))
    assert isinstance(parsed, RejectedRow)
    assert (parsed.account_id, parsed.field) == (account_id, field)
    assert parsed.reason.strip()


@pytest.mark.parametrize(
    "due",
    ["2026-01-31", " 2026-01-31 ", "2026-01-31T23:59:00", date(2026, 1, 31), datetime(2026, 1, 31, 8, 0),
     datetime(2026, 1, 31, 8, 0, tzinfo=UTC)],
)
def test_due_dates_as_text_date_or_datetime(due: object) -> None:
    parsed = parse_row(row(due_date=due))
    assert isinstance(parsed, Account)
    assert parsed.due_date == date(2026, 1, 31)


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("1234.50", Decimal("1234.50")), (Decimal("99.99"), Decimal("99.99")), (" 0.00 ", Decimal(0)),
     (12, Decimal(12)), ("-5", Decimal(-5))],
)
def test_amounts(amount: object, expected: Decimal) -> None:
    parsed = parse_row(row(overdue_amount=amount))
    assert isinstance(parsed, Account)
    assert parsed.overdue_amount == expected
    assert isinstance(parsed.overdue_amount, Decimal)


def test_a_good_row_becomes_an_account() -> None:
    parsed = parse_row(row(phone="+86 138-1234-5678", opt_out_channels="SMS; email", dispute="no",
                           promise_to_pay_until=date(2026, 2, 5), deadline="2026-02-07"))
    assert parsed == Account(
        account_id="L00000001", name="王伟", phone="+8613812345678", email="wang.wei@example.cn",
        push_token="fcm:abc", locale="zh-CN", timezone="Asia/Shanghai", currency="CNY",
        overdue_amount=Decimal("1234.50"), due_date=date(2026, 1, 31), deadline=date(2026, 2, 7),
        repayment_account="6222 0212 1234 5678", do_not_contact=None, dispute=False,
        promise_to_pay_until=date(2026, 2, 5), opt_out_channels=frozenset({"sms", "email"}),
    )


@pytest.mark.parametrize("raw", ["+1 212-555-0123", "+12125550123", "+44 7911 123456", "+8613812345678"])
def test_phones_come_out_in_e164(raw: str) -> None:
    parsed = parse_row(row(phone=raw))
    assert isinstance(parsed, Account)
    assert parsed.phone == "+" + "".join(ch for ch in raw if ch.isdigit())


def test_empty_strings_are_missing_values() -> None:
    parsed = parse_row(row(name="", phone="", email=" ", push_token="", locale="", timezone="", deadline="",
                           repayment_account="", do_not_contact="", dispute="", promise_to_pay_until="",
                           opt_out_channels=""))
    assert isinstance(parsed, Account)
    assert (parsed.phone, parsed.email, parsed.push_token, parsed.locale, parsed.timezone) == (None,) * 5
    assert (parsed.deadline, parsed.do_not_contact, parsed.promise_to_pay_until) == (None, None, None)
    assert (parsed.name, parsed.repayment_account, parsed.dispute) == ("", "", False)
    assert parsed.opt_out_channels == frozenset()


@pytest.mark.parametrize(("raw", "expected"), [("yes", True), ("1", True), ("TRUE", True), (True, True),
                                               ("no", False), ("0", False), (None, False), (False, False)])
def test_dispute_flag(raw: object, expected: bool) -> None:
    parsed = parse_row(row(dispute=raw))
    assert isinstance(parsed, Account)
    assert parsed.dispute is expected


def test_the_account_id_is_trimmed() -> None:
    parsed = parse_row(row(account_id="  L7 "))
    assert isinstance(parsed, Account) and parsed.account_id == "L7"


def test_the_reason_of_a_bad_email_does_not_repeat_the_address() -> None:
    parsed = parse_row(row(email="wang.wei@example"))
    assert isinstance(parsed, RejectedRow) and parsed.field == "email"
    assert "wang.wei@example" not in parsed.reason


def test_a_phone_validated_when_planned_is_not_parsed_again_but_any_other_is() -> None:
    unassigned = "+10000000000"  # E.164 in form, but no valid number: parsing rejects it
    rejected = parse_row(row(phone=unassigned))
    assert isinstance(rejected, RejectedRow) and rejected.field == "phone"

    trusted = parse_row(row(phone=unassigned), known_phones={unassigned})
    assert isinstance(trusted, Account) and trusted.phone == unassigned
    other = parse_row(row(phone="+86 138 0013 8000"), known_phones={unassigned})
    assert isinstance(other, Account) and other.phone == "+8613800138000"


def _numbers_near_every_regions_examples() -> list[str]:
    """Each region's example number of each type, and variants with one to three digits changed (many invalid)."""
    rng = random.Random(13)
    numbers = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE,
                     PhoneNumberType.VOIP, PhoneNumberType.PAGER, PhoneNumberType.UAN):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = str(example.national_number)
            for _ in range(3):
                changed = list(digits)
                for _ in range(rng.randint(0, 3)):
                    changed[rng.randrange(len(changed))] = str(rng.randint(0, 9))
                numbers.append(f"+{example.country_code}{''.join(changed)}")
    return numbers


def test_the_shared_phone_type_gives_the_librarys_own_validity_and_zones() -> None:
    """The row check and the zones share one classification of a number (:func:`dispatcher.phones.kind`): it must
    answer as :func:`phonenumbers.is_valid_number` and :func:`phonenumbers.timezone.time_zones_for_number` do."""
    numbers = _numbers_near_every_regions_examples()
    valid = 0
    for raw in numbers:
        number = phonenumbers.parse(raw, None)
        parsed = parse_row(row(phone=raw, timezone=None))
        assert isinstance(parsed, Account) is phonenumbers.is_valid_number(number), (raw, parsed)
        if isinstance(parsed, Account):
            valid += 1
            expected = tuple(z for z in time_zones_for_number(number) if z != "Etc/Unknown")
            assert candidate_zones(parsed, "UTC") == (expected or ("UTC",)), raw
    assert 0.3 * len(numbers) < valid < len(numbers), (valid, len(numbers))  # both kinds tried, many of each


# flags: booleans or recognised texts, never an unknown text read as "not set" -----------------------------------
@pytest.mark.parametrize(("raw", "expected"), [(0, False), (1, True), (Decimal(1), True), ("是", True), ("否", False),
                                               (" Yes ", True), ("f", False)])
def test_flags_from_numbers_and_words(raw: object, expected: bool) -> None:
    parsed = parse_row(row(dispute=raw))
    assert isinstance(parsed, Account) and parsed.dispute is expected


@pytest.mark.parametrize("raw", ["disputed", "maybe", 2, -1])
def test_an_unrecognised_flag_rejects_the_row(raw: object) -> None:
    parsed = parse_row(row(dispute=raw))
    assert isinstance(parsed, RejectedRow) and parsed.field == "dispute"
    assert repr(raw) in parsed.reason


def test_an_unrecognised_pause_flag_rejects_the_row() -> None:
    parsed = parse_row(row(deceased="unknown"))
    assert isinstance(parsed, RejectedRow) and parsed.field == "deceased"


@pytest.mark.parametrize(("raw", "expected"), [
    (False, None), (True, FLAGGED), (0, None), (1, FLAGGED), ("false", None), ("No", None), ("0", None),
    ("", None), (None, None), ("yes", FLAGGED), ("TRUE", FLAGGED), ("attorney", "attorney"),
    (" legal hold ", "legal hold"),
])
def test_do_not_contact_is_a_reason_or_a_flag(raw: object, expected: str | None) -> None:
    parsed = parse_row(row(do_not_contact=raw))
    assert isinstance(parsed, Account) and parsed.do_not_contact == expected


def test_numeric_account_ids_become_text() -> None:
    parsed = parse_row(row(account_id=20600))
    assert isinstance(parsed, Account) and parsed.account_id == "20600"
