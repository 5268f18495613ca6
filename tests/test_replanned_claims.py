"""A claim booked by an interrupted run and refused when the next run plans it again keeps the refusal's reason."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

from rows import demo_row, seed_rows
from sqlalchemy import select

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.ledger.suppressions import suppress
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.row_checks import parse_row


def account(app: App, account_id: str, days: int) -> Account:
    row = demo_row(account_id, app.clock().date() - timedelta(days=days))
    seed_rows(app.engine, row)
    parsed = parse_row(row)
    assert isinstance(parsed, Account)
    return parsed


def book(app: App, accounts: list[Account], run_id: int) -> None:
    now = app.clock()
    history = app.ledger.load_history(accounts, app.pipeline.policy.contacts_since(now))
    app.booker().book(app.pipeline.planner.plan(accounts, history, now), run_id, now)


def rows(app: App, account_id: str, channel: str) -> list[dict[str, object]]:
    query = select(attempts).where(attempts.c.account_id == account_id, attempts.c.channel == channel)
    with app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(query.order_by(attempts.c.id)).mappings()]


def two_runs(app: App) -> tuple[int, int]:
    """An interrupted run's id and the next run's."""
    interrupted = app.runs.start("morning", app.clock(), "v", "d", app.clock())
    later = app.runs.start("evening", app.clock() + timedelta(minutes=1), "v", "d", app.clock())
    assert interrupted is not None and later is not None
    return interrupted, later


def test_a_handoff_left_planned_then_deferred_by_a_cap_carries_the_rule(app: App) -> None:
    interrupted, later = two_runs(app)
    handoff, sibling = account(app, "X1", 40), account(app, "Y1", 20)  # the same borrower (phone, email)
    book(app, [handoff], interrupted)       # the hand-off is booked first: no contact yet
    book(app, [sibling], interrupted)       # then 3 messages of the other loan (sms, email, push)
    assert [r["status"] for r in rows(app, "X1", "handoff")] == ["planned"]

    book(app, [handoff], later)             # the next run plans the hand-off again: the cap defers it
    claim = next(r for r in rows(app, "X1", "handoff") if r["try_no"] == 1)
    deferral = next(r for r in rows(app, "X1", "handoff") if r["try_no"] == 0)
    assert deferral["status"] == "deferred" and deferral["rule_id"] == "cap"
    assert claim["status"] == "planned"
    assert (claim["rule_id"], claim["run_id"]) == ("cap", later)  # deferred by that run, not waiting for a deliverer
    assert app.ledger.pending_count(interrupted) == 3  # the sibling's three messages only
    assert app.ledger.planned_ids(later) == []


def test_a_message_left_planned_then_suppressed_at_planning_is_suppressed(app: App) -> None:
    interrupted, later = two_runs(app)
    borrower = account(app, "Z1", 20)
    book(app, [borrower], interrupted)
    assert [r["status"] for r in rows(app, "Z1", "sms")] == ["planned"]
    assert borrower.phone is not None
    suppress(app.engine, "sms", borrower.phone, "reply_stop", app.clock())

    book(app, [borrower], later)
    assert [(r["status"], r["rule_id"]) for r in rows(app, "Z1", "sms")] == [("suppressed", "opt-out")]


def test_a_message_left_planned_then_the_account_settled_is_suppressed_as_settled(app: App) -> None:
    interrupted, later = two_runs(app)
    borrower = account(app, "S1", 20)
    book(app, [borrower], interrupted)
    booked = {r["channel"] for r in rows_of(app, "S1") if r["status"] == "planned"}
    assert booked, "the step books at least one channel"

    book(app, [dataclasses.replace(borrower, overdue_amount=Decimal("0"))], later)  # paid before it was sent
    after = [r for r in rows_of(app, "S1") if r["try_no"] >= 1]
    assert {(r["channel"], r["status"], r["rule_id"], r["run_id"]) for r in after} == \
        {(channel, "suppressed", "settled", later) for channel in booked}
    assert all("settled before sending (balance 0)" in str(r["detail"]) for r in after)
    assert app.ledger.pending_count(interrupted) == 0 and app.ledger.planned_ids(later) == []


def test_a_message_left_planned_then_the_account_paused_waits_with_the_pause(app: App) -> None:
    interrupted, later = two_runs(app)
    borrower = account(app, "P1", 20)
    book(app, [borrower], interrupted)
    booked = {r["channel"] for r in rows_of(app, "P1") if r["status"] == "planned"}

    paused = dataclasses.replace(borrower, dispute=True)
    book(app, [paused], later)
    claims = {r["channel"]: r for r in rows_of(app, "P1") if r["try_no"] >= 1}
    assert {(c, r["status"], r["rule_id"], r["run_id"]) for c, r in claims.items()} == \
        {(channel, "planned", "pause", later) for channel in booked}  # kept for the pause's end, with why
    holds = {(r["channel"], r["status"], r["rule_id"]) for r in rows_of(app, "P1") if r["try_no"] == 0}
    assert holds == {(channel, "suppressed", "pause") for channel in booked}
    assert app.ledger.planned_ids(later) == []

    over = app.runs.start("night", app.clock() + timedelta(minutes=2), "v", "d", app.clock())
    assert over is not None
    book(app, [borrower], over)  # the dispute is over: the same claims are booked to send again
    assert {(r["status"], r["rule_id"], r["run_id"]) for r in rows_of(app, "P1") if r["try_no"] >= 1} == \
        {("planned", None, over)}


def rows_of(app: App, account_id: str) -> list[dict[str, object]]:
    query = select(attempts).where(attempts.c.account_id == account_id)
    with app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(query.order_by(attempts.c.id)).mappings()]
