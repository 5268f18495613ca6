"""Templates are part of the loaded configuration: snapshotted, versioned, checked before use."""

from __future__ import annotations

import json
import queue
import shutil
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest
from rows import demo_row, seed_rows

from dispatcher.app import App, load, template_checks
from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.layout import TemplateSet
from dispatcher.compose.renderer import Composer, sample_context
from dispatcher.errors import ConfigError, Problem
from dispatcher.pipeline.run import Runner
from dispatcher.schedule.checks import TemplateIssue
from dispatcher.schedule.loader import LoadedSchedule, content_version, load_schedule
from dispatcher.schedule.models import Schedule
from dispatcher.schedule.watch import ScheduleWatcher

REPO = Path(__file__).resolve().parent.parent
SMS = "gentle/zh-CN/sms.txt.j2"
OLD_WORDING = "如已还款请忽略。"
NEW_WORDING = "如您已还款，请忽略本短信。"
BROKEN_LINE = "{% iff paid %}"
"""A typo of ``{% if %}``: Jinja's "unknown tag 'iff'", at column 4 of its line."""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped schedules.yaml and templates/, the working directory."""
    shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    monkeypatch.chdir(tmp_path)
    return Path("schedules.yaml")


def write(name: str, text: str) -> None:
    Path("templates", name).write_text(text, encoding="utf-8")


def edit(name: str, old: str, new: str) -> None:
    text = Path("templates", name).read_text(encoding="utf-8")
    assert old in text
    write(name, text.replace(old, new, 1))


def checked(path: Path) -> LoadedSchedule:
    return load_schedule(path, {}, check_templates=template_checks)


def sms_of(composer: Composer) -> str:
    schedule = composer.schedule
    step = schedule.step_named("gentle")
    assert step is not None
    return composer.render_in(sample_context(schedule, step, "zh-CN"), ChannelKind.SMS, "zh-CN").body


def test_the_loaded_schedule_holds_every_template_once(config: Path) -> None:
    loaded = load_schedule(config, {})
    on_disk = sorted(p.relative_to("templates").as_posix() for p in Path("templates").rglob("*.j2"))
    assert sorted(loaded.templates.files) == on_disk
    assert loaded.templates.files[SMS] == Path("templates", SMS).read_bytes()
    assert loaded.templates_dir == Path("templates")


def test_the_version_changes_when_only_a_template_changes(config: Path) -> None:
    before = load_schedule(config, {})
    edit(SMS, OLD_WORDING, NEW_WORDING)
    after = load_schedule(config, {})
    assert after.version != before.version
    assert len(after.version) == 12 and int(after.version, 16) >= 0
    schedule_bytes = config.read_bytes()
    assert after.version == content_version(schedule_bytes, after.templates)
    assert before.version == content_version(schedule_bytes, before.templates)
    assert content_version(schedule_bytes) not in (before.version, after.version)


def test_the_version_covers_added_and_removed_templates(config: Path) -> None:
    original = load_schedule(config, {}).version
    write("gentle/zh-CN/footer.j2", "")
    added = load_schedule(config, {}).version
    Path("templates/gentle/zh-CN/footer.j2").unlink()
    assert load_schedule(config, {}).version == original != added


def test_the_version_depends_on_the_template_names(tmp_path: Path) -> None:
    a = TemplateSet(tmp_path, {"gentle/zh-CN/sms.txt.j2": b"x"})
    b = TemplateSet(tmp_path, {"gentle/en-US/sms.txt.j2": b"x"})
    assert content_version(b"", a) != content_version(b"", b)


def test_a_composer_never_reads_the_disk_after_load(config: Path) -> None:
    loaded = checked(config)
    composer = Composer(loaded.templates, loaded.schedule)
    edit(SMS, OLD_WORDING, NEW_WORDING)
    Path("templates/gentle/zh-CN/push_title.txt.j2").unlink()
    text = sms_of(composer)
    assert OLD_WORDING in text and NEW_WORDING not in text
    step = loaded.schedule.ladder[0]
    pushed = composer.render_in(sample_context(loaded.schedule, step, "zh-CN"), ChannelKind.PUSH, "zh-CN")
    assert pushed.title


def test_a_composer_given_a_directory_reads_it_once(config: Path) -> None:
    composer = Composer(Path("templates"), load_schedule(config, {}).schedule)
    edit(SMS, OLD_WORDING, NEW_WORDING)
    assert OLD_WORDING in sms_of(composer)


def test_a_syntax_error_is_refused_at_its_file_line_and_column(config: Path) -> None:
    good = checked(config)
    edit(SMS, OLD_WORDING, f"{OLD_WORDING}\n{BROKEN_LINE}")
    with pytest.raises(ConfigError) as caught:
        checked(config)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.col) == (f"templates/{SMS}", 2, 4)
    assert str(problem) == f"templates/{SMS}:2:4: syntax error: Encountered unknown tag 'iff'."
    assert OLD_WORDING in sms_of(Composer(good.templates, good.schedule))


def test_a_fixed_edit_gives_a_new_version_rendering_the_new_text(config: Path) -> None:
    good = checked(config)
    edit(SMS, OLD_WORDING, f"{OLD_WORDING}\n{BROKEN_LINE}")
    with pytest.raises(ConfigError):
        checked(config)
    edit(SMS, f"{OLD_WORDING}\n{BROKEN_LINE}", NEW_WORDING)
    fixed = checked(config)
    assert fixed.version != good.version
    assert NEW_WORDING in sms_of(Composer(fixed.templates, fixed.schedule))
    assert OLD_WORDING in sms_of(Composer(good.templates, good.schedule))


def test_a_forbidden_word_is_refused_at_its_template_line(config: Path) -> None:
    edit(SMS, OLD_WORDING, f"{OLD_WORDING}\n否则将通知您的通讯录联系人。")
    with pytest.raises(ConfigError) as caught:
        checked(config)
    assert {(p.file, p.line, p.rule) for p in caught.value.problems} == {(f"templates/{SMS}", 2, "civil-contacts")}


def test_the_checks_and_the_composer_see_the_same_snapshot(config: Path) -> None:
    """A save landing between the check and the first render changes neither."""

    def check_then_break(schedule: Schedule, templates: TemplateSet) -> Sequence[TemplateIssue]:
        issues = template_checks(schedule, templates)
        edit(SMS, OLD_WORDING, f"{OLD_WORDING}\n{BROKEN_LINE}")
        return issues

    loaded = load_schedule(config, {}, check_templates=check_then_break)
    assert BROKEN_LINE in Path("templates", SMS).read_text(encoding="utf-8")
    assert BROKEN_LINE.encode() not in loaded.templates.files[SMS]
    assert OLD_WORDING in sms_of(Composer(loaded.templates, loaded.schedule))
    assert loaded.version == content_version(config.read_bytes(), loaded.templates)
    assert loaded.version != content_version(config.read_bytes(), TemplateSet.read(Path("templates")))


# --- while running -------------------------------------------------------------------------------


def sms_sent(app: App, account_id: str) -> str:
    """The text of the SMS the outbox holds for ``account_id``."""
    lines = (app.settings.outbox_dir / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    [text] = [r["text"] for r in map(json.loads, lines) if r["account_id"] == account_id]
    return str(text)


def run_for(app: App, account_id: str) -> str:
    """Add a borrower 2 days overdue, run, and return the SMS it was sent."""
    number = account_id[-1]
    seed_rows(app.engine, demo_row(account_id, date(2026, 3, 8), phone=f"+861380013800{number}",
                                   email=f"b{number}@example.cn"))
    report = Runner(app).run(f"run-{account_id}", app.clock())
    assert report.status == "completed"
    return sms_sent(app, account_id)


def test_a_running_dispatcher_keeps_the_last_good_templates_until_a_fixed_save(app: App, workdir: Path) -> None:
    """What the daemon does: the watcher loads with every check and swaps the pipeline of a valid version."""
    events: queue.Queue[tuple[str, object]] = queue.Queue()

    def changed(loaded: LoadedSchedule) -> None:
        app.pipeline = app.build_pipeline(loaded)
        events.put(("change", loaded))

    sms = workdir / "templates" / SMS
    watcher = ScheduleWatcher(app.settings.schedules_path, lambda _path: load(app.settings), changed,
                              lambda error: events.put(("error", error)), interval=0.02)
    with watcher:
        assert OLD_WORDING in run_for(app, "A1")
        sms.write_text(sms.read_text(encoding="utf-8").replace(OLD_WORDING, f"{OLD_WORDING}\n{BROKEN_LINE}"),
                       encoding="utf-8")
        kind, error = events.get(timeout=5)
        assert kind == "error" and isinstance(error, ConfigError)
        assert [str(p) for p in error.problems] == [
            str(Problem(str(sms), 2, 4, "syntax error: Encountered unknown tag 'iff'."))]
        assert OLD_WORDING in run_for(app, "A2")

        sms.write_text((REPO / "templates" / SMS).read_text(encoding="utf-8").replace(OLD_WORDING, NEW_WORDING),
                       encoding="utf-8")
        kind, fixed = events.get(timeout=5)
        assert kind == "change" and isinstance(fixed, LoadedSchedule)
        assert NEW_WORDING in run_for(app, "A3")
