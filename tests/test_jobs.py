"""What travels through the broker (attempt ids, no personal data) and how a worker rebuilds the jobs."""

from __future__ import annotations

import json
from datetime import timedelta

from rows import attempt_rows, book_all, demo_row, seed_rows
from sqlalchemy import delete, update

from dispatcher.app import App
from dispatcher.demo import demo_accounts
from dispatcher.masking import address_hash
from dispatcher.pipeline.executors import task_payload
from dispatcher.pipeline.source import AccountSource
from dispatcher.schedule.models import Source

TODAY = __import__("conftest").NOW.date()


def test_a_task_payload_carries_ids_and_the_version_only() -> None:
    payload = json.loads(json.dumps(task_payload("abc123def456", 7, [3, 1, 2])))
    assert payload == {"version": "abc123def456", "run_id": 7, "attempts": [3, 1, 2]}


def test_the_loader_rebuilds_each_planned_job_from_the_ledger_and_the_source(app: App) -> None:
    seed_rows(app.engine, demo_row("L1", TODAY - timedelta(days=2)),
              demo_row("L2", TODAY - timedelta(days=5), phone="+8613812345600", email="l2@example.cn"))
    jobs = book_all(app, run_id=7)
    loaded = app.job_loader(app.pipeline).load([job.attempt_id for job in jobs], app.clock())
    assert (loaded.gone, loaded.not_planned) == (0, 0)
    fields = ("attempt_id", "try_no", "reminder_key", "step", "occurrence", "days_overdue", "local_today", "channel",
              "address", "fallbacks", "parent_id", "run_id", "planned_address_hash")
    by_id = {job.attempt_id: job for job in loaded.jobs}
    assert [tuple(getattr(by_id[j.attempt_id], f) for f in fields) for j in jobs] == \
        [tuple(getattr(j, f) for f in fields) for j in jobs]
    assert all(by_id[j.attempt_id].account == j.account for j in jobs)


def test_the_loader_skips_claimed_attempts_and_settles_gone_accounts(app: App) -> None:
    seed_rows(app.engine, *(demo_row(f"L{n}", TODAY - timedelta(days=2), phone=f"+861381234560{n}",
                                     email=f"l{n}@example.cn") for n in (1, 2, 3)))
    jobs = {(job.account.account_id, job.channel.value): job for job in book_all(app, run_id=7)}
    first = jobs[("L1", "sms")]
    app.ledger.start_sending([first.attempt_id], app.clock())  # someone else has it
    with app.engine.begin() as connection:
        connection.execute(delete(demo_accounts).where(demo_accounts.c.account_id == "L2"))  # paid in full
        connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == "L3")
                           .values(phone="+8613900002222"))
    loaded = app.job_loader(app.pipeline).load([job.attempt_id for job in jobs.values()], app.clock())
    assert loaded.not_planned == 1 and first.attempt_id not in {job.attempt_id for job in loaded.jobs}
    gone = [r for r in attempt_rows(app) if r["account_id"] == "L2" and r["try_no"] >= 1]
    assert {(r["status"], r["rule_id"]) for r in gone} == {("suppressed", "paid")} and loaded.gone == len(gone)
    moved = next(job for job in loaded.jobs if job.account.account_id == "L3" and job.channel.value == "sms")
    assert moved.address == "+8613900002222"
    assert moved.planned_address_hash == address_hash(jobs[("L3", "sms")].address)  # the re-check defers it


def test_a_lenders_own_query_is_re_read_through_itself_not_the_demo_table(app: App) -> None:
    own = Source.model_validate({"query": "SELECT * FROM demo_accounts WHERE account_id <> 'L2';"})
    assert own.recheck_query == ("SELECT * FROM (SELECT * FROM demo_accounts WHERE account_id <> 'L2') AS source_rows "
                                 "WHERE account_id IN :ids")
    given = Source.model_validate({"query": "SELECT * FROM loans", "recheck_query": "SELECT 1 WHERE 1 IN :ids"})
    assert given.recheck_query == "SELECT 1 WHERE 1 IN :ids"
    seed_rows(app.engine, demo_row("L1", TODAY - timedelta(days=2)), demo_row("L2", TODAY - timedelta(days=2)))
    source = AccountSource(app.engine, own.query, 10, own.recheck_query)
    assert sorted(source.fetch(["L1", "L2", "L3"])) == ["L1"]  # L2 is outside the lender's own query
