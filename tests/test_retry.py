"""``dispatcher retry``: failed or unknown attempts sent again as new, linked tries when the rules allow it now."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rows import attempt_rows, demo_row, seed_rows
from standins.smtp_server import SmtpStandin

from dispatcher.app import build_app
from dispatcher.settings import Settings

GOOD, BAD = "good@example.cn", "bad@example.cn"


@pytest.fixture
def failed_twice(anytime: Path, smtp: SmtpStandin, monkeypatch: pytest.MonkeyPatch, cli: Any) -> SmtpStandin:
    """Two firm-step emails through the SMTP stand-in: one mailbox refused (550), one message refused (554)."""
    for name, value in {"SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
                        "EMAIL_FROM": "Reminders <reminders@example.cn>"}.items():
        monkeypatch.setenv(name, value)
    app = build_app(Settings.from_env())
    today = app.clock().date()
    seed_rows(app.engine, *(demo_row(account, today - timedelta(days=5), phone=None, push_token=None, email=email)
                            for account, email in (("R-GOOD", GOOD), ("R-BAD", BAD))))
    app.engine.dispose()
    smtp.reject(BAD)
    smtp.fail_next_data("554 5.7.1 message refused for now")
    code, out, _ = cli("run", "--once")
    assert code == 0 and "failed=2" in out, out
    assert smtp.messages == []
    return smtp


def emails(app_rows: list[dict[str, Any]], account: str) -> list[tuple[int, str, int | None]]:
    return [(r["try_no"], r["status"], r["parent_id"]) for r in app_rows if r["account_id"] == account]


def test_a_dry_run_lists_what_would_go_and_why_the_others_are_held(failed_twice: SmtpStandin, cli: Any,
                                                                   workdir: Path) -> None:
    code, out, _ = cli("retry", "--status", "failed", "--dry-run")
    assert code == 0
    lines = out.splitlines()
    assert any("R-GOOD, email, failed" in line and "would send" in line for line in lines), out
    assert any("R-BAD, email, failed" in line and "held: bad-address" in line for line in lines), out
    assert "2 attempt(s) chosen: 1 would send, 1 held back" in out
    app = build_app(Settings.from_env())
    assert [r["status"] for r in attempt_rows(app)] == ["failed", "failed"]  # nothing written
    assert failed_twice.messages == []


def test_a_retry_is_a_new_linked_try_sent_once(failed_twice: SmtpStandin, cli: Any) -> None:
    app = build_app(Settings.from_env())
    (first,) = [r for r in attempt_rows(app) if r["account_id"] == "R-GOOD"]
    code, out, _ = cli("retry")
    assert code == 0 and "booked as attempt" in out and ": sent" in out, out
    assert len(failed_twice.messages) == 1
    assert emails(attempt_rows(app), "R-GOOD") == [(1, "failed", None), (2, "sent", first["id"])]
    assert emails(attempt_rows(app), "R-BAD") == [(1, "failed", None)]
    code, out, _ = cli("retry")  # the good one's latest try is sent: not chosen again; the bad one still held
    assert code == 0 and "1 attempt(s) chosen: 0 booked, 1 held back" in out, out
    assert len(failed_twice.messages) == 1


def test_a_retry_waits_for_the_contact_window(failed_twice: SmtpStandin, cli: Any, workdir: Path) -> None:
    schedules = workdir / "schedules.yaml"
    text = schedules.read_text(encoding="utf-8")
    schedules.write_text(text + "\ncompliance:\n  contact_window: \"03:00-03:01\"\n" if "compliance:" not in text
                         else text.replace("compliance:", "compliance:\n  contact_window: \"03:00-03:01\"", 1),
                         encoding="utf-8")
    code, out, _ = cli("retry", "--account", "R-GOOD")
    assert code == 0 and "held: window" in out, out
    assert failed_twice.messages == []  # (the CLI runs on the real clock: a one-minute window is nearly always shut)
