"""Calls in the ledger: their progress from Twilio's callbacks, and the calls the call caps count.

A call's attempt is ``sent`` once Twilio took the request (its ``CA…`` SID is the
provider message id); its status callbacks then move it forward only:
``completed`` → ``delivered``, ``busy`` / ``no-answer`` / ``canceled`` →
``undelivered`` and ``failed`` → ``failed`` (with the Twilio status as error code),
through :func:`~dispatcher.ledger.callbacks.advance_status`, so repeats, callbacks
out of order and callbacks that beat the ledger behave as for SMS. Who answered
(``AnsweredBy``) is kept the first time a callback carries it, the duration
(``CallDuration``) when the call ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.channel_kind import ChannelKind
from dispatcher.errors import LedgerError
from dispatcher.ledger.among import rows_among
from dispatcher.ledger.callbacks import advance_status
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.history import CONTACT_STATUSES, BatchHistory, Call

CALL_STATUS = {"completed": "delivered", "busy": "undelivered", "no-answer": "undelivered",
               "canceled": "undelivered", "failed": "failed"}
"""Twilio ``CallStatus`` values that end a call, and the attempt status each moves it to.

``queued``, ``initiated``, ``ringing`` and ``in-progress`` change no status (the attempt stays ``sent``)."""

CONVERSATION = frozenset({"human", "unknown"})
"""``AnsweredBy`` values counted as a conversation with a person (``unknown``: detection could not tell a
machine, so it is counted as a person, the safer side for the call caps)."""

PLACED_UNANSWERED = ("undelivered", "failed")
"""Final statuses of calls that rang (or tried to) but reached nobody: still call attempts for the caps."""

_VOICE = ChannelKind.VOICE.value
_MAX_ANSWERED_BY = 32


def record_call_progress(engine: Engine, call_sid: str, call_status: str, now: datetime, *,
                         answered_by: str | None = None, duration: int | None = None) -> int | None:
    """Record one voice status callback; returns the attempts moved (0: old news), ``None`` for an unknown SID
    (its final status is then parked until the SID is recorded; who answered is not)."""
    details: dict[str, object] = {}
    if answered_by:
        details["answered_by"] = answered_by[:_MAX_ANSWERED_BY]
    if duration is not None and call_status in CALL_STATUS:
        details["call_duration"] = duration
    try:
        with engine.begin() as connection:
            if "answered_by" in details:
                connection.execute(update(attempts).where(
                    attempts.c.provider_message_id == call_sid, attempts.c.answered_by.is_(None))
                    .values(answered_by=details.pop("answered_by"), updated_at=now))
            if details:
                connection.execute(update(attempts).where(attempts.c.provider_message_id == call_sid)
                                   .values(**details, updated_at=now))
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot record a call's progress: {exc}") from exc
    status = CALL_STATUS.get(call_status)
    if status is None:
        return _known(engine, call_sid)
    code = None if status == "delivered" else call_status
    return advance_status(engine, call_sid, status, now, error_code=code)


def _known(engine: Engine, call_sid: str) -> int | None:
    """0 when an attempt records ``call_sid`` (a progress event: nothing moves), else ``None``."""
    try:
        with engine.connect() as connection:
            found = connection.execute(
                select(attempts.c.id).where(attempts.c.provider_message_id == call_sid).limit(1)).first()
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger: cannot look a call up: {exc}") from exc
    return None if found is None else 0


def load_calls(connection: Connection, ids: Sequence[str], hashes: Sequence[str], since: datetime,
               history: BatchHistory) -> None:
    """Calls since ``since`` to the batch's accounts or numbers into ``history.calls``: those that reached or
    may have reached the borrower, and those placed that reached nobody (busy, no answer …)."""
    # the status is checked here, not in SQL: SQLite would otherwise walk every call ever placed in the status
    # index instead of looking the batch's keys up
    query = select(attempts.c.id, attempts.c.account_id, attempts.c.address_hash, attempts.c.attempted_at,
                   attempts.c.status, attempts.c.provider_message_id, attempts.c.answered_by).where(
        attempts.c.channel == _VOICE, attempts.c.try_no >= 1, attempts.c.attempted_at >= since)
    for column, values in ((attempts.c.account_id, ids), (attempts.c.address_hash, hashes)):
        for row in rows_among(connection, query, column, values):
            if row.status not in CONTACT_STATUSES and (row.status not in PLACED_UNANSWERED
                                                       or row.provider_message_id is None):
                continue
            history.calls[int(row.id)] = Call(int(row.id), row.account_id, row.address_hash, row.attempted_at,
                                              answered=row.status == "delivered" or bool(row.answered_by),
                                              conversation=row.answered_by in CONVERSATION)
