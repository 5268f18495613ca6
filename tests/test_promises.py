"""Promises that once broke unnoticed, each guarded here by a test that fails when it breaks again.

* windows that touch midnight (``00:00-…`` and ``…-24:00``) stay in force;
* a borrower without a phone still gets the holiday deferral (the holiday region
  otherwise comes from the phone number);
* caps count every send, also a retry's and a fallback channel's, whichever way
  the channel records its send time (handed over first, or asked after a crash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rows import attempt_rows, book_all, demo_row, seed_rows
from sqlalchemy import update
from test_rules import BORROWER, PUSH, SMS, channel, contact, history_with, overdue, plan, schedule, shanghai

from dispatcher.app import App, build_app
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel, DeliveryResult, Message
from dispatcher.decisions import Verdict
from dispatcher.demo import demo_accounts
from dispatcher.ledger import claims
from dispatcher.ledger.suppressions import suppress
from dispatcher.pipeline.deliver import Deliverer, DeliveryPolicy
from dispatcher.pipeline.run import Runner
from dispatcher.pipeline.source import AccountSource
from dispatcher.rules.policy import resolve_policy
from dispatcher.send_check import SendCheck
from dispatcher.settings import Settings

EMAIL = ChannelKind.EMAIL
FAST = DeliveryPolicy(concurrency=4, max_tries=3, backoff_base=0.001, backoff_cap=0.01)


# windows touching midnight -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "not_before"),
    [
        pytest.param(shanghai(2026, 3, 10, 20), None, id="20:00-start-is-inclusive"),
        pytest.param(shanghai(2026, 3, 10, 23, 45), None, id="23:45"),
        pytest.param(shanghai(2026, 3, 10, 23, 59), None, id="23:59-before-the-24:00-end"),
        pytest.param(shanghai(2026, 3, 10, 19, 59), shanghai(2026, 3, 10, 20), id="19:59-to-20:00"),
        pytest.param(shanghai(2026, 3, 10, 0, 0), shanghai(2026, 3, 10, 20), id="00:00-is-outside"),
        pytest.param(shanghai(2026, 3, 10, 9), shanghai(2026, 3, 10, 20), id="09:00-to-20:00"),
    ],
)
def test_a_window_ending_at_2400_allows_the_last_minute_and_not_midnight(now: datetime,
                                                                         not_before: datetime | None) -> None:
    account = overdue(2, today=(now + timedelta(hours=8)).date())
    decision = plan(account, now, contact_window="20:00-24:00")
    for kind in (PUSH, SMS):
        found = channel(decision, kind)
        assert (found.verdict, found.rule_id, found.not_before) == (
            (Verdict.SEND, None, None) if not_before is None else (Verdict.DEFER, "window", not_before))
        if not_before is not None:
            assert "20:00-24:00" in (found.detail or "")


@pytest.mark.parametrize(
    ("now", "not_before"),
    [
        pytest.param(shanghai(2026, 3, 10, 0, 0), None, id="00:00-start-is-inclusive"),
        pytest.param(shanghai(2026, 3, 10, 0, 1), None, id="00:01"),
        pytest.param(shanghai(2026, 3, 10, 7, 59), None, id="07:59"),
        pytest.param(shanghai(2026, 3, 10, 8), shanghai(2026, 3, 11, 0), id="08:00-end-is-exclusive"),
        pytest.param(shanghai(2026, 3, 10, 23, 59), shanghai(2026, 3, 11, 0), id="23:59-to-midnight"),
        pytest.param(shanghai(2026, 3, 10, 12, 7), shanghai(2026, 3, 11, 0), id="12:07-to-midnight"),
    ],
)
def test_a_window_starting_at_0000_allows_midnight_and_defers_to_it(now: datetime,
                                                                     not_before: datetime | None) -> None:
    account = overdue(2, today=(now + timedelta(hours=8)).date())
    decision = plan(account, now, contact_window="00:00-08:00")
    for kind in (PUSH, SMS):
        found = channel(decision, kind)
        assert (found.verdict, found.rule_id, found.not_before) == (
            (Verdict.SEND, None, None) if not_before is None else (Verdict.DEFER, "window", not_before))


@pytest.mark.parametrize("hour", [0, 3, 12, 21, 23])
def test_a_window_of_the_whole_day_never_defers(hour: int) -> None:
    now = shanghai(2026, 3, 10, hour, 59)
    decision = plan(overdue(2, today=date(2026, 3, 10)), now, contact_window="00:00-24:00")
    assert decision.reason is None
    assert {c.channel: c.verdict for c in decision.channels} == {PUSH: Verdict.SEND, SMS: Verdict.SEND}


def test_a_window_starting_at_0000_skips_a_holiday_to_the_next_midnight() -> None:
    now = shanghai(2026, 9, 30, 9)  # outside 00:00-08:00, and the next two days are holidays
    decision = plan(overdue(2, today=date(2026, 9, 30)), now, contact_window="00:00-08:00",
                    holidays={"CN": ["2026-10-01", "2026-10-02"]})
    assert channel(decision, SMS).not_before == shanghai(2026, 10, 3, 0)


# holidays for a borrower without a phone ---------------------------------------------------------------------------
HOLIDAYS = {"CN": ["2026-10-01", "2026-10-02", "2026-10-03"]}
EMAIL_ONLY = {"phone": None, "push_token": None}


@pytest.mark.parametrize("profile_region", [("cn", {}), ("none", {"region": "CN", "contact_window": "08:00-21:00"})],
                         ids=["cn-default-region", "region-set-in-schedules.yaml"])
def test_a_borrower_without_a_phone_waits_out_the_holiday(profile_region: tuple[str, dict[str, Any]]) -> None:
    profile, settings = profile_region
    account = overdue(5, today=date(2026, 10, 1), **EMAIL_ONLY)  # firm: email (+ sms, no number)
    decision = plan(account, shanghai(2026, 10, 1, 9), profile=profile, holidays=HOLIDAYS, **settings)
    email = channel(decision, EMAIL)
    assert (email.verdict, email.rule_id, email.not_before) == (Verdict.DEFER, "holiday", shanghai(2026, 10, 4, 8))
    assert decision.reason == "holiday"


def test_a_window_deferral_without_a_phone_skips_the_holidays() -> None:
    account = overdue(5, today=date(2026, 9, 30), **EMAIL_ONLY)
    decision = plan(account, shanghai(2026, 9, 30, 22), holidays=HOLIDAYS)
    email = channel(decision, EMAIL)
    assert (email.verdict, email.rule_id, email.not_before) == (Verdict.DEFER, "window", shanghai(2026, 10, 4, 8))


def test_a_borrower_without_a_phone_is_not_held_on_the_day_after_the_holidays() -> None:
    account = overdue(5, today=date(2026, 10, 4), **EMAIL_ONLY)
    assert channel(plan(account, shanghai(2026, 10, 4, 9), holidays=HOLIDAYS), EMAIL).verdict is Verdict.SEND


def test_without_a_phone_the_holiday_is_also_rechecked_just_before_sending(app: App, clock: Any) -> None:
    """Shipped schedule (CN holiday 2027-01-01): planned on the eve, sent only after the holiday."""
    seed_rows(app.engine, demo_row("E1", date(2026, 12, 27), phone=None, push_token=None))  # day 4 on 12-31
    clock.now = shanghai(2026, 12, 31, 20)
    jobs = [j for j in book_all(app) if j.channel is EMAIL]
    assert [j.account.account_id for j in jobs] == ["E1"]
    clock.now = shanghai(2027, 1, 1, 9)  # the holiday has begun by the time the email goes out
    counts = deliver(app, jobs)
    assert (counts.sent, counts.deferred) == (0, 1)
    (deferred,) = attempt_rows(app, status="deferred")
    assert (deferred["rule_id"], deferred["not_before"]) == ("holiday", shanghai(2027, 1, 2, 8))

    clock.now = shanghai(2027, 1, 2, 9)
    assert Runner(app).run("morning", clock.now).counts.sent == 1
    assert [r["channel"] for r in attempt_rows(app, status="sent")] == ["email"]


# caps count retries and fallbacks ----------------------------------------------------------------------------------
@dataclass
class ScriptedChannel:
    """A provider double answering from a script (then ``sent``). Handed over before each call, like SMTP."""

    kind: ChannelKind
    script: list[DeliveryResult] = field(default_factory=list)
    taken: dict[int, str] = field(default_factory=dict)
    provider: str = "scripted"

    async def send(self, message: Message) -> DeliveryResult:
        if self.script:
            return self.script.pop(0)
        self.taken[message.attempt_id] = f"{self.kind.value}-{message.attempt_id}"
        return DeliveryResult.sent(self.taken[message.attempt_id])

    async def aclose(self) -> None:
        return None


@dataclass
class AskableChannel(ScriptedChannel):
    """The same double, but it can say which attempts it took (like the outbox): no hand-over marker first."""

    async def find_attempt(self, attempt_id: int) -> str | None:
        return self.taken.get(attempt_id)


CHANNEL_TYPES = [pytest.param(ScriptedChannel, id="handed-over"), pytest.param(AskableChannel, id="askable")]


def deliver(app: App, jobs: list[Any], replace: Mapping[ChannelKind, Channel] | None = None) -> Any:
    """Deliver ``jobs`` with the app's checks and channels, some of them replaced by doubles."""
    wired = app.deliverer(app.pipeline)
    channels: dict[ChannelKind, Channel] = {**app.channels(), **(replace or {})}
    deliverer = Deliverer(app.ledger, app.pipeline.composer, app.pipeline.loaded.schedule, channels, policy=FAST,
                          clock=app.clock, headers_for=wired.headers_for, send_check=wired.send_check,
                          content_check=wired.content_check)

    async def go() -> Any:
        try:
            return await deliverer.deliver(jobs)
        finally:
            await deliverer.aclose()
            await wired.aclose()

    return asyncio.run(go())


def second_loan_sms(app: App, clock: Any) -> dict[str, Any]:
    """A second loan on the same phone, planned an hour later: its SMS attempt row (cn: 1 SMS a day)."""
    seed_rows(app.engine, demo_row("P2", date(2026, 3, 8)))
    clock.now = shanghai(2026, 3, 10, 10)
    book_all(app)
    (row,) = attempt_rows(app, account_id="P2", channel="sms")
    return row


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_a_retried_sms_counts_against_the_daily_sms_cap(app: App, clock: Any, kind: type[ScriptedChannel]) -> None:
    seed_rows(app.engine, demo_row("P1", date(2026, 3, 8)))  # day 2: gentle, push and SMS
    sms = kind(SMS, [DeliveryResult.transient("20429", "too many requests", 0.0)])
    counts = deliver(app, book_all(app), {SMS: sms})
    assert counts.sent == 2
    tries = attempt_rows(app, account_id="P1", channel="sms")
    assert [(t["try_no"], t["status"]) for t in tries] == [(1, "failed"), (2, "sent")]
    assert tries[1]["attempted_at"] == clock.now  # the retry's send time is what caps count

    row = second_loan_sms(app, clock)
    assert (row["status"], row["rule_id"]) == ("deferred", "cap")
    assert row["not_before"] == shanghai(2026, 3, 11, 9)  # a day after the retry went out


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_a_fallback_sms_counts_against_the_daily_sms_cap(app: App, clock: Any, kind: type[ScriptedChannel]) -> None:
    seed_rows(app.engine, demo_row("P1", date(2026, 3, 5), push_token=None))  # day 5: firm, email then SMS
    bouncing = kind(EMAIL, [DeliveryResult.permanent("550", "mailbox unavailable")])
    sms = kind(SMS)
    deliver(app, book_all(app), {EMAIL: bouncing, SMS: sms})
    (fallback,) = attempt_rows(app, account_id="P1", channel="sms")
    assert (fallback["status"], fallback["try_no"], fallback["attempted_at"]) == ("sent", 1, clock.now)
    assert fallback["parent_id"] is not None

    row = second_loan_sms(app, clock)
    assert (row["status"], row["rule_id"]) == ("deferred", "cap")
    assert row["not_before"] == shanghai(2026, 3, 11, 9)


@pytest.fixture
def three_a_day(workdir: Path, clock: Any) -> Iterator[App]:
    """The shipped schedule with one cap only: 3 contacts a day per borrower (no SMS cap)."""
    path = workdir / "schedules.yaml"
    text, found = re.subn(r"(?m)^compliance:$", "compliance:\n  caps: [{max: 3, per: 1d}]",
                          path.read_text(encoding="utf-8"))
    assert found == 1
    path.write_text(text, encoding="utf-8")
    built = build_app(Settings.from_env(), clock=clock)
    yield built
    built.engine.dispose()


@pytest.mark.parametrize("kind", CHANNEL_TYPES)
def test_retries_and_fallbacks_count_against_the_daily_contact_cap(three_a_day: App, clock: Any,
                                                                   kind: type[ScriptedChannel]) -> None:
    """A retried push, an SMS and another loan's fallback SMS are 3 contacts: a third loan waits for tomorrow."""
    app = three_a_day
    seed_rows(app.engine, demo_row("P1", date(2026, 3, 8)))  # gentle: push (retried), SMS
    deliver(app, book_all(app), {PUSH: kind(PUSH, [DeliveryResult.transient("503", "unavailable", 0.0)])})
    seed_rows(app.engine, demo_row("P3", date(2026, 3, 5), push_token=None))
    clock.now = shanghai(2026, 3, 10, 9, 30)  # firm: the email bounces, the SMS fallback goes out
    deliver(app, book_all(app), {EMAIL: kind(EMAIL, [DeliveryResult.permanent("550", "mailbox unavailable")]),
                                 SMS: kind(SMS)})
    sent = sorted((r["account_id"], r["channel"], r["try_no"]) for r in attempt_rows(app, status="sent"))
    assert sent == [("P1", "push", 2), ("P1", "sms", 1), ("P3", "sms", 1)]

    seed_rows(app.engine, demo_row("P4", date(2026, 3, 8)))  # the same phone: the same borrower
    clock.now = shanghai(2026, 3, 10, 10)
    book_all(app)
    decided = {r["channel"]: (r["status"], r["rule_id"], r["not_before"]) for r in attempt_rows(app, account_id="P4")}
    assert decided == {"push": ("deferred", "cap", shanghai(2026, 3, 11, 9)),
                       "sms": ("deferred", "cap", shanghai(2026, 3, 11, 9))}


def test_borrower_fixture_is_the_shanghai_borrower() -> None:
    assert (BORROWER.timezone, BORROWER.phone) == ("Asia/Shanghai", "+8613812345678")


# the send-time re-check reads the suppressions of the borrower's current addresses ---------------------------------
def test_a_fallback_to_a_number_changed_since_planning_honours_that_numbers_stop(app: App, clock: Any) -> None:
    """Planned with one phone; before sending the source has a new one, which had replied STOP: no SMS to it."""
    seed_rows(app.engine, demo_row("N1", date(2026, 3, 5), push_token=None))  # firm: email, then SMS
    jobs = book_all(app)
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == "N1")
                           .values(phone="+8613900009999"))
    suppress(app.engine, "sms", "+8613900009999", "inbound_stop", clock.now)
    sms = ScriptedChannel(SMS)
    deliver(app, jobs, {EMAIL: ScriptedChannel(EMAIL, [DeliveryResult.permanent("550", "mailbox unavailable")]),
                        SMS: sms})
    assert sms.taken == {}
    (fallback,) = attempt_rows(app, account_id="N1", channel="sms")
    assert (fallback["status"], fallback["rule_id"]) == ("suppressed", "opt-out")


def test_a_reminder_booked_before_a_sibling_loans_sms_still_keeps_the_daily_sms_cap(app: App, clock: Any) -> None:
    """cn: 1 SMS a day per borrower. Loan Q1 is booked (a run stopped before delivery); loan Q2 of the same phone
    is planned and sent at 10:00; Q1's SMS, delivered at 11:00, would be the second SMS of the day."""
    seed_rows(app.engine, demo_row("Q1", date(2026, 3, 8)))
    booked = book_all(app)
    seed_rows(app.engine, demo_row("Q2", date(2026, 3, 8), push_token="fcm:Q2"))
    clock.now = shanghai(2026, 3, 10, 10)
    deliver(app, [j for j in book_all(app) if j.account.account_id == "Q2"])
    clock.now = shanghai(2026, 3, 10, 11)
    deliver(app, booked)
    sms_sent = [r["account_id"] for r in attempt_rows(app, channel="sms", status="sent")]
    assert len(sms_sent) == 1, sms_sent


def test_a_later_batch_counts_the_sms_an_earlier_batch_booked_for_the_same_borrower(app: App, clock: Any) -> None:
    """cn: 1 SMS a day per borrower. With Celery workers (or planning spread over processes) a batch is planned while
    the one before still waits to be sent: loan R2 must count the SMS booked for loan R1, not yet claimed."""
    seed_rows(app.engine, demo_row("R1", date(2026, 3, 8), push_token=None),
              demo_row("R2", date(2026, 3, 8), push_token=None, email="other@example.cn"))
    one_per_batch = AccountSource(app.engine, f"SELECT * FROM {demo_accounts.name}", batch_size=1)
    app.pipeline = dataclasses.replace(app.pipeline, source=one_per_batch)
    clock.now = shanghai(2026, 3, 10, 10)
    jobs = book_all(app)  # one batch per loan, nothing delivered in between
    assert [(j.account.account_id, j.channel) for j in jobs if j.channel is SMS] == [("R1", SMS)]
    (held,) = attempt_rows(app, account_id="R2", channel="sms")
    assert (held["status"], held["rule_id"]) == ("deferred", "cap")

    clock.now = shanghai(2026, 3, 10, 11)  # the same loans planned again (a later run): R1's SMS is its own
    again = book_all(app)
    assert [(j.account.account_id, j.channel) for j in again if j.channel is SMS] == [("R1", SMS)]


def test_an_sms_claimed_and_in_flight_for_the_other_loan_counts(app: App, clock: Any) -> None:
    """cn: 1 SMS a day per borrower. Loan T1's SMS is claimed by a deliverer (not handed over: no send time yet)
    when loan T2 of the same phone is planned, in another batch or process: T2's SMS waits."""
    seed_rows(app.engine, demo_row("T1", date(2026, 3, 8), push_token=None))
    clock.now = shanghai(2026, 3, 10, 10)
    (t1,) = [j for j in book_all(app) if j.channel is SMS]
    with app.engine.begin() as connection:
        assert claims.claim(connection, [t1.attempt_id], clock()) == {t1.attempt_id}
    (claimed,) = attempt_rows(app, account_id="T1", channel="sms")
    assert (claimed["status"], claimed["attempted_at"]) == ("claimed", None)
    seed_rows(app.engine, demo_row("T2", date(2026, 3, 8), push_token=None, email="t2@example.cn"))
    clock.now = shanghai(2026, 3, 10, 10, 1)
    assert [j.account.account_id for j in book_all(app) if j.channel is SMS] == []
    (held,) = attempt_rows(app, account_id="T2", channel="sms")
    assert (held["status"], held["rule_id"]) == ("deferred", "cap")


def test_without_a_recheck_query_the_planned_account_is_checked_and_sent(app: App) -> None:
    """A source that cannot re-read accounts: the send-time check uses the planned account, it does not refuse."""
    seed_rows(app.engine, demo_row("S1", date(2026, 3, 8)))
    jobs = book_all(app)
    wired = app.deliverer(app.pipeline)
    assert wired.send_check is not None
    plain = SendCheck(AccountSource(app.engine, f"SELECT * FROM {demo_accounts.name}", 10), app.ledger,
                      wired.send_check.engine, wired.send_check.default_zone, wired.send_check.contacts_since)
    asyncio.run(wired.aclose())
    facts = plain.facts(jobs, app.clock())
    assert not facts.rechecked
    assert [plain.check(job, job.channel, job.address, facts, app.clock()) for job in jobs] == [None, None]


def test_a_promise_to_pay_made_after_planning_pauses_by_the_borrowers_own_date(app: App, clock: Any) -> None:
    """New York, 20:30 EDT on 03-09 (00:30 UTC on 03-10): a promise until 03-09 still pauses the SMS at send time."""
    seed_rows(app.engine, demo_row("NY", date(2026, 3, 7), phone="+12125550142", timezone="America/New_York",
                                   locale="en-US", currency="USD", push_token=None))
    clock.now = datetime(2026, 3, 10, 0, 30, tzinfo=UTC)
    jobs = book_all(app)
    assert [j.channel for j in jobs] == [SMS]
    with app.engine.begin() as connection:
        connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == "NY")
                           .values(promise_to_pay_until=date(2026, 3, 9)))
    counts = deliver(app, jobs)
    assert (counts.sent, counts.suppressed) == (0, 1)
    assert [(r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="NY", channel="sms")] == [
        ("suppressed", "pause")]


# caps: every cap is checked, whatever order they are listed in ------------------------------------------------------
def test_a_cap_of_another_channel_listed_first_does_not_hide_the_general_cap() -> None:
    """caps: [1 SMS a day, 2 contacts a day]: two pushes today leave no room for a third contact on any channel."""
    caps = [{"max": 1, "per": "1d", "channel": "sms"}, {"max": 2, "per": "1d"}]
    earlier = shanghai(2026, 3, 10, 8)
    history = history_with(contact(1, BORROWER, PUSH, earlier), contact(2, BORROWER, PUSH, earlier))
    decision = plan(overdue(2), shanghai(2026, 3, 10, 9), history, caps=caps)
    assert {c.channel: (c.verdict, c.rule_id) for c in decision.channels} == {
        PUSH: (Verdict.DEFER, "cap"), SMS: (Verdict.DEFER, "cap")}


def test_the_holidays_of_the_phone_numbers_region_apply_not_the_default_regions() -> None:
    """cn profile (default region CN) and a +1 number: the US holiday defers, the CN one does not."""
    new_york = overdue(2, today=date(2026, 7, 3), timezone="America/New_York", phone="+12125550142")
    at = datetime(2026, 7, 3, 14, tzinfo=UTC)  # 10:00 EDT
    holidays = {"US": ["2026-07-03"], "CN": ["2026-07-04"]}
    assert plan(new_york, at, holidays=holidays).reason == "holiday"
    assert plan(new_york, at + timedelta(days=1), holidays=holidays).reason is None


# civil language: the blocklist of the reminder's language is the one checked ----------------------------------------
@pytest.mark.parametrize(("locale", "phrase"), [("zh-CN", "老赖"), ("en-US", "deadbeat"), ("en-GB", "scammer")])
def test_the_blocklist_of_the_reminders_language_is_in_force(locale: str, phrase: str) -> None:
    policy = resolve_policy(schedule())
    assert phrase in policy.blocked_phrases(locale)


def test_extra_blocklist_phrases_add_to_the_languages_list() -> None:
    policy = resolve_policy(schedule(blocklist={"zh-CN": ["暴力催收"]}))
    assert {"暴力催收", "老赖"} <= set(policy.blocked_phrases("zh-CN"))
    assert "暴力催收" not in policy.blocked_phrases("en-US")


@pytest.mark.parametrize(("profile", "given", "expected"),
                         [("cn", {}, True), ("none", {}, False), ("cn", {"push_generic": False}, False)])
def test_push_generic_comes_from_the_profile_unless_set(profile: str, given: dict[str, Any], expected: bool) -> None:
    assert resolve_policy(schedule(profile, **given)).push_generic is expected


def test_retention_is_the_schedules_else_three_years() -> None:
    assert resolve_policy(schedule()).retention == timedelta(days=3 * 365)
    assert resolve_policy(schedule(retention="5y")).retention == timedelta(days=5 * 365)
