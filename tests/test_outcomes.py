"""Outcomes: delinquencies opened by runs, their balances and cures; the measures and their statistics."""

from __future__ import annotations

import math
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from statistics import NormalDist
from typing import Any

import pytest
from conftest import FixedClock
from rows import demo_row, seed_rows
from sqlalchemy import Engine, delete, insert, select, update

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.demo import demo_accounts
from dispatcher.ledger.handoffs import Closing, close_handoff
from dispatcher.ledger.outcomes import CureTracker
from dispatcher.ledger.tables import attempts, delinquencies, handoffs, reminders
from dispatcher.outcomes.measures import (
    Rate,
    compare_variants,
    cure_rates,
    make_rate,
    promise_kept_rate,
    two_proportion,
    wilson,
)
from dispatcher.pipeline.run import Runner

DAY = timedelta(days=1)


def rows_by_account(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        return {r["account_id"]: dict(r) for r in connection.execute(select(delinquencies)).mappings()}


def set_balance(engine: Engine, account_id: str, amount: str) -> None:
    with engine.begin() as connection:
        connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == account_id)
                           .values(overdue_amount=amount))


def run(app: App, clock: FixedClock) -> str:
    return Runner(app).run("manual", clock()).status


@pytest.fixture
def three(app: App, clock: FixedClock) -> App:
    """Three accounts five days overdue: the firm step reminds each at the first run."""
    due = clock().date() - 5 * DAY
    seed_rows(app.engine, *(demo_row(f"A{n}", due, overdue_amount="100.00") for n in (1, 2, 3)))
    return app


# the ledger side -------------------------------------------------------------------------------------------------
def test_a_run_opens_a_delinquency_per_reminded_account_with_the_balance_read(three: App, clock: FixedClock) -> None:
    assert run(three, clock) == "completed"
    found = rows_by_account(three.engine)
    assert set(found) == {"A1", "A2", "A3"}
    row = found["A1"]
    assert (row["first_balance"], row["last_balance"], row["currency"]) == ("100.00", "100.00", "CNY")
    assert row["first_reminded_at"] == clock() and row["cured_at"] is None and row["cure"] is None


def test_a_later_run_writes_only_what_changed(three: App, clock: FixedClock) -> None:
    run(three, clock)
    first = rows_by_account(three.engine)
    set_balance(three.engine, "A2", "60.5")
    clock.advance(DAY)
    assert run(three, clock) == "completed"
    found = rows_by_account(three.engine)
    assert found["A1"] == first["A1"]  # same balance: not written
    assert (found["A2"]["last_balance"], found["A2"]["first_balance"]) == ("60.5", "100.00")
    assert found["A2"]["last_seen_at"] == clock() and found["A2"]["cured_at"] is None


def test_zero_balance_leaving_and_a_new_due_date_cure(three: App, clock: FixedClock) -> None:
    run(three, clock)
    set_balance(three.engine, "A1", "0")
    with three.engine.begin() as connection:
        connection.execute(delete(demo_accounts).where(demo_accounts.c.account_id == "A2"))
        connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == "A3")
                           .values(due_date=clock().date() - DAY))
    clock.advance(DAY)
    assert run(three, clock) == "completed"
    with three.engine.connect() as connection:
        found = {(r.account_id, r.due_date): (r.cure, r.cured_at) for r in connection.execute(select(delinquencies))}
    today = (clock() - DAY).date()
    assert found[("A1", today - 5 * DAY)] == ("zero_balance", clock())
    assert found[("A2", today - 5 * DAY)] == ("left_overdue", clock())
    assert found[("A3", today - 5 * DAY)] == ("left_overdue", clock())
    assert found[("A3", today - DAY)] == (None, None)  # the new delinquency, reminded by the gentle step


def test_a_claim_left_planned_for_an_account_that_left_the_source_is_recorded_not_sent(
        three: App, clock: FixedClock) -> None:
    """An interrupted run booked A2's next reminder and never sent it; A2 then left the source. The run that finds
    it gone records that claim as the send-time check would (``paid``), instead of leaving it planned forever."""
    run(three, clock)
    clock.advance(3 * DAY)  # the firm step again, every 3 days
    (a2,) = [a for a in next(iter(three.pipeline.source.batches())).accounts if a.account_id == "A2"]
    history = three.ledger.load_history([a2], three.pipeline.policy.contacts_since(clock()))
    three.booker().book(three.pipeline.planner.plan([a2], history, clock()), None, clock())
    with three.engine.connect() as connection:
        booked = connection.execute(select(attempts.c.id).where(attempts.c.account_id == "A2",
                                                                attempts.c.status == "planned")).scalars().all()
    assert booked
    with three.engine.begin() as connection:
        connection.execute(delete(demo_accounts).where(demo_accounts.c.account_id == "A2"))
    clock.advance(timedelta(minutes=1))
    assert run(three, clock) == "completed"

    assert rows_by_account(three.engine)["A2"]["cure"] == "left_overdue"
    with three.engine.connect() as connection:
        found = {r.id: (r.status, r.rule_id, r.detail) for r in connection.execute(
            select(attempts).where(attempts.c.id.in_(booked)))}
        planned = connection.execute(select(attempts.c.id).where(attempts.c.status == "planned")).all()
    assert set(found.values()) == {("suppressed", "paid",
                                    "booked, then the account left the overdue source before it was sent")}
    assert planned == []  # A1's and A3's reminders of this run went out


def test_a_run_stopped_before_reading_everything_cures_no_one(three: App, clock: FixedClock) -> None:
    run(three, clock)
    with three.engine.begin() as connection:
        connection.execute(delete(demo_accounts).where(demo_accounts.c.account_id == "A2"))
    clock.advance(DAY)
    stopping = threading.Event()
    stopping.set()
    assert Runner(three, stopping).run("manual", clock()).status == "interrupted"
    assert {r["cure"] for r in rows_by_account(three.engine).values()} == {None}


def test_a_run_that_reads_no_row_cures_no_one(three: App, clock: FixedClock) -> None:
    run(three, clock)
    with three.engine.begin() as connection:
        connection.execute(delete(demo_accounts))
    clock.advance(DAY)
    assert run(three, clock) == "completed"
    assert {r["cure"] for r in rows_by_account(three.engine).values()} == {None}


def test_a_partial_read_cures_no_one_and_rejected_rows_count_as_read(app: App, clock: FixedClock) -> None:
    now = clock()
    accounts = [_account(f"B{n}", now.date() - 5 * DAY) for n in range(3)]
    CureTracker(app.engine, 1, now).observe(accounts, {a.account_id for a in accounts}, now)
    later = now + DAY
    partial = CureTracker(app.engine, 2, later)
    partial.observe(accounts[:1], set(), later)  # never finished: a range of the source, a failed run
    assert {r["cure"] for r in rows_by_account(app.engine).values()} == {None}
    whole = CureTracker(app.engine, 3, later)
    whole.observe(accounts[:1], set(), later, unread=["B1"])  # B1's row was rejected as bad data
    assert whole.finish(later) == 1
    found = rows_by_account(app.engine)
    assert (found["B0"]["cure"], found["B1"]["cure"], found["B2"]["cure"]) == (None, None, "left_overdue")


def test_an_account_overdue_again_for_the_same_due_date_is_reopened(app: App, clock: FixedClock) -> None:
    now = clock()
    account = _account("C1", now.date() - 5 * DAY)
    CureTracker(app.engine, 1, now).observe([account], {"C1"}, now)
    leaving = CureTracker(app.engine, 2, now + DAY)
    leaving.observe([_account("C2", now.date())], set(), now + DAY)  # C1 is not read
    leaving.finish(now + DAY)
    assert rows_by_account(app.engine)["C1"]["cure"] == "left_overdue"
    CureTracker(app.engine, 3, now + 2 * DAY).observe([account], set(), now + 2 * DAY)
    row = rows_by_account(app.engine)["C1"]
    assert (row["cure"], row["cured_at"], row["last_balance"]) == (None, None, "100.00")


def test_a_hand_off_closed_paid_cures_its_delinquency(app: App, clock: FixedClock) -> None:
    now = clock()
    due = now.date() - 40 * DAY
    CureTracker(app.engine, 1, now).observe([_account("D1", due)], {"D1"}, now)
    with app.engine.begin() as connection:
        handoff_id = connection.execute(insert(handoffs).values(
            account_id="D1", reminder_key=f"D1|{due}|agents|1", step="agents", due_date=due, queue="agents",
            priority=2, kind="call", status="open", created_at=now)).inserted_primary_key[0]
    close_handoff(app.engine, handoff_id, Closing("paid", agents=("ann",)), now + DAY, (now + DAY).date())
    row = rows_by_account(app.engine)["D1"]
    assert (row["cure"], row["cured_at"]) == ("paid", now + DAY)
    CureTracker(app.engine, 2, now + 2 * DAY).observe([_account("D1", due)], set(), now + 2 * DAY)
    assert rows_by_account(app.engine)["D1"]["cure"] == "paid"  # an agent's word stands


def _account(account_id: str, due: date, amount: str = "100.00") -> Account:
    return Account(account_id, "王伟", "+8613812345678", None, None, "zh-CN", "Asia/Shanghai", "CNY",
                   Decimal(amount), due, None, "6222 0212 1234 5678")


# statistics ------------------------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_published_values() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(0, 20)
    assert low == 0.0 and math.isclose(high, 0.16113, abs_tol=1e-4)


def test_two_proportion_z_test_against_an_independent_computation() -> None:
    a, b = make_rate("a", 100, 30), make_rate("b", 100, 45)
    z, p_value = two_proportion(a, b)
    pooled = 75 / 200
    expected_z = (0.45 - 0.30) / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert math.isclose(z, expected_z) and math.isclose(z, 2.1909, abs_tol=1e-4)
    assert math.isclose(p_value, 2 * (1 - NormalDist().cdf(expected_z)), rel_tol=1e-9)
    assert two_proportion(make_rate("a", 10, 0), make_rate("b", 10, 0)) == (0.0, 1.0)
    assert Rate("x", 0, 0, 0.0, 1.0).rate == 0.0


# measures --------------------------------------------------------------------------------------------------------
T0 = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)


def _remind(engine: Engine, account_id: str, step: str, channel: str, at: datetime, *, status: str = "sent",
            variant: str | None = None, bucket: str | None = "M1", due: date = date(2026, 2, 20)) -> None:
    key = f"{account_id}|{due}|{step}|1"
    with engine.begin() as connection:
        if connection.execute(select(reminders.c.id).where(reminders.c.key == key)).first() is None:
            connection.execute(insert(reminders).values(key=key, account_id=account_id, due_date=due, step=step,
                                                        occurrence=1, created_at=at, bucket=bucket))
        try_no = 1 + len(connection.execute(select(attempts.c.id).where(
            attempts.c.reminder_key == key, attempts.c.channel == channel)).all())
        connection.execute(insert(attempts).values(
            reminder_key=key, account_id=account_id, step=step, occurrence=1, channel=channel, try_no=try_no,
            status=status, created_at=at, attempted_at=at, updated_at=at, variant=variant))


def _delinquency(engine: Engine, account_id: str, cured_at: datetime | None, due: date = date(2026, 2, 20)) -> None:
    with engine.begin() as connection:
        connection.execute(insert(delinquencies).values(
            account_id=account_id, due_date=due, currency="CNY", first_balance="10", last_balance="10",
            first_reminded_at=T0, last_seen_at=T0, cured_at=cured_at, cure="zero_balance" if cured_at else None))


def test_cure_rates_by_step_channel_and_bucket(app: App) -> None:
    engine = app.engine
    _remind(engine, "E1", "gentle", "sms", T0)
    _remind(engine, "E1", "gentle", "push", T0, status="failed")
    _delinquency(engine, "E1", T0 + 2 * DAY)  # cured within 7 days
    _remind(engine, "E2", "gentle", "sms", T0)
    _delinquency(engine, "E2", T0 + 9 * DAY)  # too late
    _remind(engine, "E3", "firm", "email", T0 + DAY, bucket="M2")
    _remind(engine, "E3", "firm", "email", T0 + 3 * DAY, bucket="M2")  # a retry: one delinquency, first time counts
    _delinquency(engine, "E3", T0 + 7 * DAY)  # 6 days after the first reminder
    _remind(engine, "E4", "firm", "sms", T0 + 40 * DAY)  # outside the window
    _remind(engine, "E5", "firm", "sms", T0, status="suppressed")  # never reached: not reminded
    since, until = T0 - DAY, T0 + 30 * DAY
    assert cure_rates(engine, "step", since, until) == [make_rate("firm", 1, 1), make_rate("gentle", 2, 1)]
    assert cure_rates(engine, "channel", since, until) == [make_rate("email", 1, 1), make_rate("sms", 2, 1)]
    assert cure_rates(engine, "bucket", since, until) == [make_rate("M1", 2, 1), make_rate("M2", 1, 1)]
    assert cure_rates(engine, "step", since, until, days=10) == [make_rate("firm", 1, 1), make_rate("gentle", 2, 2)]


def test_variants_are_compared_against_the_control(app: App) -> None:
    engine = app.engine
    for n in range(100):  # control firm_a: 30 % cured; firm_b: 45 %
        _remind(engine, f"F{n}", "firm", "sms", T0, variant="firm_a")
        _delinquency(engine, f"F{n}", T0 + DAY if n < 30 else None)
        _remind(engine, f"G{n}", "firm", "sms", T0, variant="firm_b")
        _delinquency(engine, f"G{n}", T0 + DAY if n < 45 else None)
    for n in range(10):
        _remind(engine, f"H{n}", "gentle", "sms", T0, variant=("gentle_b", "gentle_a")[n % 2])
    rates = cure_rates(engine, "variant", T0, T0 + DAY)
    assert [(r.key, r.reminded, r.cured) for r in rates] == [
        ("firm/firm_a", 100, 30), ("firm/firm_b", 100, 45), ("gentle/gentle_a", 5, 0), ("gentle/gentle_b", 5, 0)]
    firm, gentle = compare_variants(engine, T0, T0 + DAY)
    assert (firm.step, firm.a.key, firm.b.key, firm.enough_data, firm.significant) == (
        "firm", "firm/firm_a", "firm/firm_b", True, True)
    assert math.isclose(firm.z, 2.1909, abs_tol=1e-4)
    assert (gentle.enough_data, gentle.significant) == (False, False)
    (reverse, _) = compare_variants(engine, T0, T0 + DAY, order={"firm": ["firm_b", "firm_a"]})
    assert (reverse.a.key, reverse.z < 0) == ("firm/firm_b", True)
    assert not compare_variants(engine, T0, T0 + DAY, alpha=0.01)[0].significant


def test_promise_kept_rate(app: App) -> None:
    engine = app.engine
    due = date(2026, 2, 20)
    for n, (until, cured) in enumerate([(date(2026, 3, 5), T0 + 2 * DAY), (date(2026, 3, 5), None),
                                        (date(2026, 3, 5), T0 + 10 * DAY), (date(2026, 4, 30), None)]):
        _delinquency(engine, f"P{n}", cured, due)
        with engine.begin() as connection:
            connection.execute(insert(handoffs).values(
                account_id=f"P{n}", reminder_key=f"P{n}|{due}|agents|1", step="agents", due_date=due,
                queue="agents", priority=2, kind="call", status="closed", created_at=T0, closed_at=T0,
                outcome="promise_to_pay", until=until))
    rate = promise_kept_rate(engine, T0 - DAY, T0 + 20 * DAY)  # the fourth promise's date has not passed
    assert (rate.key, rate.reminded, rate.cured) == ("promise_to_pay", 3, 1)
