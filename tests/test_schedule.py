"""Loading schedules.yaml: problems are all reported, each at the right line and column."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatcher.channel_kind import ChannelKind
from dispatcher.errors import ConfigError, Problem
from dispatcher.schedule.checks import TemplateChecker, TemplateIssue
from dispatcher.schedule.loader import LoadedSchedule, load_schedule
from dispatcher.schedule.models import Schedule
from dispatcher.schedule.report import format_problems, format_valid

SHIPPED = Path(__file__).resolve().parent.parent / "schedules.yaml"
SHIPPED_TEXT = SHIPPED.read_text(encoding="utf-8")


@dataclass(frozen=True)
class StubTemplateProblem:
    """Shaped like dispatcher.compose.renderer.TemplateProblem."""

    step: str
    template: str
    locale: str
    channel: ChannelKind
    file: str | None
    line: int | None
    message: str
    missing: bool


def missing_file(step: str, template: str, locale: str, channel: ChannelKind) -> StubTemplateProblem:
    """What the renderer reports for a template part with no file."""
    file = f"{template}/{locale}/{channel}.txt.j2"
    return StubTemplateProblem(step, template, locale, channel, file, None, "no such file", True)


def no_template_problems(schedule: Schedule, templates_dir: Path) -> list[TemplateIssue]:
    return []


def returning(*issues: TemplateIssue) -> TemplateChecker:
    def check(schedule: Schedule, templates_dir: Path) -> Sequence[TemplateIssue]:
        return list(issues)

    return check


def position(text: str, needle: str, *, after: str = "", occurrence: int = 0) -> tuple[int, int]:
    """1-based (line, col) of ``needle`` in ``text``, where ``needle`` follows ``after``.

    ``occurrence`` counts matches of ``after + needle`` from zero.
    """
    index = -1
    for _ in range(occurrence + 1):
        index = text.index(after + needle, index + 1)
    index += len(after)
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def edited(*replacements: tuple[str, str]) -> str:
    text = SHIPPED_TEXT
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(
    path: Path, env: dict[str, str] | None = None, checker: TemplateChecker | None = None
) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_schedule(path, env or {}, check_templates=checker or no_template_problems)
    return list(caught.value.problems)


def places(problems: Sequence[Problem]) -> list[tuple[int, int]]:
    return [(p.line, p.col) for p in problems]


def test_shipped_schedule_loads() -> None:
    loaded = load_schedule(SHIPPED, {}, check_templates=no_template_problems)
    assert isinstance(loaded, LoadedSchedule)
    assert [s.step for s in loaded.schedule.ladder] == [
        "courtesy", "gentle", "firm", "final", "call", "agents", "visit"]
    assert loaded.schedule.source.url is None  # ${DISPATCHER_SOURCE_URL:-} → ledger database
    assert loaded.templates_dir == SHIPPED.parent / "templates"
    assert len(loaded.version) == 12 and int(loaded.version, 16) >= 0
    with_url = load_schedule(SHIPPED, {"DISPATCHER_SOURCE_URL": "sqlite:///x.db"})
    assert with_url.schedule.source.url == "sqlite:///x.db"
    assert with_url.version == loaded.version


@pytest.mark.parametrize(("url", "says"), [
    ("nosuchdb://lender:hunter2@db.example/loans", "source.url: 'nosuchdb' cannot be opened here: "),
    ("postgresql+nosuchdriver://lender:hunter2@db.example/loans",
     "source.url: 'postgresql+nosuchdriver' cannot be opened here: "),
    ("lender:hunter2@db.example/loans", "source.url: this is not a database URL (e.g. postgresql+psycopg://"),
])
def test_a_source_url_that_cannot_be_opened_here_is_refused_at_its_place_without_its_password(
        tmp_path: Path, url: str, says: str) -> None:
    written = write(tmp_path, edited(("url: ${DISPATCHER_SOURCE_URL:-}", f'url: "{url}"')))
    problems = problems_of(written)
    assert places(problems) == [position(written.read_text(encoding="utf-8"), f'"{url}"')]
    assert problems[0].message.startswith(says), problems[0].message
    # as shipped, the URL comes from the environment: the problem is at the variable's place
    from_env = problems_of(SHIPPED, {"DISPATCHER_SOURCE_URL": url})
    assert places(from_env) == [position(SHIPPED_TEXT, "${DISPATCHER_SOURCE_URL:-}")]
    assert from_env[0].message.startswith(says)
    assert not any("hunter2" in str(p) for p in problems + from_env)


def test_typo_bad_cron_and_missing_template_are_all_reported(tmp_path: Path) -> None:
    text = edited(
        ("channels: [email, sms]", "chanels: [email, sms]"),
        ('cron: "0 9 * * *"', 'cron: "0 25 * * *"'),
        ("template: final_notice", "template: final_notic"),
    )
    missing = missing_file("final", "final_notic", "zh-CN", ChannelKind.SMS)
    problems = problems_of(write(tmp_path, text), checker=returning(missing))
    assert places(problems) == [
        position(text, '"0 25'),
        position(text, "chanels"),
        position(text, "final_notic", after="template: "),
    ]
    cron, typo, template = (p.message for p in problems)
    assert cron.startswith("runs[0].cron: invalid cron expression '0 25 * * *'")
    assert typo == "unknown key 'chanels' in ladder[2] (did you mean 'channels'?)"
    expected_file = tmp_path / "templates/final_notic/zh-CN/sms.txt.j2"
    assert template == f"template 'final_notic' has no file {expected_file}"
    assert {p.file for p in problems} == {str(tmp_path / "schedules.yaml")}


def test_file_names_stay_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, edited(("template: final_notice", "template: final_notic")))
    monkeypatch.chdir(tmp_path)
    issues = [
        missing_file("final", "final_notic", "zh-CN", ch)
        for ch in (ChannelKind.SMS, ChannelKind.EMAIL, ChannelKind.PUSH)
    ]
    broken = StubTemplateProblem(
        "firm",
        "firm",
        "en-US",
        ChannelKind.SMS,
        str(tmp_path / "templates/firm/en-US/sms.txt.j2"),
        3,
        "'amount' is undefined",
        False,
    )
    problems = problems_of(Path("schedules.yaml"), checker=returning(*issues, broken))
    assert [str(p) for p in problems][-1] == "templates/firm/en-US/sms.txt.j2:3:1: 'amount' is undefined"
    missing = [str(p) for p in problems if p.file == "schedules.yaml"]
    line, col = position(SHIPPED_TEXT, "final_notice", after="template: ")
    # the whole directory is missing: once per step and locale, not once per file
    assert missing == [
        f"schedules.yaml:{line}:{col}: template 'final_notic' has no file "
        "templates/final_notic/zh-CN/sms.txt.j2"
    ]


def test_missing_templates_in_an_existing_directory_are_each_reported(tmp_path: Path) -> None:
    (tmp_path / "templates/final_notice/en-US").mkdir(parents=True)
    issues = [
        missing_file("final", "final_notice", "en-US", ch) for ch in (ChannelKind.SMS, ChannelKind.PUSH)
    ]
    problems = problems_of(write(tmp_path, SHIPPED_TEXT), checker=returning(*issues))
    assert len(problems) == 2 and all(p.rule == "template" for p in problems)


def test_unknown_zone(tmp_path: Path) -> None:
    text = edited(("timezone: Asia/Shanghai", "timezone: Asia/Shanghia"))
    problems = problems_of(write(tmp_path, text))
    assert places(problems) == [position(text, "Asia/Shanghia")]
    assert problems[0].message == "timezone: unknown time zone 'Asia/Shanghia'"


def test_wrong_types(tmp_path: Path) -> None:
    text = edited(("channels: [push, sms]", "channels: sms"), ("batch_size: 1000", "batch_size: many"))
    problems = problems_of(write(tmp_path, text))
    assert places(problems) == [position(text, "many"), position(text, "sms", after="channels: ")]
    assert [p.message for p in problems] == [
        "source.batch_size: expected a whole number, got 'many'",
        "ladder[0].channels: expected a list, got 'sms'",
    ]


def test_unknown_channel_is_reported_at_the_item(tmp_path: Path) -> None:
    text = edited(("channels: [email, sms]", "channels: [email, fax]"))
    problems = problems_of(write(tmp_path, text))
    assert places(problems) == [position(text, "fax")]
    assert problems[0].message == "ladder[2].channels[1]: expected 'sms', 'email', 'push' or 'voice', got 'fax'"


def test_missing_key_is_reported_at_the_enclosing_mapping(tmp_path: Path) -> None:
    text = edited(("    channels: [email, sms]\n", ""))
    problems = problems_of(write(tmp_path, text))
    assert places(problems) == [position(text, "step: firm")]
    assert problems[0].message == "missing key 'channels' in ladder[2]"


def test_overlapping_windows(tmp_path: Path) -> None:
    text = edited(("days_overdue: 15-29", "days_overdue: 10-20"))
    problems = problems_of(write(tmp_path, text))
    assert places(problems) == [position(text, "10-20")]
    assert problems[0].message == "ladder[3].days_overdue 10-20 overlaps step 'firm' (4-14)"


def test_duplicate_step_and_run_names(tmp_path: Path) -> None:
    text = edited(("step: final ", "step: firm  "), ("name: evening", "name: morning"))
    problems = problems_of(write(tmp_path, text))
    assert places(problems) == [
        position(text, "morning", after="name: ", occurrence=1),
        position(text, "firm", after="step: ", occurrence=1),
    ]
    assert [p.message for p in problems] == [
        "runs[1].name: run name 'morning' is already used by runs[0]",
        "ladder[3].step: step name 'firm' is already used by ladder[2]",
    ]


def test_environment_variables(tmp_path: Path) -> None:
    text = edited(
        ("timezone: Asia/Shanghai", "timezone: ${ZONE}"),
        ("batch_size: 1000", "batch_size: ${BATCH:-250}"),
        ("website: https://www.xinyongqianbao.example.cn/verify", "website: https://x.example/$${raw}"),
    )
    path = write(tmp_path, text)
    loaded = load_schedule(path, {"ZONE": "Europe/London"})
    assert loaded.schedule.timezone == "Europe/London"
    assert loaded.schedule.source.batch_size == 250
    assert loaded.schedule.brand["zh-CN"].website == "https://x.example/${raw}"
    assert load_schedule(path, {"ZONE": "UTC", "BATCH": "7"}).schedule.source.batch_size == 7
    problems = problems_of(path, {})
    assert places(problems) == [position(text, "${ZONE}")]
    assert "ZONE is not set" in problems[0].message


def test_yaml_syntax_error_position(tmp_path: Path) -> None:
    text = edited(("locales: [zh-CN, en-US]", "locales: [zh-CN, en-US"))
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1 and problems[0].rule == "yaml"
    assert problems[0].line == position(text, "\nprofile: cn")[0] + 1
    assert problems[0].message.startswith("YAML syntax error:")


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    assert "cannot read" in problems_of(tmp_path / "absent.yaml")[0].message
    assert problems_of(write(tmp_path, "# nothing\n"))[0].message == "the file is empty"


def test_templates_are_not_checked_when_the_file_cannot_be_salvaged(tmp_path: Path) -> None:
    calls: list[Schedule] = []

    def checker(schedule: Schedule, templates_dir: Path) -> list[TemplateIssue]:
        calls.append(schedule)
        return []

    problems = problems_of(write(tmp_path, edited(("locale: zh-CN", "locale: fr-FR"))), checker=checker)
    assert problems[0].message == "default locale 'fr-FR' is not in locales ['zh-CN', 'en-US']"
    assert calls == []


def test_formats(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, edited(("timezone: Asia/Shanghai", "timezone: Nowhere"))))
    text = format_problems(problems, "text")
    assert text == str(problems[0]) and text.count(":") >= 3
    parsed = json.loads(format_problems(problems, "json"))
    assert parsed["valid"] is False
    assert parsed["problems"][0] == problems[0].as_dict()
    loaded = load_schedule(SHIPPED, {})
    expected = {"valid": True, "file": str(SHIPPED), "version": loaded.version}
    assert json.loads(format_valid(loaded, "json")) == expected
    assert loaded.version in format_valid(loaded, "text")


def test_templates_of_valid_steps_are_checked_despite_other_errors(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def checker(schedule: Schedule, templates_dir: Path) -> list[TemplateIssue]:
        seen.append([step.step for step in schedule.ladder])
        return []

    text = edited(("channels: [push, sms]", "channels: []"), ("    every: 3d\n", "    every: 12h\n"))
    problems = problems_of(write(tmp_path, text), checker=checker)
    assert [p.message for p in problems] == [
        "ladder[0].channels: needs at least 1 item(s)",
        "ladder[2].every: must be a whole number of days or weeks, like '3d' or '1w'",
    ]
    assert seen == [["gentle", "firm", "final", "call", "agents", "visit"],  # the broken step is left out
                    ["firm"]]  # then the steps with a further template variant (the shipped firm experiment)


def test_max_reject_ratio_defaults_to_five_percent_and_stays_between_zero_and_one(tmp_path: Path) -> None:
    loaded = load_schedule(SHIPPED, {}, check_templates=no_template_problems)
    assert loaded.schedule.source.max_reject_ratio == 0.05
    text = edited(("  batch_size: 1000", "  batch_size: 1000\n  max_reject_ratio: 1.5"))
    (problem,) = problems_of(write(tmp_path, text))
    assert places([problem]) == [position(text, "1.5", after="max_reject_ratio: ")]
    assert "source.max_reject_ratio" in problem.message
    text = edited(("  batch_size: 1000", "  batch_size: 1000\n  max_reject_ratio: 0.3"))
    assert load_schedule(write(tmp_path, text), {}, check_templates=no_template_problems).schedule.source \
        .max_reject_ratio == 0.3
