"""Reading and writing the ledger, always a batch at a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, exists, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account, RejectedRow
from dispatcher.channel_kind import ChannelKind
from dispatcher.errors import LedgerError
from dispatcher.ledger import claims
from dispatcher.ledger.among import rows_among
from dispatcher.ledger.calls import load_calls
from dispatcher.ledger.claims import STILL_PLANNED, AttemptOutcome, insert_ignoring_conflicts
from dispatcher.ledger.handoffs import load_handoff_history
from dispatcher.ledger.tables import attempts, rejects, reminders, suppressions
from dispatcher.ledger.tally import HELD_CLASS
from dispatcher.pipeline.history import (
    CONTACT_STATUSES,
    BatchHistory,
    Contact,
    Deferred,
    Suppression,
    borrower_hashes,
    deferral_note,
)

__all__ = ["AttemptOutcome", "Ledger"]

_HANDOFF = ChannelKind.HANDOFF.value


def _contacts_query(since: datetime) -> Any:
    """The attempts that may be contacts since ``since`` (:func:`_counted_at` tells)."""
    return select(attempts.c.id, attempts.c.account_id, attempts.c.channel, attempts.c.address_hash,
                  attempts.c.attempted_at, attempts.c.borrower_hash, attempts.c.status, attempts.c.try_no,
                  attempts.c.created_at).where(or_(attempts.c.attempted_at >= since, attempts.c.created_at >= since))


def _counted_at(row: Any, own: set[str], since: datetime) -> datetime | None:
    """When a row of :func:`_contacts_query` counts as a contact of a batch whose accounts are ``own``; ``None``:
    it does not."""
    if row.channel == _HANDOFF:  # a hand-off's attempt opens a work item: the person's contact, counted when closed
        return None
    if row.status in CONTACT_STATUSES:  # claimed and in flight: not stamped yet, counted from booking
        at: datetime = row.attempted_at or row.created_at
    elif row.status == "planned" and row.try_no >= 1 and row.account_id not in own:
        at = row.created_at
    else:
        return None
    return at if at >= since else None


def _contact_ids(history: BatchHistory) -> set[int]:
    return {c.attempt_id for contacts in history.by_account.values() for c in contacts}


PENDING_STATUSES = ("planned", "claimed", "sending")
"""An attempt not settled yet: to send, taken by a deliverer, or handed over with its outcome not recorded."""


class Ledger:
    """The ledger on one engine. Every method is one short transaction over a whole batch."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _guard(self, what: str, exc: SQLAlchemyError) -> LedgerError:
        return LedgerError(f"ledger: cannot {what}: {exc}")

    # history ----------------------------------------------------------------------------
    def load_history(self, accounts: Sequence[Account], contacts_since: datetime | None = None) -> BatchHistory:
        """Claims, contacts since ``contacts_since``, active suppressions and the pauses and contacts of
        hand-offs for a batch of accounts."""
        return self._history(accounts, contacts_since, claims=True)

    def load_recheck_history(self, accounts: Sequence[Account]) -> BatchHistory:
        """What the send-time re-check reads for a batch of accounts: active suppressions and the pauses agreed
        at hand-offs (as :meth:`load_history` with no claims and no contacts)."""
        return self._history(accounts, None, claims=False)

    def _history(self, accounts: Sequence[Account], contacts_since: datetime | None, *, claims: bool) -> BatchHistory:
        history = BatchHistory()
        ids = [a.account_id for a in accounts]
        hashes = sorted({h for a in accounts for h in borrower_hashes(a)})
        try:
            with self.engine.connect() as connection:
                if claims:
                    self._load_claims(connection, ids, history)
                if contacts_since is not None:
                    self._load_contacts(connection, ids, hashes, contacts_since, history)
                    load_calls(connection, ids, hashes, contacts_since, history)
                self._load_suppressions(connection, hashes, history)
                load_handoff_history(connection, ids, hashes, contacts_since, history)
        except SQLAlchemyError as exc:
            raise self._guard("read history", exc) from exc
        return history

    def contact_mark(self) -> int | None:
        """Where the attempts booked from now on begin, read before a batch's history (:meth:`booked_since`).

        SQLite: the largest attempt id; its writers take turns, so a row committed later has a larger id. ``None``
        elsewhere: on PostgreSQL a transaction may commit a smaller id after a larger one is visible.
        """
        if self.engine.dialect.name != "sqlite":
            return None
        try:
            with self.engine.connect() as connection:
                return int(connection.execute(select(func.coalesce(func.max(attempts.c.id), 0))).scalar_one())
        except SQLAlchemyError as exc:
            raise self._guard("read contacts", exc) from exc

    def booked_since(self, accounts: Sequence[Account], contacts_since: datetime, history: BatchHistory,
                     mark: int | None) -> bool:
        """Whether the contacts :meth:`load_history` counts for ``accounts`` changed since it read ``history``,
        ``mark`` (:meth:`contact_mark`) having been read before it.

        With a mark only the attempts inserted since are read (a few batches' worth, not the batch's whole
        history): a contact that was booked meanwhile is found; one that has gone meanwhile (it failed) still
        counts for this batch, which leaves the caps erring on the side of not sending. Without a mark the
        batch's contacts are read again and compared.
        """
        seen = _contact_ids(history)
        try:
            with self.engine.connect() as connection:
                if mark is None:
                    again = BatchHistory()
                    hashes = sorted({h for a in accounts for h in borrower_hashes(a)})
                    self._load_contacts(connection, [a.account_id for a in accounts], hashes, contacts_since,
                                        again)
                    return _contact_ids(again) != seen
                rows = connection.execute(_contacts_query(contacts_since).where(attempts.c.id > mark)).all()
        except SQLAlchemyError as exc:
            raise self._guard("read contacts", exc) from exc
        own = {a.account_id for a in accounts}
        linked = own.union(history.by_account)
        digests = {h for a in accounts for h in borrower_hashes(a)}
        return any(row.id not in seen and _counted_at(row, own, contacts_since) is not None
                   and (row.account_id in linked or row.address_hash in digests or row.borrower_hash in digests)
                   for row in rows)

    @staticmethod
    def _load_claims(connection: Connection, ids: Sequence[str], history: BatchHistory) -> None:
        """Claimed tries (latest status per reminder and channel) and deferrals still waiting."""
        query = select(attempts.c.account_id, attempts.c.reminder_key, attempts.c.channel, attempts.c.try_no,
                       attempts.c.status, attempts.c.step, attempts.c.occurrence,
                       attempts.c.rule_id, attempts.c.not_before).order_by(attempts.c.id)
        latest: dict[tuple[str, str, str], int] = {}
        waiting: dict[tuple[str, str, str], Deferred] = {}
        for account_id, key, channel, try_no, status, step, occurrence, rule_id, not_before in rows_among(
                connection, query, attempts.c.account_id, ids):
            if try_no == 0:
                note = deferral_note(rule_id, not_before) if status == "deferred" else rule_id or ""
                history.noted.setdefault(account_id, set()).add((key, channel, note))
                if status == "deferred":
                    waiting[(account_id, key, channel)] = Deferred(key, step, occurrence, channel)
            elif latest.get((account_id, key, channel), 0) < try_no:
                latest[(account_id, key, channel)] = try_no
                history.claims.setdefault(account_id, {})[(key, channel)] = status
        for (account_id, _key, _channel), deferred in waiting.items():
            history.deferred.setdefault(account_id, []).append(deferred)

    @staticmethod
    def _load_contacts(connection: Connection, ids: Sequence[str], hashes: Sequence[str], since: datetime,
                       history: BatchHistory) -> None:
        """Contacts since ``since`` of the batch's accounts and of every account sharing one of their addresses.

        A message booked for another account (``planned``: queued for a worker, or waiting in another batch
        or process of this run) counts from its booking, as it goes out within the run: a later batch of the
        same borrower must not add its own; so does a message claimed and in flight (not stamped yet). The
        batch's own booked messages are planned again by the planner, which counts them as it plans them.
        """
        # the status is checked here, not in SQL: with a long IN list SQLite would otherwise walk the
        # status index over every contact ever made instead of looking the batch's keys up
        query = _contacts_query(since)
        own = set(ids)
        seen: set[int] = set()
        linked: set[str] = set()  # other accounts of the same borrower: they share an address

        def collect(column: Any, values: Sequence[str], or_column: Any = None) -> None:
            for row in rows_among(connection, query, column, values, or_column=or_column):
                if row.id in seen:
                    continue
                at = _counted_at(row, own, since)
                if at is None:
                    continue
                seen.add(row.id)
                linked.add(row.account_id)
                history.add_contact(Contact(row.id, row.account_id, row.channel, row.address_hash, at,
                                            row.borrower_hash))

        collect(attempts.c.account_id, ids)
        collect(attempts.c.address_hash, hashes, attempts.c.borrower_hash)  # one statement: each row read once
        collect(attempts.c.account_id, sorted(linked - set(ids)))

    @staticmethod
    def _load_suppressions(connection: Connection, hashes: Sequence[str], history: BatchHistory) -> None:
        query = select(suppressions.c.channel, suppressions.c.address_hash, suppressions.c.source,
                       suppressions.c.created_at).where(suppressions.c.lifted_at.is_(None))
        for row in rows_among(connection, query, suppressions.c.address_hash, hashes):
            history.suppressions[(row.channel, row.address_hash)] = Suppression(
                row.channel, row.address_hash, row.source, row.created_at)

    # writes -----------------------------------------------------------------------------
    def record_reminders(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert reminders (key, account_id, due_date, step, occurrence, run_id, created_at) once each."""
        if rows:
            self._execute("record reminders", insert_ignoring_conflicts(self.engine.dialect.name, reminders), rows)

    def book(self, rows: Sequence[Mapping[str, Any]], reminder_rows: Sequence[Mapping[str, Any]] = (),
             decision_rows: Sequence[Mapping[str, Any]] = ()) -> dict[tuple[str, str], tuple[int, int]]:
        """Insert first tries (``planned`` or ``suppressed``) unless they exist, in one transaction with
        their ``reminder_rows`` (as :meth:`record_reminders`) and ``decision_rows`` (as :meth:`record_decisions`).

        Returns (reminder_key, channel) → (attempt id, try number) of every ``planned``
        try of these reminders, including ones an interrupted earlier run booked but
        never claimed (or a next try it left for later): nothing went out for those,
        so they are delivered now.
        """
        if not rows:
            self.record_reminders(reminder_rows)
            self.record_decisions(decision_rows)
            return {}
        # the status is checked here, not in SQL: SQLite would otherwise walk every planned attempt in the
        # status index instead of looking the reminders up in the claim index (which holds tries 1 and up)
        query = select(attempts.c.id, attempts.c.reminder_key, attempts.c.channel, attempts.c.try_no,
                       attempts.c.status).where(attempts.c.try_no >= 1)
        try:
            with self.engine.begin() as connection:
                new_attempts = claims.insert_new(connection, attempts, rows,
                                                 ("id", "reminder_key", "channel", "status"))
                new_reminders = claims.insert_new(connection, reminders, reminder_rows)
                decided = claims.insert_new(connection, attempts, decision_rows, ignore_conflicts=False)
                inserted = new_attempts.run(connection)
                new_reminders.run(connection)
                decided.run(connection)
                found = {(key, channel): (int(row_id), 1) for row_id, key, channel, status in inserted
                         if status == "planned"}
                done = {(key, channel) for _id, key, channel, _status in inserted}
                wanted = {(r["reminder_key"], r["channel"]): r for r in rows if r["status"] == "planned"}
                existing = sorted({key for key, channel in wanted if (key, channel) not in done})
                refreshed: list[dict[str, Any]] = []
                for row in rows_among(connection, query, attempts.c.reminder_key, existing):
                    if row.status != "planned":
                        continue
                    found[(row.reminder_key, row.channel)] = (int(row.id), int(row.try_no))
                    given = wanted.get((row.reminder_key, row.channel))
                    if given is not None:  # booked again: this run's address and run
                        refreshed.append({"b_id": row.id, "b_address": given["address"],
                                          "b_hash": given["address_hash"], "b_run": given["run_id"]})
                if refreshed:  # booked again for this run: no longer deferred (rule_id) by the one before
                    connection.execute(
                        update(attempts).where(attempts.c.id == bindparam("b_id"), attempts.c.status == "planned")
                        .values(address=bindparam("b_address"), address_hash=bindparam("b_hash"),
                                run_id=bindparam("b_run"), rule_id=None), refreshed)
                # refused now (suppressed at planning) but booked, unsent, by an interrupted run: the refusal
                # takes that claim, as it would have taken a fresh one
                refused = [{"b_key": r["reminder_key"], "b_channel": r["channel"], "b_rule": r["rule_id"],
                            "b_detail": r["detail"], "b_run": r["run_id"], "b_now": r["updated_at"]}
                           for r in rows if r["status"] == "suppressed" and r["try_no"] >= 1
                           and (r["reminder_key"], r["channel"]) not in done]
                if refused:
                    connection.execute(
                        update(attempts).where(attempts.c.reminder_key == bindparam("b_key"),
                                               attempts.c.channel == bindparam("b_channel"),
                                               attempts.c.try_no >= 1, STILL_PLANNED)
                        .values(status="suppressed", rule_id=bindparam("b_rule"), detail=bindparam("b_detail"),
                                run_id=bindparam("b_run"), updated_at=bindparam("b_now")), refused)
        except SQLAlchemyError as exc:
            raise self._guard("book attempts", exc) from exc
        return found

    def defer_claims(self, deferred: Sequence[tuple[str, str, str | None]], run_id: int | None,
                     now: datetime) -> None:
        """Booked, unsent tries (``planned``) that planning deferred again: they carry the rule and this run, as a
        try given back at send time does, and wait for a later run instead of a deliverer."""
        if not deferred:
            return
        statement = (update(attempts)
                     .where(attempts.c.reminder_key == bindparam("b_key"), attempts.c.channel == bindparam("b_channel"),
                            attempts.c.try_no >= 1, STILL_PLANNED)
                     .values(rule_id=bindparam("b_rule"), run_id=bindparam("b_run"), updated_at=bindparam("b_now")))
        self._execute("defer booked attempts", statement,
                      [{"b_key": key, "b_channel": channel, "b_rule": rule_id, "b_run": run_id, "b_now": now}
                       for key, channel, rule_id in deferred])

    def supersede(self, waiting: Sequence[tuple[str, str, str]]) -> None:
        """Booked but unsent attempts replaced by a newer reminder: ``planned → suppressed (superseded)``."""
        if not waiting:
            return
        statement = (update(attempts)
                     .where(attempts.c.reminder_key == bindparam("b_key"), attempts.c.channel == bindparam("b_channel"),
                            attempts.c.try_no >= 1, STILL_PLANNED)
                     .values(status="suppressed", rule_id="superseded", detail=bindparam("b_detail")))
        params = [{"b_key": key, "b_channel": channel, "b_detail": f"booked, then replaced by {newer}"}
                  for key, channel, newer in waiting]
        self._execute("supersede attempts", statement, params)

    def start_sending(self, attempt_ids: Sequence[int], now: datetime) -> set[int]:
        """Claim and hand over at once (``planned → sending``): for tools and tests that act as a sender."""
        try:
            with self.engine.begin() as connection:
                claimed = claims.claim(connection, attempt_ids, now)
                return claims.hand_over(connection, sorted(claimed), now)
        except SQLAlchemyError as exc:
            raise self._guard("claim attempts", exc) from exc

    def record_decisions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows that do not claim (try 0: deferrals)."""
        if rows:
            self._execute("record decisions", attempts.insert(), rows)

    def finish_attempts(self, outcomes: Sequence[AttemptOutcome], now: datetime) -> None:
        """Write the providers' answers for a batch of tries."""
        try:
            with self.engine.begin() as connection:
                claims.write_outcomes(connection, outcomes, now)
        except SQLAlchemyError as exc:
            raise self._guard("record outcomes", exc) from exc

    def record_rejects(self, run_id: int | None, rows: Sequence[RejectedRow], now: datetime) -> None:
        if rows:
            params = [{"run_id": run_id, "account_id": r.account_id, "field": r.field, "reason": r.reason,
                       "created_at": now} for r in rows]
            self._execute("record rejected rows", rejects.insert(), params)

    def next_deferral(self, now: datetime, horizon: timedelta) -> datetime | None:
        """The earliest moment after ``now`` at which a recently deferred reminder may go out."""
        query = select(func.min(attempts.c.not_before)).where(
            attempts.c.try_no == 0, attempts.c.status == "deferred", attempts.c.not_before > now,
            attempts.c.created_at > now - horizon)
        with self.engine.connect() as connection:
            found = connection.execute(query).scalar_one()  # min() keeps the column type: an aware datetime
        return found if isinstance(found, datetime) else None

    def has_provider_id(self, provider_message_id: str) -> bool:
        """Whether an attempt already records this provider message id."""
        query = select(attempts.c.id).where(attempts.c.provider_message_id == provider_message_id).limit(1)
        with self.engine.connect() as connection:
            return connection.execute(query).first() is not None

    def pending_count(self, run_id: int) -> int:
        """The run's attempts still to settle: ``planned``, ``claimed`` or ``sending``, except the held ones
        (a template that fails: they wait for a valid edit, not for a worker) and those deferred at send (given
        back with the rule that deferred them, e.g. a window that closed meanwhile: they wait for a later run)."""
        query = select(func.count()).select_from(attempts).where(
            attempts.c.run_id == run_id, attempts.c.status.in_(PENDING_STATUSES),
            (attempts.c.error_class.is_(None)) | (attempts.c.error_class != HELD_CLASS),
            (attempts.c.status != "planned") | attempts.c.rule_id.is_(None))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def planned_ids(self, run_id: int) -> list[int]:
        """The run's attempts waiting for a deliverer (``planned``, neither held nor deferred at send), oldest
        first."""
        query = select(attempts.c.id).where(
            attempts.c.run_id == run_id, attempts.c.status == "planned", attempts.c.try_no >= 1,
            (attempts.c.error_class.is_(None)) | (attempts.c.error_class != HELD_CLASS),
            attempts.c.rule_id.is_(None)).order_by(attempts.c.id)
        with self.engine.connect() as connection:
            return [int(i) for i in connection.execute(query).scalars()]

    def status_counts(self, run_id: int) -> dict[str, int]:
        """The run's attempts by status (the final tries: failed tries that were retried are left out)."""
        later = attempts.alias("later")
        retried = exists().where(later.c.reminder_key == attempts.c.reminder_key,  # try_no >= 1: the claim index
                                 later.c.channel == attempts.c.channel, later.c.try_no >= 1,
                                 later.c.try_no > attempts.c.try_no)
        query = (select(attempts.c.status, func.count())
                 .where(attempts.c.run_id == run_id, ~(retried & (attempts.c.try_no >= 1)))
                 .group_by(attempts.c.status))
        with self.engine.connect() as connection:
            return {status: int(count) for status, count in connection.execute(query)}

    def _execute(self, what: str, statement: Any, params: Sequence[Mapping[str, Any]]) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(statement, list(params))
        except SQLAlchemyError as exc:
            raise self._guard(what, exc) from exc
