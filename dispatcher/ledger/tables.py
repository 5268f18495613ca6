"""Ledger tables (SQLAlchemy Core metadata; the Alembic migrations create the same schema).

Invariants enforced by unique keys, whatever the scheduler, broker or a crash does:

* a run is (name, fire_time): a scheduled run fires at most once;
* a reminder is (account, due date, step, occurrence);
* a delivery attempt is (reminder, channel, try). Try 1 is the claim: whoever
  inserts it owns that reminder on that channel, so it goes out at most once.
  Try 0 rows are decisions that do not consume the claim (``deferred``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC as a naive timestamp on every engine; returns aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is UTC:  # the common case: the clock's own
            return value.replace(tzinfo=None)
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; pass an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("fire_time", UtcDateTime, nullable=False),
    Column("status", String(16), nullable=False),  # running | completed | failed | interrupted | closed | abandoned
    Column("config_version", String(32), nullable=False),
    Column("daemon_id", String(64), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("counts", Text),  # JSON: accounts, sent, deferred, suppressed, failed, rejected ...
    Column("lease_until", UtcDateTime),  # the running daemon renews it; once past, another may take over
    Column("takeovers", Integer, nullable=False, server_default="0"),
    Column("error", Text),  # why the run failed, one line
    Column("task_failures", Integer, nullable=False, server_default="0"),  # Celery tasks of the run that raised
    UniqueConstraint("name", "fire_time"),
)

reminders = Table(
    "reminders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False, unique=True),
    Column("account_id", String(128), nullable=False, index=True),
    Column("due_date", Date, nullable=False),
    Column("step", String(64), nullable=False),
    Column("occurrence", Integer, nullable=False),
    Column("run_id", Integer),
    Column("created_at", UtcDateTime, nullable=False),
    Column("bucket", String(64)),  # the step's bucket (M1, M2 …) when the reminder was booked
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reminder_key", String(255), nullable=False),
    Column("account_id", String(128), nullable=False),
    Column("step", String(64), nullable=False),
    Column("occurrence", Integer, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("try_no", Integer, nullable=False),
    # planned → claimed (a deliverer took it) → sending (handed to the channel) → sent | failed | unknown ...
    Column("status", String(16), nullable=False),
    Column("address", String(255)),  # masked
    Column("address_hash", String(64)),  # sha256 of the full address: caps and suppressions per number
    Column("borrower_hash", String(64)),  # the borrower's key: caps per borrower across their loans
    Column("provider", String(32)),
    Column("template", String(64)),
    Column("template_version", String(32)),
    Column("content_hash", String(64)),
    Column("provider_message_id", String(128)),
    Column("error_code", String(32)),
    Column("error_class", String(16)),  # transient | permanent
    Column("error_message", Text),
    Column("rule_id", String(32)),  # why not contacted (deferred / suppressed)
    Column("detail", Text),
    Column("not_before", UtcDateTime),  # deferred until
    Column("parent_id", Integer),  # fallback: the attempt on the previous channel
    Column("run_id", Integer),
    Column("created_at", UtcDateTime, nullable=False),
    Column("attempted_at", UtcDateTime),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("duration_ms", Integer),  # how long the provider took to answer
    Column("answered_by", String(32)),  # voice: Twilio's AnsweredBy (human, machine_end_beep … unknown)
    Column("call_duration", Integer),  # voice: seconds the call lasted (CallDuration)
    Column("variant", String(64)),  # the step's template variant this borrower is assigned (an experiment)
    Index("ix_attempts_account_id", "account_id"),
    Index("ix_attempts_provider_message_id", "provider_message_id"),
    Index("ix_attempts_status_channel_try", "status", "channel", "try_no"),  # /metrics counts without a sort
    Index("ix_attempts_created_at", "created_at"),
    Index("ix_attempts_address_hash", "address_hash"),
    Index("ix_attempts_borrower_hash", "borrower_hash"),
    Index("ix_attempts_run_id_status", "run_id", "status"),
    Index(
        "uq_attempts_claim",
        "reminder_key",
        "channel",
        "try_no",
        unique=True,
        sqlite_where=Column("try_no") >= 1,
        postgresql_where=Column("try_no") >= 1,
    ),
)

rejects = Table(
    "rejects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer),
    Column("account_id", String(128)),
    Column("field", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

early_callbacks = Table(
    "early_callbacks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("provider_message_id", String(128), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("error_code", String(32)),
    Column("received_at", UtcDateTime, nullable=False),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),
    Column("address_hash", String(64), nullable=False),
    Column("address", String(255), nullable=False),  # masked
    Column("account_id", String(128)),
    Column("source", String(32), nullable=False),  # inbound_stop | twilio_21610 | unsubscribe | bad_address ...
    Column("detail", Text),
    Column("created_at", UtcDateTime, nullable=False),
    Column("lifted_at", UtcDateTime),
    Index("ix_suppressions_lookup", "channel", "address_hash"),
    Index("ix_suppressions_address_hash", "address_hash"),
)

inbound_replies = Table(
    "inbound_replies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_sid", String(64), nullable=False, unique=True),  # the provider's id: a repeat changes nothing
    Column("channel", String(16), nullable=False),
    Column("sender", String(255), nullable=False),  # masked
    Column("address_hash", String(64), nullable=False),  # of the sender normalised to E.164
    Column("text", Text, nullable=False),  # masked
    Column("decision", String(16), nullable=False),  # opt_out | opt_in | unclear | other
    Column("keyword", String(64)),  # the phrase that decided it
    Column("outcome", String(32), nullable=False),  # suppressed | lifted | already | superseded | none
    Column("received_at", UtcDateTime, nullable=False),  # when the web app received it (orders STOP / START)
    Column("recorded_at", UtcDateTime, nullable=False),  # later than received_at when it waited in the spool
    Column("read_at", UtcDateTime),  # a person read it (``dispatcher replies --mark-read``)
    Index("ix_inbound_replies_address_hash", "address_hash"),
    Index("ix_inbound_replies_decision", "decision"),
)

handoffs = Table(
    "handoffs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(128), nullable=False),
    Column("reminder_key", String(255), nullable=False, unique=True),  # one work item per occurrence
    Column("attempt_id", Integer),  # the attempt (channel handoff) that opened it
    Column("step", String(64), nullable=False),
    Column("due_date", Date),  # the delinquency it belongs to
    Column("queue", String(64), nullable=False),
    Column("priority", Integer, nullable=False),  # 1 first
    Column("kind", String(16), nullable=False),  # call | visit | legal
    Column("status", String(16), nullable=False),  # open → claimed → closed (open → closed too)
    Column("phone", String(255)),  # masked: the number the borrower had when it was opened
    Column("phone_hash", String(64)),  # of that number: a wrong_number outcome suppresses it
    Column("borrower_hash", String(64)),  # the borrower's key: a person's contact counts toward caps per borrower
    Column("created_at", UtcDateTime, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_at", UtcDateTime),
    Column("closed_by", String(64)),
    Column("closed_at", UtcDateTime),
    Column("outcome", String(32)),  # contacted | promise_to_pay | dispute | wrong_number | paid | visit_done
    Column("until", Date),  # promise_to_pay (and a dispute) holds the ladder up to this day
    Column("note", Text),  # masked
    Column("agents", Text),  # JSON list of the people who closed it (a visit: at least two)
    Column("place", Text),  # masked: where a visit took place
    Column("plan", Text),  # JSON of a repayment_plan: its instalments and the overdue amount it starts from
    Index("ix_handoffs_account_id", "account_id"),
    Index("ix_handoffs_attempt_id", "attempt_id"),
    Index("ix_handoffs_borrower_hash", "borrower_hash"),
    Index("ix_handoffs_queue_status", "queue", "status"),
)

handoff_events = Table(
    "handoff_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("handoff_id", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # opened | claimed | closed | pushed | push_failed
    Column("actor", String(64), nullable=False),  # an agent, or "dispatcher"
    Column("at", UtcDateTime, nullable=False),
    Column("detail", Text),  # masked
    Index("ix_handoff_events_handoff_id", "handoff_id"),
)

visit_authorisations = Table(
    "visit_authorisations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("handoff_id", Integer, nullable=False, unique=True),  # the visit work item (one authorisation each)
    Column("account_id", String(128), nullable=False),
    Column("collectors", Text, nullable=False),  # JSON [{"name": ..., "staff_id": ...}], at least two
    Column("valid_from", Date, nullable=False),  # the claim day
    Column("valid_until", Date, nullable=False),  # inclusive
    Column("code", String(16), nullable=False),  # printed on the letter (reprinted by `handoffs authorisation`)
    Column("code_hash", String(64), nullable=False, unique=True),  # what /verify looks up
    Column("issued_by", String(64), nullable=False),
    Column("issued_at", UtcDateTime, nullable=False),
)

config_versions = Table(
    "config_versions",
    metadata,
    Column("version", String(32), primary_key=True),  # content_version(): the schedule's and templates' hash
    Column("schedule_text", Text, nullable=False),  # schedules.yaml as it was loaded
    Column("templates", Text, nullable=False),  # JSON {template name: source} of the snapshot it was checked with
    Column("path", Text),  # where it was loaded from
    Column("first_loaded_at", UtcDateTime, nullable=False),
    Column("last_loaded_at", UtcDateTime, nullable=False),  # the newest one is what the daemon is running
)

delinquencies = Table(
    "delinquencies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(128), nullable=False),
    Column("due_date", Date, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("first_balance", String(40), nullable=False),  # exact decimal text, read when the first reminder was booked
    Column("last_balance", String(40), nullable=False),  # the latest balance read that differed from the one before
    Column("first_reminded_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),  # when last_balance was read (written only on a change)
    Column("last_run_id", Integer),  # the run that read last_balance
    Column("cured_at", UtcDateTime),  # the run (or hand-off) that found it settled
    Column("cure", String(16)),  # zero_balance | left_overdue | paid
    UniqueConstraint("account_id", "due_date"),
    Index("ix_delinquencies_cured_at", "cured_at"),
)

run_ranges = Table(
    "run_ranges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=False),
    Column("number", Integer, nullable=False),  # 1-based, of the run's key ranges
    Column("status", String(16), nullable=False),  # queued | running | done | stopped | failed
    Column("worker", String(128)),  # host:pid of the worker process running it (last one)
    Column("starts", Integer, nullable=False, server_default="0"),  # how many times a task started it
    Column("accounts", Integer, nullable=False, server_default="0"),  # read so far (by its last start)
    Column("planned", Integer, nullable=False, server_default="0"),  # attempts booked to send so far
    Column("result", Text),  # JSON, once it ended: counts, attempt ids, accounts seen, rejects, error
    Column("updated_at", UtcDateTime, nullable=False),  # its worker beats it every few seconds while it runs
    UniqueConstraint("run_id", "number"),
)
