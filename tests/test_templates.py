"""The shipped templates: every part renders, and says what a civil, compliant reminder must say."""

from __future__ import annotations

import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.layout import PARTS
from dispatcher.compose.renderer import Composer, Rendered, check_templates, sample_context
from dispatcher.schedule.models import Schedule, Step

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
FULL_ACCOUNT = "6222 0212 3456 6789"

_FORBIDDEN_ZH = """
警察 公安 法院 起诉 诉讼 律师 拘留 坐牢 逮捕 家人 亲友 亲属 单位 通讯录 曝光 黑名单 后果自负 最后通牒
"""
_FORBIDDEN_EN = """
police court lawsuit attorney lawyer arrest jail prison relatives family employer workplace
legal consequences blacklist seize garnish
"""
FORBIDDEN = {"zh": _FORBIDDEN_ZH.split(), "en": _FORBIDDEN_EN.split()}
"""Words a civil reminder never uses (threats, third parties, impersonating authorities)."""

LOCK_SCREEN_FORBIDDEN = ["overdue", "debt", "repay", "owe", "逾期", "欠款", "还款", "¥", "$", "1,234"]
"""Words and amounts a push notification must not show on a lock screen."""


def load_schedule() -> Schedule:
    data = YAML(typ="safe").load(ROOT / "schedules.yaml")
    data["source"]["url"] = None
    return Schedule.model_validate(data)


SCHEDULE = load_schedule()


def cases() -> list[tuple[str, str, ChannelKind]]:
    """Every template × locale on disk and every step × schedule locale, with every channel whose parts it has."""
    found = {
        (template.name, locale.name)
        for template in TEMPLATES.iterdir()
        if template.is_dir()
        for locale in template.iterdir()
        if locale.is_dir()
    }
    found |= {(step.template_name, locale) for step in SCHEDULE.ladder for locale in SCHEDULE.locales
              if step.handoff is None}
    return [(t, loc, ch) for t, loc in sorted(found) for ch in PARTS
            if all((TEMPLATES / t / loc / part.filename).exists() for part in PARTS[ch])]


def with_channel(channel: ChannelKind) -> list[tuple[str, str]]:
    """Every template × locale that has ``channel``'s parts (a call script has no SMS, a message no call)."""
    return sorted({(t, loc) for t, loc, ch in CASES if ch is channel})


def step_for(template: str) -> Step:
    step = next((s for s in SCHEDULE.ladder if s.template_name == template), None)
    return step or SCHEDULE.ladder[0].model_copy(update={"template": template})


@pytest.fixture(scope="module")
def composer() -> Composer:
    return Composer(TEMPLATES, SCHEDULE)


def render(
    composer: Composer, template: str, locale: str, channel: ChannelKind, unsubscribe: bool = True
) -> Rendered:
    ctx = sample_context(SCHEDULE, step_for(template), locale)
    if not unsubscribe:
        ctx = replace(ctx, unsubscribe_url=None)
    return composer.render_in(ctx, channel, locale)


CASES = cases()
SMS_AND_EMAIL = [c for c in CASES if c[2] in (ChannelKind.SMS, ChannelKind.EMAIL)]


def test_check_templates_finds_no_problem() -> None:
    assert check_templates(SCHEDULE, TEMPLATES) == []


def test_every_ladder_template_exists_in_every_locale_with_every_part_of_its_channels() -> None:
    for step in SCHEDULE.ladder:
        for locale in SCHEDULE.locales:
            for channel in step.channels:
                for part in PARTS.get(channel, ()):
                    assert (TEMPLATES / step.template_name / locale / part.filename).is_file()


@pytest.mark.parametrize(("template", "locale", "channel"), CASES)
@pytest.mark.parametrize("unsubscribe", [True, False])
def test_renders_with_sample_data(
    composer: Composer, template: str, locale: str, channel: ChannelKind, unsubscribe: bool
) -> None:
    rendered = render(composer, template, locale, channel, unsubscribe)
    assert rendered.body
    assert rendered.locale == locale
    for text in (rendered.body, rendered.subject, rendered.title, rendered.html):
        assert text is None or (text and text == text.strip())


@pytest.mark.parametrize(("template", "locale", "channel"), SMS_AND_EMAIL)
def test_states_what_a_reminder_must_state(
    composer: Composer, template: str, locale: str, channel: ChannelKind
) -> None:
    rendered = render(composer, template, locale, channel)
    brand = SCHEDULE.brand_for(locale)
    ctx = sample_context(SCHEDULE, step_for(template), locale)
    amount = "¥1,234.50" if ctx.account.currency == "CNY" else "$1,234.50"
    deadline = {"zh": "2026年12月", "en": "December"}[locale[:2]]
    for text in filter(None, (rendered.body, rendered.html)):
        assert brand.name in text
        assert amount in text
        assert deadline in text
        assert brand.hotline in text
        assert FULL_ACCOUNT in text  # where to pay, in full: a borrower cannot pay to **** 6789
        assert "****" not in text


@pytest.mark.parametrize(("template", "locale", "channel"), SMS_AND_EMAIL)
def test_is_civil(composer: Composer, template: str, locale: str, channel: ChannelKind) -> None:
    rendered = render(composer, template, locale, channel)
    visible_html = re.sub(r"<[^>]+>", " ", rendered.html or "")
    text = " ".join(filter(None, (rendered.subject, rendered.body, visible_html))).lower()
    for word in FORBIDDEN[locale[:2]]:
        assert word not in text, word


@pytest.mark.parametrize(("template", "locale"), with_channel(ChannelKind.SMS))
def test_sms_opt_out_and_length(composer: Composer, template: str, locale: str) -> None:
    rendered = render(composer, template, locale, ChannelKind.SMS)
    segments = rendered.segments
    assert segments is not None
    if locale.startswith("zh"):
        assert rendered.body.startswith(f"【{SCHEDULE.brand_for(locale).name}】")
        assert rendered.body.endswith("回复TD退订")
        assert segments.encoding == "UCS-2"
        assert segments.segments <= 3
    else:
        assert rendered.body.endswith("Reply STOP to opt out")
        assert segments.encoding == "GSM-7"
        assert segments.segments <= 3


@pytest.mark.parametrize(("template", "locale"), with_channel(ChannelKind.EMAIL))
def test_email_unsubscribe_line(composer: Composer, template: str, locale: str) -> None:
    with_link = render(composer, template, locale, ChannelKind.EMAIL)
    url = sample_context(SCHEDULE, step_for(template), locale).unsubscribe_url
    assert url is not None
    assert url in with_link.body
    assert with_link.html is not None and f'href="{url}"' in with_link.html
    without = render(composer, template, locale, ChannelKind.EMAIL, unsubscribe=False)
    hotline = SCHEDULE.brand_for(locale).hotline
    assert "unsubscribe" not in without.body
    assert re.search(r"退订|stop receiving", without.body)
    assert hotline in without.body.splitlines()[-1]


@pytest.mark.parametrize(("template", "locale"), with_channel(ChannelKind.EMAIL))
def test_email_verification_channel(composer: Composer, template: str, locale: str) -> None:
    rendered = render(composer, template, locale, ChannelKind.EMAIL)
    assert SCHEDULE.brand_for(locale).website in rendered.body


@pytest.mark.parametrize(("template", "locale"), with_channel(ChannelKind.PUSH))
def test_push_is_lock_screen_safe(composer: Composer, template: str, locale: str) -> None:
    rendered = render(composer, template, locale, ChannelKind.PUSH)
    assert rendered.title
    shown = f"{rendered.title} {rendered.body}".lower()
    for word in LOCK_SCREEN_FORBIDDEN:
        assert word not in shown, word
    assert SCHEDULE.brand_for(locale).name.lower() in shown


class _TagChecker(HTMLParser):
    """Checks that non-void tags are closed in order."""

    VOID = frozenset({"meta", "br", "img", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unexpected </{tag}>, open: {self.stack}"
        self.stack.pop()


@pytest.mark.parametrize(("template", "locale"), with_channel(ChannelKind.EMAIL))
def test_html_email_is_well_formed_and_escaped(composer: Composer, template: str, locale: str) -> None:
    ctx = sample_context(SCHEDULE, step_for(template), locale)
    ctx = replace(ctx, account=replace(ctx.account, name='<script>"x"</script>'))
    rendered = composer.render_in(ctx, ChannelKind.EMAIL, locale)
    html = rendered.html
    assert html is not None
    assert html.startswith("<!DOCTYPE html>")
    assert f'<html lang="{locale}">' in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    checker = _TagChecker()
    checker.feed(html)
    checker.close()
    assert checker.stack == []


# --- where a broken edit is reported -------------------------------------------------------------


SYNTAX_ERRORS = [
    pytest.param("Hi\n{{ name }\n", 2, 9, "unexpected '}'", id="unclosed-print"),
    pytest.param("ok\n{% iff name %}{% endif %}", 2, 4, "unknown tag 'iff'", id="unknown-tag"),
    pytest.param("a\n{{ name brand }}", 2, 9, "got 'brand'", id="two-names"),
    pytest.param("{{ name }}\n{{ 'open }}", 2, 4, "unexpected char", id="unclosed-string"),
    pytest.param("{{ name|nofilter }}", 1, 9, "No filter named 'nofilter'", id="unknown-filter"),
    pytest.param("{{ name }} {{ brand }", 1, None, "unexpected '}'", id="ambiguous-token"),
]


@pytest.mark.parametrize(("source", "line", "col", "message"), SYNTAX_ERRORS)
def test_a_syntax_error_is_reported_at_its_line_and_column(
    tmp_path: Path, source: str, line: int, col: int | None, message: str
) -> None:
    for locale in SCHEDULE.locales:
        part = tmp_path / "gentle" / locale / "sms.txt.j2"
        part.parent.mkdir(parents=True)
        part.write_text(source if locale == "en-US" else "{{ name }}", encoding="utf-8")
    step = Step.model_validate({"step": "gentle", "days_overdue": "1-3", "channels": ["sms"]})
    [problem] = check_templates(SCHEDULE.model_copy(update={"ladder": [step]}), tmp_path)
    assert problem.file == str(tmp_path / "gentle/en-US/sms.txt.j2")
    assert (problem.line, problem.col) == (line, col)
    assert problem.message.startswith("syntax error: ") and message in problem.message
