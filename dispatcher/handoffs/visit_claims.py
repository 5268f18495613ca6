"""Field visits and plans agreed by people: the collectors a visit names (at least two, checked before claiming),
their authorisation, and the amount a repayment plan starts from. Shared by ``dispatcher handoffs`` and
``/api/handoffs``."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.handoffs.visit_letter import shown_code
from dispatcher.ladder import local_date
from dispatcher.ledger.handoffs import InvalidHandoffAction, get_handoff
from dispatcher.ledger.visits import Collector, checked_collectors, issue_authorisation
from dispatcher.zones import zone


def visit_collectors(app: App, handoff_id: int, given: Sequence[str]) -> tuple[Collector, ...]:
    """The collectors a claim names, checked before claiming: none for other kinds, at least two for a visit."""
    item = get_handoff(app.engine, handoff_id)
    if item["kind"] != "visit":
        if given:
            raise InvalidHandoffAction(f"--collector is for visit hand-offs; #{handoff_id} is a {item['kind']}",
                                       handoff_id=handoff_id)
        return ()
    return checked_collectors([Collector.parse(text) for text in given])


def authorise(app: App, item: dict[str, Any], collectors: Sequence[Collector], valid_days: int) -> str:
    """Issue (or find) the visit's authorisation; one line saying so."""
    now = app.clock()
    today = local_date(now, zone(app.pipeline.loaded.schedule.timezone))
    found = issue_authorisation(app.engine, item, collectors, item["claimed_by"] or "dispatcher", now, today,
                                valid_days)
    return (f"visit authorised until {found['valid_until']}: code {shown_code(found['code'])}; print the letter "
            f"with `dispatcher handoffs authorisation {item['id']}`")


def plan_start(app: App, handoff_id: int, outcome: str) -> Decimal | None:
    """For a repayment plan, the work item's account's overdue amount in the source now (None if not there):
    read by id with the source's recheck query (without one, by scanning the source)."""
    if outcome != "repayment_plan":
        return None
    account_id = get_handoff(app.engine, handoff_id)["account_id"]
    source = app.pipeline.source
    if source.can_recheck:
        found = source.fetch([account_id]).get(account_id)
        return found.overdue_amount if isinstance(found, Account) else None
    for batch in source.batches():
        for account in batch.accounts:
            if account.account_id == account_id:
                return account.overdue_amount
    return None
