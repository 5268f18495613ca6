"""The command line, run in-process through ``dispatcher.cli.main`` (and once as ``python -m dispatcher``)."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, insert, inspect, select, text

from dispatcher.demo import demo_accounts, seed_demo

REPO = Path(__file__).resolve().parent.parent
LEDGER_TABLES = ("runs", "reminders", "attempts", "rejects", "suppressions")
PROBLEM = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def seeded(cli: Cli, workdir: Path, anytime: Path, ledger_url: str) -> Path:
    """200 demo borrowers, plus one row with bad data, in the workdir's database; runs send at any hour."""
    code, out, _ = cli("seed-demo", "--accounts", "200")
    assert code == 0 and "200" in out
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        connection.execute(insert(demo_accounts), [{
            "account_id": "BAD-ZONE", "name": "X", "phone": "+8613812345678", "currency": "CNY",
            "overdue_amount": "10.00", "due_date": date(2026, 1, 1), "timezone": "Asia/Beijing",
        }])
    engine.dispose()
    return workdir


def row_counts(database: str) -> dict[str, int]:
    engine = create_engine(database)
    with engine.connect() as connection:
        counts = {t: int(connection.execute(select(func.count()).select_from(text(t))).scalar_one())
                  for t in LEDGER_TABLES}
    engine.dispose()
    return counts


def table_names(database: str) -> set[str]:
    engine = create_engine(database)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def demo_ids(database: str) -> set[str]:
    engine = create_engine(database)
    with engine.connect() as connection:
        ids = {r[0] for r in connection.execute(select(demo_accounts.c.account_id))}
    engine.dispose()
    return ids


def position(text_: str, needle: str, skip: str = "") -> tuple[int, int]:
    """1-based (line, col) of ``needle`` (after ``skip``) in ``text_``."""
    at = text_.index(skip + needle) + len(skip)
    line = text_.count("\n", 0, at) + 1
    return line, at - (text_.rfind("\n", 0, at) + 1) + 1


def test_python_m_dispatcher_help() -> None:
    done = subprocess.run([sys.executable, "-m", "dispatcher", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: dispatcher")
    for command in ("run", "validate", "plan", "preview", "attempts", "seed-demo"):
        assert command in done.stdout


# validate --------------------------------------------------------------------------------------------------------
def test_validate_the_shipped_file(cli: Cli) -> None:
    code, out, err = cli("validate", str(REPO / "schedules.yaml"))
    assert code == 0, err
    assert re.search(r"schedules\.yaml: valid \(version [0-9a-f]{12}\)", out)


def test_validate_defaults_to_the_configured_file(cli: Cli, workdir: Path) -> None:
    code, out, _ = cli("validate", "--format", "json")
    assert code == 0
    assert json.loads(out) == {"valid": True, "file": str(workdir / "schedules.yaml"),
                               "version": json.loads(out)["version"]}


@pytest.fixture
def broken(workdir: Path) -> tuple[str, list[tuple[int, int]]]:
    """bad.yaml with a misspelt key, a bad cron and a step whose template lacks a file; its problem positions."""
    content = (workdir / "schedules.yaml").read_text(encoding="utf-8")
    content = content.replace("    channels: [push, sms]", "    chanels: [push, sms]", 1)
    content = content.replace('cron: "30 18 * * *"', 'cron: "30 25 * * *"', 1)
    (workdir / "bad.yaml").write_text(content, encoding="utf-8")
    (workdir / "templates" / "final_notice" / "en-US" / "sms.txt.j2").unlink()
    expected = sorted([position(content, "chanels"), position(content, '"30 25 * * *"'),
                       position(content, "final_notice", skip="template: ")])
    return "bad.yaml", expected


def test_validate_reports_each_problem_at_its_line(cli: Cli, broken: tuple[str, list[tuple[int, int]]]) -> None:
    name, expected = broken
    code, _, err = cli("validate", name)
    assert code != 0
    problems = [PROBLEM.match(line) for line in err.splitlines()]
    assert all(problems) and len(problems) == 3, err
    assert [(m["file"], int(m["line"]), int(m["col"])) for m in problems if m] == [(name, *p) for p in expected]
    messages = " | ".join(m["message"] for m in problems if m)
    assert "'chanels'" in messages and "cron" in messages and "final_notice/en-US/sms.txt.j2" in messages


def test_validate_json(cli: Cli, broken: tuple[str, list[tuple[int, int]]]) -> None:
    name, expected = broken
    code, out, _ = cli("validate", name, "--format", "json")
    assert code != 0
    report = json.loads(out)
    assert report["valid"] is False
    assert sorted((p["line"], p["col"]) for p in report["problems"]) == expected
    assert {p["file"] for p in report["problems"]} == {name}


# plan ------------------------------------------------------------------------------------------------------------
def plan_rows(cli: Cli, *extra: str) -> list[dict[str, Any]]:
    code, out, err = cli("plan", "--format", "json", *extra)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_plan_lists_every_account_with_a_reason_for_each_non_contact(cli: Cli, seeded: Path,
                                                                     ledger_url: str) -> None:
    rows = plan_rows(cli)
    assert sorted(r["account_id"] for r in rows) == sorted(demo_ids(ledger_url))
    assert len(rows) == 201
    (bad,) = (r for r in rows if r["account_id"] == "BAD-ZONE")
    assert (bad["reason"], bad["contacted"]) == ("bad_data", False)
    assert "timezone" in bad["detail"]
    for row in rows:
        assert row["contacted"] == (row["reason"] == "")
        if not row["contacted"]:
            assert row["reason"].strip(), row
    assert any(r["contacted"] for r in rows)
    assert {r["reason"] for r in rows} >= {"", "bad_data"}


def test_plan_for_one_account(cli: Cli, seeded: Path) -> None:
    rows = plan_rows(cli, "--account", "L00000002")
    assert [r["account_id"] for r in rows] == ["L00000002"]


def test_plan_writes_nothing(cli: Cli, seeded: Path, ledger_url: str) -> None:
    assert cli("run", "--once")[0] == 0
    before = row_counts(ledger_url)
    plan_rows(cli)
    assert cli("plan")[0] == 0
    assert row_counts(ledger_url) == before


def test_plan_on_a_database_without_the_ledger_creates_no_table(cli: Cli, workdir: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                make_ledger_url: Callable[..., str]) -> None:
    fresh = make_ledger_url("fresh")
    engine = create_engine(fresh)
    seed_demo(engine, 30, date(2026, 3, 10))
    engine.dispose()
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", fresh)
    rows = plan_rows(cli, "--at", "2026-03-10T09:00+08:00")
    assert len(rows) == 30
    assert table_names(fresh) == {"demo_accounts"}


# run, attempts, preview ------------------------------------------------------------------------------------------
def test_run_once_twice_sends_nothing_the_second_time(cli: Cli, seeded: Path) -> None:
    code, first, _ = cli("run", "--once")
    assert code == 0
    sent = re.search(r"\bsent=(\d+)", first)
    assert sent and int(sent.group(1)) > 0, first
    code, second, _ = cli("run", "--once")
    assert code == 0
    assert re.search(r"\bsent=0\b", second), second


ATTEMPT_KEYS = {"account_id", "step", "channel", "status", "provider_message_id", "error_code", "attempted_at"}


def test_attempts_as_json_and_csv(cli: Cli, seeded: Path) -> None:
    assert cli("run", "--once")[0] == 0
    code, out, _ = cli("attempts", "--format", "json")
    assert code == 0
    listed = json.loads(out)
    assert listed and all(set(a) >= ATTEMPT_KEYS for a in listed)
    sent = [a for a in listed if a["status"] == "sent"]
    assert sent and all(a["provider_message_id"] and a["attempted_at"] for a in sent)

    code, out, _ = cli("attempts", "--status", "sent", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert set(rows[0]) >= ATTEMPT_KEYS
    assert {r["status"] for r in rows} == {"sent"}
    assert sorted(int(r["id"]) for r in rows) == sorted(a["id"] for a in sent)


def test_preview_prints_the_sms_with_its_segments(cli: Cli, seeded: Path) -> None:
    rows = plan_rows(cli)
    account = next(r["account_id"] for r in rows if r["contacted"] and r.get("sms"))
    code, out, err = cli("preview", account)
    assert code == 0, err
    assert f"account {account}:" in out
    assert "=== sms to " in out
    assert re.search(r"^--- (GSM-7|UCS-2), \d+ characters, [1-9]\d* segment\(s\)$", out, re.MULTILINE), out


def test_preview_an_email_of_a_named_step(cli: Cli, seeded: Path) -> None:
    code, out, err = cli("preview", "L00000002", "--channel", "email", "--step", "firm")
    assert code == 0, err
    assert "step firm" in out
    assert "=== email to " in out and "=== sms" not in out
    subject = re.search(r"^Subject: (.+)$", out, re.MULTILINE)
    assert subject and subject.group(1).strip()


def test_preview_of_an_unknown_account_fails_cleanly(cli: Cli, seeded: Path) -> None:
    code, _, err = cli("preview", "NOPE")
    assert code == 2 and err.count("\n") == 1
    assert "NOPE" in err


def test_a_bad_at_time_is_reported_without_a_traceback(cli: Cli, seeded: Path) -> None:
    """Regression: moment() raised argparse.ArgumentTypeError, which main() did not catch."""
    code, _, err = cli("plan", "--at", "yesterday")
    assert code == 2 and err.count("\n") == 1
    assert "yesterday" in err


def test_a_bad_since_is_reported_without_a_traceback(cli: Cli, seeded: Path) -> None:
    """Regression: _since() let datetime.fromisoformat's ValueError escape main()."""
    code, _, err = cli("attempts", "--since", "yesterday")
    assert code == 2 and err.count("\n") == 1
    assert "yesterday" in err


def test_plan_json_lists_deferrals_with_their_time(cli: Cli, workdir: Path, ledger_url: str) -> None:
    """Regression: a deferral's nested not_before (a datetime) once made plan --format json raise TypeError."""
    engine = create_engine(ledger_url)
    seed_demo(engine, 30, date(2026, 3, 10))
    engine.dispose()
    rows = plan_rows(cli, "--at", "2026-03-10T05:00+08:00")  # before the shipped profile's 08:00 window
    deferred = [c for r in rows for c in r["channels"] if c["verdict"] == "defer"]
    assert deferred and all(c["rule_id"] == "window" and c["not_before"] for c in deferred)


def test_preview_names_an_unknown_step(cli: Cli, seeded: Path) -> None:
    code, _, err = cli("preview", "L00000002", "--step", "nosuch")
    assert code == 2 and err.count("\n") == 1
    assert "nosuch" in err


def test_the_log_level_is_read_in_any_case(cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    previous = root.level
    monkeypatch.setenv("DISPATCHER_LOG_LEVEL", "warning")
    try:
        assert cli("validate")[0] == 0
        assert root.level == logging.WARNING
        assert cli("--log-level", "error", "validate")[0] == 0
        assert root.level == logging.ERROR
    finally:
        root.setLevel(previous)


# rejects ---------------------------------------------------------------------------------------------------------
def test_rejects_lists_the_newest_and_counts_on_stderr_what_it_left_out(cli: Cli, workdir: Path,
                                                                          ledger_url: str) -> None:
    assert cli("db", "upgrade")[0] == 0
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO rejects (run_id, account_id, field, reason, created_at) "
                                "VALUES (7, :id, 'timezone', 'unknown zone', CURRENT_TIMESTAMP)"),
                           [{"id": f"R{n:04d}"} for n in range(1, 1201)])
    engine.dispose()
    code, out, err = cli("rejects", "--format", "json")
    shown = json.loads(out)
    assert code == 0 and len(shown) == 1000 and shown[0]["account_id"] == "R1200"
    assert "the newest 1000 of 1200 rejected row(s); --limit 0 lists every one" in err
    code, out, err = cli("rejects", "--format", "json", "--limit", "0")
    assert code == 0 and len(json.loads(out)) == 1200 and "newest" not in err
    code, out, err = cli("rejects", "--format", "csv", "--limit", "5", "--run", "7")
    assert code == 0 and len(out.strip().splitlines()) == 6 and "the newest 5 of 1200" in err
    assert cli("rejects", "--limit", "-1")[0] == 2
