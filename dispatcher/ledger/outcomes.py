"""Outcomes: which reminded delinquencies were cured, and when.

A delinquency is one (account, due date). Its row is opened when a run books the
first reminder of it, with the balance read then. Later runs write to it only when
something changed (compact: an account read again with the same balance costs a read,
never a write):

* a different balance → ``last_balance`` (with ``last_seen_at`` and ``last_run_id``);
* a balance ≤ 0 → cured ``zero_balance``;
* the account read with another due date → the old delinquency cured ``left_overdue``;
* a run that read the whole source without finding the account → cured ``left_overdue``,
  set-wise at the end of the run (:meth:`CureTracker.finish`); a run that failed, was
  stopped or read only part of the source never calls it;
* a hand-off closed ``paid`` → cured ``paid`` (:func:`cure_paid`).

An account found overdue again for the same due date after a ``zero_balance`` or
``left_overdue`` cure is reopened (the cure did not hold); a ``paid`` cure stands (an
agent's word: the lender's source may lag a day behind).
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account
from dispatcher.errors import LedgerError
from dispatcher.ledger.claims import STILL_PLANNED, chunks, insert_new
from dispatcher.ledger.seen import AccountSet
from dispatcher.ledger.tables import attempts, delinquencies
from dispatcher.records import record

log = logging.getLogger(__name__)

CURES = ("zero_balance", "left_overdue", "paid")
"""How a delinquency ends."""

REOPENABLE = ("zero_balance", "left_overdue")
"""Cures that a later read of the same delinquency, still overdue, takes back."""


@record
class _Row:
    id: int
    account_id: str
    due_date: date
    last_balance: Decimal
    cure: str | None


@dataclass(slots=True)
class _Changes:
    """One batch's writes, made in one transaction."""

    opened: list[dict[str, Any]]
    balances: list[dict[str, Any]]
    cured: list[dict[str, Any]]
    reopened: list[dict[str, Any]]


class CureTracker:
    """One run's view of the delinquencies: fed each batch it reads, finished once it read them all."""

    def __init__(self, engine: Engine, run_id: int | None, started: datetime) -> None:
        self.engine = engine
        self.run_id = run_id
        self.started = started
        self._seen = AccountSet()  # accounts read in this run that have (or now got) an open delinquency
        self._read = False  # any row read at all

    def observe(self, accounts: Sequence[Account], reminded: Collection[str], now: datetime,
                unread: Iterable[str] = ()) -> None:
        """Record a batch: ``reminded`` are the ids whose reminder is booked (now or before), ``unread`` the ids of
        rows rejected as bad data (still overdue: never cured for not being read)."""
        unread = list(unread)
        self._seen.update(unread)
        self._read = self._read or bool(accounts) or bool(unread)
        if not accounts:
            return
        try:
            with self.engine.begin() as connection:
                rows = _rows_of(connection, [a.account_id for a in accounts])
                changes = _Changes([], [], [], [])
                for account in accounts:
                    self._account(account, rows.get(account.account_id, []), account.account_id in reminded,
                                  now, changes)
                self._write(connection, changes)
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot record balances: {exc}") from exc

    def absorb(self, seen: Iterable[int], read: bool) -> None:
        """Add what another process of this run observed over its key range (its :meth:`seen` and ``read``)."""
        self._seen.absorb(seen)
        self._read = self._read or read

    def seen(self) -> array[int]:
        """The fingerprints of the accounts observed so far (what :meth:`finish` leaves open): what a key range
        reports to its run (:class:`~dispatcher.ledger.seen.AccountSet`)."""
        return self._seen.fingerprints()

    @property
    def read(self) -> bool:
        return self._read

    def finish(self, now: datetime) -> int:
        """Cure ``left_overdue`` every open delinquency, opened before this run, whose account it did not read.

        Call only when the run read the whole source; returns how many were cured. A run that read no row at all
        cures no one: an empty source is more often a broken query or export than every borrower paying at once."""
        if not self._read:
            log.warning("run #%s read no account: no delinquency is marked cured for leaving the source", self.run_id)
            return 0
        query = select(delinquencies.c.id, delinquencies.c.account_id).where(
            delinquencies.c.cured_at.is_(None), delinquencies.c.first_reminded_at < self.started)
        statement = (update(delinquencies).where(delinquencies.c.id.in_(bindparam("ids", expanding=True)),
                                                 delinquencies.c.cured_at.is_(None))
                     .values(cured_at=now, cure="left_overdue"))
        # what an interrupted run booked for them and never sent will not be sent: recorded as the send-time
        # check records it, not left planned with no reason
        release = (update(attempts).where(attempts.c.account_id == bindparam("b_account"), attempts.c.try_no >= 1,
                                          STILL_PLANNED, attempts.c.created_at < self.started)
                   .values(status="suppressed", rule_id="paid", updated_at=now,
                           detail="booked, then the account left the overdue source before it was sent"))
        try:
            with self.engine.begin() as connection:
                rows = connection.execute(query, execution_options={"yield_per": 10_000})  # a server-side cursor
                gone = [(int(row.id), str(row.account_id)) for row in rows if row.account_id not in self._seen]
                for chunk in chunks(gone):
                    connection.execute(statement, {"ids": [row_id for row_id, _ in chunk]})
                    connection.execute(release, [{"b_account": account_id} for account_id in
                                                 sorted({account_id for _, account_id in chunk})])
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger: cannot record cures: {exc}") from exc
        return len(gone)

    def _account(self, account: Account, rows: list[_Row], reminded: bool, now: datetime,
                 changes: _Changes) -> None:
        balance = account.overdue_amount
        same = None
        for row in rows:
            if row.due_date == account.due_date:
                same = row
            elif row.cure is None:  # another due date now: that delinquency is over
                changes.cured.append({"b_id": row.id, "b_at": now, "b_cure": "left_overdue"})
        if account.settled:
            if same is not None and same.cure is None:
                changes.cured.append({"b_id": same.id, "b_at": now, "b_cure": "zero_balance"})
                self._balance(same, balance, now, changes)
            return
        if same is None:
            if reminded:
                self._seen.add(account.account_id)
                changes.opened.append({
                    "account_id": account.account_id, "due_date": account.due_date, "currency": account.currency,
                    "first_balance": str(balance), "last_balance": str(balance), "first_reminded_at": now,
                    "last_seen_at": now, "last_run_id": self.run_id})
            return
        if same.cure is None or same.cure in REOPENABLE:
            self._seen.add(account.account_id)
            if same.cure is not None:
                changes.reopened.append({"b_id": same.id})
            self._balance(same, balance, now, changes)

    def _balance(self, row: _Row, balance: Decimal, now: datetime, changes: _Changes) -> None:
        if balance != row.last_balance:
            changes.balances.append({"b_id": row.id, "b_balance": str(balance), "b_at": now, "b_run": self.run_id})

    def _write(self, connection: Connection, changes: _Changes) -> None:
        by_id = delinquencies.c.id == bindparam("b_id")
        if changes.opened:  # written for the driver: SQLAlchemy's bind processors cost more than the insert
            insert_new(connection, delinquencies, changes.opened).run(connection)
        if changes.reopened:
            connection.execute(update(delinquencies).where(by_id).values(cured_at=None, cure=None), changes.reopened)
        if changes.balances:
            connection.execute(update(delinquencies).where(by_id).values(
                last_balance=bindparam("b_balance"), last_seen_at=bindparam("b_at"),
                last_run_id=bindparam("b_run")), changes.balances)
        if changes.cured:
            connection.execute(update(delinquencies).where(by_id, delinquencies.c.cured_at.is_(None)).values(
                cured_at=bindparam("b_at"), cure=bindparam("b_cure")), changes.cured)


def _rows_of(connection: Connection, ids: Sequence[str]) -> dict[str, list[_Row]]:
    """The delinquencies of these accounts that a read may change: open ones and reopenable cures."""
    table = delinquencies.c
    query = select(table.id, table.account_id, table.due_date, table.last_balance, table.cure).where(
        (table.cured_at.is_(None)) | (table.cure.in_(REOPENABLE)))
    found: dict[str, list[_Row]] = {}
    for chunk in chunks(sorted(set(ids))):
        for row in connection.execute(query.where(table.account_id.in_(chunk))):
            found.setdefault(row.account_id, []).append(
                _Row(int(row.id), row.account_id, row.due_date, Decimal(row.last_balance), row.cure))
    return found


def cure_paid(connection: Connection, account_id: str, due_date: date | None, now: datetime) -> int:
    """A hand-off closed ``paid``: cure that delinquency (every open one of the account when its due date is not
    known), in the caller's transaction. Returns how many were cured."""
    where = [delinquencies.c.account_id == account_id, delinquencies.c.cured_at.is_(None)]
    if due_date is not None:
        where.append(delinquencies.c.due_date == due_date)
    done = connection.execute(update(delinquencies).where(and_(*where)).values(cured_at=now, cure="paid"))
    return int(done.rowcount or 0)
