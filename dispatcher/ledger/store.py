"""Reading and writing the ledger, always a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Insert, Table, bindparam, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.accounts import Account, RejectedRow
from dispatcher.channels.base import ChannelKind
from dispatcher.errors import LedgerError
from dispatcher.history import (
    CONTACT_STATUSES,
    BatchHistory,
    Contact,
    Deferred,
    Suppression,
    borrower_hashes,
    borrower_key,
    deferral_note,
)
from dispatcher.jobs import DeliveryJob
from dispatcher.ledger.callbacks import apply_parked
from dispatcher.ledger.tables import attempts, early_callbacks, rejects, reminders, suppressions
from dispatcher.masking import address_hash, mask_address

_IN_CHUNK = 500
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The final facts of one try, written after the provider answered."""

    attempt_id: int
    status: str
    provider_message_id: str | None = None
    error_code: str | None = None
    error_class: str | None = None
    error_message: str | None = None
    template: str | None = None
    template_version: str | None = None
    content_hash: str | None = None
    provider: str | None = None
    rule_id: str | None = None
    detail: str | None = None
    duration_ms: int | None = None


def _plain_send(outcome: AttemptOutcome) -> bool:
    """A try the provider accepted, with every fact of the send and nothing else (nearly all of them)."""
    nothing_else = (outcome.error_code, outcome.error_class, outcome.error_message, outcome.rule_id, outcome.detail)
    every_fact = (outcome.template, outcome.template_version, outcome.content_hash, outcome.provider,
                  outcome.duration_ms)
    return outcome.status == "sent" and all(v is None for v in nothing_else) and None not in every_fact


_SENT = (update(attempts).where(attempts.c.id == bindparam("b_id"))
         .values(status="sent", provider_message_id=bindparam("b_pmid"), updated_at=bindparam("b_now"),
                 template=bindparam("b_template"), template_version=bindparam("b_version"),
                 content_hash=bindparam("b_hash"), provider=bindparam("b_provider"), duration_ms=bindparam("b_ms")))
"""The outcome of a plain send: a third fewer parameters than the general update, and no ``COALESCE``."""


def _insert_ignoring_conflicts(engine: Engine, table: Table) -> Insert:
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return postgresql.insert(table).on_conflict_do_nothing()


def _chunks(items: Sequence[_T], size: int = _IN_CHUNK) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Ledger:
    """The ledger on one engine. Every method is one short transaction over a whole batch."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _guard(self, what: str, exc: SQLAlchemyError) -> LedgerError:
        return LedgerError(f"ledger: cannot {what}: {exc}")

    # history ----------------------------------------------------------------------------
    def load_history(self, accounts: Sequence[Account], contacts_since: datetime | None = None) -> BatchHistory:
        """Claims, contacts since ``contacts_since`` and active suppressions for a batch of accounts."""
        history = BatchHistory()
        ids = [a.account_id for a in accounts]
        hashes = sorted({h for a in accounts for h in borrower_hashes(a)})
        try:
            with self.engine.connect() as connection:
                self._load_claims(connection, ids, history)
                if contacts_since is not None:
                    self._load_contacts(connection, ids, hashes, contacts_since, history)
                self._load_suppressions(connection, hashes, history)
        except SQLAlchemyError as exc:
            raise self._guard("read history", exc) from exc
        return history

    @staticmethod
    def _load_claims(connection: Connection, ids: Sequence[str], history: BatchHistory) -> None:
        """Claimed tries (latest status per reminder and channel) and deferrals still waiting."""
        query = select(attempts.c.account_id, attempts.c.reminder_key, attempts.c.channel, attempts.c.try_no,
                       attempts.c.status, attempts.c.step, attempts.c.occurrence,
                       attempts.c.rule_id, attempts.c.not_before).order_by(attempts.c.id)
        latest: dict[tuple[str, str, str], int] = {}
        waiting: dict[tuple[str, str, str], Deferred] = {}
        for chunk in _chunks(ids):
            for account_id, key, channel, try_no, status, step, occurrence, rule_id, not_before in connection.execute(
                    query.where(attempts.c.account_id.in_(chunk))):
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
        # the status is checked here, not in SQL: with a long IN list SQLite would otherwise walk the
        # status index over every contact ever made instead of looking the batch's keys up
        query = select(attempts.c.id, attempts.c.account_id, attempts.c.channel, attempts.c.address_hash,
                       attempts.c.attempted_at, attempts.c.borrower_hash, attempts.c.status).where(
            attempts.c.attempted_at >= since)
        seen: set[int] = set()
        linked: set[str] = set()  # other accounts of the same borrower: they share an address

        def collect(column: Any, values: Sequence[str]) -> None:
            for chunk in _chunks(values):
                for row in connection.execute(query.where(column.in_(chunk))):
                    if row.id not in seen and row.status in CONTACT_STATUSES:
                        seen.add(row.id)
                        linked.add(row.account_id)
                        history.add_contact(Contact(row.id, row.account_id, row.channel, row.address_hash,
                                                    row.attempted_at, row.borrower_hash))

        collect(attempts.c.account_id, ids)
        collect(attempts.c.address_hash, hashes)
        collect(attempts.c.borrower_hash, hashes)
        collect(attempts.c.account_id, sorted(linked - set(ids)))

    @staticmethod
    def _load_suppressions(connection: Connection, hashes: Sequence[str], history: BatchHistory) -> None:
        query = select(suppressions.c.channel, suppressions.c.address_hash, suppressions.c.source,
                       suppressions.c.created_at).where(suppressions.c.lifted_at.is_(None))
        for chunk in _chunks(hashes):
            for row in connection.execute(query.where(suppressions.c.address_hash.in_(chunk))):
                history.suppressions[(row.channel, row.address_hash)] = Suppression(
                    row.channel, row.address_hash, row.source, row.created_at)

    # writes -----------------------------------------------------------------------------
    def record_reminders(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert reminders (key, account_id, due_date, step, occurrence, run_id, created_at) once each."""
        if rows:
            self._execute("record reminders", _insert_ignoring_conflicts(self.engine, reminders), rows)

    def book(self, rows: Sequence[Mapping[str, Any]],
             reminder_rows: Sequence[Mapping[str, Any]] = ()) -> dict[tuple[str, str], tuple[int, int]]:
        """Insert first tries (``planned`` or ``suppressed``) unless they exist, in one transaction with
        their ``reminder_rows`` (as :meth:`record_reminders`).

        Returns (reminder_key, channel) → (attempt id, try number) of every ``planned``
        try of these reminders, including ones an interrupted earlier run booked but
        never claimed (or a next try it left for later): nothing went out for those,
        so they are delivered now.
        """
        if not rows:
            self.record_reminders(reminder_rows)
            return {}
        insert = _insert_ignoring_conflicts(self.engine, attempts).returning(
            attempts.c.id, attempts.c.reminder_key, attempts.c.channel, attempts.c.status)
        query = select(attempts.c.id, attempts.c.reminder_key, attempts.c.channel, attempts.c.try_no).where(
            attempts.c.try_no >= 1, attempts.c.status == "planned")
        try:
            with self.engine.begin() as connection:
                if reminder_rows:
                    connection.execute(_insert_ignoring_conflicts(self.engine, reminders), list(reminder_rows))
                inserted = connection.execute(insert, list(rows)).all()
                found = {(r.reminder_key, r.channel): (int(r.id), 1) for r in inserted if r.status == "planned"}
                done = {(r.reminder_key, r.channel) for r in inserted}
                wanted = {(r["reminder_key"], r["channel"]): r for r in rows if r["status"] == "planned"}
                existing = sorted({key for key, channel in wanted if (key, channel) not in done})
                refreshed: list[dict[str, Any]] = []
                for chunk in _chunks(existing):
                    for row in connection.execute(query.where(attempts.c.reminder_key.in_(chunk))):
                        found[(row.reminder_key, row.channel)] = (int(row.id), int(row.try_no))
                        given = wanted.get((row.reminder_key, row.channel))
                        if given is not None:  # booked again: this run's address and run
                            refreshed.append({"b_id": row.id, "b_address": given["address"],
                                              "b_hash": given["address_hash"], "b_run": given["run_id"]})
                if refreshed:
                    connection.execute(
                        update(attempts).where(attempts.c.id == bindparam("b_id"), attempts.c.status == "planned")
                        .values(address=bindparam("b_address"), address_hash=bindparam("b_hash"),
                                run_id=bindparam("b_run")), refreshed)
        except SQLAlchemyError as exc:
            raise self._guard("book attempts", exc) from exc
        return found

    def supersede(self, waiting: Sequence[tuple[str, str, str]]) -> None:
        """Booked but unsent attempts replaced by a newer reminder: ``planned → suppressed (superseded)``."""
        if not waiting:
            return
        statement = (update(attempts)
                     .where(attempts.c.reminder_key == bindparam("b_key"), attempts.c.channel == bindparam("b_channel"),
                            attempts.c.status == "planned")
                     .values(status="suppressed", rule_id="superseded", detail=bindparam("b_detail")))
        params = [{"b_key": key, "b_channel": channel, "b_detail": f"booked, then replaced by {newer}"}
                  for key, channel, newer in waiting]
        self._execute("supersede attempts", statement, params)

    def start_sending(self, attempt_ids: Sequence[int], now: datetime) -> set[int]:
        """Claim: ``planned → sending`` for the given attempts; returns those this call moved."""
        claimed: set[int] = set()
        try:
            with self.engine.begin() as connection:
                for chunk in _chunks(attempt_ids):
                    rows = connection.execute(
                        update(attempts)
                        .where(attempts.c.id.in_(chunk), attempts.c.status == "planned")
                        .values(status="sending", attempted_at=now, updated_at=now)
                        .returning(attempts.c.id)
                    )
                    claimed.update(int(row.id) for row in rows)
        except SQLAlchemyError as exc:
            raise self._guard("claim attempts", exc) from exc
        return claimed

    def release(self, attempt_ids: Sequence[int], now: datetime) -> None:
        """Give back claimed attempts that were never handed to a provider (``sending → planned``)."""
        try:
            with self.engine.begin() as connection:
                for chunk in _chunks(attempt_ids):
                    connection.execute(
                        update(attempts)
                        .where(attempts.c.id.in_(chunk), attempts.c.status == "sending")
                        .values(status="planned", attempted_at=None, updated_at=now)
                    )
        except SQLAlchemyError as exc:
            raise self._guard("release attempts", exc) from exc

    def insert_try(self, job: DeliveryJob, try_no: int, channel: ChannelKind, parent_id: int | None,
                   now: datetime, *, address: str | None = None, status: str = "sending") -> int | None:
        """Claim a further try (a retry, or a fallback channel's first try), ``sending`` unless told.

        ``status="planned"`` books the try for a later run instead (a stop between tries).

        ``address`` is the full address when it differs from the job's (a fallback channel).
        Returns its id, or ``None`` when that try exists already (someone else owns it).
        """
        row = {
            "reminder_key": job.reminder_key, "account_id": job.account.account_id, "step": job.step,
            "occurrence": job.occurrence, "channel": channel.value, "try_no": try_no, "status": status,
            "address": mask_address(channel.value, address or job.address),
            "address_hash": address_hash(address or job.address),
            "borrower_hash": borrower_key(job.account),
            "parent_id": parent_id, "run_id": job.run_id, "created_at": now,
            "attempted_at": now if status == "sending" else None,
            "updated_at": now,
        }
        statement = _insert_ignoring_conflicts(self.engine, attempts).returning(attempts.c.id)
        try:
            with self.engine.begin() as connection:
                found = connection.execute(statement, [row]).all()
        except SQLAlchemyError as exc:
            raise self._guard("claim a further try", exc) from exc
        return int(found[0].id) if found else None

    def record_decisions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows that do not claim (try 0: deferrals)."""
        if rows:
            self._execute("record decisions", attempts.insert(), rows)

    def finish_attempts(self, outcomes: Sequence[AttemptOutcome], now: datetime) -> None:
        """Write the providers' answers for a batch of tries."""
        if not outcomes:
            return
        statement = (
            update(attempts)
            .where(attempts.c.id == bindparam("b_id"))
            .values(status=bindparam("b_status"), provider_message_id=bindparam("b_pmid"),
                    error_code=bindparam("b_code"), error_class=bindparam("b_class"),
                    error_message=bindparam("b_message"), updated_at=bindparam("b_now"),
                    template=func.coalesce(bindparam("b_template"), attempts.c.template),
                    template_version=func.coalesce(bindparam("b_version"), attempts.c.template_version),
                    content_hash=func.coalesce(bindparam("b_hash"), attempts.c.content_hash),
                    provider=func.coalesce(bindparam("b_provider"), attempts.c.provider),
                    rule_id=func.coalesce(bindparam("b_rule"), attempts.c.rule_id),
                    detail=func.coalesce(bindparam("b_detail"), attempts.c.detail),
                    duration_ms=func.coalesce(bindparam("b_ms"), attempts.c.duration_ms))
        )
        plain: list[AttemptOutcome] = []
        other: list[AttemptOutcome] = []
        for outcome in outcomes:
            (plain if _plain_send(outcome) else other).append(outcome)
        params = [
            {"b_id": o.attempt_id, "b_status": o.status, "b_pmid": o.provider_message_id, "b_code": o.error_code,
             "b_class": o.error_class, "b_message": o.error_message, "b_now": now, "b_template": o.template,
             "b_version": o.template_version, "b_hash": o.content_hash, "b_provider": o.provider,
             "b_rule": o.rule_id, "b_detail": o.detail, "b_ms": o.duration_ms}
            for o in other
        ]
        sent = [
            {"b_id": o.attempt_id, "b_pmid": o.provider_message_id, "b_now": now, "b_template": o.template,
             "b_version": o.template_version, "b_hash": o.content_hash, "b_provider": o.provider,
             "b_ms": o.duration_ms}
            for o in plain
        ]
        pmids = [o.provider_message_id for o in outcomes if o.provider_message_id]
        try:
            with self.engine.begin() as connection:
                if sent:
                    connection.execute(_SENT, sent)
                if params:
                    connection.execute(statement, params)
                if pmids and self._parked_callbacks(connection):
                    apply_parked(connection, pmids, now)
        except SQLAlchemyError as exc:
            raise self._guard("record outcomes", exc) from exc

    @staticmethod
    def _parked_callbacks(connection: Connection) -> bool:
        """Whether any callback waits for its attempt (almost never: skip the lookup otherwise)."""
        return connection.execute(select(early_callbacks.c.id).limit(1)).first() is not None

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
        """The run's attempts not settled yet (``planned`` or ``sending``)."""
        query = select(func.count()).select_from(attempts).where(
            attempts.c.run_id == run_id, attempts.c.status.in_(("planned", "sending")))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

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
