"""Delivery jobs rebuilt from attempt ids: the ledger's row and the account re-read from the source.

A Celery task carries attempt ids only (and the configuration version), never a
borrower's name, number, address or amount: the worker reads the attempt from
the ledger and the account from the lender's database just before sending. An
attempt whose account left the overdue source is suppressed (``paid``), one
whose row no longer passes the account contract is suppressed (``bad-data``),
each by a conditional update that only moves a ``planned`` attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account, RejectedRow
from dispatcher.channel_kind import ChannelKind
from dispatcher.errors import LedgerError
from dispatcher.ladder import days_overdue, local_date
from dispatcher.ledger.claims import chunks
from dispatcher.ledger.tables import attempts
from dispatcher.masking import address_hash
from dispatcher.pipeline.jobs import DeliveryJob
from dispatcher.pipeline.plan import address_for
from dispatcher.pipeline.source import AccountSource
from dispatcher.schedule.models import Schedule
from dispatcher.zones import home_zone


@dataclass
class LoadedJobs:
    """Jobs ready to deliver, the accounts just re-read for them, and how many attempts were settled here."""

    jobs: list[DeliveryJob] = field(default_factory=list)
    accounts: dict[str, Account | RejectedRow] = field(default_factory=dict)
    gone: int = 0
    not_planned: int = 0


class JobLoader:
    """Turns ``planned`` attempt ids into delivery jobs."""

    def __init__(self, engine: Engine, source: AccountSource, schedule: Schedule) -> None:
        self.engine = engine
        self.source = source
        self.schedule = schedule

    def load(self, attempt_ids: Sequence[int], now: datetime) -> LoadedJobs:
        """The jobs of the ``planned`` attempts among ``attempt_ids`` (the others are someone else's)."""
        rows = self._rows(attempt_ids)
        loaded = LoadedJobs(not_planned=len(attempt_ids) - len(rows))
        if not rows:
            return loaded
        loaded.accounts = self.source.fetch(sorted({row["account_id"] for row in rows}))
        gone: list[dict[str, Any]] = []
        for row in rows:
            account = loaded.accounts.get(row["account_id"])
            if isinstance(account, Account):
                loaded.jobs.append(self.job(row, account, now))
            elif isinstance(account, RejectedRow):
                gone.append(_gone(row, "bad-data", f"re-read before sending: {account.field}: {account.reason}", now))
            else:
                gone.append(_gone(row, "paid", "the account is no longer in the overdue source", now))
        loaded.gone = self._suppress(gone)
        return loaded

    def _rows(self, attempt_ids: Sequence[int]) -> list[dict[str, Any]]:
        query = select(attempts.c.id, attempts.c.reminder_key, attempts.c.account_id, attempts.c.step,
                       attempts.c.occurrence, attempts.c.channel, attempts.c.try_no, attempts.c.parent_id,
                       attempts.c.run_id, attempts.c.address_hash)
        found: list[dict[str, Any]] = []
        try:
            with self.engine.connect() as connection:
                for chunk in chunks(sorted(set(attempt_ids))):
                    found.extend(dict(row) for row in connection.execute(
                        query.where(attempts.c.id.in_(chunk), attempts.c.status == "planned")).mappings())
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot read attempts to deliver: {exc}") from exc
        return found

    def job(self, row: dict[str, Any], account: Account, now: datetime) -> DeliveryJob:
        """The job of attempt ``row`` (its ledger columns) for ``account`` as re-read at ``now``."""
        channel = ChannelKind(row["channel"])
        today = local_date(now, home_zone(account, self.schedule.timezone))
        address = address_for(account, channel) or ""
        return DeliveryJob(
            attempt_id=int(row["id"]), try_no=int(row["try_no"]), reminder_key=row["reminder_key"],
            account=account, step=row["step"], occurrence=int(row["occurrence"]),
            days_overdue=days_overdue(account.due_date, today), local_today=today, channel=channel,
            address=address, fallbacks=self._fallbacks(row["step"], channel), parent_id=row["parent_id"],
            run_id=row["run_id"],
            planned_address_hash=row["address_hash"] if address_hash(address) != row["address_hash"] else None,
        )

    def _fallbacks(self, step_name: str, channel: ChannelKind) -> tuple[ChannelKind, ...]:
        step = self.schedule.step_named(step_name)
        if step is None or not step.fallback or channel not in step.channels:
            return ()
        return tuple(step.channels[step.channels.index(channel) + 1 :])

    def _suppress(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        statement = (update(attempts).where(attempts.c.id == bindparam("b_id"), attempts.c.status == "planned")
                     .values(status="suppressed", rule_id=bindparam("b_rule"), detail=bindparam("b_detail"),
                             updated_at=bindparam("b_now")))
        try:
            with self.engine.begin() as connection:
                connection.execute(statement, rows)
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot record attempts whose account is gone: {exc}") from exc
        return len(rows)


def _gone(row: dict[str, Any], rule_id: str, detail: str, now: datetime) -> dict[str, Any]:
    return {"b_id": row["id"], "b_rule": rule_id, "b_detail": detail, "b_now": now}
