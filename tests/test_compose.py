"""The composition layer: filters, SMS segments, locale fallback, rendering and template checks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError
from ruamel.yaml import YAML

from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.environment import build_environment
from dispatcher.compose.filters import babel_locale, localdate, mask, money
from dispatcher.compose.layout import PARTS, TemplateSet
from dispatcher.compose.renderer import (
    Composer,
    RenderContext,
    Rendered,
    check_templates,
    sample_context,
)
from dispatcher.compose.segments import GSM7_BASIC, sms_segments
from dispatcher.errors import TemplateError
from dispatcher.schedule.models import Schedule, Step

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"


def load_schedule() -> Schedule:
    data = YAML(typ="safe").load(ROOT / "schedules.yaml")
    data["source"]["url"] = None
    return Schedule.model_validate(data)


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return load_schedule()


@pytest.fixture(scope="module")
def composer(schedule: Schedule) -> Composer:
    return Composer(TEMPLATES, schedule)


def write_templates(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def gentle(schedule: Schedule) -> Step:
    step = schedule.step_named("gentle")
    assert step is not None
    return step


def render_gentle(templates: Path, schedule: Schedule, channel: ChannelKind) -> Rendered:
    """Render the gentle step's zh-CN sample with the templates in ``templates``."""
    return Composer(templates, schedule).render(sample_context(schedule, gentle(schedule), "zh-CN"), channel)


# --- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "locale", "expected"),
    [
        ("CNY", "zh-CN", "¥1,234.50"),
        ("USD", "en-US", "$1,234.50"),
        ("CNY", "en-US", "CN¥1,234.50"),
        ("USD", "zh-CN", "US$1,234.50"),
    ],
)
def test_money_is_locale_and_currency_aware(currency: str, locale: str, expected: str) -> None:
    assert money(Decimal("1234.5"), currency, locale) == expected


def test_money_rounds_to_the_currency_digits() -> None:
    assert money(Decimal("0.006"), "USD", "en-US") == "$0.01"
    assert money(Decimal("100"), "CNY", "zh-CN") == "¥100.00"


def test_babel_locales_are_cached() -> None:
    assert babel_locale("zh-CN") is babel_locale("zh-CN")
    assert str(babel_locale("en-US")) == "en_US"


@pytest.mark.parametrize(
    ("locale", "fmt", "expected"),
    [
        ("zh-CN", "long", "2026年12月1日"),
        ("en-US", "long", "December 1, 2026"),
        ("en-US", "short", "12/1/26"),
    ],
)
def test_localdate(locale: str, fmt: str, expected: str) -> None:
    assert localdate(date(2026, 12, 1), locale, fmt) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6222 0212 3456 6789", "**** 6789"),
        ("6222-0212-3456-6789", "**** 6789"),
        ("6222021234566789", "****6789"),
        ("VA88001234567", "****4567"),
        ("  6222021234566789 ", "****6789"),
        ("1234", "****"),
        ("12", "****"),
        ("", "****"),
        ("https://pay.example.cn/r/AB12CD", "https://pay.example.cn/r/AB12CD"),
        ("http://pay.example.cn/x", "http://pay.example.cn/x"),
    ],
)
def test_mask(value: str, expected: str) -> None:
    assert mask(value) == expected


def test_mask_keep_is_configurable() -> None:
    assert mask("6222021234566789", keep=2) == "****89"
    assert mask("6222021234566789", keep=0) == "****"


@given(st.text(alphabet="0123456789 -", min_size=0, max_size=40))
def test_mask_never_shows_more_than_four_digits(value: str) -> None:
    masked = mask(value)
    assert len(re.findall(r"\d", masked)) <= 4
    digits = re.sub(r"\D", "", value)
    if len(digits) > 4:
        assert masked.endswith(digits[-4:])


def test_filters_read_currency_and_locale_from_the_context(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(
        tmp_path,
        {"gentle/zh-CN/sms.txt.j2": "{{ amount|money }} {{ amount|money('USD') }} {{ deadline|localdate }}"},
    )
    ctx = sample_context(schedule, gentle(schedule), "zh-CN")
    rendered = Composer(templates, schedule).render(ctx, ChannelKind.SMS)
    assert rendered.body == "¥1,234.50 US$1,234.50 2026年12月1日"


# --- segments -----------------------------------------------------------------------------------


def test_gsm7_basic_set_is_complete() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points minus the escape code
    assert sms_segments("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà").encoding == "GSM-7"


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),
        ("a" * 159 + "^", "GSM-7", 161, 2),
        ("{}[]~|\\^", "GSM-7", 16, 1),
        ("中" * 70, "UCS-2", 70, 1),
        ("中" * 71, "UCS-2", 71, 2),
        ("中" * 134, "UCS-2", 134, 2),
        ("中" * 135, "UCS-2", 135, 3),
        ("a" * 69 + "’", "UCS-2", 70, 1),
        ("😀" * 35, "UCS-2", 70, 1),
    ],
)
def test_sms_segments(text: str, encoding: str, units: int, segments: int) -> None:
    result = sms_segments(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_escape_pairs_are_not_split_across_parts() -> None:
    # 152 plain characters, then an extension char that no longer fits in part one:
    # 306 units, which would fit two parts of 153 if the pair could be split.
    text = "a" * 152 + "€" + "a" * 152
    assert (sms_segments(text).units, sms_segments(text).segments) == (306, 3)


# --- locale resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "resolved"),
    [
        ("zh-CN", "zh-CN"),
        ("en-US", "en-US"),
        ("zh-TW", "zh-CN"),
        ("zh_HK", "zh-CN"),
        ("en-GB", "en-US"),
        ("en-us", "en-US"),
        ("fr-FR", "zh-CN"),
        ("", "zh-CN"),
        (None, "zh-CN"),
    ],
)
def test_resolve_locale(composer: Composer, requested: str | None, resolved: str) -> None:
    assert composer.resolve_locale(requested) == resolved


def test_a_locale_without_template_directories_falls_back(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(
        tmp_path, {f"{t}/zh-CN/sms.txt.j2": "x" for t in ("gentle", "firm", "final_notice")}
    )
    assert Composer(templates, schedule).resolve_locale("en-US") == "zh-CN"


def test_render_uses_the_resolved_locale(composer: Composer, schedule: Schedule) -> None:
    ctx = sample_context(schedule, gentle(schedule), "zh-CN")
    ctx = replace(ctx, account=replace(ctx.account, locale="zh-TW"))
    rendered = composer.render(ctx, ChannelKind.SMS)
    assert rendered.locale == "zh-CN"
    assert rendered.body.startswith("【信用钱包】")


# --- rendering ----------------------------------------------------------------------------------


def test_rendered_sms(composer: Composer, schedule: Schedule) -> None:
    rendered = composer.render(sample_context(schedule, gentle(schedule), "en-US"), ChannelKind.SMS)
    assert rendered.channel is ChannelKind.SMS
    assert rendered.template == "gentle"
    assert re.fullmatch(r"[0-9a-f]{12}", rendered.template_version)
    assert re.fullmatch(r"[0-9a-f]{64}", rendered.content_hash)
    assert (rendered.subject, rendered.html, rendered.title, rendered.data) == (None, None, None, {})
    assert rendered.body == rendered.body.strip()
    assert rendered.segments is not None
    assert rendered.segments.encoding == "GSM-7"


def test_rendered_email_has_all_parts(composer: Composer, schedule: Schedule) -> None:
    rendered = composer.render(sample_context(schedule, gentle(schedule), "zh-CN"), ChannelKind.EMAIL)
    assert rendered.subject and rendered.body and rendered.html
    assert rendered.title is None
    assert rendered.segments is None


def test_rendered_push_data(composer: Composer, schedule: Schedule) -> None:
    ctx = sample_context(schedule, gentle(schedule), "zh-CN")
    rendered = composer.render(ctx, ChannelKind.PUSH)
    assert rendered.title == "信用钱包"
    assert rendered.data == {
        "kind": "overdue_reminder",
        "account_id": "SAMPLE-0001",
        "step": "gentle",
        "amount": "¥1,234.50",
        "currency": "CNY",
        "deadline": "2026-12-01",
        "days_overdue": "1",
    }


def test_version_depends_on_the_source_and_hash_on_the_text(composer: Composer, schedule: Schedule) -> None:
    ctx = sample_context(schedule, gentle(schedule), "zh-CN")
    first = composer.render(ctx, ChannelKind.SMS)
    other = composer.render(replace(ctx, days_overdue=2), ChannelKind.SMS)
    assert first.template_version == other.template_version
    assert first.content_hash != other.content_hash
    assert first.content_hash == composer.render(ctx, ChannelKind.SMS).content_hash
    in_english = composer.render(replace(ctx, account=replace(ctx.account, locale="en-US")), ChannelKind.SMS)
    assert in_english.template_version != first.template_version


def counted_loads(composer: Composer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the templates ``composer``'s Jinja environment loads from now on, in order."""
    loads: list[str] = []
    original = composer.env.get_template

    def counting(name: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(composer.env, "get_template", counting)
    return loads


def test_templates_are_compiled_once(schedule: Schedule, monkeypatch: pytest.MonkeyPatch) -> None:
    composer = Composer(TEMPLATES, schedule)
    loads = counted_loads(composer, monkeypatch)
    ctx = sample_context(schedule, gentle(schedule), "zh-CN")
    for _ in range(5):
        composer.render(ctx, ChannelKind.EMAIL)
    assert len(loads) == len(PARTS[ChannelKind.EMAIL])


def test_compile_all_compiles_every_part_the_ladder_renders_ahead(schedule: Schedule,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What a planning helper does when it wires a version: afterwards no message compiles a template."""
    composer = Composer(TEMPLATES, schedule)
    loads = counted_loads(composer, monkeypatch)
    wanted = {(template, locale, channel) for step in schedule.ladder for template in step.templates
              for locale in composer.available for channel in step.channels if channel in PARTS}
    assert composer.compile_all() == sum(len(PARTS[channel]) for _t, _l, channel in wanted) == len(loads)
    assert len(set(loads)) == len(loads)
    for step in schedule.ladder:
        for locale in composer.available:
            for channel in step.channels:
                if channel in PARTS:
                    composer.render(sample_context(schedule, step, locale), channel)
    assert len(loads) == len(set(loads))  # nothing compiled again, nothing compiled late
    assert composer.compile_all() == len(set(loads))  # the second time from what it holds


def test_compile_all_leaves_a_broken_part_to_its_first_message(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": "{{ amount | money(currency }}"})
    composer = Composer(templates, schedule)
    composer.compile_all()  # does not raise: the part is reported where it is rendered
    with pytest.raises(TemplateError):
        composer.render(sample_context(schedule, gentle(schedule), "zh-CN"), ChannelKind.SMS)


def test_html_is_autoescaped_and_text_is_not(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(
        tmp_path,
        {
            "gentle/en-US/email_subject.txt.j2": "{{ name }}",
            "gentle/en-US/email.txt.j2": "{{ name }}",
            "gentle/en-US/email.html.j2": "<p>{{ name }}</p>",
        },
    )
    ctx = sample_context(schedule, gentle(schedule), "en-US")
    ctx = replace(ctx, account=replace(ctx.account, name="<b>Tom & Jerry</b>"))
    rendered = Composer(templates, schedule).render_in(ctx, ChannelKind.EMAIL, "en-US")
    assert rendered.body == "<b>Tom & Jerry</b>"
    assert rendered.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"


def test_rendered_parts_are_stripped(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": "\n\n  {{ name }}  \n\n"})
    rendered = render_gentle(templates, schedule, ChannelKind.SMS)
    assert rendered.body == "张伟"


# --- errors -------------------------------------------------------------------------------------


def test_undefined_variable_names_file_and_line(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(
        tmp_path, {"gentle/zh-CN/sms.txt.j2": "【{{ brand.name }}】\n{{ name }}\n{{ nope }}\n"}
    )
    ctx = sample_context(schedule, gentle(schedule), "zh-CN")
    with pytest.raises(TemplateError) as caught:
        Composer(templates, schedule).render(ctx, ChannelKind.SMS)
    assert caught.value.file is not None
    assert caught.value.file.endswith("gentle/zh-CN/sms.txt.j2")
    assert caught.value.line == 3
    assert "nope" in str(caught.value)


def test_undefined_attribute_is_an_error(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": "{{ brand.fax }}"})
    with pytest.raises(TemplateError, match="fax"):
        render_gentle(templates, schedule, ChannelKind.SMS)


def test_syntax_error_names_file_and_line(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": "ok\n{% if name %}\nnever closed\n"})
    with pytest.raises(TemplateError) as caught:
        render_gentle(templates, schedule, ChannelKind.SMS)
    assert caught.value.file is not None and caught.value.file.endswith("sms.txt.j2")
    assert caught.value.line is not None and caught.value.line >= 2


def test_missing_part_is_an_error(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": "x"})
    with pytest.raises(TemplateError, match="missing") as caught:
        render_gentle(templates, schedule, ChannelKind.PUSH)
    assert caught.value.file == str(templates / "gentle/zh-CN/push_title.txt.j2")


def test_sandbox_refuses_unsafe_attributes(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": "{{ name.__class__.__mro__ }}"})
    with pytest.raises(TemplateError):
        render_gentle(templates, schedule, ChannelKind.SMS)


def test_the_sandbox_answers_each_type_and_attribute_alike_however_often_asked(tmp_path: Path) -> None:
    """Its answers are kept by the object's type and the attribute: a generator's frame stays refused after a plain
    object's attribute of the same name was allowed, and on every later render."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt.j2").write_text("{{ x.gi_frame }}", "utf-8")
    env = build_environment(TemplateSet.read(tmp_path))
    template = env.get_template("t/a.txt.j2")

    class Plain:
        gi_frame = "shown"

    def generator() -> Iterator[int]:
        yield 1

    for _ in range(2):
        assert template.render(x=Plain()) == "shown"
        with pytest.raises(SecurityError):
            template.render(x=generator())


# --- check_templates ----------------------------------------------------------------------------


def one_step_schedule(schedule: Schedule, channels: list[str]) -> Schedule:
    step = Step.model_validate({"step": "gentle", "days_overdue": "1-3", "channels": channels})
    return schedule.model_copy(update={"ladder": [step]})


def test_check_templates_reports_a_missing_file(tmp_path: Path, schedule: Schedule) -> None:
    sms = "{{ name }} {{ amount|money }}"
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": sms, "gentle/en-US/sms.txt.j2": sms})
    (templates / "gentle/en-US/sms.txt.j2").unlink()
    problems = check_templates(one_step_schedule(schedule, ["sms"]), templates)
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.step, problem.template, problem.locale, problem.channel) == (
        "gentle",
        "gentle",
        "en-US",
        ChannelKind.SMS,
    )
    assert problem.missing
    assert problem.file == str(templates / "gentle/en-US/sms.txt.j2")
    assert problem.line is None


def test_check_templates_reports_a_syntax_error_with_its_line(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(
        tmp_path,
        {"gentle/zh-CN/sms.txt.j2": "{{ name }}", "gentle/en-US/sms.txt.j2": "Hi\n{{ name }\n"},
    )
    problems = check_templates(one_step_schedule(schedule, ["sms"]), templates)
    assert len(problems) == 1
    problem = problems[0]
    assert not problem.missing
    assert problem.locale == "en-US"
    assert problem.file is not None and problem.file.endswith("gentle/en-US/sms.txt.j2")
    assert problem.line == 2
    assert "syntax" in problem.message


def test_check_templates_reports_an_undefined_variable(tmp_path: Path, schedule: Schedule) -> None:
    templates = write_templates(
        tmp_path,
        {"gentle/zh-CN/sms.txt.j2": "{{ name }}", "gentle/en-US/sms.txt.j2": "a\nb\n{{ borrower }}"},
    )
    [problem] = check_templates(one_step_schedule(schedule, ["sms"]), templates)
    assert (problem.locale, problem.line, problem.missing) == ("en-US", 3, False)
    assert "borrower" in problem.message


def test_check_templates_renders_without_an_unsubscribe_url(tmp_path: Path, schedule: Schedule) -> None:
    text = "{{ unsubscribe_url|length }}"
    templates = write_templates(tmp_path, {"gentle/zh-CN/sms.txt.j2": text, "gentle/en-US/sms.txt.j2": text})
    problems = check_templates(one_step_schedule(schedule, ["sms"]), templates)
    assert {p.locale for p in problems} == {"zh-CN", "en-US"}


def test_check_templates_reports_every_missing_part(tmp_path: Path, schedule: Schedule) -> None:
    problems = check_templates(one_step_schedule(schedule, ["email", "push"]), tmp_path / "nowhere")
    assert len(problems) == 2 * 5
    assert all(p.missing for p in problems)


def test_sample_context(schedule: Schedule) -> None:
    step = gentle(schedule)
    ctx = sample_context(schedule, step, "en-US")
    assert isinstance(ctx, RenderContext)
    assert ctx.account.locale == "en-US"
    assert ctx.days_overdue == step.days_overdue.first
    assert (ctx.deadline - ctx.local_today).days == step.deadline_days
    assert ctx.unsubscribe_url is not None and ctx.unsubscribe_url.startswith("https://")


def test_templates_see_the_environments_globals_and_their_own_over_them(tmp_path: Path) -> None:
    """Each template's globals are copied once at loading (a plain dict, not Jinja's ChainMap copied per render):
    Jinja's own (``range``, ``namespace``) and a template's own, which win over the environment's."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt.j2").write_text("{% set n = namespace(k=0) %}{% for i in range(3) %}"
                                              "{% set n.k = n.k + i %}{% endfor %}{{ n.k }} {{ brand }}", "utf-8")
    env = build_environment(TemplateSet.read(tmp_path))
    env.globals["brand"] = "Acme"

    assert env.get_template("t/a.txt.j2").render() == "3 Acme"
    assert env.get_template("t/a.txt.j2", globals={"brand": "Own"}).render() == "3 Own"
    assert env.get_template("t/a.txt.j2").render(brand="Given") == "3 Given"
