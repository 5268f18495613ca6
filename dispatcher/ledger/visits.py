"""Field visits a borrower can verify: the authorisation a claimed ``visit`` hand-off issues, and its check.

Claiming a ``visit`` work item names its collectors (at least :data:`VISIT_COLLECTORS`,
the 2026 collection guideline), each with a staff id. The ledger then keeps one
authorisation per work item: the collectors, the account, the days it is valid
(the claim day to :data:`DEFAULT_VALID_DAYS` later, inclusive) and a verification
code of :data:`CODE_LENGTH` characters from an alphabet without look-alikes.

The code is kept in full so the letter can be printed again; ``/verify`` looks it
up by its SHA-256 (an indexed equality, the same work for any code) and answers
only whether it is genuine, for which collectors and until when: never the
account nor the debt.

Errors are those of :mod:`dispatcher.ledger.handoffs` (:class:`InvalidHandoffAction`
for a missing or wrong collector, :class:`UnknownHandoff` for no authorisation).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dispatcher.errors import LedgerError
from dispatcher.ledger.handoffs import MAX_AGENT, InvalidHandoffAction, UnknownHandoff, agent_name
from dispatcher.ledger.tables import handoff_events, visit_authorisations

VISIT_COLLECTORS = 2
"""Collectors a field visit is authorised for at the least (the 2026 collection guideline)."""

DEFAULT_VALID_DAYS = 7
"""Days after the claim day an authorisation stays valid (inclusive)."""

MAX_VALID_DAYS = 60
"""The longest validity a claim may ask for."""

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
"""Verification code characters: no 0/O, 1/I/L look-alikes."""

CODE_LENGTH = 10
"""Characters of a verification code (31**10, about 8e14 codes)."""

_STAFF_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_./")


@dataclass(frozen=True, slots=True)
class Collector:
    """A person authorised for a visit: the name on their card and the lender's staff id."""

    name: str
    staff_id: str

    @classmethod
    def parse(cls, text: str) -> Collector:
        """``"Name:STAFFID"`` (the last colon splits); raises :class:`InvalidHandoffAction`."""
        name, sep, staff_id = text.rpartition(":")
        staff_id = staff_id.strip()
        if not sep or not staff_id or len(staff_id) > 32 or not set(staff_id) <= _STAFF_ID_CHARS:
            raise InvalidHandoffAction(f"collector {text!r}: give it as \"Name:STAFFID\" (a staff id of 1 to 32 "
                                       "letters, digits, - _ . /)")
        return cls(agent_name(name), staff_id)


@dataclass(frozen=True, slots=True)
class Verification:
    """What ``/verify`` may tell a borrower about a code: genuine or not, for whom, and the days it is valid."""

    genuine: bool
    expired: bool = False
    collectors: tuple[Collector, ...] = ()
    valid_from: date | None = None
    valid_until: date | None = None


def normalise_code(text: str) -> str:
    """A code as typed (any case, spaces or dashes) in its stored form."""
    return "".join(ch for ch in text.upper() if ch.isalnum())[:64]


def code_hash(code: str) -> str:
    """The SHA-256 of a normalised code: what the ledger looks a code up by."""
    return hashlib.sha256(normalise_code(code).encode()).hexdigest()


def new_code() -> str:
    """A fresh random verification code (:mod:`secrets`)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def checked_collectors(collectors: Sequence[Collector]) -> tuple[Collector, ...]:
    """The collectors, one per staff id; raises :class:`InvalidHandoffAction` with fewer than two."""
    unique = tuple({c.staff_id.upper(): c for c in collectors}.values())
    if len(unique) < VISIT_COLLECTORS:
        raise InvalidHandoffAction(f"a field visit is made by at least {VISIT_COLLECTORS} collectors: name each "
                                   f"with --collector \"Name:STAFFID\" ({len(unique)} given)")
    return unique


def _guard(what: str, exc: SQLAlchemyError) -> LedgerError:
    return LedgerError(f"ledger: cannot {what}: {exc}")


def issue_authorisation(engine: Engine, item: dict[str, Any], collectors: Sequence[Collector], issued_by: str,
                        now: datetime, today: date, valid_days: int = DEFAULT_VALID_DAYS) -> dict[str, Any]:
    """The authorisation of the visit work item ``item``, issued now unless it has one; returns it."""
    collectors = checked_collectors(collectors)
    if not 0 <= valid_days <= MAX_VALID_DAYS:
        raise InvalidHandoffAction(f"--valid-days {valid_days}: give 0 to {MAX_VALID_DAYS}")
    names = json.dumps([{"name": c.name, "staff_id": c.staff_id} for c in collectors], ensure_ascii=False)
    for _ in range(3):  # a code clash (unique hash) is next to impossible; draw again if it happens
        code = new_code()
        values = {"handoff_id": item["id"], "account_id": item["account_id"], "collectors": names,
                  "valid_from": today, "valid_until": today + timedelta(days=valid_days), "code": code,
                  "code_hash": code_hash(code), "issued_by": issued_by[:MAX_AGENT], "issued_at": now}
        try:
            with engine.begin() as connection:
                found = _of_handoff(connection, item["id"])
                if found is not None:
                    return found
                connection.execute(visit_authorisations.insert().values(**values))
                detail = (f"visit authorised for {', '.join(f'{c.name} ({c.staff_id})' for c in collectors)} "
                          f"until {values['valid_until']}")
                connection.execute(handoff_events.insert().values(handoff_id=item["id"], action="authorised",
                                                                  actor=issued_by[:MAX_AGENT], at=now, detail=detail))
                found = _of_handoff(connection, item["id"])
                assert found is not None
                return found
        except IntegrityError:
            continue
        except SQLAlchemyError as exc:
            raise _guard("issue a visit authorisation", exc) from exc
    raise LedgerError("ledger: cannot issue a visit authorisation: no free code after 3 draws")


def _shown(row: Any) -> dict[str, Any]:
    found = dict(row)
    found["collectors"] = [Collector(c["name"], c["staff_id"]) for c in json.loads(found["collectors"])]
    return found


def _of_handoff(connection: Connection, handoff_id: int) -> dict[str, Any] | None:
    row = connection.execute(select(visit_authorisations).where(
        visit_authorisations.c.handoff_id == handoff_id)).mappings().first()
    return None if row is None else _shown(row)


def get_authorisation(engine: Engine, handoff_id: int) -> dict[str, Any]:
    """The authorisation of a visit work item; raises :class:`UnknownHandoff` when it has none."""
    try:
        with engine.connect() as connection:
            found = _of_handoff(connection, handoff_id)
    except SQLAlchemyError as exc:
        raise _guard("read a visit authorisation", exc) from exc
    if found is None:
        raise UnknownHandoff(f"hand-off #{handoff_id} has no visit authorisation (claim a visit item with "
                             "--collector)", handoff_id=handoff_id)
    return found


def verify_code(engine: Engine, code: str, today: date) -> Verification:
    """Whether ``code`` is a genuine authorisation valid ``today``; only what a borrower may learn of it."""
    query = select(visit_authorisations.c.collectors, visit_authorisations.c.valid_from,
                   visit_authorisations.c.valid_until).where(visit_authorisations.c.code_hash == code_hash(code))
    try:
        with engine.connect() as connection:
            row = connection.execute(query).mappings().first()
    except SQLAlchemyError as exc:
        raise _guard("check a verification code", exc) from exc
    if row is None:
        return Verification(genuine=False)
    shown = _shown(row)
    expired = not row["valid_from"] <= today <= row["valid_until"]
    return Verification(not expired, expired, tuple(shown["collectors"]), row["valid_from"], row["valid_until"])
