"""Planning without sending: every account's decision at a moment, and what an edit changes.

``dispatcher plan`` and ``dispatcher diff`` print these; the daemon logs the totals
of :func:`changes_between` when it loads an edit. Both read the ledger's history and
write nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import datetime

from dispatcher.app import App, Pipeline
from dispatcher.decisions import Decision
from dispatcher.ledger.database import current_revision
from dispatcher.pipeline.history import BatchHistory
from dispatcher.pipeline.plan import rejected
from dispatcher.schedule.diff import AccountChange, diff


def decisions_at(app: App, now: datetime, account_id: str | None = None) -> Iterator[Decision]:
    """Every account's decision at ``now``, batch by batch, reading the ledger but writing nothing."""
    pipeline = app.pipeline
    has_ledger = current_revision(app.engine) is not None
    for batch in pipeline.source.batches():
        accounts = [a for a in batch.accounts if account_id in (None, a.account_id)]
        history = (app.ledger.load_history(accounts, pipeline.policy.contacts_since(now))
                   if has_ledger and accounts else BatchHistory())
        yield from (rejected(r) for r in batch.rejects if account_id in (None, r.account_id))
        yield from pipeline.planner.plan(accounts, history, now)


def changes_between(app: App, old: Pipeline, new: Pipeline, at: datetime,
                    on_decision: Callable[[], None] = lambda: None) -> Iterator[AccountChange]:
    """The changes from ``old`` to ``new``, both planned at ``at`` over ``new``'s accounts; writes nothing."""

    def counted(decisions: Iterable[Decision]) -> Iterator[Decision]:
        for decision in decisions:
            on_decision()
            yield decision

    same_accounts = replace(old, source=new.source)
    return diff(counted(decisions_at(replace(app, pipeline=same_accounts), at)),
                counted(decisions_at(replace(app, pipeline=new), at)), at)
