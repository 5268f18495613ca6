"""The lender's ladder beyond overdue days: reminders before the due date, steps for segments of accounts
(``when:``), buckets, steps that end (``until:``), pay links, and the locale and hotline of the borrower's country."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, insert

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.renderer import Composer, RenderContext, check_templates
from dispatcher.decisions import Reason
from dispatcher.demo import demo_accounts
from dispatcher.errors import ConfigError
from dispatcher.ladder import due_step, occurrence_of, pay_by, why_no_step
from dispatcher.pay_links import PayLinks, pay_link_signature
from dispatcher.pipeline.history import BatchHistory
from dispatcher.pipeline.plan import Planner
from dispatcher.pipeline.row_checks import parse_row
from dispatcher.regions import country_of, locale_for_country
from dispatcher.rules.content import template_checks
from dispatcher.rules.engine import build_engine
from dispatcher.rules.policy import resolve_policy
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.models import Contacts, Schedule, Step, parse_window

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # 09:00 in Asia/Shanghai
TODAY = date(2026, 3, 10)
BRANDS = {
    "zh-CN": {"name": "信用钱包", "hotline": "400-820-1234", "website": "https://example.cn/verify"},
    "en-US": {"name": "Xinyong Wallet", "hotline": "+86 400-820-1234", "website": "https://example.cn/en/verify",
              "countries": {"US": {"hotline": "+1 800-555-0123"}}},
}
LADDER: list[dict[str, Any]] = [
    {"step": "courtesy", "days_overdue": "-3--1", "channels": ["sms"], "bucket": "C"},
    {"step": "due_today", "days_overdue": 0, "channels": ["sms"], "bucket": "C"},
    {"step": "big", "days_overdue": "1-30", "channels": ["sms"], "bucket": "M1",
     "when": {"amount": {"min": 5000, "currency": "CNY"}}},
    {"step": "vip", "days_overdue": "1-30", "channels": ["email"], "bucket": "M1", "when": {"segment": ["vip"]}},
    {"step": "gentle", "days_overdue": "1-30", "channels": ["push", "sms"], "bucket": "M1"},
    {"step": "final", "days_overdue": "31-", "every": "7d", "until": {"occurrences": 3}, "channels": ["sms"],
     "bucket": "M2"},
]
SCHEDULE = Schedule.model_validate({
    "timezone": "Asia/Shanghai", "profile": "none", "locales": ["zh-CN", "en-US"], "brand": BRANDS,
    "runs": [{"name": "morning", "cron": "0 9 * * *"}], "ladder": LADDER,
})
BORROWER = Account(
    account_id="L1", name="王伟", phone="+8613812345678", email="wang@example.cn", push_token="fcm:token",
    locale="zh-CN", timezone="Asia/Shanghai", currency="CNY", overdue_amount=Decimal("500.00"),
    due_date=TODAY - timedelta(days=2), deadline=None, repayment_account="6222 0212 1234 5678",
)
US_BORROWER = replace(BORROWER, account_id="U1", name="Alex Morgan", phone="+12025550143", locale=None,
                      timezone=None, currency="USD")


def due_in(days: int, **changes: Any) -> Account:
    """``BORROWER`` with the due date ``days`` from today (negative: overdue)."""
    return replace(BORROWER, due_date=TODAY + timedelta(days=days), **changes)


def planned(account: Account) -> tuple[str | None, str | None, str]:
    planner = Planner(SCHEDULE, build_engine(SCHEDULE, resolve_policy(SCHEDULE)))
    decision = planner.plan_account(account, BatchHistory(), NOW)
    return (decision.step.step if decision.step else None), decision.reason, decision.detail


@pytest.mark.parametrize(("text", "first", "last"), [
    ("-3--1", -3, -1), ("0", 0, 0), ("-7", -7, -7), ("-2-3", -2, 3), ("-5-", -5, None), ("15-", 15, None),
])
def test_windows_before_the_due_date(text: str, first: int, last: int | None) -> None:
    window = parse_window(text)
    assert (window.first, window.last) == (first, last)


@pytest.mark.parametrize(("text", "message"), [
    ("-61--50", "day -60 at the earliest"), ("-1--3", "ends before it starts"), ("--3", "not a day or a range"),
])
def test_bad_windows_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


@pytest.mark.parametrize(("due_in_days", "step", "deadline"), [
    (3, "courtesy", TODAY + timedelta(days=3)), (1, "courtesy", TODAY + timedelta(days=1)),
    (0, "due_today", TODAY), (-2, "gentle", TODAY + timedelta(days=3)),
])
def test_reminders_before_and_on_the_due_date_name_the_due_date(due_in_days: int, step: str,
                                                              deadline: date) -> None:
    account = due_in(due_in_days)
    assert planned(account)[:2] == (step, None)
    chosen = SCHEDULE.step_named(step)
    assert chosen is not None
    assert pay_by(account, chosen, TODAY, -due_in_days) == deadline


def test_an_account_due_further_ahead_is_not_yet_overdue_and_says_why() -> None:
    assert planned(due_in(5)) == (None, Reason.NOT_YET_OVERDUE, "no step of the ladder covers day -5")


def test_pre_due_reminders_follow_the_same_rules() -> None:
    disputed = due_in(2, dispute=True)
    step, reason, _ = planned(disputed)
    assert (step, reason) == ("courtesy", "pause")
    settled = due_in(2, overdue_amount=Decimal("0"))
    assert planned(settled)[1] == Reason.SETTLED


@pytest.mark.parametrize(("changes", "step"), [
    ({"overdue_amount": Decimal("5000")}, "big"),
    ({"overdue_amount": Decimal("4999.99")}, "gentle"),
    ({"overdue_amount": Decimal("9000"), "currency": "USD"}, "gentle"),  # the range is in CNY
    ({"segment": "vip"}, "vip"),
    ({"segment": "vip", "overdue_amount": Decimal("8000")}, "big"),  # the first step that matches wins
    ({"segment": "standard"}, "gentle"),
])
def test_when_picks_the_first_step_whose_conditions_hold(changes: dict[str, Any], step: str) -> None:
    assert planned(due_in(-5, **changes))[:2] == (step, None)


def test_an_account_matching_no_step_is_explained() -> None:
    narrow = Schedule.model_validate({**SCHEDULE.model_dump(mode="json"), "ladder": [
        {"step": "big", "days_overdue": "1-30", "channels": ["sms"], "when": {"amount": {"min": 5000}}},
        {"step": "cards", "days_overdue": "1-30", "channels": ["sms"], "when": {"product": ["card"]}},
    ]})
    account = due_in(-4, product="loan")
    assert why_no_step(narrow.ladder, 4, account) == (
        "day 4: big needs amount at least 5000 (account: 500.00 CNY); cards needs product in card (account: loan)")
    planner = Planner(narrow, build_engine(narrow, resolve_policy(narrow)))
    decision = planner.plan_account(account, BatchHistory(), NOW)
    assert (decision.reason, decision.detail) == (Reason.NO_STEP_DUE, why_no_step(narrow.ladder, 4, account))
    assert due_step(narrow.ladder, 4, replace(account, product="card")) is not None


def test_an_open_ended_step_ends_after_its_occurrences() -> None:
    final = SCHEDULE.step_named("final")
    assert final is not None
    assert [occurrence_of(final, day) for day in (31, 37, 38, 51, 52, 100)] == [0, 0, 1, 2, None, None]
    step, reason, detail = planned(due_in(-52))
    assert (step, reason, detail) == (None, Reason.NO_STEP_DUE, "day 52: step final has ended (until)")


def test_until_a_day() -> None:
    step = Step.model_validate({"step": "s", "days_overdue": "15-", "every": "7d", "until": {"days_overdue": 60},
                                "channels": ["sms"]})
    assert (occurrence_of(step, 60), occurrence_of(step, 61)) == (6, None)


@pytest.mark.parametrize(("step", "message"), [
    ({"days_overdue": "15-", "until": {"occurrences": 3}}, "needs `every`"),
    ({"days_overdue": "15-30", "every": "7d", "until": {"days_overdue": 60}}, "open-ended window"),
    ({"days_overdue": "15-", "every": "7d", "until": {"days_overdue": 10}}, "before the window starts"),
    ({"days_overdue": "15-", "every": "7d", "until": {}}, "one of occurrences or days_overdue"),
    ({"days_overdue": "1-3", "when": {"amount": {"min": 10, "max": 5}}}, "not above min"),
    ({"days_overdue": "1-3", "when": {"amount": {}}}, "needs min, max or both"),
])
def test_bad_step_ends_and_conditions_are_refused(step: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Step.model_validate({"step": "s", "channels": ["sms"], **step})


def write_schedule(tmp_path: Path, ladder: str, extra: str = "") -> Path:
    text = (REPO / "schedules.yaml").read_text(encoding="utf-8")
    head = text[: text.index("\nladder:")]
    path = tmp_path / "schedules.yaml"
    path.write_text(f"{head}\n{extra}ladder:\n{ladder}", encoding="utf-8")
    if not (tmp_path / "templates").exists():
        shutil.copytree(REPO / "templates", tmp_path / "templates")
    return path


def test_a_step_with_when_may_share_days_with_later_steps_and_one_without_may_not(tmp_path: Path) -> None:
    shared = ("  - {step: big, days_overdue: 1-9, channels: [sms], template: gentle, when: {segment: [vip]}}\n"
              "  - {step: rest, days_overdue: 1-9, channels: [sms], template: gentle}\n")
    assert len(load_schedule(write_schedule(tmp_path, shared), {}).schedule.ladder) == 2
    clash = ("  - {step: big, days_overdue: 1-9, channels: [sms], template: gentle}\n"
             "  - {step: rest, days_overdue: 5-20, channels: [sms], template: gentle}\n")
    with pytest.raises(ConfigError) as caught:
        load_schedule(write_schedule(tmp_path, clash), {})
    lines = (tmp_path / "schedules.yaml").read_text(encoding="utf-8").splitlines()
    rest = next(n for n, line in enumerate(lines, 1) if "step: rest" in line)
    assert [(p.line, p.col) for p in caught.value.problems if "overlaps" in p.message] == [
        (rest, lines[rest - 1].index("5-20") + 1)]
    ended = ("  - {step: a, days_overdue: 15-, every: 7d, until: {days_overdue: 30}, channels: [sms],"
             " template: gentle}\n"
             "  - {step: b, days_overdue: 31-, channels: [sms], template: gentle}\n")
    assert len(load_schedule(write_schedule(tmp_path, ended), {}).schedule.ladder) == 2


def test_validate_refuses_an_sms_longer_than_max_segments(tmp_path: Path) -> None:
    one = "  - {step: gentle, days_overdue: 1-3, channels: [sms], template: gentle, max_segments: 1}\n"
    with pytest.raises(ConfigError) as caught:
        load_schedule(write_schedule(tmp_path, one), {}, check_templates=template_checks)
    too_long = [p for p in caught.value.problems if p.rule == "max_segments"]
    assert {p.file.split("templates/")[-1] for p in too_long} == {"gentle/zh-CN/sms.txt.j2", "gentle/en-US/sms.txt.j2"}
    assert all((p.line, p.col) == (1, 1) and "more than max_segments 1" in p.message for p in too_long)
    four = one.replace("max_segments: 1", "max_segments: 4")
    loaded = load_schedule(write_schedule(tmp_path, four), {}, check_templates=template_checks)
    assert loaded.schedule.ladder[0].max_segments == 4


def test_buckets_are_in_plan_and_in_the_ledger(cli: Any, workdir: Path, anytime: Path, ledger_url: str) -> None:
    text = anytime.read_text(encoding="utf-8")
    anytime.write_text(text.replace("    bucket: M1\n", "    bucket: early\n", 1), encoding="utf-8")  # gentle's
    engine = create_engine(ledger_url)
    demo_accounts.create(engine, checkfirst=True)
    with engine.begin() as connection:
        connection.execute(insert(demo_accounts), [{
            "account_id": "B1", "name": "王伟", "phone": "+8613812345678", "currency": "CNY", "locale": "zh-CN",
            "overdue_amount": "500.00", "due_date": datetime.now(UTC).date() - timedelta(days=2),
            "repayment_account": "6222 0212 1234 5678"}])
    engine.dispose()
    code, out, err = cli("plan", "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["step"], row["bucket"]) == ("gentle", "early")
    assert cli("run", "--once")[0] == 0
    code, out, err = cli("attempts", "--format", "json")
    attempts = json.loads(out)
    assert attempts and {a["bucket"] for a in attempts} == {"early"}


# --- the borrower's country: locale, hotline, pay link ---------------------------------------------------------

def test_a_row_without_a_locale_takes_the_phones_country() -> None:
    assert country_of(US_BORROWER) == "US"
    assert locale_for_country("US", ("zh-CN", "en-US")) == "en-US"
    assert locale_for_country("GB", ("zh-CN", "en-US")) == "en-US"  # English is spoken there
    assert locale_for_country("TW", ("zh-CN", "en-US")) == "zh-CN"
    assert locale_for_country("JP", ("zh-CN", "en-US")) is None  # then the schedule's default
    assert country_of(replace(US_BORROWER, country="CA")) == "CA"


def render_sms(account: Account, pay_links: PayLinks | None = None) -> str:
    """The shipped first step's SMS for ``account``, with a US hotline added to the English brand."""
    schedule = load_schedule(REPO / "schedules.yaml", {}).schedule
    english = schedule.brand["en-US"].model_copy(update={"countries": {"US": Contacts(hotline="+1 800-555-0123")}})
    schedule = schedule.model_copy(update={"brand": {**schedule.brand, "en-US": english}})
    context = RenderContext(account, schedule.ladder[0], 0, 2, TODAY + timedelta(days=3), TODAY)
    return Composer(REPO / "templates", schedule, pay_links).render(context, ChannelKind.SMS).body


def test_a_us_borrower_without_a_locale_gets_english_and_a_us_hotline() -> None:
    body = render_sms(US_BORROWER)
    assert "+1 800-555-0123" in body and "+86 400" not in body
    assert "Alex Morgan" in body and "逾期" not in body
    chinese = render_sms(BORROWER)
    assert "400-820-1234" in chinese and "+1 800" not in chinese


def test_pay_links_come_from_the_account_or_are_built_and_signed() -> None:
    own = replace(BORROWER, pay_link="https://pay.example.cn/p/abc")
    assert PayLinks("https://pay.example.cn/r/{account_id}?sig={signature}", b"k").link(own) == own.pay_link
    links = PayLinks("https://pay.example.cn/r/{account_id}?a={amount}&c={currency}&d={due_date}&s={signature}",
                     b"secret")
    url = urlsplit(links.link(replace(BORROWER, account_id="L 1/2")) or "")
    assert url.path == "/r/L%201%2F2"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    expected = hmac.new(b"secret", f"L 1/2|500.00|CNY|{BORROWER.due_date}".encode(), hashlib.sha256).hexdigest()
    assert query["s"] == expected[:16] == pay_link_signature(b"secret", "L 1/2", "500.00", "CNY",
                                                              BORROWER.due_date.isoformat())
    assert PayLinks(None, b"").link(BORROWER) is None
    with pytest.raises(ConfigError, match="DISPATCHER_SECRET_KEY"):
        PayLinks("https://pay.example.cn/r/{account_id}?s={signature}", b"")


def test_the_pay_link_reaches_the_message() -> None:
    body = render_sms(replace(BORROWER, pay_link="https://pay.example.cn/p/abc"))
    assert "https://pay.example.cn/p/abc" in body


@pytest.mark.parametrize(("link", "message"), [
    ("https://pay.example.cn/r/{account_id}", "must carry {signature}"),
    ("https://pay.example.cn/r/{name}?s={signature}", "placeholder {name}"),
    ("http://pay.example.cn/r/{signature}", "String should match pattern"),
])
def test_bad_pay_link_templates_are_refused(link: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Schedule.model_validate({**SCHEDULE.model_dump(mode="json"), "payments": {"link": link}})


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("pay_link", "http://pay.example.cn/p/1", "not an https:// link ('http://pay.example.cn/p/1')"),
    ("pay_link", "https://pay.example.cn/p/1 2", "not an https:// link ('https://pay.example.cn/p/1 2')"),
    ("country", "USA", "not an ISO 3166 country code like CN or US: 'USA'"),
    ("card_last4", "12345", "not the last 4 digits of a card (5 characters)"),
    ("segment", "x" * 65, "longer than 64 characters"),
])
def test_bad_optional_columns_are_rejected_with_their_field(column: str, value: str, reason: str) -> None:
    row = {"account_id": "A1", "currency": "CNY", "overdue_amount": "10", "due_date": "2026-03-01", column: value}
    rejected = parse_row(row)
    assert not isinstance(rejected, Account)
    assert (rejected.field, rejected.reason) == (column, reason)


def test_optional_columns_are_read() -> None:
    account = parse_row({"account_id": "A1", "currency": "CNY", "overdue_amount": "10", "due_date": "2026-03-01",
                         "pay_link": "https://pay.example.cn/p/1", "country": "us", "product": "card",
                         "segment": "vip", "risk_band": 3, "card_last4": "4242"})
    assert isinstance(account, Account)
    assert (account.pay_link, account.country, account.product, account.segment, account.risk_band,
            account.card_last4) == ("https://pay.example.cn/p/1", "US", "card", "vip", "3", "4242")


def test_template_checks_cover_pre_due_steps() -> None:
    schedule = Schedule.model_validate({**SCHEDULE.model_dump(mode="json"), "ladder": [
        {"step": "courtesy", "days_overdue": "-3--1", "channels": ["sms", "email", "push"], "template": "gentle"}]})
    assert check_templates(schedule, REPO / "templates") == []
