"""Messages a borrower can act on: the repayment account in full, the pay link, clickable links, 375 px emails,
readable email encodings, two-segment English SMS and the pre-due courtesy templates.

Every message is rendered by the real :class:`~dispatcher.compose.renderer.Composer` from the shipped
templates and schedules.yaml; emails go through the real outbox and a real SMTP server; the HTML is laid
out by headless Chromium (tests/browser.py).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import chromium, png_size
from ruamel.yaml import YAML
from standins.smtp_server import SmtpStandin

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Message, Outcome
from dispatcher.channels.headers import UNSAFE_HEADER, UnsafeHeaderError
from dispatcher.channels.outbox import OutboxChannel
from dispatcher.channels.provider_settings import SmtpSettings
from dispatcher.channels.smtp_email import SmtpEmailChannel, build_email
from dispatcher.compose.layout import PARTS
from dispatcher.compose.renderer import Composer, RenderContext, Rendered, check_templates, sample_context
from dispatcher.compose.segments import sms_segments
from dispatcher.rules.content import civil_violations, lint_templates, missing_elements, violations
from dispatcher.rules.policy import resolve_policy
from dispatcher.schedule.models import Schedule, Step

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"

ACCOUNT = "6222 0212 3456 9593"
NAMES = {"zh": "欧阳娜娜", "en": "Alexandra Montgomery"}
AMOUNT = Decimal("12345.67")
PAY_LINK = "https://pay.xinyongqianbao.example.cn/p/7Qk2mZ9xR4"
"""A realistic pay link (49 characters)."""
LINK_WITH_QUERY = "https://pay.xinyongqianbao.example.cn/p?account=L1&amount=12345.67&sig=0a1b2c"
LONG_PAY_LINK = ("https://pay.xinyongqianbao.example.cn/checkout/" + "A1b2C3d4" * 30
                 + "?account=SAMPLE-0001&amount=12345.67&currency=CNY&sig=" + "0" * 64)
LONG_ACCOUNT = "DE89370400440532013000DE89370400440532013000"
"""A repayment account with no place to break a line."""

SMS_SEGMENTS_ZH = {"courtesy": 2, "gentle": 2, "firm": 2, "firm_help": 2, "final_notice": 2}
"""Segments of the Chinese SMS before the account was shown in full: never more."""


def load_schedule() -> Schedule:
    data = YAML(typ="safe").load(ROOT / "schedules.yaml")
    data["source"]["url"] = None
    return Schedule.model_validate(data)


SCHEDULE = load_schedule()
SHIPPED = sorted((t.name, loc.name) for t in TEMPLATES.iterdir() if t.is_dir() for loc in t.iterdir()
                 if (loc / "sms.txt.j2").is_file())
"""Every message template × locale folder on disk (not the call scripts), whether schedules.yaml uses it or not."""
MESSAGE_CHANNELS = (ChannelKind.SMS, ChannelKind.EMAIL, ChannelKind.PUSH)
TEXT_CHANNELS = [ChannelKind.SMS, ChannelKind.EMAIL]


@pytest.fixture(scope="module")
def composer() -> Composer:
    return Composer(TEMPLATES, SCHEDULE)


def step_for(template: str) -> Step:
    """The step that renders ``template`` (an experiment's step rendering that variant for everyone)."""
    for step in SCHEDULE.ladder:
        if template in step.templates:
            return step.as_variant(template)
    return SCHEDULE.ladder[0].model_copy(update={"template": template})


def context(template: str, locale: str, pay_link: str | None = None, account: str = ACCOUNT,
            days: int | None = None) -> RenderContext:
    """The sample reminder with a realistic borrower; courtesy reminders fall 3 days before the due date."""
    ctx = sample_context(SCHEDULE, step_for(template), locale)
    if days is None:
        days = -3 if template == "courtesy" else 12
    due = ctx.local_today - timedelta(days=days)
    borrower = replace(ctx.account, name=NAMES[locale[:2]], overdue_amount=AMOUNT, repayment_account=account,
                       pay_link=pay_link, due_date=due)
    deadline = due if days <= 0 else ctx.deadline
    return replace(ctx, account=borrower, days_overdue=days, deadline=deadline)


def render(composer: Composer, template: str, locale: str, channel: ChannelKind, pay_link: str | None = None,
           account: str = ACCOUNT) -> Rendered:
    return composer.render_in(context(template, locale, pay_link, account), channel, locale)


def texts(rendered: Rendered) -> list[str]:
    return [t for t in (rendered.subject, rendered.title, rendered.body, rendered.html) if t]


class Links(HTMLParser):
    """The ``href`` of every ``<a>`` and the text shown outside any link."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.outside: list[str] = []
        self._depth = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._depth += 1
            self.hrefs.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._depth and self.lasttag not in ("title", "style"):
            self.outside.append(data)


# --- the repayment account and the pay link -----------------------------------------------------------------------
@pytest.mark.parametrize(("template", "locale"), SHIPPED)
@pytest.mark.parametrize("channel", TEXT_CHANNELS)
def test_the_repayment_account_is_printed_in_full(
    composer: Composer, template: str, locale: str, channel: ChannelKind
) -> None:
    rendered = render(composer, template, locale, channel)
    for text in filter(None, (rendered.body, rendered.html)):
        assert ACCOUNT in text
        assert "****" not in text


def test_the_mask_filter_stays_for_other_numbers(composer: Composer) -> None:
    assert composer.env.from_string("{{ '6222 0212 3456 6789'|mask }}").render() == "**** 6789"


@pytest.mark.parametrize(("template", "locale"), SHIPPED)
def test_the_pay_link_is_shown_in_sms_and_email_and_kept_off_the_lock_screen(
    composer: Composer, template: str, locale: str
) -> None:
    sms = render(composer, template, locale, ChannelKind.SMS, pay_link=LINK_WITH_QUERY)
    assert f" {LINK_WITH_QUERY} " in sms.body  # spaces around it: no punctuation glued to the link
    mail = render(composer, template, locale, ChannelKind.EMAIL, pay_link=LINK_WITH_QUERY)
    assert any(line.endswith(f" {LINK_WITH_QUERY}") or line.endswith(f"：{LINK_WITH_QUERY}")
               for line in mail.body.splitlines())
    assert mail.html is not None and LINK_WITH_QUERY in Links(mail.html).hrefs
    assert LINK_WITH_QUERY.replace("&", "&amp;") in mail.html
    push = render(composer, template, locale, ChannelKind.PUSH, pay_link=LINK_WITH_QUERY)
    assert all("http" not in text for text in (push.title or "", push.body))
    assert push.data["pay_link"] == LINK_WITH_QUERY  # the app opens it on a tap
    assert "pay_link" not in render(composer, template, locale, ChannelKind.PUSH, pay_link=None).data


@pytest.mark.parametrize(("template", "locale"), SHIPPED)
def test_without_a_pay_link_nothing_mentions_one(composer: Composer, template: str, locale: str) -> None:
    for channel in TEXT_CHANNELS:
        rendered = render(composer, template, locale, channel, pay_link=None)
        for text in texts(rendered):
            assert "online" not in text and "在线还款" not in text and "pay.xinyongqianbao" not in text


@pytest.mark.parametrize(("template", "locale"), SHIPPED)
def test_every_link_in_the_html_email_is_clickable(composer: Composer, template: str, locale: str) -> None:
    rendered = render(composer, template, locale, ChannelKind.EMAIL, pay_link=PAY_LINK)
    assert rendered.html is not None
    links = Links(rendered.html)
    brand = composer.brand(locale)
    unsubscribe = context(template, locale).unsubscribe_url
    assert {brand.website, PAY_LINK, unsubscribe, f"mailto:{brand.help_email}"} <= set(links.hrefs)
    shown = " ".join(links.outside)
    assert "http" not in shown and "www." not in shown and "@" not in shown, shown


# --- the HTML email at 375 px, in headless Chromium ------------------------------------------------------------------
@pytest.mark.browser
def test_the_layout_check_sees_a_page_too_wide_for_a_phone() -> None:
    page = '<!DOCTYPE html><html><body><table style="width:600px"><tr><td>wide</td></tr></table></body></html>'
    phone, desktop = chromium().layouts(page, (375, 1280))
    assert phone.overflows and phone.scroll_width > 375
    assert not desktop.overflows


@pytest.mark.browser
@pytest.mark.parametrize(("template", "locale"), SHIPPED)
def test_the_html_email_holds_at_375_px(composer: Composer, tmp_path: Path, template: str, locale: str) -> None:
    rendered = render(composer, template, locale, ChannelKind.EMAIL, pay_link=LONG_PAY_LINK, account=LONG_ACCOUNT)
    assert rendered.html is not None and LONG_ACCOUNT in rendered.html
    browser = chromium()
    for layout in browser.layouts(rendered.html, (375, 1280)):
        assert not layout.overflows, f"{layout.width} px: {layout.widest!r} reaches {layout.right} px " \
                                     f"(page {layout.scroll_width} px wide)"
    for width in (1280, 375):
        shot = browser.screenshot(rendered.html, width, tmp_path / f"{template}-{locale}-{width}.png")
        assert png_size(shot)[0] == width


# --- email encodings ----------------------------------------------------------------------------------------------
SENDER = "Xinyong Wallet <reminders@xinyongqianbao.example.cn>"


def message(rendered: Rendered, attempt_id: int = 7, subject: str | None = None) -> Message:
    return Message(attempt_id, f"L1|2026-11-16|{rendered.template}|0", "L1", ChannelKind.EMAIL, "wang@example.cn",
                   rendered.body, subject=subject if subject is not None else rendered.subject, html=rendered.html,
                   headers={"List-Unsubscribe": "<https://www.xinyongqianbao.example.cn/unsubscribe/T>"},
                   locale=rendered.locale)


def check_parts(parsed: EmailMessage, rendered: Rendered) -> None:
    """Text and HTML parts: never base64, and decoding to exactly what was rendered (in CRLF form)."""
    assert parsed.get_content_type() == "multipart/alternative" and not parsed.defects
    plain, html = parsed.iter_parts()
    for part, expected in ((plain, rendered.body), (html, rendered.html)):
        assert isinstance(part, EmailMessage) and not part.defects
        assert part["Content-Transfer-Encoding"] in ("7bit", "8bit", "quoted-printable")
        assert part.get_content_charset() == "utf-8"
        assert str(part.get_content()).replace("\r\n", "\n").rstrip("\n") == expected


LOCALES = ["zh-CN", "en-US"]


@pytest.mark.parametrize("locale", LOCALES)
def test_an_outbox_email_is_readable_in_an_editor(composer: Composer, tmp_path: Path, locale: str) -> None:
    rendered = render(composer, "firm", locale, ChannelKind.EMAIL, pay_link=PAY_LINK)
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path)

    async def send() -> None:
        assert (await channel.send(message(rendered))).outcome is Outcome.SENT
        await channel.aclose()

    asyncio.run(send())
    (written,) = (tmp_path / "email").glob("*.eml")
    data = written.read_bytes()
    assert b"base64" not in data.lower()
    for line in (rendered.body.splitlines()[2], f"{ACCOUNT}", PAY_LINK):
        assert line.encode("utf-8") in data  # as written, not encoded
    assert b"\n" not in data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    check_parts(parsed, rendered)


@pytest.mark.parametrize("locale", LOCALES)
def test_an_smtp_email_is_quoted_printable_not_base64(composer: Composer, smtp: SmtpStandin, locale: str) -> None:
    rendered = render(composer, "firm", locale, ChannelKind.EMAIL, pay_link=PAY_LINK)
    settings = SmtpSettings.from_env({"SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
                                      "EMAIL_FROM": SENDER, "SMTP_TIMEOUT": "2"})
    assert settings is not None

    async def send() -> None:
        channel = SmtpEmailChannel(settings)
        try:
            assert (await channel.send(message(rendered))).outcome is Outcome.SENT
        finally:
            await channel.aclose()

    asyncio.run(send())
    (received,) = smtp.messages
    assert b"base64" not in received.data.lower()
    assert PAY_LINK.encode() in received.data.replace(b"=\r\n", b"")  # a soft line break may split it
    check_parts(received.message, rendered)


def test_a_long_line_goes_quoted_printable_and_the_boundary_never_occurs_in_a_part(tmp_path: Path) -> None:
    body = "x" * 2000 + "\n--=_reminder_8\n" + "你好"
    rendered = Rendered(ChannelKind.EMAIL, "zh-CN", "firm", "v", body, "提醒", "<p>" + "y" * 1500 + "</p>", None,
                        {}, "h")
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path)

    async def send() -> None:
        assert (await channel.send(message(rendered, attempt_id=8))).outcome is Outcome.SENT
        await channel.aclose()

    asyncio.run(send())
    (written,) = (tmp_path / "email").glob("*.eml")
    data = written.read_bytes()
    assert max(map(len, data.split(b"\r\n"))) <= 998
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert [p["Content-Transfer-Encoding"] for p in parsed.iter_parts()] == ["quoted-printable"] * 2
    check_parts(parsed, rendered)


@pytest.mark.parametrize("subject", ["提醒\r\nBcc: thief@example.com", "Reminder\nX-Evil: 1"])
def test_header_injection_is_still_refused(composer: Composer, tmp_path: Path, subject: str) -> None:
    rendered = render(composer, "gentle", "en-US", ChannelKind.EMAIL)
    with pytest.raises(UnsafeHeaderError):
        build_email(message(rendered, subject=subject), SENDER)
    channel = OutboxChannel(ChannelKind.EMAIL, tmp_path)

    async def send() -> None:
        result = await channel.send(message(rendered, subject=subject))
        assert (result.outcome, result.error_code) == (Outcome.PERMANENT, UNSAFE_HEADER)
        await channel.aclose()

    asyncio.run(send())


# --- SMS length ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", sorted({t for t, loc in SHIPPED if loc == "en-US"}))
@pytest.mark.parametrize("pay_link", [None, PAY_LINK])
def test_english_sms_fit_two_gsm7_segments(composer: Composer, template: str, pay_link: str | None) -> None:
    body = render(composer, template, "en-US", ChannelKind.SMS, pay_link=pay_link).body
    segments = sms_segments(body)
    assert (segments.encoding, segments.segments) == ("GSM-7", 2), (segments, body)
    assert ACCOUNT in body and SCHEDULE.brand_for("en-US").hotline in body
    if pay_link is None:
        assert SCHEDULE.brand_for("en-US").website in body


@pytest.mark.parametrize("template", sorted({t for t, loc in SHIPPED if loc == "zh-CN"}))
def test_chinese_sms_need_no_more_segments_than_before(composer: Composer, template: str) -> None:
    without = sms_segments(render(composer, template, "zh-CN", ChannelKind.SMS).body)
    assert (without.encoding, without.segments) == ("UCS-2", SMS_SEGMENTS_ZH[template])
    with_link = sms_segments(render(composer, template, "zh-CN", ChannelKind.SMS, pay_link=PAY_LINK).body)
    assert with_link.segments <= SMS_SEGMENTS_ZH[template] + 1  # a link costs one more segment in UCS-2


# --- courtesy reminders before the due date ------------------------------------------------------------------------
def test_the_courtesy_templates_have_the_parts_of_gentle() -> None:
    for locale in LOCALES:
        expected = {p.name for p in (TEMPLATES / "gentle" / locale).iterdir()}
        assert {p.name for p in (TEMPLATES / "courtesy" / locale).iterdir()} == expected
        assert {part.filename for channel in MESSAGE_CHANNELS for part in PARTS[channel]} <= expected


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("days", [-3, -1, 0])
@pytest.mark.parametrize("pay_link", [None, PAY_LINK])
def test_courtesy_reminders_are_friendly_and_pass_the_content_rules(
    composer: Composer, locale: str, days: int, pay_link: str | None
) -> None:
    ctx = context("courtesy", locale, pay_link=pay_link, days=days)
    policy = resolve_policy(SCHEDULE)
    brand = composer.brand(locale)
    for channel in MESSAGE_CHANNELS:
        rendered = composer.render_in(ctx, channel, locale)
        assert list(violations(rendered, policy, brand, ctx.account)) == []
        assert list(missing_elements(rendered, ctx, brand)) == []
        assert list(civil_violations(locale, texts(rendered))) == []
        shown = " ".join(texts(rendered)).lower()
        assert "overdue" not in shown and "逾期" not in shown and "final" not in shown and "最终" not in shown
        if channel is not ChannelKind.PUSH:
            assert (f"due on {ctx.deadline:%B} " in rendered.body) or ("还款日" in rendered.body)


def test_a_template_folder_no_step_uses_breaks_no_validation() -> None:
    ladder = [step for step in SCHEDULE.ladder if step.template_name != "courtesy"]
    schedule = SCHEDULE.model_copy(update={"ladder": ladder})
    assert check_templates(schedule, TEMPLATES) == []
    assert lint_templates(schedule, TEMPLATES, resolve_policy(schedule)) == []


def test_a_step_using_the_courtesy_templates_validates() -> None:
    ladder = [step for step in SCHEDULE.ladder if step.template_name != "courtesy"]
    step = ladder[0].model_copy(update={"step": "courtesy", "template": "courtesy"})
    schedule = SCHEDULE.model_copy(update={"ladder": [step, *ladder[1:]]})
    assert check_templates(schedule, TEMPLATES) == []
    assert lint_templates(schedule, TEMPLATES, resolve_policy(schedule)) == []
