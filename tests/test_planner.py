"""The planner, table-driven: for each account, which channels are sent now and why the others are not."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.decisions import Decision, Reason, Verdict
from dispatcher.ladder import reminder_key
from dispatcher.masking import address_hash
from dispatcher.pipeline.history import BatchHistory, Suppression
from dispatcher.pipeline.plan import Planner
from dispatcher.rules.engine import RuleEngine, build_engine
from dispatcher.rules.policy import resolve_policy
from dispatcher.schedule.models import Schedule

SMS, EMAIL, PUSH = ChannelKind.SMS, ChannelKind.EMAIL, ChannelKind.PUSH
NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # 09:00 in Asia/Shanghai
TODAY = date(2026, 3, 10)

SCHEDULE = Schedule.model_validate({
    "timezone": "Asia/Shanghai",
    "profile": "none",  # no contact window, no caps: these tests are about the ladder, pauses and opt-outs
    "brand": {"zh-CN": {"name": "信用钱包", "hotline": "400-820-1234", "website": "https://example.cn/verify"}},
    "runs": [{"name": "morning", "cron": "0 9 * * *"}],
    "ladder": [
        {"step": "gentle", "days_overdue": "1-3", "channels": ["push", "sms"]},
        {"step": "firm", "days_overdue": "4-14", "every": "3d", "channels": ["email", "sms"], "fallback": True},
        {"step": "final", "days_overdue": "20-", "every": "7d", "channels": ["sms", "email", "push"]},
    ],
})
"""Days 15 to 19 are a gap in this ladder."""


def rules() -> RuleEngine:
    return build_engine(SCHEDULE, resolve_policy(SCHEDULE))

BORROWER = Account(
    account_id="L1", name="王伟", phone="+8613812345678", email="wang@example.cn", push_token="fcm:token",
    locale="zh-CN", timezone="Asia/Shanghai", currency="CNY", overdue_amount=Decimal("500.00"),
    due_date=TODAY - timedelta(days=2), deadline=None, repayment_account="6222 0212 1234 5678",
)


def overdue(days: int, **changes: Any) -> Account:
    return replace(BORROWER, due_date=TODAY - timedelta(days=days), **changes)


def key(account: Account, step: str, occurrence: int = 0) -> str:
    return reminder_key(account.account_id, account.due_date, step, occurrence)


Claims = dict[tuple[str, str], str]


def plan(account: Account, claims: Claims | None = None, now: datetime = NOW) -> Decision:
    history = BatchHistory(claims={account.account_id: claims or {}})
    return Planner(SCHEDULE, rules()).plan_account(account, history, now)


def verdicts(decision: Decision) -> dict[str, str]:
    return {c.channel.value: c.verdict.value for c in decision.channels}


GENTLE = overdue(2)
FIRM = overdue(5)


@pytest.mark.parametrize(
    ("account", "history", "reason", "expected"),
    [
        pytest.param(overdue(5, overdue_amount=Decimal(0)), {}, Reason.SETTLED, {}, id="settled-zero"),
        pytest.param(overdue(5, overdue_amount=Decimal("-3.20")), {}, Reason.SETTLED, {}, id="settled-negative"),
        pytest.param(overdue(0), {}, Reason.NOT_YET_OVERDUE, {}, id="due-today"),
        pytest.param(overdue(-4), {}, Reason.NOT_YET_OVERDUE, {}, id="due-later"),
        pytest.param(overdue(17), {}, Reason.NO_STEP_DUE, {}, id="ladder-gap"),
        pytest.param(GENTLE, {}, None, {"push": "send", "sms": "send"}, id="gentle"),
        pytest.param(GENTLE, {(key(GENTLE, "gentle"), "push"): "sent", (key(GENTLE, "gentle"), "sms"): "delivered"},
                     Reason.ALREADY_SENT, {"push": "done", "sms": "done"}, id="already-sent"),
        pytest.param(GENTLE, {(key(GENTLE, "gentle"), "push"): "sent"},
                     None, {"push": "done", "sms": "send"}, id="one-channel-already-sent"),
        pytest.param(GENTLE, {(key(GENTLE, "gentle"), "push"): "planned", (key(GENTLE, "gentle"), "sms"): "planned"},
                     None, {"push": "send", "sms": "send"}, id="planned-is-not-sent"),
        pytest.param(overdue(2, push_token=None), {}, None, {"push": "suppress", "sms": "send"}, id="no-push-token"),
        pytest.param(overdue(2, push_token=None, phone=None), {}, Reason.NO_ADDRESS,
                     {"push": "suppress", "sms": "suppress"}, id="no-address-at-all"),
        pytest.param(overdue(22), {}, None, {"sms": "send", "email": "send", "push": "send"}, id="final"),
        pytest.param(overdue(22, email=None), {}, None, {"sms": "send", "email": "suppress", "push": "send"},
                     id="final-no-email"),
    ],
)
def test_decisions(account: Account, history: Claims, reason: str | None, expected: dict[str, str]) -> None:
    decision = plan(account, history)
    assert decision.reason == reason
    assert verdicts(decision) == expected
    assert decision.account_id == account.account_id
    if reason is not None:
        assert decision.detail
        assert not decision.sends


def test_the_step_and_occurrence_of_a_due_reminder() -> None:
    decision = plan(overdue(11))
    assert decision.step is not None and decision.step.step == "firm"
    assert (decision.days_overdue, decision.occurrence, decision.local_today) == (11, 2, TODAY)
    assert decision.reminder_key == key(overdue(11), "firm", 2)
    assert decision.zone == "Asia/Shanghai"


def test_no_address_is_suppressed_with_its_rule() -> None:
    decision = plan(overdue(2, push_token=None))
    (push,) = (c for c in decision.channels if c.channel is PUSH)
    assert (push.verdict, push.rule_id, push.address) == (Verdict.SUPPRESS, Reason.NO_ADDRESS, None)
    assert [c.channel for c in decision.sends] == [SMS]


@pytest.mark.parametrize(
    ("account", "history", "expected"),
    [
        pytest.param(FIRM, {}, {"email": "send", "sms": "fallback"}, id="first-channel-sends"),
        pytest.param(overdue(5, email=None), {}, {"email": "suppress", "sms": "send"}, id="no-email-sms-sends"),
        pytest.param(FIRM, {(key(FIRM, "firm"), "email"): "failed"}, {"email": "done", "sms": "send"},
                     id="email-failed-sms-sends"),
        pytest.param(FIRM, {(key(FIRM, "firm"), "email"): "undelivered"}, {"email": "done", "sms": "send"},
                     id="email-undelivered-sms-sends"),
        pytest.param(FIRM, {(key(FIRM, "firm"), "email"): "sent"}, {"email": "done", "sms": "fallback"},
                     id="email-sent-nothing-more"),
        pytest.param(FIRM, {(key(FIRM, "firm"), "email"): "sending"}, {"email": "done", "sms": "fallback"},
                     id="email-sending-nothing-more"),
        pytest.param(FIRM, {(key(FIRM, "firm"), "email"): "planned"}, {"email": "send", "sms": "fallback"},
                     id="email-planned-sends-again"),
    ],
)
def test_fallback_steps_send_one_channel(account: Account, history: Claims, expected: dict[str, str]) -> None:
    decision = plan(account, history)
    assert verdicts(decision) == expected
    assert len(decision.sends) <= 1


def test_fallback_after_a_sent_first_channel_is_already_sent() -> None:
    decision = plan(FIRM, {(key(FIRM, "firm"), "email"): "sent"})
    assert decision.reason == Reason.ALREADY_SENT
    assert not decision.sends


def test_fallbacks_after_lists_the_held_back_channels() -> None:
    decision = plan(FIRM)
    assert [c.channel for c in decision.fallbacks_after(EMAIL)] == [SMS]
    assert decision.fallbacks_after(SMS) == ()


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        pytest.param({"do_not_contact": "attorney"}, "attorney", id="do-not-contact"),
        pytest.param({"dispute": True}, "dispute", id="dispute"),
        pytest.param({"promise_to_pay_until": TODAY + timedelta(days=3)}, "promise to pay", id="promise-future"),
        pytest.param({"promise_to_pay_until": TODAY}, "promise to pay", id="promise-today"),
    ],
)
def test_pauses(changes: dict[str, Any], detail: str) -> None:
    decision = plan(overdue(5, **changes))
    assert decision.reason == "pause"
    assert detail in decision.detail
    # every channel of the reminder is held (recorded once in the ledger), none sent, none claimed
    assert {(c.channel.value, c.verdict, c.rule_id) for c in decision.channels} == {
        ("email", Verdict.HOLD, "pause"), ("sms", Verdict.HOLD, "pause")}
    assert decision.step is not None  # the ledger can still say which reminder was paused


def test_a_broken_promise_resumes_the_ladder() -> None:
    decision = plan(overdue(5, promise_to_pay_until=TODAY - timedelta(days=1)))
    assert decision.reason is None
    assert verdicts(decision) == {"email": "send", "sms": "fallback"}


def test_opted_out_channel_is_suppressed() -> None:
    decision = plan(overdue(22, opt_out_channels=frozenset({"email"})))
    assert verdicts(decision) == {"sms": "send", "email": "suppress", "push": "send"}
    (email,) = (c for c in decision.channels if c.channel is EMAIL)
    assert email.rule_id == "opt-out"
    assert email.detail


def test_opting_out_of_every_channel_gives_the_rule_as_reason() -> None:
    decision = plan(overdue(2, opt_out_channels=frozenset({"sms", "push"})))
    assert decision.reason == "opt-out"
    assert not decision.sends


def test_opting_out_of_the_first_fallback_channel_sends_the_next() -> None:
    decision = plan(overdue(5, opt_out_channels=frozenset({"email"})))
    assert verdicts(decision) == {"email": "suppress", "sms": "send"}


def test_days_are_counted_in_the_borrowers_zone() -> None:
    late_evening_utc = datetime(2026, 3, 9, 20, 0, tzinfo=UTC)  # already 3-10 in Shanghai, 3-09 in New York
    shanghai = plan(overdue(1), now=late_evening_utc)
    new_york = plan(overdue(1, timezone="America/New_York", phone="+12125550123"), now=late_evening_utc)
    assert (shanghai.local_today, shanghai.days_overdue) == (date(2026, 3, 10), 1)
    assert (new_york.local_today, new_york.reason) == (date(2026, 3, 9), Reason.NOT_YET_OVERDUE)


def test_the_zone_comes_from_the_phone_when_the_account_has_none() -> None:
    decision = plan(overdue(3, timezone=None, phone="+12125550123"))
    assert decision.zone == "America/New_York"


def test_plan_keeps_the_order_of_accounts_and_uses_each_history() -> None:
    a, b = overdue(2, account_id="A"), overdue(2, account_id="B")
    history = BatchHistory(claims={"B": {(key(b, "gentle"), "push"): "sent", (key(b, "gentle"), "sms"): "sent"}})
    decisions = Planner(SCHEDULE, rules()).plan([a, b], history, NOW)
    assert [(d.account_id, d.reason) for d in decisions] == [("A", None), ("B", Reason.ALREADY_SENT)]


def test_the_planner_is_pure() -> None:
    planner = Planner(SCHEDULE, rules())
    assert planner.plan_account(FIRM, BatchHistory(), NOW) == planner.plan_account(FIRM, BatchHistory(), NOW)


@pytest.mark.parametrize(("source", "rule_id"), [("inbound_stop", "opt-out"), ("provider_opt_out", "opt-out"),
                                                 ("bad_address", "bad-address"), ("dead_token", "bad-address")])
def test_suppressed_addresses_are_not_used(source: str, rule_id: str) -> None:
    account = overdue(22)
    assert account.phone is not None
    digest = address_hash(account.phone)
    history = BatchHistory(suppressions={("sms", digest): Suppression("sms", digest, source, NOW)})
    decision = Planner(SCHEDULE, rules()).plan_account(account, history, NOW)
    assert verdicts(decision) == {"sms": "suppress", "email": "send", "push": "send"}
    (sms,) = (c for c in decision.channels if c.channel is SMS)
    assert sms.rule_id == rule_id
    assert source in (sms.detail or "")
