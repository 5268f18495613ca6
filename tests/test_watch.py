"""ScheduleWatcher: edits of schedules.yaml and templates noticed, invalid ones reported, identical rewrites ignored."""

from __future__ import annotations

import os
import queue
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.app import template_checks
from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.renderer import Composer, sample_context
from dispatcher.errors import ConfigError
from dispatcher.schedule.loader import LoadedSchedule, load_schedule
from dispatcher.schedule.watch import ScheduleWatcher

REPO = Path(__file__).resolve().parent.parent
SHIPPED_TEXT = (REPO / "schedules.yaml").read_text(encoding="utf-8")
SMS = "gentle/zh-CN/sms.txt.j2"
OLD_WORDING = "如已还款请忽略。"
NEW_WORDING = "如您已还款，请忽略本短信。"
INTERVAL = 0.02
WAIT = 5.0

Event = tuple[str, object]


def load(path: Path) -> LoadedSchedule:
    return load_schedule(path, {})


@pytest.fixture
def schedule_file(tmp_path: Path) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(SHIPPED_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def events(schedule_file: Path) -> Iterator[queue.Queue[Event]]:
    received: queue.Queue[Event] = queue.Queue()
    watcher = ScheduleWatcher(
        schedule_file,
        load,
        on_change=lambda loaded: received.put(("change", loaded)),
        on_error=lambda error: received.put(("error", error)),
        interval=INTERVAL,
    )
    with watcher:
        yield received
    assert not watcher.running


def quiet(received: queue.Queue[Event]) -> bool:
    """Whether nothing arrives during a few polling intervals."""
    try:
        received.get(timeout=INTERVAL * 10)
    except queue.Empty:
        return True
    return False


def test_valid_edit_calls_on_change(schedule_file: Path, events: queue.Queue[Event]) -> None:
    old_version = load(schedule_file).version
    schedule_file.write_text(SHIPPED_TEXT.replace("batch_size: 1000", "batch_size: 500"), encoding="utf-8")
    kind, loaded = events.get(timeout=WAIT)
    assert kind == "change" and isinstance(loaded, LoadedSchedule)
    assert loaded.schedule.source.batch_size == 500
    assert loaded.version != old_version


def test_invalid_edit_calls_on_error_only(schedule_file: Path, events: queue.Queue[Event]) -> None:
    schedule_file.write_text(SHIPPED_TEXT.replace("channels: [push, sms]", "chanels: [push, sms]"), "utf-8")
    kind, error = events.get(timeout=WAIT)
    assert kind == "error" and isinstance(error, ConfigError)
    assert "unknown key 'chanels'" in error.problems[0].message
    assert quiet(events)


def test_replacing_the_file_is_noticed(schedule_file: Path, events: queue.Queue[Event]) -> None:
    temp = schedule_file.with_name(".schedules.yaml.tmp")
    temp.write_text(SHIPPED_TEXT.replace("every: 7d", "every: 1w"), encoding="utf-8")
    os.replace(temp, schedule_file)
    kind, loaded = events.get(timeout=WAIT)
    assert kind == "change" and isinstance(loaded, LoadedSchedule)
    assert loaded.schedule.ladder[3].every_days == 7  # the final step's


def test_identical_rewrite_and_a_missing_moment_are_ignored(
    schedule_file: Path, events: queue.Queue[Event]
) -> None:
    schedule_file.unlink()
    time.sleep(INTERVAL * 5)
    temp = schedule_file.with_name("new.yaml")
    temp.write_text(SHIPPED_TEXT, encoding="utf-8")
    os.replace(temp, schedule_file)
    assert quiet(events)


def test_stop_is_prompt_and_idempotent(schedule_file: Path) -> None:
    watcher = ScheduleWatcher(schedule_file, load, lambda _: None, lambda _: None, interval=60.0)
    started = time.monotonic()
    with watcher:
        assert watcher.running
    watcher.stop()
    assert not watcher.running
    assert time.monotonic() - started < 1.0


# --- templates ----------------------------------------------------------------------------------


def checked_load(path: Path) -> LoadedSchedule:
    """What the daemon loads: schedules.yaml with every template check."""
    return load_schedule(path, {}, check_templates=template_checks)


@pytest.fixture
def templates(schedule_file: Path) -> Path:
    target = schedule_file.parent / "templates"
    shutil.copytree(REPO / "templates", target)
    return target


@pytest.fixture
def template_events(schedule_file: Path, templates: Path) -> Iterator[queue.Queue[Event]]:
    received: queue.Queue[Event] = queue.Queue()
    watcher = ScheduleWatcher(
        schedule_file,
        checked_load,
        on_change=lambda loaded: received.put(("change", loaded)),
        on_error=lambda error: received.put(("error", error)),
        interval=INTERVAL,
    )
    with watcher:
        yield received
    assert not watcher.running


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def sms_of(composer: Composer) -> str:
    step = composer.schedule.step_named("gentle")
    assert step is not None
    return composer.render_in(sample_context(composer.schedule, step, "zh-CN"), ChannelKind.SMS, "zh-CN").body


def test_a_template_edit_calls_on_change_with_a_new_version(
    schedule_file: Path, templates: Path, template_events: queue.Queue[Event]
) -> None:
    old_version = checked_load(schedule_file).version
    edit(templates / SMS, OLD_WORDING, NEW_WORDING)
    kind, loaded = template_events.get(timeout=WAIT)
    assert kind == "change" and isinstance(loaded, LoadedSchedule)
    assert loaded.version != old_version
    assert NEW_WORDING in sms_of(Composer(loaded.templates, loaded.schedule))


def test_a_broken_template_is_refused_and_the_last_good_one_keeps_rendering(
    schedule_file: Path, templates: Path, template_events: queue.Queue[Event]
) -> None:
    good = checked_load(schedule_file)
    current = Composer(good.templates, good.schedule)
    temp = templates / "gentle/zh-CN/.sms.txt.j2.swp"
    temp.write_text((templates / SMS).read_text(encoding="utf-8") + "\n{{ name }", encoding="utf-8")
    os.replace(temp, templates / SMS)  # saved as editors do
    kind, error = template_events.get(timeout=WAIT)
    assert kind == "error" and isinstance(error, ConfigError)
    [problem] = error.problems
    shown = str(templates / SMS)
    assert (problem.file, problem.line, problem.col) == (shown, 3, 9)
    assert str(problem) == f"{shown}:3:9: syntax error: unexpected '}}'"
    assert OLD_WORDING in sms_of(current)
    assert quiet(template_events)

    (templates / SMS).write_text(
        (REPO / "templates" / SMS).read_text(encoding="utf-8").replace(OLD_WORDING, NEW_WORDING), encoding="utf-8")
    kind, fixed = template_events.get(timeout=WAIT)
    assert kind == "change" and isinstance(fixed, LoadedSchedule)
    assert fixed.version != good.version
    assert NEW_WORDING in sms_of(Composer(fixed.templates, fixed.schedule))


def test_added_and_removed_templates_are_noticed(
    templates: Path, template_events: queue.Queue[Event]
) -> None:
    extra = templates / "gentle/zh-CN/extra.txt.j2"
    extra.write_text("{{ name }}", encoding="utf-8")
    added = template_events.get(timeout=WAIT)
    assert added[0] == "change"
    extra.unlink()
    removed = template_events.get(timeout=WAIT)
    assert removed[0] == "change"
    assert isinstance(added[1], LoadedSchedule) and isinstance(removed[1], LoadedSchedule)
    assert removed[1].version != added[1].version


def test_a_template_rewritten_with_the_same_content_is_ignored(
    templates: Path, template_events: queue.Queue[Event]
) -> None:
    text = (templates / SMS).read_text(encoding="utf-8")
    temp = templates / "gentle/zh-CN/new.tmp"
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, templates / SMS)
    assert quiet(template_events)


@pytest.fixture
def manual(schedule_file: Path, templates: Path) -> Iterator[tuple[ScheduleWatcher, list[Event]]]:
    """A watcher whose thread never looks (long interval): the test calls ``poll()`` itself."""
    received: list[Event] = []
    watcher = ScheduleWatcher(schedule_file, checked_load, lambda loaded: received.append(("change", loaded)),
                              lambda error: received.append(("error", error)), interval=60.0)
    with watcher:
        yield watcher, received


def test_a_moment_without_a_template_is_not_reported(manual: tuple[ScheduleWatcher, list[Event]],
                                                     templates: Path) -> None:
    watcher, received = manual
    text = (templates / SMS).read_bytes()
    (templates / SMS).unlink()
    watcher.poll()
    (templates / SMS).write_bytes(text)
    watcher.poll()
    watcher.poll()
    assert received == []


def test_a_template_removed_for_good_is_refused_once_settled(manual: tuple[ScheduleWatcher, list[Event]],
                                                             templates: Path) -> None:
    watcher, received = manual
    (templates / SMS).unlink()
    watcher.poll()
    assert received == []
    watcher.poll()
    [(kind, error)] = received
    assert kind == "error" and isinstance(error, ConfigError)
    assert "has no file" in str(error)
    watcher.poll()
    assert len(received) == 1
