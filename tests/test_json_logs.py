"""``DISPATCHER_LOG_FORMAT=json``: one JSON object per line on stderr, masked like the text lines.

The lines are the real output of :func:`dispatcher.logs.configure_logging`'s handler
(stderr captured by pytest), written by a real run on the workdir's ledger and by
log calls carrying a phone number, an email and a traceback.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import NOW, FixedClock

from dispatcher.app import App, build_app
from dispatcher.demo import seed_demo
from dispatcher.errors import ConfigError
from dispatcher.logs import configure_logging, log_context
from dispatcher.pipeline.run import Runner
from dispatcher.settings import Settings

PHONE, EMAIL = "+8613812345678", "zhang.wei@example.com"


def json_lines(err: str) -> list[dict[str, Any]]:
    """Every line of ``err`` parsed as one JSON object (a line that is not one fails the test)."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_every_line_is_a_masked_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("dispatcher.pipeline.deliver")
    log.info("sms to %s and a copy to %s", PHONE, EMAIL,
             extra={"run_id": 7, "attempt_id": 42, "account_id": "L00000001"})
    try:
        raise ValueError(f"provider refused {PHONE}\nsecond line")
    except ValueError:
        log.exception("attempt %s failed for %s", 43, EMAIL, extra={"attempt_id": 43})
    log.warning("no context here")
    err = capsys.readouterr().err
    assert PHONE not in err and EMAIL not in err and "13812345678" not in err
    first, second, third = json_lines(err)

    assert first["message"] == "sms to +86138****5678 and a copy to z***@example.com"
    assert (first["level"], first["logger"]) == ("INFO", "dispatcher.pipeline.deliver")
    assert (first["run_id"], first["attempt_id"], first["account_id"]) == (7, 42, "L00000001")
    assert datetime.fromisoformat(first["ts"]).utcoffset() is not None and first["ts"].endswith("Z")
    assert second["attempt_id"] == 43 and "run_id" not in second
    assert second["exc"].startswith("Traceback") and "ValueError: provider refused +86138****5678" in second["exc"]
    assert "exc" not in first and set(third) == {"ts", "level", "logger", "message"}


def test_a_log_context_adds_its_fields_to_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    with log_context(run_id=5):
        logging.getLogger("dispatcher.x").info("inside")
        logging.getLogger("dispatcher.x").info("explicit", extra={"run_id": 6})
    logging.getLogger("dispatcher.x").info("outside")
    inside, explicit, outside = json_lines(capsys.readouterr().err)
    assert (inside["run_id"], explicit["run_id"]) == (5, 6) and "run_id" not in outside


def test_a_run_logs_json_lines_carrying_its_run_id(app: App, clock: FixedClock,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    seed_demo(app.engine, 20, NOW.date())
    configure_logging("INFO", "json")
    report = Runner(app).run("morning", NOW)
    assert report.status == "completed" and report.run_id is not None
    lines = json_lines(capsys.readouterr().err)
    runs = [line for line in lines if line["logger"] == "dispatcher.pipeline.run"]
    assert any("started" in line["message"] for line in runs)
    assert any(line["message"].startswith("run morning (#") and "completed" in line["message"] for line in runs)
    assert all(line["run_id"] == report.run_id for line in runs)


def test_the_cli_reads_the_format_and_refuses_another_word(cli: Any, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DISPATCHER_LOG_FORMAT", "JSON")
    assert cli("validate")[0] == 0
    logging.getLogger("dispatcher.cli").warning("reach %s", PHONE)
    (line,) = json_lines(capsys.readouterr().err)
    assert (line["level"], line["message"]) == ("WARNING", "reach +86138****5678")
    monkeypatch.setenv("DISPATCHER_LOG_FORMAT", "xml")
    code, _, err = cli("validate")
    assert code == 2 and err.count("\n") == 1
    assert "DISPATCHER_LOG_FORMAT='xml' must be one of text, json" in err


# a run's progress at a steady interval ---------------------------------------------------------------------------
PROGRESS = re.compile(r"run #(\d+) in progress: (\d+) account\(s\) read, (\d+) attempt\(s\) planned; "
                      r"sent (\d+), failed (\d+), pending (\d+)")


def test_a_run_logs_its_progress_at_a_steady_interval(workdir: Path, clock: FixedClock,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DISPATCHER_PROGRESS_INTERVAL", "0.05")
    app = build_app(Settings.from_env(), clock=clock)
    try:
        seed_demo(app.engine, 400, NOW.date())
        configure_logging("INFO", "json")
        started = time.monotonic()
        report = Runner(app).run("morning", NOW)
        took = time.monotonic() - started
    finally:
        app.engine.dispose()
    assert report.status == "completed"
    lines = [line for line in json_lines(capsys.readouterr().err) if PROGRESS.search(line["message"])]
    assert len(lines) >= 2, f"the run took {took:.2f} s"
    assert len(lines) <= took / 0.05 + 1  # one line per interval, not one per batch or per message
    numbers = [[int(n) for n in PROGRESS.search(line["message"]).groups()] for line in lines]  # type: ignore[union-attr]
    assert {n[0] for n in numbers} == {report.run_id} and {line["run_id"] for line in lines} == {report.run_id}
    for earlier, later in itertools.pairwise(numbers):
        assert later[1] >= earlier[1] and later[2] >= earlier[2] and later[3] >= earlier[3]
    assert numbers[-1][1] <= report.counts.accounts and numbers[-1][3] <= report.counts.sent
    assert any(n[3] > 0 for n in numbers)  # messages sent while the run went on
    stamps = [datetime.fromisoformat(line["ts"]) for line in lines]
    assert all((b - a).total_seconds() >= 0.04 for a, b in itertools.pairwise(stamps))


@pytest.mark.parametrize(("value", "problem"), [("soon", "is not a number of seconds"), ("-1", "0 or more")])
def test_a_bad_progress_interval_is_refused_naming_the_variable(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"DISPATCHER_PROGRESS_INTERVAL.*{problem}"):
        Settings.from_env({"DISPATCHER_PROGRESS_INTERVAL": value})
    assert Settings.from_env({"DISPATCHER_PROGRESS_INTERVAL": "0"}).progress_interval == 0  # 0: no progress lines
