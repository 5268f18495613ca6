"""Content rules (civil, content, third-party): the template lint of ``dispatcher validate`` and the check at send."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.renderer import Composer, RenderContext, Rendered, TemplateProblem
from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.run import Runner
from dispatcher.rules.content import (
    _URL,
    ContentCheck,
    _blocked,
    _blocklist_pattern,
    _civil_terms,
    _cut_links,
    _may_contain,
    _screen,
    civil_violations,
    lint_templates,
    violations,
)
from dispatcher.rules.policy import Policy, resolve_policy
from dispatcher.rules.wordlists import CIVIL_RULES
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.models import Brand, Schedule

REPO = Path(__file__).resolve().parent.parent
PROBLEM = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")

Cli = Callable[..., tuple[int, str, str]]


def load(folder: Path) -> tuple[Schedule, Policy]:
    schedule = load_schedule(folder / "schedules.yaml", {}).schedule
    return schedule, resolve_policy(schedule)


def lint(folder: Path) -> list[TemplateProblem]:
    schedule, policy = load(folder)
    return lint_templates(schedule, folder / "templates", policy)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the shipped schedules.yaml and templates/."""
    shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return tmp_path


def edit(path: Path, change: Callable[[str], str]) -> None:
    before = path.read_text(encoding="utf-8")
    after = change(before)
    assert after != before, f"{path} unchanged"
    path.write_text(after, encoding="utf-8")


def insert_line(number: int, text: str) -> Callable[[str], str]:
    """Insert ``text`` so that it becomes line ``number``."""

    def change(source: str) -> str:
        lines = source.splitlines()
        lines.insert(number - 1, text)
        return "\n".join(lines) + "\n"

    return change


def replacing(*pairs: tuple[str, str]) -> Callable[[str], str]:
    def change(source: str) -> str:
        for old, new in pairs:
            source = source.replace(old, new)
        return source

    return change


# the shipped templates -------------------------------------------------------------------------------------------
def test_every_shipped_template_passes_the_lint() -> None:
    assert lint(REPO) == []


def test_the_lint_covers_every_template_locale_and_channel() -> None:
    """Sanity of the lint itself: a blocklist hit everywhere is reported for each template (every variant of an
    experiment too) × locale × channel."""
    schedule, policy = load(REPO)
    every = replace(policy, blocklist={"zh": ("信用钱包",), "en": ("xinyong wallet",)})
    found = {(p.template, p.locale, p.channel.value) for p in lint_templates(schedule, REPO / "templates", every)}
    messages = {(t, loc, c.value) for t in ("courtesy", "gentle", "firm", "firm_help", "final_notice")
                for loc in ("zh-CN", "en-US") for c in (ChannelKind.SMS, ChannelKind.EMAIL, ChannelKind.PUSH)}
    calls = {("call", loc, ChannelKind.VOICE.value) for loc in ("zh-CN", "en-US")}
    assert found == messages | calls


# the civil-language rules, as a table -------------------------------------------------------------------------------
CIVIL_CASES: list[tuple[str, str, set[str]]] = [
    # the two messages
    ("zh-CN", "否则我们将起诉至法院，并上报征信，追究法律责任", {"civil-court", "civil-credit"}),
    ("en-US", "We will take you to court and take legal action.", {"civil-court"}),
    # court and lawsuits
    ("zh-CN", "我司已委托律师发出律师函", {"civil-court"}),
    ("zh-CN", "法院传票将寄至您的住址", {"civil-court"}),
    ("zh-CN", "我们将通过诉讼追讨欠款", {"civil-court"}),
    ("zh-CN", "将申请强制执行，列为失信被执行人", {"civil-court"}),
    ("en-US", "We will sue you for the full balance", {"civil-court"}),
    ("en-US", "A lawsuit will be filed today", {"civil-court"}),
    ("en-US", "You will receive a SUMMONS", {"civil-court"}),
    ("en-US", "Our lawyers are preparing the case", {"civil-court"}),
    ("en-US", "We will garnish your wages", {"civil-court"}),
    # arrest and police
    ("zh-CN", "我们已经报警", {"civil-police"}),
    ("zh-CN", "公安机关将上门", {"civil-police", "civil-contacts"}),
    ("zh-CN", "你将被拘留", {"civil-police"}),
    ("zh-CN", "欠钱不还是要坐牢的", {"civil-police"}),
    ("en-US", "You could be ARRESTED", {"civil-police"}),
    ("en-US", "We have contacted the Police", {"civil-police"}),
    ("en-US", "a warrant for your arrest", {"civil-police"}),
    ("en-US", "You may go to jail", {"civil-police"}),
    # criminal records
    ("zh-CN", "将追究您的刑事责任", {"civil-criminal"}),
    ("zh-CN", "留下案底", {"civil-criminal"}),
    ("en-US", "This is a criminal matter", {"civil-criminal"}),
    ("en-US", "We will press charges", {"civil-criminal"}),
    # credit-report threats
    ("zh-CN", "马上给你上征信", {"civil-credit"}),
    ("zh-CN", "您将被列入黑名单", {"civil-credit"}),
    ("zh-CN", "如不还款，将影响您的信用记录", {"civil-credit"}),
    ("zh-CN", "再不还款，您的征信就花了", {"civil-credit"}),
    ("en-US", "Non-payment will ruin your credit", {"civil-credit"}),
    ("en-US", "We will report you to the credit bureaus", {"civil-credit"}),
    ("en-US", "Pay today or your credit score will drop", {"civil-credit"}),
    ("en-US", "If you don't pay, we will tell every credit bureau", {"civil-credit"}),
    ("en-US", "Unless you pay, this goes on your credit report", {"civil-credit"}),
    # family, employer, contacts
    ("zh-CN", "我们将联系您的家人", {"civil-contacts"}),
    ("zh-CN", "将通知你的单位和领导", {"civil-contacts"}),
    ("zh-CN", "我们会打给你通讯录里的人", {"civil-contacts"}),
    ("zh-CN", "我们将联系您的紧急联系人", {"civil-contacts"}),
    ("en-US", "We will contact your family", {"civil-contacts"}),
    ("en-US", "We will call your employer", {"civil-contacts"}),
    ("en-US", "Someone will visit your workplace", {"civil-contacts"}),
    # the general list (rule civil) is the policy's, not these rules': nothing here
    ("zh-CN", "老赖", set()),
    # civil, factual wording stays allowed
    ("en-US", "We may report information about your account to credit bureaus. Late payments, missed payments, or "
              "other defaults on your account may be reflected in your credit report.", set()),
    ("en-US", "This may be reported to credit bureaus as required by law.", set()),
    ("en-US", "If you do not recognise this message, call us.", set()),
    ("en-US", "To protect you from fraud, please verify this email only through our official channels.", set()),
    ("en-US", "Dear Sue Court, please pay by 3 April.", set()),
    ("en-US", "Hi Jailyn, your repayment is 3 days overdue. We pursue fair outcomes.", set()),
    ("en-US", "If paying is difficult, call us and we will look at the options with you.", set()),
    ("zh-CN", "根据《征信业管理条例》，您的借款信息将依法报送金融信用信息基础数据库。", set()),
    ("zh-CN", "为防范诈骗，请仅通过官方渠道核实本邮件的真伪。我们不会要求您向任何个人账户转账。", set()),
    ("zh-CN", "如已还款请忽略。如还款有困难，请致电客服协商。", set()),
    ("zh-CN", "征信相关问题请致电客服。", set()),
]


@pytest.mark.parametrize(("locale", "text", "rules"), CIVIL_CASES,
                         ids=[f"{c[0]}-{n}" for n, c in enumerate(CIVIL_CASES)])
def test_civil_rules(locale: str, text: str, rules: set[str]) -> None:
    found = list(civil_violations(locale, [text]))
    assert {rule for rule, _, _ in found} == rules, found
    for _rule, message, phrase in found:
        assert phrase.lower() in text.lower() and repr(phrase) in message


def test_each_civil_rule_is_checked_in_both_languages() -> None:
    rules = {rule.rule_id for rule in CIVIL_RULES}
    assert rules == {"civil-court", "civil-police", "civil-criminal", "civil-credit", "civil-contacts"}
    for locale in ("zh-CN", "en-US"):
        assert {rule for case_locale, _, found in CIVIL_CASES if case_locale == locale for rule in found} == rules


def test_a_credit_term_in_another_sentence_than_the_condition_is_a_notice() -> None:
    """The condition and the credit term must share a sentence: a notice after a request to pay is not a threat."""
    assert list(civil_violations("en-US", ["If you do not recognise this message, call us. We may report "
                                           "information about your account to credit bureaus."])) == []
    assert list(civil_violations("zh-CN", ["如不认识本短信，请致电客服。您的借款信息将依法报送征信系统。"])) == []


# broken copies ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Breakage:
    part: str
    change: Callable[[str], str]
    rule: str
    line: int
    words: str
    files: tuple[str, ...] = ()
    """Where the problem may be reported (default: ``part``)."""


EMAIL_PARTS = ("email_subject.txt.j2", "email.txt.j2", "email.html.j2")
WITHOUT_HOTLINE = replacing(("{{ brand.hotline }}", ""), ("{{ brand.help_email }}", ""))
BREAKAGES = {
    "zh-sms-third-party-contacts": Breakage(
        "gentle/zh-CN/sms.txt.j2", insert_line(2, "我们将通知你的通讯录联系人"), "civil-contacts", 2, "通讯录"),
    "en-email-employer": Breakage(
        "firm/en-US/email.txt.j2", insert_line(4, "If you do not pay, we will contact your employer."),
        "civil-contacts", 4, "your employer"),
    "en-email-html-police": Breakage(
        "firm/en-US/email.html.j2", insert_line(20, "<p>We have informed the police.</p>"), "civil-police", 20,
        "police"),
    "en-email-html-police-as-character-references": Breakage(  # what the reader reads, not the markup
        "firm/en-US/email.html.j2", insert_line(20, "<p>We have informed the &#112;olice.</p>"), "civil-police", 20,
        "police"),
    "en-email-html-court-split-by-a-tag": Breakage(
        "firm/en-US/email.html.j2", insert_line(20, "<p>We will take you to <b>court</b>.</p>"), "civil-court", 20,
        "to court"),
    "en-email-html-court-in-an-image-text": Breakage(
        "firm/en-US/email.html.j2", insert_line(20, '<img src="cid:seal" ALT=\'We will take you to court\'>'),
        "civil-court", 20, "to court"),
    "zh-sms-court-and-credit": Breakage(
        "final_notice/zh-CN/sms.txt.j2", insert_line(2, "否则我们将起诉至法院，并上报征信，追究法律责任"),
        "civil-court", 2, "起诉"),
    "zh-email-credit-ultimatum": Breakage(
        "firm/zh-CN/email.txt.j2", insert_line(6, "如不按时还款，将影响您的征信。"), "civil-credit", 6, "征信"),
    "en-sms-take-you-to-court": Breakage(
        "final_notice/en-US/sms.txt.j2", insert_line(2, "We will take you to court and take legal action."),
        "civil-court", 2, "to court"),
    "en-email-credit-ultimatum": Breakage(
        "final_notice/en-US/email.txt.j2", insert_line(4, "Pay now, otherwise this goes on your credit report."),
        "civil-credit", 4, "credit report"),
    "full-card-number-in-sms": Breakage(  # the repayment account is shown in full; the borrower's own card is not
        "final_notice/zh-CN/sms.txt.j2",
        replacing(("{{ repayment_account }}", "{{ repayment_account }}（您的卡号6222 0212 9999 1234）")),
        "content", 1, "digits"),
    "amount-in-push-title": Breakage(
        "gentle/en-US/push_title.txt.j2", replacing(("{{ brand.name }}", "{{ brand.name }}: {{ amount|money }}")),
        "third-party", 1, "the amount"),
    "debt-word-in-push-body": Breakage(
        "firm/zh-CN/push_body.txt.j2", insert_line(2, "您的借款已逾期"), "third-party", 2, "逾期"),
    "sms-without-opt-out": Breakage(
        "gentle/zh-CN/sms.txt.j2", replacing(("回复TD退订", "")), "content", 1, "opt-out wording"),
    "en-sms-without-stop": Breakage(
        "firm/en-US/sms.txt.j2", replacing((" Reply STOP to opt out", "")), "content", 1, "opt-out wording"),
    "email-without-hotline": Breakage(
        "firm/en-US/email.txt.j2", WITHOUT_HOTLINE, "content", 1, "help contact",
        files=tuple(f"firm/en-US/{name}" for name in EMAIL_PARTS)),
}


def break_copy(copy: Path, breakage: Breakage) -> None:
    edit(copy / "templates" / breakage.part, breakage.change)
    if breakage is BREAKAGES["email-without-hotline"]:  # the other parts of the email too
        for name in ("email.html.j2", "email_subject.txt.j2"):
            path = copy / "templates" / "firm" / "en-US" / name
            path.write_text(WITHOUT_HOTLINE(path.read_text(encoding="utf-8")), encoding="utf-8")


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_each_breakage_is_reported_at_its_file_and_line(copy: Path, name: str) -> None:
    breakage = BREAKAGES[name]
    break_copy(copy, breakage)
    problems = lint(copy)
    assert problems, "nothing reported"
    template, locale, _ = breakage.part.split("/")
    assert {(p.template, p.locale) for p in problems} == {(template, locale)}
    expected_files = {str(copy / "templates" / f) for f in (breakage.files or (breakage.part,))}
    matching = [p for p in problems if p.message.startswith(f"{breakage.rule}: ") and breakage.words in p.message]
    assert matching, [p.message for p in problems]
    for problem in matching:
        assert problem.file in expected_files
        assert problem.line == breakage.line, problem


CARD_IN_EMAIL = replacing(("官方还款账户：{{ repayment_account }}",
                           "官方还款账户：{{ repayment_account }}\n您的卡号：6222021299991234"))


def test_a_full_card_number_on_a_later_line_is_reported_at_that_line(copy: Path) -> None:
    edit(copy / "templates/firm/zh-CN/email.txt.j2", CARD_IN_EMAIL)
    problems = [p for p in lint(copy) if p.message.startswith("content: ")]
    assert problems
    for problem in problems:
        assert problem.file is not None and problem.file.endswith("firm/zh-CN/email.txt.j2")
        assert problem.line == 10, problem


def test_the_repayment_account_in_full_passes(copy: Path) -> None:
    assert [p for p in lint(copy) if p.message.startswith("content: ")] == []


def test_a_full_card_number_in_a_multiline_email_is_reported_once_as_content(copy: Path) -> None:
    edit(copy / "templates/firm/zh-CN/email.txt.j2", CARD_IN_EMAIL)
    problems = [p for p in lint(copy) if p.message.startswith("content: ")]
    assert [p.channel for p in problems] == [ChannelKind.EMAIL]
    assert "16 digits" in problems[0].message and "mask it" in problems[0].message


# dispatcher validate ---------------------------------------------------------------------------------------------
def problems_printed(text: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in map(PROBLEM.match, text.splitlines()) if m]


def test_validate_passes_the_shipped_copy(cli: Cli) -> None:
    code, out, err = cli("validate", "schedules.yaml")
    assert code == 0, err
    assert "valid" in out


@pytest.mark.parametrize("name", ["zh-sms-third-party-contacts", "en-email-employer"])
def test_validate_prints_a_civil_problem_at_the_template_line(cli: Cli, workdir: Path, name: str) -> None:
    breakage = BREAKAGES[name]
    break_copy(workdir, breakage)
    code, _, err = cli("validate", "schedules.yaml")
    assert code != 0
    printed = problems_printed(err)
    assert printed, err
    assert {(p["file"], p["line"], p["col"]) for p in printed} == {(f"templates/{breakage.part}", str(breakage.line),
                                                                    "1")}
    assert all(p["message"].startswith(f"{breakage.rule}: ") and breakage.words in p["message"] for p in printed)
    assert "Traceback" not in err


def test_validate_json_reports_the_lint_problem(cli: Cli, workdir: Path) -> None:
    break_copy(workdir, BREAKAGES["sms-without-opt-out"])
    code, out, _ = cli("validate", "schedules.yaml", "--format", "json")
    assert code != 0
    report = json.loads(out)
    assert report["valid"] is False
    (problem,) = report["problems"]
    assert (problem["file"], problem["line"]) == ("templates/gentle/zh-CN/sms.txt.j2", 1)
    assert problem["message"].startswith("content: ")


def test_validate_json_names_the_rule_of_a_lint_problem(cli: Cli, workdir: Path) -> None:
    break_copy(workdir, BREAKAGES["sms-without-opt-out"])
    _, out, _ = cli("validate", "schedules.yaml", "--format", "json")
    (problem,) = json.loads(out)["problems"]
    assert problem["rule"] == "content"


@pytest.mark.parametrize(("part", "line", "rules"), [
    ("final_notice/zh-CN/sms.txt.j2", "否则我们将起诉至法院，并上报征信，追究法律责任",
     {"civil-court", "civil-credit"}),
    ("final_notice/en-US/sms.txt.j2", "We will take you to court and take legal action.", {"civil-court"}),
])
def test_validate_names_each_threat_by_its_rule_id(cli: Cli, workdir: Path, part: str, line: str,
                                                   rules: set[str]) -> None:
    edit(workdir / "templates" / part, insert_line(2, line))
    code, out, _ = cli("validate", "schedules.yaml", "--format", "json")
    assert code != 0
    # the longer SMS may also need more than the step's max_segments: that is reported too, at line 1
    problems = [p for p in json.loads(out)["problems"] if p["rule"] != "max_segments"]
    assert {p["rule"] for p in problems} == rules
    assert {(p["file"], p["line"]) for p in problems} == {(f"templates/{part}", 2)}
    assert all(p["message"].startswith(f"{p['rule']}: ") for p in problems)


# compliance.blocklist ----------------------------------------------------------------------------------------------
def add_compliance(folder: Path, block: str) -> None:
    """Replace the shipped ``compliance:`` section by ``block``."""
    path = folder / "schedules.yaml"
    text, found = re.subn(r"(?ms)^compliance:\n.*?\n\n", f"compliance: {block}\n\n", path.read_text(encoding="utf-8"))
    assert found == 1
    path.write_text(text, encoding="utf-8")


def test_a_blocklist_phrase_from_schedules_yaml_is_enforced(copy: Path) -> None:
    add_compliance(copy, "{blocklist: {zh-CN: [温馨提示]}}")
    _, policy = load(copy)
    assert "温馨提示" in policy.blocked_phrases("zh-CN") and "老赖" in policy.blocked_phrases("zh-CN")
    assert "温馨提示" not in policy.blocked_phrases("en-US")
    problems = lint(copy)
    assert problems
    assert {(p.template, p.locale, p.channel) for p in problems} == {("gentle", "zh-CN", ChannelKind.EMAIL)}
    (problem,) = problems
    assert problem.message.startswith("civil: ") and "温馨提示" in problem.message
    assert (problem.file, problem.line) == (str(copy / "templates/gentle/zh-CN/email.txt.j2"), 3)


def test_validate_refuses_a_template_with_a_configured_blocklist_phrase(cli: Cli, workdir: Path) -> None:
    add_compliance(workdir, "{blocklist: {en-US: [options]}}")
    code, _, err = cli("validate", "schedules.yaml")
    assert code != 0
    printed = problems_printed(err)
    assert printed and all(p["message"].startswith("civil: ") and "'options'" in p["message"] for p in printed)
    assert {p["file"] for p in printed} <= {f"templates/firm/en-US/{n}" for n in ("sms.txt.j2", *EMAIL_PARTS)}


# ContentCheck at send ---------------------------------------------------------------------------------------------
SAMPLE = Account(
    account_id="L1", name="王伟", phone="+8613812345678", email="wang@example.cn", push_token="fcm:token",
    locale="zh-CN", timezone="Asia/Shanghai", currency="CNY", overdue_amount=Decimal("500.00"),
    due_date=date(2026, 3, 8), deadline=None, repayment_account="6222 0212 1234 5678",
)


def rendered_check(account: Account, channel: ChannelKind, blocklist: dict[str, tuple[str, ...]] | None = None
                   ) -> Any:
    schedule, policy = load(REPO)
    if blocklist is not None:
        policy = replace(policy, blocklist={**policy.blocklist, **blocklist})
    composer = Composer(REPO / "templates", schedule)
    step = schedule.ladder[0]
    context = RenderContext(account, step, 0, 2, date(2026, 3, 13), date(2026, 3, 10))
    return ContentCheck(policy, composer).check(composer.render(context, channel), account)


@pytest.mark.parametrize(
    ("changes", "channel", "rule", "words"),
    [
        pytest.param({"name": "老赖王伟"}, ChannelKind.SMS, "civil", "老赖", id="blocked-phrase-in-name"),
        pytest.param({"name": "Deadbeat Smith", "locale": "en-US", "currency": "USD"}, ChannelKind.SMS, "civil",
                     "deadbeat", id="blocked-phrase-in-english-name"),
        pytest.param({"name": "王伟 6222021234567890"}, ChannelKind.SMS, "content", "16 digits",
                     id="card-number-in-name"),
        pytest.param({"name": "王伟 6222-0212-3456-7890"}, ChannelKind.EMAIL, "content", "16 digits",
                     id="card-number-with-hyphens-in-email"),
        pytest.param({}, ChannelKind.SMS, None, "", id="clean"),
        pytest.param({"name": "老赖王伟"}, ChannelKind.PUSH, None, "", id="push-does-not-show-the-name"),
    ],
)
def test_content_check_at_send(changes: dict[str, Any], channel: ChannelKind, rule: str | None, words: str) -> None:
    block = rendered_check(replace(SAMPLE, **changes), channel)
    if rule is None:
        assert block is None
        return
    assert block is not None
    assert (block.rule_id, block.defer, block.not_before) == (rule, False, None)
    assert words in block.detail.lower() or words in block.detail


def test_content_check_at_send_uses_the_configured_blocklist() -> None:
    account = replace(SAMPLE, name="王大锤")
    assert rendered_check(account, ChannelKind.SMS) is None
    block = rendered_check(account, ChannelKind.SMS, {"zh": ("大锤",)})
    assert block is not None and block.rule_id == "civil"


def demo_row(account_id: str, **changes: Any) -> dict[str, Any]:
    return {"account_id": account_id, "name": "王伟", "phone": f"+86138{account_id[-1]}2345678",
            "email": "wang@example.cn", "push_token": f"fcm:{account_id}", "locale": "zh-CN",
            "timezone": "Asia/Shanghai", "currency": "CNY", "overdue_amount": "100.00", "due_date": date(2026, 3, 8),
            "deadline": None, "repayment_account": "6222 0212 1234 5678", "do_not_contact": None, "dispute": None,
            "promise_to_pay_until": None, "opt_out_channels": None, **changes}


def test_a_message_failing_the_content_check_is_recorded_suppressed_not_sent(app: App) -> None:
    assert app.clock() == datetime(2026, 3, 10, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai: inside the window
    demo_metadata.create_all(app.engine)
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), [demo_row("N1", name="老赖王伟"),
                                                   demo_row("N2", name="王伟 6222021234567890"),
                                                   demo_row("N3")])
    report = Runner(app).run("morning", app.clock())
    assert report.status == "completed"
    with app.engine.connect() as connection:
        rows = [dict(r) for r in connection.execute(select(attempts).order_by(attempts.c.id)).mappings()]
    found = {(r["account_id"], r["channel"]): r for r in rows}
    assert {k: (r["status"], r["rule_id"]) for k, r in found.items()} == {
        ("N1", "push"): ("sent", None), ("N1", "sms"): ("suppressed", "civil"),
        ("N2", "push"): ("sent", None), ("N2", "sms"): ("suppressed", "content"),
        ("N3", "push"): ("sent", None), ("N3", "sms"): ("sent", None),
    }
    for key in (("N1", "sms"), ("N2", "sms")):
        row = found[key]
        assert row["provider_message_id"] is None and row["detail"]
        assert row["template"] == "gentle" and row["content_hash"]  # what would have gone out is identified
    sms_out = app.settings.outbox_dir / "sms.jsonl"
    texts = [json.loads(line)["account_id"] for line in sms_out.read_text(encoding="utf-8").splitlines()]
    assert texts == ["N3"]
    assert report.counts.sent == 4


def test_a_run_counts_the_suppressions_made_at_send_time(app: App) -> None:
    demo_metadata.create_all(app.engine)
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), [demo_row("N1", name="老赖王伟")])
    report = Runner(app).run("morning", app.clock())
    assert (report.counts.sent, report.counts.suppressed) == (1, 1)


# the quick screen -----------------------------------------------------------------------------------------------
def _spellings(phrase: str) -> list[str]:
    """``phrase`` as a writer or a borrower's data may spell it: other cases, and the letters that
    ``re.IGNORECASE`` matches to i and s (dotted and dotless I, long s)."""
    return [phrase, phrase.upper(), phrase.title(), phrase.swapcase(), phrase.replace("i", "\u0131"),
            phrase.upper().replace("I", "\u0130"), phrase.replace("s", "\u017f")]


@given(st.sampled_from([*_civil_terms("en"), *_civil_terms("zh"), "idiot", "Ärger", "ΑΠΕΙΛΕΣ"]),
       st.integers(min_value=0, max_value=6), st.sampled_from(["", "Dear Sam, ", "您好，", "x"]),
       st.sampled_from(["", ".", " now", "了", "Η"]))
@settings(max_examples=1000, deadline=None)
def test_the_screen_lets_through_every_text_the_phrase_patterns_find(phrase: str, spelling: int, before: str,
                                                                     after: str) -> None:
    """The screen only skips the exact patterns where they would find nothing, whatever the case of the text: the
    tree of folded phrases (English and Chinese lists), and the exact patterns when a phrase has cased letters
    beyond ASCII."""
    text = f"{before}{_spellings(phrase)[spelling]}{after}"
    for phrases in (_civil_terms("en"), (*_civil_terms("en"), *_civil_terms("zh"), "idiot"),
                    (*_civil_terms("en"), "idiot", "Ärger", "ΑΠΕΙΛΕΣ")):
        if phrase not in phrases:
            continue
        pattern = _blocklist_pattern(phrases)
        assert pattern is not None
        if pattern.search(text):
            assert _may_contain(phrases, [text]), text
            assert _blocked(phrases, [text]), text  # and the phrase found is named, however it is spelt
        assert not _may_contain(phrases, ["Your repayment of CNY 1,234.50 is 3 days overdue; reply STOP to opt "
                                          "out. 您的还款已逾期3天。"])


@given(st.lists(st.sampled_from(["http", "https", "HTTPS", "hTtPs", "httpſ", "mailto", "MAILTO", "mailtO", "Mttps",
                                  "Hailto", "://", ":", "/", "x.example/p?t=1", " ", "<", ")", "pay ", "10:00 ",
                                  "官网", "：", "p", "o", "s"]),
                max_size=12))
@settings(max_examples=1000, deadline=None)
def test_links_are_cut_from_the_wording_as_a_caseless_pattern_cuts_them(pieces: list[str]) -> None:
    """The link pattern spells its first letters out for speed, and is tried only where a colon ends a scheme; the
    wording is cut exactly where the case-insensitive pattern, searched everywhere, cut it (the long s of ``httpſ``
    too, a link right after another or at the very start), and no made-up scheme (``Mttps``, ``Hailto``)."""
    text = "".join(pieces)
    caseless = re.compile(r"(?:https?://|mailto:)[^\s<>\"')]+", re.IGNORECASE)
    assert _URL.sub(" ", text) == caseless.sub(" ", text)
    assert _cut_links(text) == caseless.sub(" ", text)


def test_the_screen_finds_the_folded_phrases_anywhere() -> None:
    """One automaton of the phrases folded (no word boundaries: it may let through what the exact patterns then
    refuse, never the other way); the exact patterns when a phrase has cased letters beyond ASCII."""
    assert _screen(("Ärger",)) is None
    assert _screen(("", "")) is None
    assert _may_contain(("jail", "\ud800"), ["to jail"])
    assert _may_contain(("jail", "\ud800"), ["x\ud800"])
    assert _may_contain(("jail",), ["\ud800 to jail"])  # the data's lone surrogate: the exact patterns
    assert not _may_contain(("court action", "court case"), ["a court date", "courtcase"])
    assert _may_contain(("court action", "court case"), ["no COURT CASE"])
    assert _may_contain(("court action", "COURT"), ["a courtyard"])  # let through: the exact pattern decides
    assert not _blocked(("court action", "COURT"), ["a courtyard"])
    assert _may_contain(("sue",), ["we will \u017fue"])  # the long s folds to s
    assert _may_contain(("上征信",), ["将上征信记录"])
    assert not _may_contain(("上征信",), ["征信上"])


@pytest.mark.parametrize(("markup", "found"), [
    ("<p>We have informed the &#112;olice.</p>", "police"),  # read as the borrower reads it
    ("<p>We will take you to <b>court</b>.</p>", "to court"),  # a tag in the middle of a phrase
    ("<td>They may sue</td><td>you later</td>", "sue you"),  # read across two cells, as a reader reads them
    ("<td>Police</td>Station", "police"),  # and not run together ("PoliceStation")
    ('<img src="cid:seal" ALT = \'You were reported to the police\'>', "police"),  # an image's text is shown
    ('<span title=jail>i</span>', "jail"),
    ("<p>\u0130\u0130 <abbr aria-label=\"the Police\">P</abbr></p>", "police"),  # İ lowers to two letters
    ('<span TiTlE = "you may go to jail">\u4f60\u597d</span>', "jail"),  # a name in any ASCII case, text beyond ASCII
    ('<span data-title="jail">x</span><span \u00e9title="jail">y</span>', None),  # part of a longer name: not shown
    ('<p>\ud800 <b title="jail">x</b></p>', "jail"),  # a lone surrogate in the data: read, not refused
    ('<p style="color:#1f2937" data-police="1">Pay by 7 December</p>', None),  # markup is not wording
])
def test_an_email_is_checked_as_its_reader_reads_its_html(markup: str, found: str | None) -> None:
    _schedule, policy = load(REPO)
    rendered = Rendered(ChannelKind.EMAIL, "en-US", "firm", "1", "Dear Sam, please pay.", "Your repayment", markup,
                        None, {}, "hash")
    brand = Brand(name="Lender", hotline="800-555-0100", website="https://lender.example")
    words = [w for rule, _message, w in violations(rendered, policy, brand, SAMPLE) if rule.startswith("civil")]
    assert words == ([found] if found else [])
