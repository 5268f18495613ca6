"""The daemon as a process: first run, refusing a bad edit, reloading a good one, stopping on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from editing import line_col, replace_file
from sqlalchemy import create_engine

from dispatcher.compose.layout import TemplateSet
from dispatcher.demo import seed_demo
from dispatcher.schedule.loader import content_version

START_TIMEOUT = 30.0
RELOAD_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0


def wait_for(condition: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s; daemon log:\n{log.read_text(encoding='utf-8')}")
        time.sleep(0.05)


@pytest.fixture
def daemon(workdir: Path, anytime: Path, clock: Callable[[], datetime],
           ledger_url: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    engine = create_engine(ledger_url)
    seed_demo(engine, 100, datetime.now(UTC).date())  # the message steps' days (the daemon reads the real clock);
    # profile none: the first run sends
    engine.dispose()
    with started_daemon(workdir) as started:
        yield started


@contextmanager
def started_daemon(workdir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``dispatcher run --run-now`` in ``workdir`` with ``env`` added, logging to ``daemon.log``; killed at the end
    if it still runs."""
    log = workdir / "daemon.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "dispatcher", "run", "--run-now"], cwd=workdir,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", "DISPATCHER_LOG_LEVEL": "INFO", **env},
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)


def split_daemon(workdir: Path, ledger_url: str, accounts: int) -> AbstractContextManager[
        tuple[subprocess.Popen[bytes], Path]]:
    """A daemon planning in 2 processes over ``accounts`` demo accounts in batches of 20 (its runs are split)."""
    schedules = workdir / "schedules.yaml"
    schedules.write_text(schedules.read_text(encoding="utf-8").replace("batch_size: 1000", "batch_size: 20"),
                         encoding="utf-8")
    engine = create_engine(ledger_url)
    seed_demo(engine, accounts, datetime.now(UTC).date())
    engine.dispose()
    return started_daemon(workdir, DISPATCHER_PLAN_PROCESSES="2")


def test_the_daemon_runs_follows_edits_and_stops(daemon: tuple[subprocess.Popen[bytes], Path],
                                                 workdir: Path) -> None:
    process, log = daemon
    schedules = workdir / "schedules.yaml"
    sms = workdir / "outbox" / "sms.jsonl"
    original = schedules.read_text(encoding="utf-8")

    def logged(text: str) -> bool:
        return text in log.read_text(encoding="utf-8")

    wait_for(lambda: logged("daemon started") and sms.exists() and sms.stat().st_size > 0, START_TIMEOUT,
             "first run", log)

    invalid = original.replace("    channels: [push, sms]", "    chanels: [push, sms]", 1)
    line, col = line_col(invalid, "chanels")
    replace_file(schedules, invalid)
    wait_for(lambda: logged(f"schedules.yaml:{line}:{col}: unknown key 'chanels'"), RELOAD_TIMEOUT,
             "refusal", log)
    assert logged("refused")
    assert process.poll() is None

    edited = original.replace('cron: "0 9 * * *"', 'cron: "5 9 * * *"', 1)
    assert edited != original
    templates = TemplateSet.read(workdir / "templates")
    version = content_version(edited.encode("utf-8"), templates)
    replace_file(schedules, edited)
    wait_for(lambda: logged(f"reloaded: version {version} replaces {content_version(original.encode(), templates)}"),
             RELOAD_TIMEOUT, "reload", log)
    assert process.poll() is None

    process.send_signal(signal.SIGTERM)
    assert process.wait(STOP_TIMEOUT) == 0
    assert logged("daemon stopped")
    assert "Traceback" not in log.read_text(encoding="utf-8")


def _helpers(pid: int) -> set[int]:
    """The spawned processes of ``pid`` (children of any of its threads; not multiprocessing's resource tracker)."""
    children = {int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()}
    return {c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()}


def _ended(pid: int) -> bool:
    """Whether ``pid`` exited (gone, or a zombie not yet reaped)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from /proc (Linux)")
def test_the_daemon_keeps_its_planning_helper_between_runs_and_ends_it_when_it_stops(
        workdir: Path, anytime: Path, ledger_url: str) -> None:
    """Without a broker the first split run starts the helper; it stays, idle, through a reload, and SIGTERM ends
    it with the daemon."""
    with split_daemon(workdir, ledger_url, 400) as (process, log):  # ranges of 20-account batches
        def logged(text: str) -> bool:
            return text in log.read_text(encoding="utf-8")

        wait_for(lambda: logged("(#1) completed"), START_TIMEOUT, "first run", log)
        assert logged("key ranges planned in 2 processes")
        (helper,) = _helpers(process.pid)  # kept, idle
        schedules = workdir / "schedules.yaml"
        replace_file(schedules, schedules.read_text(encoding="utf-8").replace('cron: "0 9 * * *"',
                                                                               'cron: "5 9 * * *"', 1))
        wait_for(lambda: logged("reloaded: version"), RELOAD_TIMEOUT, "reload", log)
        time.sleep(1.0)  # it wires the new version meanwhile
        assert _helpers(process.pid) == {helper}
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_TIMEOUT) == 0
        assert _ended(helper)
        assert "Traceback" not in log.read_text(encoding="utf-8")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads a process's children from /proc (Linux)")
def test_a_daemon_killed_mid_run_leaves_no_planning_helper_behind(workdir: Path, anytime: Path,
                                                                   ledger_url: str) -> None:
    """``kill -9`` of the daemon: its helper finds the pipe's end, stops its range between messages and exits
    quietly (the next run reconciles what was in flight)."""
    with split_daemon(workdir, ledger_url, 3000) as (process, log):
        wait_for(lambda: "key ranges planned in 2 processes" in log.read_text(encoding="utf-8")
                 and bool(_helpers(process.pid)), START_TIMEOUT, "a split run", log)
        (helper,) = _helpers(process.pid)
        time.sleep(0.5)  # it plans and sends
        process.kill()
        process.wait(STOP_TIMEOUT)
        wait_for(lambda: _ended(helper), STOP_TIMEOUT, "the helper's end", log)
        text = log.read_text(encoding="utf-8")
        assert "Traceback" not in text
        assert "completed" not in text  # it was killed mid-run
