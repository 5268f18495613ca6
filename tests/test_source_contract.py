"""The source contract where ops can see it: the query's columns checked by ``validate`` and ``plan``, ids of
any type, flags as booleans, and runs that reject too many rows ending ``failed``.

The PostgreSQL tests map a lender-like table (bigint ids, boolean flags, numeric amounts, date columns) in a
schema of their own on the local server; they skip locally without it and fail in CI.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, drop_schema, schema_url
from rows import attempt_rows, demo_row, seed_rows
from sqlalchemy import Engine, create_engine, select, text

from dispatcher.accounts import Account, RejectedRow
from dispatcher.app import App
from dispatcher.errors import ConfigError
from dispatcher.ledger.tables import runs
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.reject_limit import RejectLimit, TooManyRejects
from dispatcher.pipeline.row_checks import FLAGGED, parse_row
from dispatcher.pipeline.run import Runner
from dispatcher.pipeline.source import AccountSource, SourceBatch
from dispatcher.pipeline.source_contract import SourceColumn, contract_findings, describe
from dispatcher.schedule.models import Source

PROBLEM = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")

LOANS = """CREATE TABLE loans (
    loan_no bigint PRIMARY KEY, full_name text, mobile text, mail text, ccy char(3), amount numeric(12, 2),
    due date, pay_to text, dnc boolean, in_dispute boolean)"""
"""A lender's own loan table: numeric ids, boolean flags, numeric amounts, dates."""

GOOD_MAPPING = ("SELECT loan_no AS account_id, full_name AS name, mobile AS phone, mail AS email, "
                "NULL AS push_token, NULL AS locale, NULL AS timezone, ccy AS currency, amount AS overdue_amount, "
                "due AS due_date, NULL AS deadline, pay_to AS repayment_account, dnc AS do_not_contact, "
                "in_dispute AS dispute FROM loans")
"""The loan table mapped onto the account contract."""

BROKEN_MAPPING = (GOOD_MAPPING.replace("ccy AS currency, ", "").replace("AS dispute", "AS dipsute"))
"""The acceptance case: the ``dispute`` alias misspelt and no ``currency`` column."""

CONTRACT_COLUMNS = ("account_id", "name", "phone", "email", "push_token", "locale", "timezone", "currency",
                    "overdue_amount", "due_date", "deadline", "repayment_account")


def columns(*names: str, **kinds: Any) -> list[SourceColumn]:
    """The contract's columns (or ``names``) of unknown type, with ``kinds`` (name → kind) added or replaced."""
    chosen = [n for n in (names or CONTRACT_COLUMNS) if n not in kinds]
    return [SourceColumn(n) for n in chosen] + [SourceColumn(n, k, k) for n, k in kinds.items()]


# the findings --------------------------------------------------------------------------------------------------
def test_a_complete_mapping_has_no_findings() -> None:
    assert contract_findings(columns(account_id="number", overdue_amount="number", due_date="date",
                                     do_not_contact="boolean", dispute="boolean", deceased="number")) == []


def test_a_misspelt_alias_and_a_missing_column_are_both_named() -> None:
    names = [n for n in CONTRACT_COLUMNS if n != "currency"] + ["dipsute"]
    findings = contract_findings(columns(*names))
    assert findings == ["column 'dipsute' is not in the account contract (did you mean 'dispute'?)",
                        "no column 'currency': every row would be rejected"]


def test_a_misspelt_required_column_is_named_once_with_its_suggestion() -> None:
    names = [n for n in CONTRACT_COLUMNS if n != "phone"] + ["phnoe"]
    assert contract_findings(columns(*names)) == [
        "column 'phnoe' is not in the account contract (did you mean 'phone'?)"]


@pytest.mark.parametrize(("extra", "expected"), [
    ("ACCOUNT_ID", "did you mean 'account_id'?"),
    ("created_at", "drop it or rename it to a contract column"),
])
def test_unknown_columns(extra: str, expected: str) -> None:
    names = [n for n in CONTRACT_COLUMNS if n != "account_id" or extra == "created_at"] + [extra]
    (finding,) = contract_findings(columns(*names))
    assert f"column {extra!r} is not in the account contract" in finding and expected in finding


def test_a_missing_optional_contract_column_says_how_to_fill_it() -> None:
    names = [n for n in CONTRACT_COLUMNS if n != "push_token"]
    assert contract_findings(columns(*names)) == ["no column 'push_token' (select NULL AS push_token if the "
                                                  "source has none)"]


def test_a_column_yielded_twice_is_named() -> None:
    assert contract_findings(columns(*CONTRACT_COLUMNS, "phone")) == ["column 'phone' is yielded 2 times"]


@pytest.mark.parametrize(("column", "kind", "wanted"), [
    ("overdue_amount", "date", "a number"),
    ("due_date", "boolean", "a date"),
    ("dispute", "date", "a flag"),
    ("do_not_contact", "datetime", "a flag"),
    ("phone", "number", "text"),
    ("currency", "boolean", "text"),
    ("promise_to_pay_until", "number", "a date"),
    ("account_id", "boolean", "text or a number"),
    ("deadline", "time", "a date"),
])
def test_a_column_of_the_wrong_type_is_named(column: str, kind: Any, wanted: str) -> None:
    (finding,) = contract_findings(columns(**{column: kind}))
    assert finding.startswith(f"column {column!r} is {kind}; the contract wants {wanted}")


@pytest.mark.parametrize(("column", "kind"), [
    ("overdue_amount", "text"), ("due_date", "datetime"), ("due_date", "text"), ("dispute", "text"),
    ("dispute", "number"), ("account_id", "text"), ("account_id", "other"), ("phone", "unknown"),
])
def test_types_that_can_hold_the_field_pass(column: str, kind: Any) -> None:
    assert contract_findings(columns(**{column: kind})) == []


# SQLite: names only, no row fetched ------------------------------------------------------------------------------
@pytest.fixture
def lender_sqlite(tmp_path: Path) -> str:
    """A SQLite file with the loan table (one row) and its URL."""
    url = f"sqlite:///{tmp_path / 'lender.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(LOANS.replace("bigint", "INTEGER")))
        connection.execute(text("INSERT INTO loans VALUES (7, '王伟', '+8613812345678', NULL, 'CNY', 12.5, "
                                "'2026-03-01', '6222 0212 1234 5678', 0, 0)"))
    engine.dispose()
    return url


def test_describe_reads_the_names_without_fetching_a_row(lender_sqlite: str) -> None:
    engine = create_engine(lender_sqlite)
    with engine.connect() as connection:
        found = describe(connection, BROKEN_MAPPING + ";")
        assert connection.execute(text("SELECT count(*) FROM loans")).scalar_one() == 1
    engine.dispose()
    assert [c.name for c in found][-2:] == ["do_not_contact", "dipsute"]
    assert {c.kind for c in found} == {"unknown"}  # SQLite tells no types


def test_integer_ids_and_zero_flags_on_sqlite(lender_sqlite: str) -> None:
    source = AccountSource(create_engine(lender_sqlite), GOOD_MAPPING, 10, Source(query=GOOD_MAPPING).recheck_query)
    (batch,) = list(source.batches())
    (account,) = batch.accounts
    assert (account.account_id, account.do_not_contact, account.dispute) == ("7", None, False)
    assert set(source.fetch(["7"])) == {"7"}


# the command line ------------------------------------------------------------------------------------------------
def with_source(workdir: Path, url: str, query: str) -> str:
    """Point the workdir's schedules.yaml at ``url`` and ``query``; the file's text."""
    path = workdir / "schedules.yaml"
    content = path.read_text(encoding="utf-8")
    mapping = f"source:\n  url: {url}\n  query: >-\n    {query}\n"
    content, found = re.subn(r"(?m)^source:\n  url: .*\n", mapping, content)
    assert found == 1
    path.write_text(content, encoding="utf-8")
    return content


def query_position(content: str) -> tuple[int, int]:
    line = content.splitlines().index("  query: >-") + 1
    return line, len("  query: ") + 1


def test_validate_names_the_misspelt_alias_and_the_missing_column_at_the_query(
        cli: Cli, workdir: Path, lender_sqlite: str) -> None:
    content = with_source(workdir, lender_sqlite, BROKEN_MAPPING)
    code, _, err = cli("validate")
    assert code == 1
    found = [m for m in map(PROBLEM.match, err.splitlines()) if m]
    assert {(int(m["line"]), int(m["col"])) for m in found} == {query_position(content)}
    messages = " | ".join(m["message"] for m in found)
    assert "'dipsute'" in messages and "did you mean 'dispute'?" in messages
    assert "no column 'currency'" in messages


def test_validate_json_names_the_rule(cli: Cli, workdir: Path, lender_sqlite: str) -> None:
    with_source(workdir, lender_sqlite, BROKEN_MAPPING)
    code, out, _ = cli("validate", "--format", "json")
    assert code == 1
    assert '"rule": "source"' in out and "dipsute" in out


def test_validate_passes_a_good_mapping(cli: Cli, workdir: Path, lender_sqlite: str) -> None:
    with_source(workdir, lender_sqlite, GOOD_MAPPING)
    code, out, err = cli("validate")
    assert (code, err) == (0, "")
    assert "valid" in out


def test_validate_reports_a_query_the_database_refuses(cli: Cli, workdir: Path, lender_sqlite: str) -> None:
    content = with_source(workdir, lender_sqlite, "SELECT * FROM loan_table")
    code, _, err = cli("validate")
    assert code == 1
    (match,) = [m for m in map(PROBLEM.match, err.splitlines()) if m]
    assert (int(match["line"]), int(match["col"])) == query_position(content)
    assert "loan_table" in match["message"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_source_is_one_line_and_the_rest_is_still_checked(cli: Cli, workdir: Path) -> None:
    with_source(workdir, f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/lender", GOOD_MAPPING)
    code, out, err = cli("validate")
    assert code == 0 and "valid" in out
    (line,) = err.splitlines()
    assert "source.query not checked: cannot connect" in line and "secret" not in line

    path = workdir / "schedules.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("days_overdue: 1-3", "days_overdue: 3-1"), "utf-8")
    code, _, err = cli("validate")
    assert code == 1 and "days_overdue" in err  # the rest of the file is checked as before


def test_plan_refuses_a_broken_mapping_with_the_same_messages(cli: Cli, workdir: Path, lender_sqlite: str) -> None:
    with_source(workdir, lender_sqlite, BROKEN_MAPPING)
    code, out, err = cli("plan", "--format", "json")
    assert code == 2
    assert out == ""  # refused before any output: no table header, no half-written JSON
    assert "source.query: column 'dipsute' is not in the account contract (did you mean 'dispute'?)" in err
    assert "source.query: no column 'currency': every row would be rejected" in err


# max_reject_ratio ------------------------------------------------------------------------------------------------
def good(account_id: str) -> Account:
    parsed = parse_row({"account_id": account_id, "currency": "CNY", "overdue_amount": "1", "due_date": "2026-01-01"})
    assert isinstance(parsed, Account)
    return parsed


def bad(account_id: str | None, field: str = "currency") -> RejectedRow:
    return RejectedRow(account_id, field, "missing")


def test_the_limit_stops_before_booking_the_batch_that_crosses_it() -> None:
    limit, counts = RejectLimit(0.05), RunCounts()
    limit.admit(SourceBatch([good(f"A{n}") for n in range(96)], [bad("B1"), bad("B2"), bad("B3", "phone")]), counts)
    with pytest.raises(TooManyRejects) as caught:
        limit.admit(SourceBatch([good("C1")], [bad("C2"), bad("C3"), bad("C4")]), counts)
    assert str(caught.value).startswith("6 of 103 source rows failed the account contract (5.83 % > "
                                        "source.max_reject_ratio 5 %): currency 5, phone 1; stopped before booking")
    assert (counts.rejected, counts.accounts) == (3, 3)


def test_rows_without_an_id_are_judged_with_the_whole_source() -> None:
    limit, counts = RejectLimit(0.05), RunCounts()
    limit.admit(SourceBatch([], [bad(None, "account_id")] * 3), counts)
    limit.admit(SourceBatch([good(f"A{n}") for n in range(97)], []), counts)
    limit.finish()  # 3 of 100
    limit.admit(SourceBatch([], [bad(None, "account_id")] * 3), counts)
    with pytest.raises(TooManyRejects, match=r"6 of 103 .*: account_id 6; every row read was booked"):
        limit.finish()


def test_a_ratio_of_zero_refuses_any_reject_and_one_refuses_none() -> None:
    with pytest.raises(TooManyRejects):
        RejectLimit(0).admit(SourceBatch([good("A")] * 1000, [bad("B")]), RunCounts())
    everything = RejectLimit(1)
    everything.admit(SourceBatch([], [bad("B")] * 10), RunCounts())
    everything.finish()


def run_of(app: App, run_id: int | None) -> dict[str, Any]:
    with app.engine.connect() as connection:
        return dict(connection.execute(select(runs.c.status, runs.c.error).where(runs.c.id == run_id)).mappings()
                    .one())


def test_a_run_rejecting_too_many_rows_fails_and_sends_nothing(app: App) -> None:
    due = app.clock().date() - timedelta(days=5)
    seed_rows(app.engine, *[demo_row(f"L{n:03d}", due, currency="rmb" if n % 3 == 0 else "CNY")
                            for n in range(30)])
    report = Runner(app).run("manual", app.clock())
    assert report.status == "failed"
    assert report.counts.rejected == 10 and report.counts.planned == 0
    recorded = run_of(app, report.run_id)
    assert recorded["status"] == "failed"
    assert "10 of 30 source rows failed the account contract" in recorded["error"]
    assert "currency 10" in recorded["error"]
    assert attempt_rows(app) == []


def test_a_run_within_the_limit_completes(app: App) -> None:
    due = app.clock().date() - timedelta(days=5)
    seed_rows(app.engine, *[demo_row(f"L{n:03d}", due, currency="rmb" if n == 0 else "CNY") for n in range(30)])
    report = Runner(app).run("manual", app.clock())
    assert (report.status, report.counts.rejected) == ("completed", 1)
    assert report.counts.sent > 0


# PostgreSQL: a lender's table with bigint ids and boolean flags ---------------------------------------------------
@pytest.fixture
def lender_postgres(postgres_url: str) -> Iterator[Engine]:
    """The loan table in a schema of its own: ids 1-5, one borrower flagged do-not-contact, one disputing."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    schema = f"lender_{secrets.token_hex(6)}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(schema_url(schema))
    rows = [{"n": n, "dnc": n == 4, "dispute": n == 5, "due": date(2026, 3, 1)} for n in range(1, 6)]
    with engine.begin() as connection:
        connection.execute(text(LOANS))
        connection.execute(text("INSERT INTO loans VALUES (:n, '王伟', '+8613812345678', NULL, 'CNY', 12.50, :due, "
                                "'6222 0212 1234 5678', :dnc, :dispute)"), rows)
    try:
        yield engine
    finally:
        engine.dispose()
        drop_schema(admin, schema)
        admin.dispose()


def test_postgres_types_are_read_without_a_row(lender_postgres: Engine) -> None:
    with lender_postgres.connect() as connection:
        found = {c.name: (c.kind, c.type_name) for c in describe(connection, GOOD_MAPPING)}
    assert found["account_id"] == ("number", "int8")
    assert found["do_not_contact"] == ("boolean", "bool")
    assert (found["overdue_amount"][0], found["due_date"][0], found["currency"][0]) == ("number", "date", "text")
    assert contract_findings([SourceColumn(n, k, t) for n, (k, t) in found.items()]) == []


def test_postgres_wrong_types_are_named(lender_postgres: Engine) -> None:
    query = GOOD_MAPPING.replace("mobile AS phone", "loan_no AS phone").replace("due AS due_date", "dnc AS due_date")
    with lender_postgres.connect() as connection:
        findings = contract_findings(describe(connection, query))
    assert findings == ["column 'phone' is int8; the contract wants text",
                        "column 'due_date' is bool; the contract wants a date (a date, a timestamp or ISO text)"]


def test_bigint_ids_and_boolean_flags_work_without_casts(lender_postgres: Engine) -> None:
    source = AccountSource(lender_postgres, GOOD_MAPPING, 2, Source(query=GOOD_MAPPING).recheck_query)
    batches = list(source.batches())
    assert [len(b.accounts) for b in batches] == [2, 2, 1] and not any(b.rejects for b in batches)
    accounts = {a.account_id: a for b in batches for a in b.accounts}
    assert list(accounts) == ["1", "2", "3", "4", "5"]
    assert [a.do_not_contact for a in accounts.values()] == [None, None, None, FLAGGED, None]
    assert [a.dispute for a in accounts.values()] == [False, False, False, False, True]
    fetched = source.fetch(["2", "5"])
    assert set(fetched) == {"2", "5"} and all(isinstance(a, Account) for a in fetched.values())


def test_postgres_text_ids_still_reject_empty_ids(lender_postgres: Engine) -> None:
    query = GOOD_MAPPING.replace("loan_no AS account_id", "CASE WHEN loan_no = 3 THEN '' ELSE 'L' || loan_no END "
                                                          "AS account_id")
    batches = list(AccountSource(lender_postgres, query, 10).batches())
    assert [r.field for b in batches for r in b.rejects] == ["account_id"]
    assert sorted(a.account_id for b in batches for a in b.accounts) == ["L1", "L2", "L4", "L5"]


def test_postgres_broken_mapping_stops_the_source(lender_postgres: Engine) -> None:
    with pytest.raises(ConfigError) as caught:
        list(AccountSource(lender_postgres, BROKEN_MAPPING, 10).batches())
    assert [p.message for p in caught.value.problems] == [
        "source.query: column 'dipsute' is not in the account contract (did you mean 'dispute'?)",
        "source.query: no column 'currency': every row would be rejected"]


def test_a_run_with_a_broken_mapping_ends_failed_before_reading_a_row(cli: Cli, workdir: Path, lender_sqlite: str,
                                                                     ledger_url: str) -> None:
    with_source(workdir, lender_sqlite, BROKEN_MAPPING)
    code, _, err = cli("run", "--once")
    assert code == 2 and "no column 'currency'" in err
    engine = create_engine(ledger_url)
    with engine.connect() as connection:
        (status, error), = connection.execute(select(runs.c.status, runs.c.error)).all()
    engine.dispose()
    assert status == "failed" and "'dipsute'" in error and "no column 'currency'" in error
