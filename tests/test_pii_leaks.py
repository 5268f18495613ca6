"""No borrower's number, email, push token or name leaves a run, even when every provider echoes it.

A whole ``dispatcher run --once`` (a subprocess, at ``--log-level DEBUG``) sends to a
few hundred demo borrowers through stand-ins that refuse every message and quote the
address in their answer, as the real ones do: Twilio 400 / 21211 "The 'To' number
+86... is not a valid phone number.", an SMTP server refusing ``RCPT TO`` with
"<user@example.cn>: Recipient address rejected", FCM answering INVALID_ARGUMENT with
the registration token. Then every text column of every ledger table, the run's
stderr and the output of ``dispatcher attempts``/``runs``/``rejects`` in every
format are searched for each borrower's personal data in every spelling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, MetaData, String, Text, insert, select
from standins.fcm_server import FcmStandin
from standins.smtp_server import SmtpStandin
from standins.twilio_server import TwilioStandin
from test_providers_e2e import provider_env

from dispatcher.app import App
from dispatcher.demo import demo_accounts, seed_demo
from dispatcher.errors import DispatcherError
from dispatcher.ledger.database import create_ledger_engine
from dispatcher.ledger.tables import attempts, rejects, runs

BORROWERS = 200
TWILIO_21211 = "The 'To' number {to} is not a valid phone number."
FCM_BAD_TOKEN = "The registration token is not a valid FCM registration token: {token}"
SOURCE_TABLES = frozenset({"demo_accounts"})
"""The lender's own data, which holds the addresses by nature; everything else is the ledger."""


def spellings(row: dict[str, Any]) -> set[str]:
    """Every way a borrower's data may be written: numbers in E.164, without "+", URL-encoded, national."""
    found: set[str] = set()
    phone, email, token, name = row["phone"], row["email"], row["push_token"], row["name"]
    if phone and phone.startswith("+") and phone[1:].isdigit():
        country = 2 if phone.startswith("+86") else 1
        found |= {phone, phone[1:], quote(phone, safe=""), "00" + phone[1:], phone[1 + country:]}
    if email and "@" in email:
        found |= {email, quote(email, safe="")}
    if token:
        found.add(token)
    if name and len(name) >= 2:
        found.add(name)
    return found


def leaks(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s in text)


def ledger_texts(engine: Engine) -> Iterator[tuple[str, str, str]]:
    """``(table, column, value)`` of every non-empty text in every ledger table."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            if table.name in SOURCE_TABLES:
                continue
            columns = [c for c in table.columns if isinstance(c.type, String | Text)]
            if not columns:
                continue
            for row in connection.execute(select(*columns)):
                for column, value in zip(columns, row, strict=True):
                    if value:
                        yield table.name, column.name, str(value)


@pytest.fixture
def echoing(tmp_path: Path) -> Iterator[tuple[TwilioStandin, SmtpStandin, FcmStandin]]:
    """The three stand-ins, refusing every message and quoting its address."""
    with TwilioStandin() as twilio, SmtpStandin() as smtp, FcmStandin() as fcm:
        twilio.fail_all(400, 21211, TWILIO_21211)
        smtp.reject_all()
        fcm.fail_all("INVALID_ARGUMENT", FCM_BAD_TOKEN, field="message.token")
        yield twilio, smtp, fcm


@pytest.mark.usefixtures("anytime")  # profile none: the real clock's hour never defers the sends
def test_echoed_addresses_stay_out_of_the_ledger_the_logs_and_the_listings(
    workdir: Path, ledger_url: str, echoing: tuple[TwilioStandin, SmtpStandin, FcmStandin],
    cli: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    twilio, smtp, fcm = echoing
    engine = create_ledger_engine(ledger_url)
    try:
        seed_demo(engine, BORROWERS, date.today())
        with engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(select(demo_accounts)).mappings()]
        env = provider_env(workdir, twilio, smtp, fcm, ledger_url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        done = subprocess.run([sys.executable, "-m", "dispatcher", "--log-level", "DEBUG", "run", "--once"],
                              env=dict(os.environ), cwd=workdir, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stderr[-3000:]

        # the providers were asked and echoed: the run met every kind of address in an error text
        assert twilio.creates and smtp.handler.reject_every and fcm.message_requests
        errors = [v for table, column, v in ledger_texts(engine) if (table, column) == ("attempts", "error_message")]
        assert any("is not a valid phone number" in e for e in errors)
        assert any("Recipient address rejected" in e for e in errors)
        assert any("registration token" in e for e in errors)
        assert "suppressed from now on" in done.stderr  # log lines about each address were written

        secrets = set().union(*(spellings(row) for row in rows))
        ledger = "\n".join(f"{table}.{column}: {value}" for table, column, value in ledger_texts(engine))
        found = set(leaks(ledger, secrets))
        assert [line for line in ledger.splitlines() if leaks(line, found)] == []
        assert leaks(done.stderr + done.stdout, secrets) == []
        for command in (("attempts", "--format", "json"), ("attempts", "--format", "csv"), ("attempts",),
                        ("runs", "--format", "json"), ("runs", "--format", "csv"), ("runs",),
                        ("rejects", "--format", "json"), ("rejects", "--format", "csv"),
                        ("--log-level", "DEBUG", "attempts", "--format", "json")):
            code, out, err = cli(*command)
            assert code == 0, (command, err)
            assert leaks(out + err, secrets) == [], command
    finally:
        engine.dispose()


OLD_ERROR = ("The 'To' number +8613800138007 is not a valid phone number. (also 8613800138007, %2B8613800138007, "
             "<old.user@example.cn>, old.user%40example.cn, fcm:6b4cb2424a23d5962217bead)")
OLD_SECRETS = {"+8613800138007", "8613800138007", "%2B8613800138007", "old.user@example.cn", "old.user%40example.cn",
               "fcm:6b4cb2424a23d5962217bead"}


def test_rows_written_before_masking_are_listed_masked(
    app: App, cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Regression: ``dispatcher attempts --format json|csv`` printed the numbers a provider had quoted."""
    now = datetime.now(UTC)
    with app.engine.begin() as connection:
        connection.execute(insert(attempts), [{
            "reminder_key": "13800138007|2026-03-01|gentle|0", "account_id": "13800138007", "step": "gentle",
            "occurrence": 0, "channel": "sms", "try_no": 1, "status": "failed", "address": "+8613800138007",
            "error_code": "21211", "error_class": "permanent", "error_message": OLD_ERROR, "detail": OLD_ERROR,
            "created_at": now, "updated_at": now}])
        connection.execute(insert(runs), [{
            "name": "manual", "fire_time": now, "status": "failed", "config_version": "v", "daemon_id": "d",
            "started_at": now, "error": OLD_ERROR}])
        connection.execute(insert(rejects), [{"run_id": 1, "account_id": "A-1", "field": "email",
                                              "reason": OLD_ERROR, "created_at": now}])

    for command in ("attempts", "runs", "rejects"):
        for fmt in ("json", "csv", "table"):
            code, out, err = cli(command, "--format", fmt)
            assert code == 0, err
            assert leaks(out + err, OLD_SECRETS) == [], (command, fmt)
            assert "+86138****8007" in out or fmt == "table", (command, fmt)
    code, out, _ = cli("attempts", "--format", "json")
    (row,) = json.loads(out)
    assert (row["account_id"], row["reminder_key"]) == ("13800138007", "13800138007|2026-03-01|gentle|0")  # as is


def test_seeding_the_demo_table_twice_says_so_without_quoting_a_row(
    workdir: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    """Regression: the second ``seed-demo`` printed the driver's error with every row's name and number."""
    assert cli("seed-demo", "--accounts", "20")[0] == 0
    code, out, err = cli("seed-demo", "--accounts", "20")
    assert code != 0 and "--replace" in err and "Traceback" not in err
    engine = create_ledger_engine(os.environ["DISPATCHER_DATABASE_URL"])
    try:
        with engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(select(demo_accounts)).mappings()]
        with pytest.raises(DispatcherError) as raised:
            seed_demo(engine, 20, date.today())
    finally:
        engine.dispose()
    assert leaks(out + err + str(raised.value), set().union(*(spellings(row) for row in rows))) == []
    assert raised.value.__suppress_context__  # the driver's exception, holding the rows, is not chained
