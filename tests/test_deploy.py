"""deploy/*.service and .env.example: what an operator installs.

Each unit is checked statically (its ExecStart is a command line ``dispatcher``'s
own parser accepts, with the service settings the README promises), then by
``systemd-analyze verify`` where it exists (on a copy whose ExecStart points at this
virtualenv's ``dispatcher``, since ``/opt/dispatcher`` is not installed here). The
environment example must name every variable the code reads, each with a comment,
hold no secret, and be accepted by the settings as is.
"""

from __future__ import annotations

import argparse
import configparser
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import drop_schema, schema_url
from sqlalchemy import Engine, create_engine, text

from dispatcher.accounts import Account
from dispatcher.channels.provider_settings import TwilioSettings
from dispatcher.channels.registry import Providers
from dispatcher.cli.parser import build_parser
from dispatcher.pipeline.source import AccountSource
from dispatcher.pipeline.source_contract import contract_findings, describe
from dispatcher.schedule.models import Source
from dispatcher.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNITS = {"dispatcher.service": "run", "dispatcher-web.service": "web", "dispatcher-worker.service": "worker"}
"""Each unit and the ``dispatcher`` command it runs."""
INSTALLED = "/opt/dispatcher/.venv/bin/dispatcher"
"""Where the units expect the console script (README: "Deploying with systemd")."""


def service(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text(encoding="utf-8"))
    return parser["Service"]


def subcommands() -> set[str]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


@pytest.mark.parametrize(("unit", "command"), UNITS.items())
def test_each_unit_runs_a_real_dispatcher_command(unit: str, command: str) -> None:
    argv = shlex.split(service(unit)["ExecStart"])
    assert argv[0] == INSTALLED
    assert argv[1] == command and command in subcommands()
    args = build_parser().parse_args(argv[1:])  # the whole command line, flags included, is accepted
    assert args.handler.endswith(f":{command}_command")


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_has_the_service_settings_the_readme_promises(unit: str) -> None:
    settings = service(unit)
    assert settings["EnvironmentFile"] == "/etc/dispatcher/dispatcher.env"
    assert settings["User"] == "dispatcher" and settings["Restart"] == "on-failure"
    assert settings["KillSignal"] == "SIGTERM"
    assert int(settings["TimeoutStopSec"]) >= 30
    assert settings["WorkingDirectory"] in settings["ReadWritePaths"].split()  # the SQLite ledger and outbox
    if unit != "dispatcher-web.service":
        assert settings["KillMode"] == "mixed"  # SIGTERM to the main process; its stop is graceful
        assert int(settings["TimeoutStopSec"]) >= 120  # two provider timeouts and the ledger's last writes


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed: the units were checked statically only")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("dispatcher")
    assert script.exists(), "the console script is installed beside this Python"
    for name in UNITS:
        text = (DEPLOY / name).read_text(encoding="utf-8").replace(INSTALLED, str(script))
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / name) for name in UNITS)],
                          capture_output=True, text=True, timeout=60, check=False)
    about_ours = [line for line in (done.stdout + done.stderr).splitlines()
                  if str(tmp_path) in line or any(name in line for name in UNITS)]
    assert done.returncode == 0 and not about_ours, done.stdout + done.stderr


# .env.example ----------------------------------------------------------------------------------------------------
VARIABLE = re.compile(r"[\"']((?:DISPATCHER|TWILIO|SMTP|FCM)_[A-Z0-9_]+|EMAIL_FROM)[\"']")
"""A variable name in quotes, as the code reads it (``env.get("DISPATCHER_...")``); constants are not quoted."""
NOT_DEPLOYMENT = {"DISPATCHER_DEV_UNLOCKED"}
"""Variables of the development tools, not of a deployment."""
SECRETS = ("SECRET", "TOKEN", "PASSWORD")


def example() -> dict[str, tuple[str, list[str]]]:
    """Variable → (value, the comment lines just above it)."""
    found: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif "=" in line:
            name, _, value = line.partition("=")
            assert name not in found, f"{name} twice"
            found[name] = (value, comments)
            comments = []
        else:
            comments = []
    return found


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "dispatcher").rglob("*.py"):
        names |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return names - NOT_DEPLOYMENT


def test_the_environment_example_names_every_variable_with_a_comment() -> None:
    found = example()
    assert variables_read_by_the_code() <= set(found), sorted(variables_read_by_the_code() - set(found))
    assert set(found) <= variables_read_by_the_code() | {"DISPATCHER_SOURCE_URL"}  # no stale names
    pairs = ("TWILIO_MESSAGING_SERVICE_SID", "SMTP_PASSWORD")  # documented with the line just above them
    for name, (_value, comments) in found.items():
        assert comments or name in pairs, f"{name} has no comment"


def test_the_environment_example_holds_no_secret() -> None:
    for name, (value, _comments) in example().items():
        if any(word in name for word in SECRETS) or name == "TWILIO_ACCOUNT_SID":
            assert value == "", f"{name} must be empty in the example"
        assert urlsplit(value).password is None, f"{name} holds a password"


def test_the_environment_example_is_accepted_once_its_secrets_are_filled_in() -> None:
    env = {name: value for name, (value, _comments) in example().items()}
    env["DISPATCHER_SECRET_KEY"] = "new-key-2026,old-key-2025"
    settings = Settings.from_env(env)
    assert (settings.metrics_port, settings.metrics_host) == (9108, "0.0.0.0")
    assert settings.public_url == "https://reminders.lender.example"
    assert settings.broker_url is None and settings.concurrency == 32  # empty values take the defaults
    providers = Providers.from_env(env)
    assert providers.twilio is None and providers.smtp is None and providers.fcm is None  # outbox until filled
    assert TwilioSettings.from_env(env) is None


# the README's example source.query for PostgreSQL -----------------------------------------------------------------
def readme_block(marker: str) -> str:
    """The fenced block following ``<!-- marker -->`` in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker} -->\n```\w+\n(.*?)\n```", readme, re.DOTALL)
    assert found, f"README has no block {marker}"
    return found.group(1)


@pytest.fixture
def loan_tables(postgres_url: str) -> Iterator[Engine]:
    """The README's two tables in a schema of their own: five loans, one paid, one due in 10 days."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    schema = f"loans_{secrets.token_hex(6)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(schema_url(schema))
    today = date.today()
    with engine.begin() as connection:
        connection.exec_driver_sql(readme_block("postgres-example-tables"))
        connection.execute(text("INSERT INTO borrowers (borrower_id, full_name, mobile, email, locale, country) "
                                "VALUES (1, '王伟', '+8613812345678', 'wang.wei@example.cn', NULL, 'CN'), "
                                "(2, 'Ann Lee', '+14155550100', NULL, 'en-US', 'US')"))
        connection.execute(text(
            "INSERT INTO loans (loan_id, borrower_id, product, currency, amount_overdue, next_due_date, "
            "repayment_account, hold_reason, disputed, closed_at) VALUES "
            "(10, 1, 'cash', 'CNY', 500.00, :late, '6222 0212 1234 5678', NULL, false, NULL), "
            "(11, 1, 'card', 'CNY', 80.00, :soon, '6222 0212 1234 5678', 'legal review', false, NULL), "
            "(12, 2, 'cash', 'USD', 120.00, :late, 'ACH 1234', NULL, true, NULL), "
            "(13, 2, 'cash', 'USD', 0.00, :late, 'ACH 1234', NULL, false, NULL), "
            "(14, 2, 'cash', 'USD', 90.00, :later, 'ACH 1234', NULL, false, NULL)"),
            {"late": today - timedelta(days=5), "soon": today + timedelta(days=2), "later": today + timedelta(days=10)})
    try:
        yield engine
    finally:
        engine.dispose()
        drop_schema(admin, schema)
        admin.dispose()


def test_the_readme_postgres_example_meets_the_source_contract(loan_tables: Engine) -> None:
    source = Source.model_validate(yaml.safe_load(readme_block("postgres-example-source"))["source"])
    with loan_tables.connect() as connection:
        assert contract_findings(describe(connection, source.query)) == []
    accounts = AccountSource(loan_tables, source.query, source.batch_size, source.recheck_query)
    batches = list(accounts.batches())
    assert not any(batch.rejects for batch in batches)
    read = {a.account_id: a for batch in batches for a in batch.accounts}
    assert sorted(read) == ["10", "11", "12"]  # paid (13) and due in 10 days (14) are not read
    assert (read["10"].locale, read["10"].timezone, read["12"].locale) == ("zh-CN", "Asia/Shanghai", "en-US")
    assert read["11"].do_not_contact == "legal review" and read["12"].dispute
    assert read["10"].deadline == read["10"].due_date + timedelta(days=7)
    fetched = accounts.fetch(["10", "12"])
    assert set(fetched) == {"10", "12"} and all(isinstance(a, Account) for a in fetched.values())
