"""The compliance rules, one table per rule id, through the planner; then the re-check just before sending.

Planner cases run on hand-built :class:`BatchHistory` objects (no ledger); the
superseded and send-time cases go through the real ledger of the ``app`` fixture.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rows import attempt_rows, book_all, demo_row, seed_rows
from sqlalchemy import insert, update

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Message
from dispatcher.decisions import Decision, Reason, Verdict
from dispatcher.demo import demo_accounts
from dispatcher.ladder import reminder_key
from dispatcher.ledger.suppressions import suppress
from dispatcher.ledger.tables import attempts
from dispatcher.masking import address_hash
from dispatcher.pipeline.deliver import Deliverer, DeliveryPolicy
from dispatcher.pipeline.history import BatchHistory, Contact, Suppression, borrower_key
from dispatcher.pipeline.jobs import DeliveryJob, RunCounts
from dispatcher.pipeline.plan import Planner
from dispatcher.rules.engine import build_engine
from dispatcher.rules.policy import resolve_policy
from dispatcher.rules.window import HolidayRule, Holidays, WindowRule
from dispatcher.schedule.models import ClockRange, Schedule

SMS, EMAIL, PUSH = ChannelKind.SMS, ChannelKind.EMAIL, ChannelKind.PUSH
SHANGHAI_OFFSET = timedelta(hours=8)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def shanghai(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Shanghai wall-clock time (UTC+8, no DST) as an aware UTC datetime."""
    return utc(year, month, day, hour, minute) - SHANGHAI_OFFSET


AT_0900 = shanghai(2026, 3, 10, 9)
AT_2200 = shanghai(2026, 3, 10, 22)
TODAY = date(2026, 3, 10)

LADDER: list[dict[str, Any]] = [
    {"step": "gentle", "days_overdue": "1-3", "channels": ["push", "sms"]},
    {"step": "firm", "days_overdue": "4-14", "every": "3d", "channels": ["email", "sms"], "fallback": True},
    {"step": "final", "days_overdue": "20-", "every": "7d", "channels": ["sms", "email", "push"]},
]
"""Days 15 to 19 are a gap: a reminder deferred on day 14 has no newer step to be superseded by."""


def schedule(profile: str = "cn", **compliance: Any) -> Schedule:
    return Schedule.model_validate({
        "timezone": "Asia/Shanghai", "profile": profile, "compliance": compliance,
        "brand": {"zh-CN": {"name": "信用钱包", "hotline": "400-820-1234", "website": "https://example.cn/verify"}},
        "runs": [{"name": "morning", "cron": "0 9 * * *"}],
        "ladder": LADDER,
    })


def planner(profile: str = "cn", **compliance: Any) -> Planner:
    sched = schedule(profile, **compliance)
    return Planner(sched, build_engine(sched, resolve_policy(sched)))


BORROWER = Account(
    account_id="L1", name="王伟", phone="+8613812345678", email="wang@example.cn", push_token="fcm:token-1",
    locale="zh-CN", timezone="Asia/Shanghai", currency="CNY", overdue_amount=Decimal("500.00"),
    due_date=TODAY - timedelta(days=2), deadline=None, repayment_account="6222 0212 1234 5678",
)


def overdue(days: int, today: date = TODAY, **changes: Any) -> Account:
    return replace(BORROWER, due_date=today - timedelta(days=days), **changes)


def plan(account: Account, now: datetime, history: BatchHistory | None = None, *, profile: str = "cn",
         **compliance: Any) -> Decision:
    return planner(profile, **compliance).plan_account(account, history or BatchHistory(), now)


def channel(decision: Decision, kind: ChannelKind) -> Any:
    return next(c for c in decision.channels if c.channel is kind)


def verdicts(decision: Decision) -> dict[str, tuple[str, str | None]]:
    """channel → (verdict, rule id)."""
    return {c.channel.value: (c.verdict.value, c.rule_id) for c in decision.channels}


def contact(attempt_id: int, account: Account, kind: ChannelKind, at: datetime, address: str | None = None) -> Contact:
    address = address or {SMS: account.phone, EMAIL: account.email, PUSH: account.push_token}[kind]
    assert address
    return Contact(attempt_id, account.account_id, kind.value, address_hash(address), at, borrower_key(account))


def history_with(*contacts: Contact) -> BatchHistory:
    history = BatchHistory()
    for found in contacts:
        history.add_contact(found)
    return history


# window ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "expected", "not_before"),
    [
        pytest.param(AT_2200, "defer", shanghai(2026, 3, 11, 8), id="22:00-to-08:00-next-morning"),
        pytest.param(shanghai(2026, 3, 10, 23, 59), "defer", shanghai(2026, 3, 11, 8), id="23:59"),
        pytest.param(shanghai(2026, 3, 10, 3, 7), "defer", shanghai(2026, 3, 10, 8), id="03:07-to-08:00-same-day"),
        pytest.param(shanghai(2026, 3, 10, 7, 59), "defer", shanghai(2026, 3, 10, 8), id="07:59"),
        pytest.param(shanghai(2026, 3, 10, 21), "defer", shanghai(2026, 3, 11, 8), id="21:00-end-is-exclusive"),
        pytest.param(shanghai(2026, 3, 10, 8), "send", None, id="08:00-start-is-inclusive"),
        pytest.param(AT_0900, "send", None, id="09:00"),
        pytest.param(shanghai(2026, 3, 10, 20, 59), "send", None, id="20:59"),
    ],
)
def test_window_in_the_borrowers_zone(now: datetime, expected: str, not_before: datetime | None) -> None:
    decision = plan(overdue(2), now)
    for kind in (PUSH, SMS):
        found = channel(decision, kind)
        assert found.verdict.value == expected
        assert found.not_before == not_before
        if expected == "defer":
            assert found.rule_id == "window"
            assert "08:00-21:00" in (found.detail or "")
    assert decision.reason == (None if expected == "send" else "window")


def test_window_deferral_is_not_a_contact_and_the_local_date_counts_days() -> None:
    """At 22:00 the reminder is deferred, not dropped: the decision still names the step and key."""
    decision = plan(overdue(2), AT_2200)
    assert decision.step is not None and decision.step.step == "gentle"
    assert decision.reminder_key == reminder_key("L1", overdue(2).due_date, "gentle", 0)
    assert not decision.sends


def _allowed_in(moment: datetime, *zones: str) -> bool:
    return all(8 * 60 <= (lt := moment.astimezone(ZoneInfo(z))).hour * 60 + lt.minute < 21 * 60 for z in zones)


@pytest.mark.parametrize("hour", range(24))
def test_window_where_account_zone_and_phone_region_disagree(hour: int) -> None:
    """Account zone America/New_York, phone +86: only the times allowed in both zones (00:00-02:00 UTC in winter)."""
    now = utc(2026, 12, 1, hour)
    account = overdue(2, today=date(2026, 11, 30), timezone="America/New_York")
    decision = plan(account, now)
    sms = channel(decision, SMS)
    if _allowed_in(now, "America/New_York", "Asia/Shanghai"):
        assert hour in (0, 1)
        assert sms.verdict is Verdict.SEND
    else:
        assert (sms.verdict, sms.rule_id) == (Verdict.DEFER, "window")
        assert sms.not_before == utc(2026, 12, 2, 0)  # 08:00 Shanghai, 19:00 New York
        assert _allowed_in(sms.not_before, "America/New_York", "Asia/Shanghai")
        assert "America/New_York" in (sms.detail or "") and "Asia/Shanghai" in (sms.detail or "")


def test_window_one_zone_alone_allows_times_the_pair_does_not() -> None:
    """09:00 in New York (22:00 in Shanghai) is allowed for a New York number, not for a +86 one."""
    now = utc(2026, 12, 1, 14)
    us_phone = overdue(2, today=date(2026, 11, 30), timezone="America/New_York", phone="+12125550123")
    cn_phone = replace(us_phone, phone="+8613812345678")
    assert channel(plan(us_phone, now), SMS).verdict is Verdict.SEND
    assert channel(plan(cn_phone, now), SMS).rule_id == "window"


@pytest.mark.parametrize("now", [AT_2200, shanghai(2026, 3, 10, 3)], ids=["22:00", "03:00"])
def test_profile_none_has_no_window(now: datetime) -> None:
    decision = plan(overdue(2), now, profile="none")
    assert decision.reason is None
    assert verdicts(decision) == {"push": ("send", None), "sms": ("send", None)}


def test_contact_window_override() -> None:
    decision = plan(overdue(2), shanghai(2026, 3, 10, 9), contact_window="10:00-18:00")
    assert channel(decision, SMS).not_before == shanghai(2026, 3, 10, 10)
    assert plan(overdue(2), shanghai(2026, 3, 10, 10), contact_window="10:00-18:00").reason is None


# holiday ---------------------------------------------------------------------------------------------------------
HOLIDAYS = {"CN": ["2026-10-01", "2026-10-02", "2026-10-03"]}


@pytest.mark.parametrize(
    ("now", "expected", "not_before"),
    [
        pytest.param(shanghai(2026, 10, 1, 9), "holiday", shanghai(2026, 10, 4, 8), id="first-day"),
        pytest.param(shanghai(2026, 10, 3, 20), "holiday", shanghai(2026, 10, 4, 8), id="last-day-evening"),
        pytest.param(shanghai(2026, 10, 4, 9), None, None, id="the-day-after"),
        pytest.param(shanghai(2026, 9, 30, 9), None, None, id="the-day-before"),
    ],
)
def test_holiday_defers_to_the_next_non_holiday_morning(now: datetime, expected: str | None,
                                                        not_before: datetime | None) -> None:
    local_today = (now + SHANGHAI_OFFSET).date()
    decision = plan(overdue(2, today=local_today), now, holidays=HOLIDAYS)
    assert decision.reason == expected
    for found in decision.channels:
        assert found.rule_id == expected
        assert found.not_before == not_before
        assert found.verdict is (Verdict.DEFER if expected else Verdict.SEND)


def test_holiday_of_another_region_does_not_apply() -> None:
    now = shanghai(2026, 10, 1, 9)
    decision = plan(overdue(2, today=date(2026, 10, 1)), now, holidays={"US": ["2026-10-01"]})
    assert decision.reason is None


def test_window_deferral_on_the_eve_of_a_holiday_names_the_next_allowed_morning() -> None:
    now = shanghai(2026, 9, 30, 22)
    decision = plan(overdue(2, today=date(2026, 9, 30)), now, holidays=HOLIDAYS)
    sms = channel(decision, SMS)
    assert sms.verdict is Verdict.DEFER
    assert sms.not_before == shanghai(2026, 10, 4, 8)


# cap -------------------------------------------------------------------------------------------------------------
WEEKLY_3 = [{"max": 3, "per": "7d"}]
SIBLING = replace(BORROWER, account_id="L2", email="wang.second@example.cn", push_token="fcm:token-2")
"""A second loan of the same borrower: same phone number, other email and push token."""


def three_sms_to_the_shared_phone(now: datetime) -> BatchHistory:
    return history_with(*(contact(n, BORROWER, SMS, now - timedelta(days=d)) for n, d in ((1, 6), (2, 3), (3, 1))))


def test_cap_cn_counts_per_borrower_across_accounts_sharing_a_phone() -> None:
    history = three_sms_to_the_shared_phone(AT_0900)
    decision = plan(SIBLING, AT_0900, history, caps=WEEKLY_3)
    assert decision.reason == "cap"
    assert verdicts(decision) == {"push": ("defer", "cap"), "sms": ("defer", "cap")}
    for found in decision.channels:
        assert found.not_before == AT_0900 - timedelta(days=6) + timedelta(days=7)  # the oldest contact leaves
        assert "3 contacts to this borrower" in (found.detail or "")


def test_cap_us_counts_per_debt_so_the_other_account_does_not_count() -> None:
    history = three_sms_to_the_shared_phone(AT_0900)
    decision = plan(SIBLING, AT_0900, history, profile="us", caps=WEEKLY_3)
    assert decision.reason is None
    assert verdicts(decision) == {"push": ("send", None), "sms": ("send", None)}
    # ... while the account that had them is capped
    assert plan(BORROWER, AT_0900, three_sms_to_the_shared_phone(AT_0900), profile="us",
                caps=WEEKLY_3).reason == "cap"


def test_cap_scope_override_turns_cn_into_per_debt() -> None:
    history = three_sms_to_the_shared_phone(AT_0900)
    assert plan(SIBLING, AT_0900, history, caps=WEEKLY_3, cap_scope="debt").reason is None


@pytest.mark.parametrize(
    ("days_ago", "expected_not_before_days_ago"),
    [
        pytest.param((6, 3, 1), 6, id="exactly-max"),
        pytest.param((6.5, 6, 3, 1), 6, id="one-over-max: frees when enough have left"),
        pytest.param((8, 3, 2, 1), 3, id="an-old-contact-is-outside"),
    ],
)
def test_cap_not_before_is_when_the_count_falls_below_the_max(days_ago: Sequence[float],
                                                               expected_not_before_days_ago: float) -> None:
    history = history_with(*(contact(n, BORROWER, PUSH, AT_0900 - timedelta(days=d))
                             for n, d in enumerate(days_ago, start=1)))
    decision = plan(BORROWER, AT_0900, history, caps=WEEKLY_3)
    sms = channel(decision, SMS)
    assert (sms.verdict, sms.rule_id) == (Verdict.DEFER, "cap")
    assert sms.not_before == AT_0900 - timedelta(days=expected_not_before_days_ago) + timedelta(days=7)
    # a run at not_before goes ahead
    assert plan(BORROWER, sms.not_before, history, caps=WEEKLY_3).reason is None


def test_cap_two_contacts_are_under_a_cap_of_three() -> None:
    history = history_with(*(contact(n, BORROWER, SMS, AT_0900 - timedelta(days=n)) for n in (1, 2)))
    assert plan(BORROWER, AT_0900, history, caps=WEEKLY_3).reason is None


def test_cap_cn_sms_once_a_day_per_channel() -> None:
    """The cn profile's defaults: one SMS a day; other channels still go out."""
    earlier = AT_0900 - timedelta(hours=5)
    decision = plan(BORROWER, AT_0900, history_with(contact(1, BORROWER, SMS, earlier)))
    assert verdicts(decision) == {"push": ("send", None), "sms": ("defer", "cap")}
    sms = channel(decision, SMS)
    assert sms.not_before == earlier + timedelta(days=1)
    assert "sms messages" in (sms.detail or "")
    # an email a few hours ago does not use up the SMS of the day
    assert plan(BORROWER, AT_0900, history_with(contact(1, BORROWER, EMAIL, earlier))).reason is None


def test_cap_counts_contacts_planned_earlier_in_the_same_batch() -> None:
    """Two loans of one borrower in one batch: the first one's SMS counts against the second's (cn: 1 SMS a day)."""
    history = BatchHistory()
    first, second = planner("cn").plan([BORROWER, SIBLING], history, AT_0900)
    assert verdicts(first) == {"push": ("send", None), "sms": ("send", None)}
    assert verdicts(second) == {"push": ("send", None), "sms": ("defer", "cap")}
    assert channel(second, SMS).not_before == AT_0900 + timedelta(days=1)
    # the planned contacts are in the batch history now, with provisional (negative) ids
    counted = {(c.account_id, c.channel) for c in history.contacts_of(SIBLING, per_debt=False)}
    assert {("L1", "sms"), ("L2", "push")} <= counted
    assert all(c.attempt_id < 0 for c in history.by_account["L1"])


def test_cap_same_batch_weekly_cap_across_accounts() -> None:
    """cn, 3 a week: an SMS two days ago and the first loan's push and SMS planned now leave nothing for the second."""
    history = history_with(contact(1, BORROWER, SMS, AT_0900 - timedelta(days=2)))
    first, second = planner("cn", caps=WEEKLY_3).plan([BORROWER, SIBLING], history, AT_0900)
    assert verdicts(first) == {"push": ("send", None), "sms": ("send", None)}
    assert verdicts(second) == {"push": ("defer", "cap"), "sms": ("defer", "cap")}
    assert channel(second, SMS).not_before == AT_0900 + timedelta(days=5)  # the SMS of two days ago leaves the week


def test_cap_a_sent_contact_to_an_old_address_of_the_account_still_counts_per_debt() -> None:
    old_number = contact(1, BORROWER, SMS, AT_0900 - timedelta(hours=2), address="+8613900000000")
    decision = plan(BORROWER, AT_0900, history_with(old_number), profile="us",
                    caps=[{"max": 1, "per": "1d", "channel": "sms"}])
    assert channel(decision, SMS).rule_id == "cap"


def test_cap_per_borrower_counts_every_contact_of_a_linked_account() -> None:
    emails = history_with(*(contact(n, BORROWER, EMAIL, AT_0900 - timedelta(days=n)) for n in (1, 2, 3)))
    assert plan(SIBLING, AT_0900, emails, caps=WEEKLY_3).reason == "cap"


def test_cap_per_borrower_links_loans_through_a_contact_to_a_shared_address(app: App) -> None:
    """Through the ledger: L1 (not in this batch) had an SMS to the shared phone and two emails to its own address."""
    rows = [(BORROWER, SMS, 1), (BORROWER, EMAIL, 2), (BORROWER, EMAIL, 3)]
    with app.engine.begin() as connection:
        connection.execute(insert(attempts), [{
            "reminder_key": f"L1|2026-03-01|firm|{n}", "account_id": "L1", "step": "firm", "occurrence": n,
            "channel": kind.value, "try_no": 1, "status": "sent", "address": "masked",
            "address_hash": address_hash((account.phone if kind is SMS else account.email) or ""),
            "created_at": AT_0900 - timedelta(days=n), "attempted_at": AT_0900 - timedelta(days=n),
            "updated_at": AT_0900 - timedelta(days=n)} for account, kind, n in rows])
    history = app.ledger.load_history([SIBLING], AT_0900 - timedelta(days=7))
    assert sorted(c.channel for c in history.contacts_of(SIBLING, per_debt=False)) == ["email", "email", "sms"]
    decision = planner("cn", caps=WEEKLY_3).plan_account(SIBLING, history, AT_0900)
    assert decision.reason == "cap"
    assert channel(decision, SMS).not_before == AT_0900 - timedelta(days=3) + timedelta(days=7)
    # per debt (us), the sibling has no contacts of its own
    assert planner("us", caps=WEEKLY_3).plan_account(SIBLING, history, AT_0900).reason is None


def test_cap_max_zero_suppresses_instead_of_deferring() -> None:
    decision = plan(BORROWER, AT_0900, caps=[{"max": 0, "per": "1d", "channel": "sms"}])
    sms = channel(decision, SMS)
    assert (sms.verdict, sms.rule_id, sms.not_before) == (Verdict.SUPPRESS, "cap", None)


# pause -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "expected", "words"),
    [
        pytest.param({"do_not_contact": "legal hold"}, "pause", "legal hold", id="do_not_contact"),
        pytest.param({"dispute": True}, "pause", "disputes", id="dispute"),
        pytest.param({"pause_flags": frozenset({"cease_request"})}, "pause", "stop contacting", id="cease_request"),
        pytest.param({"pause_flags": frozenset({"attorney"})}, "pause", "attorney", id="attorney"),
        pytest.param({"pause_flags": frozenset({"deceased"})}, "pause", "deceased", id="deceased"),
        pytest.param({"pause_flags": frozenset({"bankruptcy"})}, "pause", "bankruptcy", id="bankruptcy"),
        pytest.param({"promise_to_pay_until": TODAY + timedelta(days=5)}, "pause", "promise to pay",
                     id="promise-in-the-future"),
        pytest.param({"promise_to_pay_until": TODAY}, "pause", "promise to pay", id="promise-until-today"),
        pytest.param({"promise_to_pay_until": TODAY - timedelta(days=1)}, None, "", id="broken-promise-resumes"),
        pytest.param({}, None, "", id="nothing"),
    ],
)
def test_pause(changes: dict[str, Any], expected: str | None, words: str) -> None:
    decision = plan(overdue(5, **changes), AT_0900)
    assert decision.reason == expected
    if expected:
        assert decision.reason == Reason.PAUSED
        assert {c.verdict for c in decision.channels} == {Verdict.HOLD}  # recorded, not sent, claim kept free
        assert {c.rule_id for c in decision.channels} == {"pause"}
        assert words in decision.detail
        assert decision.step is not None  # which reminder was held back is known
    else:
        assert verdicts(decision) == {"email": ("send", None), "sms": ("fallback", None)}


def test_pause_wins_over_the_window() -> None:
    """Stops come before deferrals: a paused account is not deferred, it gets nothing."""
    assert plan(overdue(2, dispute=True), AT_2200).reason == "pause"


# opt-out and bad-address -----------------------------------------------------------------------------------------
def suppressed(kind: ChannelKind, address: str, source: str) -> BatchHistory:
    history = BatchHistory()
    history.suppressions[(kind.value, address_hash(address))] = Suppression(
        kind.value, address_hash(address), source, AT_0900 - timedelta(days=1))
    return history


PHONE, TOKEN, MAIL = BORROWER.phone or "", BORROWER.push_token or "", BORROWER.email or ""


@pytest.mark.parametrize(
    ("account", "history", "expected"),
    [
        pytest.param(overdue(2, opt_out_channels=frozenset({"sms"})), BatchHistory(),
                     {"push": ("send", None), "sms": ("suppress", "opt-out")}, id="account-opt-out-sms"),
        pytest.param(overdue(2, opt_out_channels=frozenset({"push", "sms"})), BatchHistory(),
                     {"push": ("suppress", "opt-out"), "sms": ("suppress", "opt-out")}, id="account-opt-out-all"),
        pytest.param(overdue(2, opt_out_channels=frozenset({"email"})), BatchHistory(),
                     {"push": ("send", None), "sms": ("send", None)}, id="opt-out-of-an-unused-channel"),
        pytest.param(overdue(2), suppressed(SMS, PHONE, "inbound_stop"),
                     {"push": ("send", None), "sms": ("suppress", "opt-out")}, id="stop-reply"),
        pytest.param(overdue(2), suppressed(SMS, PHONE, "provider_opt_out"),
                     {"push": ("send", None), "sms": ("suppress", "opt-out")}, id="twilio-21610"),
        pytest.param(overdue(2), suppressed(SMS, PHONE, "bad_address"),
                     {"push": ("send", None), "sms": ("suppress", "bad-address")}, id="invalid-number"),
        pytest.param(overdue(2), suppressed(PUSH, TOKEN, "dead_token"),
                     {"push": ("suppress", "bad-address"), "sms": ("send", None)}, id="dead-push-token"),
        pytest.param(overdue(2), suppressed(EMAIL, PHONE, "unsubscribe"),
                     {"push": ("send", None), "sms": ("send", None)}, id="suppression-of-another-channel"),
        pytest.param(overdue(2), suppressed(SMS, "+8613900000000", "inbound_stop"),
                     {"push": ("send", None), "sms": ("send", None)}, id="suppression-of-another-number"),
        pytest.param(overdue(5), suppressed(EMAIL, MAIL, "unsubscribe"),
                     {"email": ("suppress", "opt-out"), "sms": ("send", None)}, id="email-unsubscribe-falls-back"),
    ],
)
def test_opt_out_and_bad_address(account: Account, history: BatchHistory,
                                 expected: dict[str, tuple[str, str | None]]) -> None:
    history = copy.deepcopy(history)  # the planner adds this batch's contacts: a case must not see a former run's
    decision = plan(account, AT_0900, history)
    assert verdicts(decision) == expected
    for found in decision.channels:
        if found.verdict is Verdict.SUPPRESS:
            assert found.not_before is None and found.detail


def test_opt_out_suppresses_even_outside_the_window() -> None:
    """A stop is final: at 22:00 the opted-out channel is suppressed, not deferred."""
    decision = plan(overdue(2), AT_2200, suppressed(SMS, PHONE, "inbound_stop"))
    assert verdicts(decision) == {"push": ("defer", "window"), "sms": ("suppress", "opt-out")}


def test_opted_out_channel_is_not_counted_by_caps_of_the_same_batch() -> None:
    history = suppressed(SMS, PHONE, "inbound_stop")
    first, second = planner("cn").plan([BORROWER, SIBLING], history, AT_0900)
    assert channel(first, SMS).rule_id == "opt-out"
    assert channel(second, SMS).rule_id == "opt-out"  # same number, not "cap"
    assert all(c.channel != "sms" for c in history.by_address.get(address_hash(PHONE), []))  # no SMS counted


# no_address ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("account", "expected", "reason"),
    [
        pytest.param(overdue(2, phone=None), {"push": ("send", None), "sms": ("suppress", "no_address")}, None,
                     id="no-phone"),
        pytest.param(overdue(2, push_token=None, phone=None),
                     {"push": ("suppress", "no_address"), "sms": ("suppress", "no_address")}, "no_address",
                     id="no-address-at-all"),
        pytest.param(overdue(5, email=None), {"email": ("suppress", "no_address"), "sms": ("send", None)}, None,
                     id="fallback-step-without-email"),
    ],
)
def test_no_address(account: Account, expected: dict[str, tuple[str, str | None]], reason: str | None) -> None:
    decision = plan(account, AT_0900)
    assert verdicts(decision) == expected
    assert decision.reason == reason


# superseded (through the ledger) ---------------------------------------------------------------------------------
def plan_and_book(app: App, chosen: Planner, accounts: Sequence[Account], now: datetime) -> list[Decision]:
    history = app.ledger.load_history(accounts, now - timedelta(days=7))
    decisions = chosen.plan(accounts, history, now)
    app.booker().book(decisions, None, now)
    return decisions


def test_superseded_a_deferred_reminder_is_replaced_by_the_newer_step(app: App) -> None:
    """Deferred at 22:00 on day 3 (gentle); on day 4 the firm step is due: gentle is suppressed as superseded."""
    chosen = planner("cn")
    account = overdue(3)
    gentle = reminder_key("L1", account.due_date, "gentle", 0)
    firm = reminder_key("L1", account.due_date, "firm", 0)

    (first,) = plan_and_book(app, chosen, [account], AT_2200)
    assert first.reason == "window"
    deferred = attempt_rows(app, status="deferred")
    assert sorted((r["reminder_key"], r["channel"], r["try_no"], r["rule_id"]) for r in deferred) == [
        (gentle, "push", 0, "window"), (gentle, "sms", 0, "window")]
    assert all(r["not_before"] == shanghai(2026, 3, 11, 8) for r in deferred)

    (second,) = plan_and_book(app, chosen, [account], shanghai(2026, 3, 11, 9))
    assert second.reminder_key == firm and second.reason is None
    assert sorted((d.reminder_key, d.channel, newer) for d, newer in second.superseded) == [
        (gentle, "push", firm), (gentle, "sms", firm)]
    rows = attempt_rows(app, reminder_key=gentle, try_no=1)
    assert sorted((r["channel"], r["status"], r["rule_id"]) for r in rows) == [
        ("push", "suppressed", "superseded"), ("sms", "suppressed", "superseded")]
    assert all(firm in r["detail"] for r in rows)
    assert [(r["channel"], r["status"]) for r in attempt_rows(app, reminder_key=firm)] == [("email", "planned")]

    # a third plan finds nothing pending any more
    history = app.ledger.load_history([account])
    assert chosen.plan_account(account, history, shanghai(2026, 3, 11, 10)).superseded == ()


def test_superseded_not_when_no_step_is_due_then_the_deferred_one_is_sent(app: App) -> None:
    """Deferred at 22:00 on day 14 (firm, occurrence 3); day 15 is a gap of the ladder: the deferred one goes out."""
    chosen = planner("cn")
    account = overdue(14)
    key = reminder_key("L1", account.due_date, "firm", 3)
    (first,) = plan_and_book(app, chosen, [account], AT_2200)
    assert (first.reminder_key, first.reason) == (key, "window")

    (second,) = plan_and_book(app, chosen, [account], shanghai(2026, 3, 11, 9))
    assert second.days_overdue == 15
    assert second.reminder_key == key and second.reason is None and second.superseded == ()
    assert verdicts(second) == {"email": ("send", None), "sms": ("fallback", None)}
    assert [(r["channel"], r["status"], r["try_no"]) for r in attempt_rows(app, reminder_key=key)] == [
        ("email", "deferred", 0), ("email", "planned", 1)]


def test_superseded_deferred_reminder_of_an_earlier_delinquency_is_ignored(app: App) -> None:
    """A deferral from a previous due date belongs to another delinquency: neither resumed nor superseded."""
    chosen = planner("cn")
    old = overdue(2, today=date(2026, 1, 10))
    plan_and_book(app, chosen, [old], shanghai(2026, 1, 10, 22))
    (decision,) = plan_and_book(app, chosen, [overdue(2)], AT_0900)
    assert decision.superseded == ()
    assert decision.reminder_key == reminder_key("L1", overdue(2).due_date, "gentle", 0)


# send-time re-check (SendCheck) ----------------------------------------------------------------------------------
def deliver(app: App, jobs: Sequence[DeliveryJob]) -> RunCounts:
    deliverer = app.deliverer(app.pipeline)

    async def go() -> RunCounts:
        try:
            return await deliverer.deliver(jobs)
        finally:
            await deliverer.aclose()

    return asyncio.run(go())


def test_send_check_settled_between_plan_and_send_is_paid(app: App) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)),
              demo_row("P2", TODAY - timedelta(days=2), phone="+8613900001111"))
    jobs = book_all(app)
    assert sorted((j.account.account_id, j.channel.value) for j in jobs) == [
        ("P1", "push"), ("P1", "sms"), ("P2", "push"), ("P2", "sms")]
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == "P1")
                           .values(overdue_amount="0.00"))
    counts = deliver(app, jobs)
    assert (counts.sent, counts.suppressed) == (2, 2)
    paid = attempt_rows(app, account_id="P1")
    assert [(r["channel"], r["status"], r["rule_id"]) for r in paid] == [
        ("push", "suppressed", "paid"), ("sms", "suppressed", "paid")]
    assert all("settled" in r["detail"] for r in paid)
    assert [r["status"] for r in attempt_rows(app, account_id="P2")] == ["sent", "sent"]


def test_send_check_rereads_the_batch_being_planned_and_sees_a_change(app: App) -> None:
    """Delivery inside the source loop, as in a run without a broker: the unchanged row is the planned
    account again, the changed one is validated afresh."""
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)),
              demo_row("P2", TODAY - timedelta(days=2), phone="+8613900001111"))
    now, pipeline = app.clock(), app.pipeline
    counts = RunCounts()
    for batch in pipeline.source.batches():
        history = app.ledger.load_history(batch.accounts, pipeline.policy.contacts_since(now))
        jobs = app.booker().book(pipeline.planner.plan(batch.accounts, history, now), None, now)[0]
        with app.engine.begin() as connection:
            connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == "P1")
                               .values(overdue_amount="0.00"))
        counts.add(deliver(app, jobs))
    assert (counts.sent, counts.suppressed) == (2, 2)
    assert {(r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="P1")} == {("suppressed", "paid")}
    assert [r["status"] for r in attempt_rows(app, account_id="P2")] == ["sent", "sent"]


def test_a_partial_payment_between_plan_and_send_is_the_amount_the_message_states(app: App) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2), overdue_amount="1234.50"))
    jobs = book_all(app)
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).values(overdue_amount="600.00"))
    assert deliver(app, jobs).sent == 2
    (sms,) = [json.loads(line) for line in (app.settings.outbox_dir / "sms.jsonl").read_text("utf-8").splitlines()]
    assert "¥600.00" in sms["text"] and "1,234.50" not in sms["text"]


def test_send_check_account_gone_from_the_source_is_paid(app: App) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    jobs = book_all(app)
    with app.engine.begin() as connection:
        connection.execute(demo_accounts.delete())
    deliver(app, jobs)
    assert {(r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="P1")} == {("suppressed", "paid")}


def test_send_check_pause_set_between_plan_and_send(app: App) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    jobs = book_all(app)
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).values(dispute="yes"))
    deliver(app, jobs)
    assert {(r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="P1")} == {("suppressed", "pause")}


def test_send_check_stop_between_plan_and_send_suppresses_that_channel(app: App) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    jobs = book_all(app)
    suppress(app.engine, "sms", "+8613812345678", "inbound_stop", app.clock(), account_id="P1", detail="TD")
    counts = deliver(app, jobs)
    assert (counts.sent, counts.suppressed) == (1, 1)
    assert [(r["channel"], r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="P1")] == [
        ("push", "sent", None), ("sms", "suppressed", "opt-out")]


def test_send_check_dead_token_between_plan_and_send_is_bad_address(app: App) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    jobs = book_all(app)
    suppress(app.engine, "push", "fcm:P1", "dead_token", app.clock(), account_id="P1")
    deliver(app, jobs)
    assert [(r["channel"], r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="P1")] == [
        ("push", "suppressed", "bad-address"), ("sms", "sent", None)]


def test_send_check_outside_the_window_at_send_is_deferred_and_released(app: App, clock: Any) -> None:
    """Planned at 20:59 Shanghai, sent at 21:30: deferred at send, the claim given back for a later run."""
    clock.now = shanghai(2026, 3, 10, 20, 59)
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    evening = app.runs.start("evening", clock(), app.pipeline.loaded.version, "test", clock())
    assert evening is not None
    jobs = book_all(app, evening)
    assert len(jobs) == 2 and app.ledger.pending_count(evening) == 2
    clock.now = shanghai(2026, 3, 10, 21, 30)
    counts = deliver(app, jobs)
    assert (counts.sent, counts.deferred) == (0, 2)
    # a run with Celery workers waits for its pending attempts: these wait for a later run, not for a worker
    assert (app.ledger.pending_count(evening), app.ledger.planned_ids(evening)) == (0, [])
    rows = attempt_rows(app, account_id="P1")
    claims = [r for r in rows if r["try_no"] == 1]
    decisions = [r for r in rows if r["try_no"] == 0]
    assert sorted((r["channel"], r["status"], r["attempted_at"]) for r in claims) == [
        ("push", "planned", None), ("sms", "planned", None)]
    assert sorted((r["channel"], r["status"], r["rule_id"]) for r in decisions) == [
        ("push", "deferred", "window"), ("sms", "deferred", "window")]
    assert all(r["not_before"] == shanghai(2026, 3, 11, 8) for r in decisions)

    # the next morning's booking hands the same claims out again, and they go out once
    clock.now = shanghai(2026, 3, 11, 9)
    morning = app.runs.start("morning", clock(), app.pipeline.loaded.version, "test", clock())
    assert morning is not None
    again = book_all(app, morning)
    assert sorted(j.attempt_id for j in again) == sorted(r["id"] for r in claims)
    assert app.ledger.pending_count(morning) == 2  # booked again: this run's to deliver
    assert deliver(app, again).sent == 2
    assert app.ledger.pending_count(morning) == 0
    assert sorted(r["status"] for r in attempt_rows(app, account_id="P1", try_no=1)) == ["sent", "sent"]


def test_send_check_released_claim_overtaken_by_a_newer_step_is_superseded(app: App, clock: Any) -> None:
    """Released at 21:30 on day 3 (gentle); on day 4 firm is due: the gentle claim must not stay 'planned' forever."""
    clock.now = shanghai(2026, 3, 10, 20, 59)
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=3)))
    jobs = book_all(app)
    clock.now = shanghai(2026, 3, 10, 21, 30)
    deliver(app, jobs)
    clock.now = shanghai(2026, 3, 11, 9)
    deliver(app, book_all(app))
    gentle = attempt_rows(app, step="gentle", try_no=1)
    assert sorted((r["channel"], r["status"], r["rule_id"]) for r in gentle) == [
        ("push", "suppressed", "superseded"), ("sms", "suppressed", "superseded")]


def test_send_check_address_changed_between_plan_and_send_is_not_used(app: App) -> None:
    """The number was replaced on the account after planning: the old one may belong to someone else now."""
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    jobs = book_all(app)
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).values(phone="+8613900002222"))
    counts = deliver(app, jobs)
    assert (counts.sent, counts.deferred) == (1, 1)
    rows = attempt_rows(app, channel="sms")
    assert sorted((r["try_no"], r["status"], r["rule_id"]) for r in rows) == [
        (0, "deferred", "third-party"), (1, "planned", "third-party")]  # given back, marked why
    sms_out = app.settings.outbox_dir / "sms.jsonl"
    assert not sms_out.exists() or "+8613812345678" not in sms_out.read_text(encoding="utf-8")


def test_send_check_address_changed_the_next_run_records_the_address_actually_used(app: App, clock: Any) -> None:
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)))
    jobs = book_all(app)
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).values(phone="+8613900002222"))
    deliver(app, jobs)
    clock.advance(timedelta(minutes=30))
    deliver(app, book_all(app))
    sms_out = app.settings.outbox_dir / "sms.jsonl"
    assert [json.loads(line)["to"] for line in sms_out.read_text(encoding="utf-8").splitlines()] == ["+8613900002222"]
    (claim,) = attempt_rows(app, channel="sms", try_no=1)
    assert claim["status"] == "sent"
    assert (claim["address"], claim["address_hash"]) == ("+86139****2222", address_hash("+8613900002222"))


@dataclass
class BouncingEmail:
    """A provider double: every email bounces permanently (a bad mailbox)."""

    kind: ChannelKind = EMAIL
    provider: str = "bouncing"

    async def send(self, message: Message) -> DeliveryResult:
        return DeliveryResult.permanent("550", "mailbox unavailable")

    async def aclose(self) -> None:
        return None


def test_send_check_fallback_after_a_bounce_respects_the_sms_cap(app: App, clock: Any) -> None:
    """cn: 1 SMS a day per borrower. The first loan got its SMS at 09:00; the second loan's email bounces at 10:00."""
    seed_rows(app.engine, demo_row("P1", TODAY - timedelta(days=2)),
              demo_row("P2", TODAY - timedelta(days=5), push_token=None))
    deliver(app, [j for j in book_all(app) if j.account.account_id == "P1"])
    assert [r["status"] for r in attempt_rows(app, account_id="P1", channel="sms")] == ["sent"]
    clock.now = shanghai(2026, 3, 10, 10)
    jobs = [j for j in book_all(app) if j.account.account_id == "P2"]
    assert [(j.channel.value, j.fallbacks) for j in jobs] == [("email", (SMS,))]
    wired = app.deliverer(app.pipeline)
    outbox = app.channels()
    bouncing = Deliverer(app.ledger, app.pipeline.composer, app.pipeline.loaded.schedule,
                         {**outbox, EMAIL: BouncingEmail()}, policy=DeliveryPolicy(max_tries=1), clock=app.clock,
                         send_check=wired.send_check, content_check=wired.content_check)

    async def go() -> None:
        try:
            await bouncing.deliver(jobs)
        finally:
            await bouncing.aclose()
            await wired.aclose()

    asyncio.run(go())
    sms_today = [r for r in attempt_rows(app, channel="sms") if r["status"] == "sent"]
    assert len(sms_today) == 1, [(r["account_id"], r["attempted_at"]) for r in sms_today]


_ZONES = ("Asia/Shanghai", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "UTC")


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2032, 12, 31), timezones=st.just(UTC)),
       zones=st.lists(st.sampled_from(_ZONES), min_size=1, max_size=2, unique=True).map(tuple),
       start=st.integers(0, 24 * 60 - 1), length=st.integers(1, 24 * 60),
       holiday=st.dates(min_value=date(2024, 1, 1), max_value=date(2032, 12, 31)))
def test_the_window_and_holiday_rules_answer_every_moment_of_a_minute_alike(
        moment: datetime, zones: tuple[str, ...], start: int, length: int, holiday: date) -> None:
    """Their answers are kept by the minute (the re-check at sending sees a new moment per message): any moment of
    a minute, on any zone's clock, gets the answer the minute's first moment gets, deferral time and wording
    included, and the next minute's moments get their own. Zones a half or
    three quarters of an hour off UTC, and one whose summer time is half an hour, are among them."""
    window = ClockRange(start, min(24 * 60, start + length))
    holidays = Holidays({"CN": frozenset({holiday, holiday + timedelta(days=1)})}, "CN")
    minute = moment.replace(second=0, microsecond=0)
    for rule in (WindowRule(window, zones[0], holidays), HolidayRule(holidays, window, zones[0])):
        assert rule._decide(moment, zones, "CN") == rule._decide(minute, zones, "CN")
        kept = type(rule)(*((window, zones[0], holidays) if isinstance(rule, WindowRule)
                            else (holidays, window, zones[0])))
        assert kept._decided.get(minute, zones, "CN") == rule._decide(minute, zones, "CN")
        assert kept._decided.get(moment, zones, "CN") == rule._decide(moment, zones, "CN")
        later = moment + timedelta(minutes=1)  # the next minute has an answer of its own
        assert kept._decided.get(later, zones, "CN") == rule._decide(later, zones, "CN")
        elsewhere = moment.astimezone(ZoneInfo(zones[-1]))  # the same moment on another zone's clock
        assert kept._decided.get(elsewhere, zones, "CN") == rule._decide(minute, zones, "CN")
