"""Demo borrowers for the source table and the ledger's attempt rows, shared by the rule and pipeline tests."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Engine, insert, select

from dispatcher.app import App
from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.jobs import DeliveryJob


def demo_row(account_id: str, due_date: date, **changes: Any) -> dict[str, Any]:
    """A row of the demo source table: a zh-CN borrower in Shanghai with all three addresses."""
    return {"account_id": account_id, "name": "王伟", "phone": "+8613812345678", "email": "wang@example.cn",
            "push_token": f"fcm:{account_id}", "locale": "zh-CN", "timezone": "Asia/Shanghai", "currency": "CNY",
            "overdue_amount": "100.00", "due_date": due_date, "deadline": None,
            "repayment_account": "6222 0212 1234 5678", "do_not_contact": None, "dispute": None,
            "promise_to_pay_until": None, "opt_out_channels": None, **changes}


def seed_rows(engine: Engine, *rows: dict[str, Any]) -> None:
    """Create the demo source table if needed and insert ``rows``."""
    demo_metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(insert(demo_accounts), list(rows))


def attempt_rows(app: App, **where: Any) -> list[dict[str, Any]]:
    """The ledger's attempts matching every ``column=value``, in id order."""
    query = select(attempts).order_by(attempts.c.id)
    for name, value in where.items():
        query = query.where(attempts.c[name] == value)
    with app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(query).mappings()]


def book_all(app: App, run_id: int | None = None) -> list[DeliveryJob]:
    """Plan and book every account with the app's pipeline at the clock's time (a run killed before delivery)."""
    now = app.clock()
    pipeline = app.pipeline
    jobs: list[DeliveryJob] = []
    for batch in pipeline.source.batches():
        history = app.ledger.load_history(batch.accounts, pipeline.policy.contacts_since(now))
        jobs += app.booker().book(pipeline.planner.plan(batch.accounts, history, now), run_id, now)[0]
    return jobs
