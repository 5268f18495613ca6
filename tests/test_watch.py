"""ScheduleWatcher: edits are noticed, invalid ones reported, identical rewrites ignored."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.errors import ConfigError
from dispatcher.schedule.loader import LoadedSchedule, load_schedule
from dispatcher.schedule.watch import ScheduleWatcher

SHIPPED_TEXT = (Path(__file__).resolve().parent.parent / "schedules.yaml").read_text(encoding="utf-8")
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
    assert loaded.schedule.ladder[2].every_days == 7


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
