"""Operators' retries: chosen failed or unknown attempts booked again as new, linked tries.

A retry is a new try of the same reminder and channel (``try_no`` one higher,
``parent_id`` the attempt retried), booked ``planned`` and delivered like any
other, with the send-time re-check, only when the rules allow it now: the
account is re-read (paid, paused, moved address), and opt-outs, dead addresses,
the contact window, holidays and caps are checked at this moment. Every chosen
attempt gets one line saying what was done with it, or why it was held back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, exists, select
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account
from dispatcher.errors import LedgerError
from dispatcher.ledger.claims import insert_try
from dispatcher.ledger.tables import attempts
from dispatcher.masking import address_hash, mask_address
from dispatcher.pipeline.job_loader import JobLoader
from dispatcher.send_check import SendCheck
from dispatcher.states import RETRY_LIMIT


@dataclass(frozen=True)
class RetryChoice:
    """Which final tries to retry."""

    statuses: tuple[str, ...] = ("failed",)
    run_id: int | None = None
    account_id: str | None = None
    since: datetime | None = None
    limit: int = RETRY_LIMIT


@dataclass(frozen=True, slots=True)
class RetryLine:
    """What was done with one chosen attempt: ``booked`` (as ``new_id``), ``would send`` or ``held``."""

    attempt_id: int
    account_id: str
    channel: str
    status: str
    error_code: str | None
    action: str
    reason: str = ""
    new_id: int | None = None


class Retrier:
    """Chooses attempts, re-checks them now, and books the allowed ones as new tries."""

    def __init__(self, engine: Engine, loader: JobLoader, check: SendCheck, run_id: int | None) -> None:
        self.engine = engine
        self.loader = loader
        self.check = check
        self.run_id = run_id

    def choose(self, choice: RetryChoice) -> list[dict[str, Any]]:
        """The latest try of each reminder and channel whose status is among ``choice.statuses``."""
        later = attempts.alias("later")
        newer = exists().where(later.c.reminder_key == attempts.c.reminder_key, later.c.channel == attempts.c.channel,
                               later.c.try_no > attempts.c.try_no)
        query = select(attempts).where(attempts.c.status.in_(choice.statuses), attempts.c.try_no >= 1, ~newer)
        if choice.run_id is not None:
            query = query.where(attempts.c.run_id == choice.run_id)
        if choice.account_id is not None:
            query = query.where(attempts.c.account_id == choice.account_id)
        if choice.since is not None:
            query = query.where(attempts.c.created_at >= choice.since)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query.order_by(attempts.c.id).limit(choice.limit))
                    .mappings()]

    def retry(self, rows: Sequence[dict[str, Any]], now: datetime, *, dry_run: bool) -> list[RetryLine]:
        """Re-check each row now; book the allowed ones (unless ``dry_run``)."""
        fresh = self.loader.source.fetch(sorted({row["account_id"] for row in rows})) if rows else {}
        accounts = {key: value for key, value in fresh.items() if isinstance(value, Account)}
        jobs = {row["id"]: self.loader.job(row, accounts[row["account_id"]], now)
                for row in rows if row["account_id"] in accounts}
        facts = self.check.facts(list(jobs.values()), now, fresh) if jobs else None
        lines: list[RetryLine] = []
        for row in rows:
            job = jobs.get(row["id"])
            if job is None or facts is None:
                lines.append(_line(row, "held", "paid: the account is no longer in the overdue source"))
                continue
            block = self.check.check(job, job.channel, job.address, facts, now, fallback=True)
            if block is not None:
                when = f" (may go from {block.not_before.isoformat()})" if block.not_before else ""
                lines.append(_line(row, "held", f"{block.rule_id}: {block.detail}{when}"))
            elif dry_run:
                lines.append(_line(row, "would send", f"to {mask_address(job.channel.value, job.address)}"))
            else:
                lines.append(self._book(row, job.address, now))
        return lines

    def _book(self, row: dict[str, Any], address: str, now: datetime) -> RetryLine:
        new = {
            "reminder_key": row["reminder_key"], "account_id": row["account_id"], "step": row["step"],
            "occurrence": row["occurrence"], "channel": row["channel"], "try_no": row["try_no"] + 1,
            "status": "planned", "address": mask_address(row["channel"], address),
            "address_hash": address_hash(address), "borrower_hash": row["borrower_hash"], "parent_id": row["id"],
            "run_id": self.run_id, "detail": f"retry of attempt {row['id']} by an operator",
            "created_at": now, "updated_at": now,
        }
        try:
            with self.engine.begin() as connection:
                new_id = insert_try(connection, new)
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot book the retry of attempt {row['id']}: {exc}") from exc
        if new_id is None:
            return _line(row, "held", "a newer try of this reminder and channel exists already")
        return _line(row, "booked", f"as attempt {new_id}, try {row['try_no'] + 1}", new_id)


def _line(row: dict[str, Any], action: str, reason: str, new_id: int | None = None) -> RetryLine:
    return RetryLine(row["id"], row["account_id"], row["channel"], row["status"], row["error_code"], action, reason,
                     new_id)
