"""``dispatcher diff``: the reminders an edit gains, loses or changes, the ledger's copy of every loaded version,
and the daemon's one-line diff on a reload."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from editing import line_col, replace_file
from sqlalchemy import create_engine, func, select

from dispatcher.app import App, load
from dispatcher.daemon import Daemon
from dispatcher.demo import demo_accounts, seed_demo
from dispatcher.ledger.config_versions import fetch, load_stored, record, record_loaded, running
from dispatcher.ledger.tables import config_versions
from dispatcher.rules.content import template_checks
from dispatcher.schedule.diff import AccountChange, Change, Reminder, Totals, compare
from dispatcher.schedule.loader import load_schedule

Cli = Callable[..., tuple[int, str, str]]

SHANGHAI = ZoneInfo("Asia/Shanghai")
GENTLE_WINDOW = "    days_overdue: 1-3\n"
"""The gentle step's window in the shipped schedules.yaml (the only step from day 1)."""
LATER_GENTLE = "    days_overdue: 2-3\n"


def edited(workdir: Path, name: str = "edited.yaml", old: str = GENTLE_WINDOW, new: str = LATER_GENTLE) -> Path:
    """A copy of the workdir's schedules.yaml, beside it (so with the same templates/), with one edit."""
    text = (workdir / "schedules.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1
    path = workdir / name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def contact_time() -> datetime:
    """10:00 in Shanghai on the day ``seed-demo`` (real clock) dates its borrowers from: inside the window."""
    return datetime.combine(datetime.now(UTC).date(), datetime.min.time(), SHANGHAI).replace(hour=10)


def demo_table(ledger_url: str) -> list[dict[str, Any]]:
    engine = create_engine(ledger_url)
    with engine.connect() as connection:
        rows = [dict(r) for r in connection.execute(select(demo_accounts)).mappings()]
    engine.dispose()
    return rows


def first_day_accounts(rows: list[dict[str, Any]], at: datetime) -> set[str]:
    """Worked out from the table alone: borrowers whose own local date at ``at`` is the day after their due date,
    who still owe, whose row is well-formed and who have a phone or a push token (gentle's channels)."""
    found = set()
    for row in rows:
        try:
            zone = ZoneInfo(row["timezone"] or "Asia/Shanghai")
            owed = Decimal(row["overdue_amount"])
        except (KeyError, ValueError, InvalidOperation):
            continue
        well_formed = (row["phone"] is None or len(row["phone"]) >= 10) and "@" in (row["email"] or "@")
        day = (at.astimezone(zone).date() - row["due_date"]).days
        if day == 1 and owed > 0 and well_formed and (row["phone"] or row["push_token"]):
            found.add(row["account_id"])
    return found


def load_version(path: Path) -> str:
    return load_schedule(path, {}, check_templates=template_checks).version


@pytest.fixture
def demo(cli: Cli, workdir: Path) -> Path:
    code, _, err = cli("seed-demo", "--accounts", "1000")
    assert code == 0, err
    return workdir


def test_moving_gentle_to_day_two_loses_exactly_the_first_day_borrowers(cli: Cli, demo: Path,
                                                                        ledger_url: str) -> None:
    at = contact_time()
    code, out, err = cli("diff", "schedules.yaml", str(edited(demo)), "--at", at.isoformat(), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    expected = first_day_accounts(demo_table(ledger_url), at)
    assert len(expected) >= 10  # the demo has borrowers on every day
    assert {c["account_id"] for c in report["changes"]} == expected
    assert all(c["change"] == "lost" and c["new"] is None and c["old"]["step"] == "gentle"
               and c["old"]["template"] == "gentle" and c["old"]["channel"] in ("push", "sms")
               for c in report["changes"])
    totals = report["totals"]
    assert (totals["gained"], totals["lost"], totals["changed"]) == (0, len(report["changes"]), 0)
    assert totals["by_step"] == {"gentle": {"gained": 0, "lost": len(report["changes"]), "changed": 0,
                                            "net": -len(report["changes"])}}
    assert sum(t["lost"] for t in totals["by_channel"].values()) == len(report["changes"])
    assert datetime.fromisoformat(report["at"]) == at
    loaded_old, loaded_new = load_version(demo / "schedules.yaml"), load_version(edited(demo))
    assert (report["old"], report["new"]) == (loaded_old, loaded_new)
    assert f"+0 -{len(report['changes'])} ~0 reminders (gentle -{len(report['changes'])}; " in err


def test_the_output_holds_no_phone_or_email(cli: Cli, demo: Path, ledger_url: str) -> None:
    at = contact_time().isoformat()
    new = str(edited(demo, old="    channels: [push, sms]\n    template: gentle\n",
                     new="    channels: [email, sms]\n    template: firm\n"))
    outputs = [cli("diff", "schedules.yaml", new, "--at", at, "--format", fmt) for fmt in ("json", "table")]
    assert all(code == 0 for code, _, _ in outputs), outputs[0][2]
    report = json.loads(outputs[0][1])
    kinds = {(c["change"], (c["old"] or {}).get("channel"), (c["new"] or {}).get("channel")) for c in report["changes"]}
    assert ("changed", "sms", "sms") in kinds  # the template went from gentle to firm
    assert ("changed", "push", "email") in kinds or ("gained", None, "email") in kinds
    personal = {v for row in demo_table(ledger_url) for v in (row["phone"], row["email"], row["name"]) if v}
    for _, out, err in outputs:
        assert not any(value in out or value in err for value in personal)


def test_a_template_experiment_changes_the_template_of_the_borrowers_in_its_new_variant(cli: Cli,
                                                                                       demo: Path) -> None:
    new = edited(demo, old="    template: gentle\n",
                 new="    variants: [{template: gentle, weight: 1}, {template: courtesy, weight: 1}]\n")
    code, out, err = cli("diff", "schedules.yaml", str(new), "--at", contact_time().isoformat(), "--format", "json")
    assert code == 0, err
    changes = json.loads(out)["changes"]
    assert changes and all(c["change"] == "changed" and c["old"]["template"] == "gentle"
                           and c["new"] == {**c["old"], "template": "courtesy"} for c in changes)
    code, out, _ = cli("diff", "schedules.yaml", "schedules.yaml", "--at", contact_time().isoformat(), "--format",
                       "json")
    assert code == 0 and json.loads(out)["changes"] == []


def test_the_table_fits_the_terminal_and_shows_times_in_the_schedules_zone(cli: Cli, demo: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    at = (contact_time() + timedelta(hours=12)).isoformat()  # 22:00: reminders wait for the morning
    code, out, err = cli("diff", "schedules.yaml", str(edited(demo)), "--at", at)
    assert code == 0, err
    changes, totals = out.split("\n\n")
    assert changes.splitlines()[0].split() == ["account_id", "change", "step", "channel", "template", "when"]
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "lost" in changes and " 08:00+08:00" in changes
    assert totals.splitlines()[0].split() == ["totals", "gained", "lost", "changed", "net"]
    assert any(line.split()[:2] == ["step", "gentle"] for line in totals.splitlines())
    code, out, _ = cli("diff", "schedules.yaml", str(edited(demo)), "--at", at, "--utc")
    assert code == 0 and " 00:00+00:00" in out and "+08:00" not in out


def test_without_old_and_no_running_version_it_is_refused(cli: Cli, demo: Path) -> None:
    code, out, err = cli("diff", str(edited(demo)))
    assert code == 2 and out == ""
    assert err.startswith("dispatcher: no running configuration version is recorded")


def test_a_bad_new_file_gives_its_problems_at_line_and_column(cli: Cli, demo: Path) -> None:
    path = edited(demo, old="    channels: [push, sms]\n    template: gentle\n",
                  new="    chanels: [push, sms]\n    template: gentle\n")
    line, col = line_col(path.read_text(encoding="utf-8"), "chanels")
    code, out, err = cli("diff", "schedules.yaml", str(path))
    assert code == 2 and out == ""
    assert f"{path}:{line}:{col}: unknown key 'chanels'" in err


def test_without_old_the_running_version_is_planned_from_its_own_copy(cli: Cli, demo: Path, app: App,
                                                                      ledger_url: str) -> None:
    """The running version's templates and file are gone from disk: the diff uses the ledger's copy."""
    shipped = app.pipeline.loaded
    assert record_loaded(app.engine, shipped, app.clock())
    sms = demo / "templates/gentle/zh-CN/sms.txt.j2"
    sms.write_text(sms.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    replace_file(demo / "schedules.yaml", edited(demo).read_text(encoding="utf-8"))
    at = contact_time()
    code, out, err = cli("diff", "schedules.yaml", "--at", at.isoformat(), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["old"] == shipped.version != report["new"]
    assert {c["account_id"] for c in report["changes"]} == first_day_accounts(demo_table(ledger_url), at)


def test_a_stored_version_loads_back_byte_for_byte(app: App, workdir: Path) -> None:
    (workdir / "templates/gentle/zh-CN/notes.j2").write_bytes(b"latin-1 \xe9t\xe9\r\n")
    path = workdir / "schedules.yaml"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    loaded = load(app.settings)
    assert record_loaded(app.engine, loaded, app.clock())
    stored = fetch(app.engine, loaded.version)
    assert stored is not None and stored.path == str(loaded.path)
    shutil.rmtree(workdir / "templates")
    again = load_stored(stored, app.settings.env)
    assert again.version == loaded.version
    assert dict(again.templates.files) == dict(loaded.templates.files)
    assert again.schedule == loaded.schedule


def test_recording_is_idempotent_and_the_last_load_is_running(app: App) -> None:
    t0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    record(app.engine, "aaa111", "a: 1\n", "{}", "a.yaml", t0)
    record(app.engine, "bbb222", "b: 1\n", "{}", "b.yaml", t0)  # the same moment: still loaded after aaa111
    assert running(app.engine).version == "bbb222"  # type: ignore[union-attr]
    record(app.engine, "aaa111", "a: 1\n", "{}", "moved/a.yaml", t0 + timedelta(hours=1))
    with app.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(config_versions)).scalar_one() == 2
    current = running(app.engine)
    assert current is not None and current.version == "aaa111" and current.path == "moved/a.yaml"
    assert current.first_loaded_at == t0 and current.last_loaded_at == t0 + timedelta(hours=1)
    assert fetch(app.engine, "ccc333") is None


def test_a_file_saved_since_its_load_is_recorded_as_it_was_loaded(app: App, workdir: Path) -> None:
    """An edit saved between the load and the recording (the watcher reloads it next) neither stops the running
    version from being stored, which its planning processes and workers read, nor is stored under its name."""
    loaded = app.pipeline.loaded
    path = workdir / "schedules.yaml"
    as_loaded = path.read_bytes()
    edited(workdir, name="schedules.yaml")
    assert path.read_bytes() != as_loaded
    assert record_loaded(app.engine, loaded, app.clock())
    stored = running(app.engine)
    assert stored is not None and stored.version == loaded.version and stored.content() == as_loaded
    assert load_stored(stored, app.settings.env).schedule == loaded.schedule


R = Reminder
AT = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
LATER = AT + timedelta(hours=11)
SMS = R("gentle", "sms", "gentle", AT)
PUSH = R("gentle", "push", "gentle", AT)
FIRM_SMS = R("firm", "sms", "firm", AT)
FIRM_EMAIL = R("firm", "email", "firm", AT)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ((SMS, PUSH), (SMS, PUSH), []),
    ((SMS, PUSH), (), [(Change.LOST, SMS, None), (Change.LOST, PUSH, None)]),
    ((), (SMS,), [(Change.GAINED, None, SMS)]),
    ((SMS, PUSH), (FIRM_EMAIL, FIRM_SMS), [(Change.CHANGED, SMS, FIRM_SMS), (Change.CHANGED, PUSH, FIRM_EMAIL)]),
    ((SMS, PUSH), (FIRM_SMS,), [(Change.CHANGED, SMS, FIRM_SMS), (Change.LOST, PUSH, None)]),
    ((SMS,), (R("gentle", "sms", "gentle", LATER),), [(Change.CHANGED, SMS, R("gentle", "sms", "gentle", LATER))]),
])
def test_an_accounts_reminders_pair_by_channel_then_in_order(
        old: tuple[Reminder, ...], new: tuple[Reminder, ...],
        expected: list[tuple[Change, Reminder | None, Reminder | None]]) -> None:
    assert [(c.change, c.old, c.new) for c in compare("L1", old, new)] == expected


def test_totals_see_a_moved_reminder_as_lost_to_one_step_and_gained_by_the_other() -> None:
    totals = Totals.of([AccountChange("L1", Change.CHANGED, SMS, FIRM_SMS), AccountChange("L2", Change.LOST, PUSH,
                                                                                         None)])
    assert totals.as_dict()["by_step"] == {"firm": {"gained": 1, "lost": 0, "changed": 0, "net": 1},
                                           "gentle": {"gained": 0, "lost": 2, "changed": 0, "net": -2}}
    assert totals.as_dict()["by_channel"]["sms"] == {"gained": 0, "lost": 0, "changed": 1, "net": 0}
    assert totals.summary() == "+0 -1 ~1 reminders (gentle -2, firm +1; push -1, sms ~1)"


def test_the_daemon_records_each_version_and_logs_the_diff_of_an_edit(app: App, workdir: Path, ledger_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    seed_demo(app.engine, 300, app.clock().date())
    daemon = Daemon(app)
    shipped = app.pipeline.loaded.version
    daemon._remember(app.pipeline.loaded)  # as serve() does at start
    replace_file(workdir / "schedules.yaml", edited(workdir, name="next.yaml").read_text(encoding="utf-8"))
    with caplog.at_level(logging.INFO, logger="dispatcher.daemon"):
        daemon._watcher.poll()
        daemon._watcher.poll()  # the files settled: reloaded
    new = app.pipeline.loaded.version
    assert new != shipped
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("schedule edit")]
    assert first_day_accounts(demo_table(ledger_url), app.clock())  # someone is on day 1
    assert line.startswith(f"schedule edit {shipped} -> {new}: +0 -")
    assert "~0 reminders (gentle -" in line
    current = running(app.engine)
    assert current is not None and current.version == new
    assert fetch(app.engine, shipped) is not None


def test_a_diff_that_fails_never_stops_the_reload(app: App, workdir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """No demo table: neither version can be planned, the edit is still taken and recorded."""
    daemon = Daemon(app)
    shipped = app.pipeline.loaded.version
    replace_file(workdir / "schedules.yaml", edited(workdir, name="next.yaml").read_text(encoding="utf-8"))
    with caplog.at_level(logging.INFO, logger="dispatcher.daemon"):
        daemon._watcher.poll()
        daemon._watcher.poll()
    new = app.pipeline.loaded.version
    assert new != shipped
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"configuration reloaded: version {new}") for m in messages)
    assert any(m.startswith(f"schedule edit {shipped} -> {new}: no diff of its reminders") for m in messages)
    assert running(app.engine).version == new  # type: ignore[union-attr]
