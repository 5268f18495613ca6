"""Hand-offs to people in the ledger: work items, their claims and outcomes, and what the rules read of them.

A reminder of a ``handoff:`` step opens one work item (unique per reminder key, so
a retried or repeated delivery finds the same one). People move it forward::

    open ──claim──► claimed ──close──► closed
      └────────────close─────────────────┘      (an agent may close what nobody claimed)

Claiming a closed item, claiming one another agent holds, or closing a closed one
is refused (:class:`HandoffConflict`). Every action is a ``handoff_events`` row with
its actor and time. Outcomes feed the rules through :func:`load_handoff_history`: a
promise to pay (and a dispute) pauses the ladder, ``contacted``, ``promise_to_pay``
and ``visit_done`` count as contacts toward the caps, and ``wrong_number``
suppresses the number the work item was opened with.

Errors::

    DispatcherError
     └── HandoffError              a hand-off action cannot be done
          ├── UnknownHandoff       no work item with that id
          ├── HandoffConflict      its status does not allow it (closed, claimed by another agent)
          └── InvalidHandoffAction a missing or wrong value (no --until for a promise, one agent for a visit)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, exists, select, update
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.channel_kind import ChannelKind
from dispatcher.errors import DispatcherError, LedgerError
from dispatcher.handoffs.repayment_plans import Instalment, PlanError, RepaymentPlan
from dispatcher.ledger.among import rows_among
from dispatcher.ledger.claims import insert_new
from dispatcher.ledger.outcomes import cure_paid
from dispatcher.ledger.suppressions import suppress_hash
from dispatcher.ledger.tables import handoff_events, handoffs
from dispatcher.masking import mask_text
from dispatcher.pipeline.history import BatchHistory, Contact, Hold
from dispatcher.states import HANDOFF_OUTCOMES, HANDOFF_STATUSES

STATUSES = HANDOFF_STATUSES
"""A work item's status, in the only order it moves (:mod:`dispatcher.states`)."""

OUTCOMES = HANDOFF_OUTCOMES
"""What an agent may record when closing a work item (:mod:`dispatcher.states`)."""

CONTACT_OUTCOMES = frozenset({"contacted", "promise_to_pay", "visit_done", "repayment_plan"})
"""Outcomes in which a person reached the borrower: each counts as a contact toward the caps."""

HOLD_OUTCOMES = frozenset({"promise_to_pay", "dispute", "repayment_plan"})
"""Outcomes that pause the ladder (``--until`` gives their last day; a plan's is its last instalment's)."""

VISIT_AGENTS = 2
"""Collectors a field visit needs (the 2026 collection guideline): ``visit_done`` names at least this many."""

SYSTEM_ACTOR = "dispatcher"
"""The actor of what the dispatcher itself does (opening a work item, pushing it to the CRM)."""

PHONE_CHANNELS = tuple(kind.value for kind in ChannelKind if kind.value in ("sms", "voice"))
"""The channels a ``wrong_number`` outcome suppresses the number on."""

CONTACT_ID_OFFSET = 10**15
"""A closed hand-off counts as the contact ``-(CONTACT_ID_OFFSET + id)``: never an attempt's id nor a planned one."""

MAX_AGENT = 64
MAX_NOTE = 2000
MAX_PLACE = 200

HANDOFF_COLUMNS = ("id", "account_id", "queue", "priority", "kind", "status", "step", "phone", "created_at",
                   "claimed_by", "claimed_at", "closed_by", "closed_at", "outcome", "until", "agents", "note",
                   "reminder_key", "attempt_id", "place", "plan")
"""A work item as ``dispatcher handoffs list`` and ``GET /api/handoffs`` show it."""


class HandoffError(DispatcherError):
    """A hand-off action cannot be done; ``handoff_id`` names the work item when there is one."""

    def __init__(self, message: str, *, handoff_id: int | None = None) -> None:
        self.handoff_id = handoff_id
        super().__init__(message)


class UnknownHandoff(HandoffError):
    """No work item has that id."""


class HandoffConflict(HandoffError):
    """The work item's status does not allow the action (closed, or claimed by another agent)."""


class InvalidHandoffAction(HandoffError):
    """A value of the action is missing or wrong."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    """What a work item is opened with (by :class:`~dispatcher.channels.handoff.HandoffChannel`)."""

    account_id: str
    reminder_key: str
    attempt_id: int | None
    step: str
    due_date: date | None
    queue: str
    priority: int
    kind: str
    phone: str | None = None  # masked
    phone_hash: str | None = None
    borrower_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Closing:
    """An agent's outcome of a work item: who (``agents``), what, until when, and a note; a visit's place, an agreed
    plan's instalments and the overdue amount it starts from (see :mod:`dispatcher.handoffs.repayment_plans`)."""

    outcome: str
    agents: tuple[str, ...] = ()
    until: date | None = None
    note: str | None = None
    place: str | None = None
    instalments: tuple[Instalment, ...] = ()
    start_amount: Decimal | None = None

    def checked(self, today: date) -> Closing:
        """This closing with its agents cleaned; raises :class:`InvalidHandoffAction` when it breaks a rule."""
        if self.outcome not in OUTCOMES:
            raise InvalidHandoffAction(f"outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        agents = tuple(dict.fromkeys(agent_name(a) for a in self.agents))
        if self.outcome == "promise_to_pay" and self.until is None:
            raise InvalidHandoffAction("a promise_to_pay needs the day it holds until (--until DATE)")
        if self.outcome == "repayment_plan" or self.instalments:
            return self._plan_checked(today, agents)
        if self.until is not None and self.outcome not in HOLD_OUTCOMES:
            raise InvalidHandoffAction(f"--until is for promise_to_pay and dispute, not {self.outcome}")
        if self.until is not None and self.until < today:
            raise InvalidHandoffAction(f"--until {self.until.isoformat()} is in the past (today is {today})")
        if self.outcome == "visit_done" and len(agents) < VISIT_AGENTS:
            raise InvalidHandoffAction(f"a field visit is made by at least {VISIT_AGENTS} collectors: name each "
                                       f"with --agent ({len(agents)} given)")
        return Closing(self.outcome, agents, self.until, self._note(), self._place())

    def _note(self) -> str | None:
        note = self.note.strip() if self.note else None
        if note and len(note) > MAX_NOTE:
            raise InvalidHandoffAction(f"the note has {len(note)} characters (at most {MAX_NOTE})")
        return mask_text(note) if note else None

    def _place(self) -> str | None:
        place = self.place.strip() if self.place else None
        if place and (len(place) > MAX_PLACE or not place.isprintable()):
            raise InvalidHandoffAction(f"--place: give 1 to {MAX_PLACE} printable characters")
        return mask_text(place) if place else None

    def _plan_checked(self, today: date, agents: tuple[str, ...]) -> Closing:
        if self.outcome != "repayment_plan":
            raise InvalidHandoffAction(f"--instalment is for repayment_plan, not {self.outcome}")
        if self.until is not None:
            raise InvalidHandoffAction("a repayment plan holds until its last instalment: give no --until")
        try:
            plan = RepaymentPlan.agreed(self.instalments, self.start_amount, today)
        except PlanError as exc:
            raise InvalidHandoffAction(str(exc)) from None
        return Closing(self.outcome, agents, plan.last_day, self._note(), self._place(), plan.instalments, plan.start)

    def plan(self) -> RepaymentPlan | None:
        """The agreed plan of a checked closing."""
        if not self.instalments or self.start_amount is None:
            return None
        return RepaymentPlan(self.instalments, self.start_amount)


def agent_name(name: str) -> str:
    """An agent's name as recorded; raises :class:`InvalidHandoffAction` for an empty, long or unprintable one."""
    cleaned = name.strip() if isinstance(name, str) else ""
    if not cleaned or len(cleaned) > MAX_AGENT or not cleaned.isprintable():
        raise InvalidHandoffAction(f"agent {name!r}: give a name of 1 to {MAX_AGENT} printable characters")
    return cleaned


def _guard(what: str, exc: SQLAlchemyError) -> LedgerError:
    return LedgerError(f"ledger: cannot {what}: {exc}")


def _event(connection: Connection, handoff_id: int, action: str, actor: str, at: datetime,
           detail: str | None = None) -> None:
    connection.execute(handoff_events.insert().values(handoff_id=handoff_id, action=action, actor=actor, at=at,
                                                      detail=mask_text(detail) if detail else None))


# opening (the hand-off channel) ---------------------------------------------------------------------------------------
def open_handoff(engine: Engine, item: WorkItem, now: datetime) -> tuple[int, bool]:
    """The id of the work item of ``item.reminder_key``, opened now unless it exists; and whether it is new."""
    try:
        with engine.begin() as connection:
            return open_handoffs(connection, [(item, now)])[0]
    except SQLAlchemyError as exc:
        raise _guard("open a hand-off", exc) from exc


def open_handoffs(connection: Connection, items: Sequence[tuple[WorkItem, datetime]]) -> list[tuple[int, bool]]:
    """:func:`open_handoff` for each (item, now) of ``items``, in the caller's transaction: one insert of them all
    (what it returns is what is new), one look-up of the others, one insert of the new ones' events."""
    rows = [{"account_id": item.account_id, "reminder_key": item.reminder_key, "attempt_id": item.attempt_id,
             "step": item.step, "due_date": item.due_date, "queue": item.queue, "priority": item.priority,
             "kind": item.kind, "status": "open", "phone": item.phone, "phone_hash": item.phone_hash,
             "borrower_hash": item.borrower_hash, "created_at": now} for item, now in items]
    new = {key: int(handoff_id) for handoff_id, key in
           insert_new(connection, handoffs, rows, ("id", "reminder_key")).run(connection)}
    others = {item.reminder_key for item, _now in items} - new.keys()
    found = {row.reminder_key: int(row.id) for row in rows_among(
        connection, select(handoffs.c.id, handoffs.c.reminder_key), handoffs.c.reminder_key, sorted(others))}
    first: dict[str, tuple[WorkItem, datetime]] = {}
    for item, now in items:
        first.setdefault(item.reminder_key, (item, now))
    events = []
    for key, handoff_id in new.items():
        item, now = first[key]
        events.append({"handoff_id": handoff_id, "action": "opened", "actor": SYSTEM_ACTOR, "at": now,
                       "detail": mask_text(f"{item.kind} in queue {item.queue} (priority {item.priority}), "
                                           f"step {item.step}")})
    insert_new(connection, handoff_events, events, ignore_conflicts=False).run(connection)
    opened: list[tuple[int, bool]] = []
    told: set[str] = set()
    for item, _now in items:  # a reminder asked for twice in one call: new the first time only
        key = item.reminder_key
        opened.append((new[key], key not in told) if key in new else (found[key], False))
        told.add(key)
    return opened


class HandoffOpener:
    """Opens the work items of the hand-offs sent in one turn of the event loop in one transaction.

    A hand-off opened in a transaction of its own, from a thread, held the ledger's write
    lock for a commit and a wait for the GIL each: a run's hand-offs made the other writers
    of its processes wait. As :class:`~dispatcher.ledger.group_commit.GroupCommitter`, the
    opener gathers the items asked for while the event loop runs its ready callbacks and
    writes them together on the loop's thread.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: list[tuple[WorkItem, datetime, asyncio.Future[tuple[int, bool]]]] = []
        self._soon: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, item: WorkItem, now: datetime) -> tuple[int, bool]:
        """:func:`open_handoff`, committed with the others asked for meanwhile; raises :class:`LedgerError`."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (a worker's next task): what an ended one left waits for nobody
            self._loop, self._queue, self._soon = loop, [], None
        future: asyncio.Future[tuple[int, bool]] = loop.create_future()
        self._queue.append((item, now, future))
        if self._soon is None:
            self._soon = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._soon = None
        group, self._queue = self._queue, []
        try:
            with self.engine.begin() as connection:
                opened = open_handoffs(connection, [(item, now) for item, now, _future in group])
        except SQLAlchemyError as exc:
            error = _guard("open a hand-off", exc)
            for _item, _now, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        for (_item, _now, future), result in zip(group, opened, strict=True):
            if not future.done():  # its sender was cancelled meanwhile: the work item is open all the same
                future.set_result(result)


def handoff_of_attempt(engine: Engine, attempt_id: int, *, pushed: bool = False) -> int | None:
    """The work item an attempt opened, if it did (and, with ``pushed``, pushed to the CRM)."""
    query = select(handoffs.c.id).where(handoffs.c.attempt_id == attempt_id)
    if pushed:
        query = query.where(exists().where(handoff_events.c.handoff_id == handoffs.c.id,
                                           handoff_events.c.action == "pushed"))
    try:
        with engine.connect() as connection:
            found = connection.execute(query.order_by(handoffs.c.id).limit(1)).scalar()
    except SQLAlchemyError as exc:
        raise _guard("look a hand-off up", exc) from exc
    return None if found is None else int(found)


def record_push(engine: Engine, handoff_id: int, ok: bool, detail: str, now: datetime) -> None:
    """Note a push of the work item to the CRM (or its failure) among its events."""
    try:
        with engine.begin() as connection:
            _event(connection, handoff_id, "pushed" if ok else "push_failed", SYSTEM_ACTOR, now, detail)
    except SQLAlchemyError as exc:
        raise _guard("record a CRM push", exc) from exc


# reading -------------------------------------------------------------------------------------------------------------
def _shown(row: Any) -> dict[str, Any]:
    found = dict(row)
    found["agents"] = json.loads(found["agents"]) if found.get("agents") else []
    return found


def list_handoffs(engine: Engine, *, queue: str | None = None, status: str | None = None,
                  account_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Work items, most urgent first (priority, then oldest), closed ones last (newest first)."""
    query = select(*(handoffs.c[name] for name in HANDOFF_COLUMNS)).order_by(
        (handoffs.c.status == "closed"), handoffs.c.priority, handoffs.c.id)
    if queue is not None:
        query = query.where(handoffs.c.queue == queue)
    if status is not None:
        query = query.where(handoffs.c.status == status)
    if account_id is not None:
        query = query.where(handoffs.c.account_id == account_id)
    if limit is not None:
        query = query.limit(limit)
    try:
        with engine.connect() as connection:
            return [_shown(row) for row in connection.execute(query).mappings()]
    except SQLAlchemyError as exc:
        raise _guard("list hand-offs", exc) from exc


def public(item: dict[str, Any]) -> dict[str, Any]:
    """A work item as people and the API see it: its listed columns (and events, when read). Phones, notes and
    event details are stored masked."""
    found = {name: item.get(name) for name in HANDOFF_COLUMNS}
    if "events" in item:
        found["events"] = item["events"]
    return found


def get_handoff(engine: Engine, handoff_id: int) -> dict[str, Any]:
    """One work item with its events; raises :class:`UnknownHandoff`."""
    try:
        with engine.connect() as connection:
            return _read(connection, handoff_id, events=True)
    except SQLAlchemyError as exc:
        raise _guard("read a hand-off", exc) from exc


def _read(connection: Connection, handoff_id: int, *, events: bool = False) -> dict[str, Any]:
    row = connection.execute(select(handoffs).where(handoffs.c.id == handoff_id)).mappings().first()
    if row is None:
        raise UnknownHandoff(f"hand-off #{handoff_id} does not exist", handoff_id=handoff_id)
    found = _shown(row)
    if events:
        query = select(handoff_events.c.action, handoff_events.c.actor, handoff_events.c.at,
                       handoff_events.c.detail).where(handoff_events.c.handoff_id == handoff_id) \
            .order_by(handoff_events.c.id)
        found["events"] = [dict(e) for e in connection.execute(query).mappings()]
    return found


# claiming and closing ------------------------------------------------------------------------------------------------
def claim_handoff(engine: Engine, handoff_id: int, agent: str, now: datetime) -> dict[str, Any]:
    """``open → claimed`` by ``agent`` (again by the same agent: unchanged); returns the work item."""
    agent = agent_name(agent)
    claim = (update(handoffs).where(handoffs.c.id == handoff_id, handoffs.c.status == "open")
             .values(status="claimed", claimed_by=agent, claimed_at=now))
    try:
        with engine.begin() as connection:
            if connection.execute(claim).rowcount:
                _event(connection, handoff_id, "claimed", agent, now)
                return _read(connection, handoff_id)
            found = _read(connection, handoff_id)
    except SQLAlchemyError as exc:
        raise _guard("claim a hand-off", exc) from exc
    if found["status"] == "claimed" and found["claimed_by"] == agent:
        return found
    if found["status"] == "closed":
        raise HandoffConflict(f"hand-off #{handoff_id} is closed ({found['outcome']}, by {found['closed_by']}): "
                              "it cannot be claimed", handoff_id=handoff_id)
    raise HandoffConflict(f"hand-off #{handoff_id} is claimed by {found['claimed_by']}", handoff_id=handoff_id)


def close_handoff(engine: Engine, handoff_id: int, closing: Closing, now: datetime, today: date) -> dict[str, Any]:
    """``open | claimed → closed`` with ``closing``'s outcome; applies a wrong number's suppression in the same
    transaction. Without agents, the one who claimed it closes it. Returns the work item."""
    closing = closing.checked(today)
    try:
        with engine.begin() as connection:
            found = _read(connection, handoff_id)
            if found["status"] == "closed":
                raise HandoffConflict(f"hand-off #{handoff_id} is already closed ({found['outcome']}, by "
                                      f"{found['closed_by']})", handoff_id=handoff_id)
            agents = closing.agents or ((found["claimed_by"],) if found["claimed_by"] else ())
            if not agents:
                raise InvalidHandoffAction(f"hand-off #{handoff_id} was never claimed: name who closes it (--agent)",
                                           handoff_id=handoff_id)
            done = connection.execute(
                update(handoffs).where(handoffs.c.id == handoff_id, handoffs.c.status == found["status"])
                .values(status="closed", closed_by=agents[0], closed_at=now, outcome=closing.outcome,
                        until=closing.until, note=closing.note, agents=json.dumps(list(agents), ensure_ascii=False),
                        place=closing.place, plan=_plan_json(closing)))
            if not done.rowcount:  # moved on meanwhile (another agent's close)
                raise HandoffConflict(f"hand-off #{handoff_id} changed meanwhile; look again", handoff_id=handoff_id)
            detail = _closing_detail(connection, found, closing, agents, now)
            if closing.outcome == "paid":  # the delinquency is cured now, whatever the source says later
                cure_paid(connection, found["account_id"], found["due_date"], now)
            _event(connection, handoff_id, "closed", agents[0], now, detail)
            return _read(connection, handoff_id)
    except SQLAlchemyError as exc:
        raise _guard("close a hand-off", exc) from exc


def _closing_detail(connection: Connection, found: dict[str, Any], closing: Closing, agents: Sequence[str],
                    now: datetime) -> str:
    """What the closing event says; a wrong number's suppression is applied here."""
    parts = [closing.outcome, f"agents {', '.join(agents)}"]
    if closing.until is not None:
        parts.append(f"until {closing.until.isoformat()}")
    if closing.instalments:
        parts.append("instalments " + ", ".join(f"{i.day.isoformat()}:{i.amount}" for i in closing.instalments))
    if closing.place:
        parts.append(f"place: {closing.place}")
    if closing.outcome == "wrong_number":
        parts.append(_suppress_number(connection, found, agents, now))
    if closing.note:
        parts.append(f"note: {closing.note}")
    return "; ".join(parts)


def _suppress_number(connection: Connection, found: dict[str, Any], agents: Sequence[str], now: datetime) -> str:
    if not found["phone_hash"]:
        return "no phone on the work item: nothing suppressed"
    detail = f"hand-off #{found['id']}: wrong number (per {', '.join(agents)})"
    for channel in PHONE_CHANNELS:
        suppress_hash(connection, channel, found["phone_hash"], found["phone"] or "?", "wrong_number", now,
                      account_id=found["account_id"], detail=detail)
    return f"{'/'.join(PHONE_CHANNELS)} to {found['phone']} suppressed"


def _plan_json(closing: Closing) -> str | None:
    plan = closing.plan()
    return None if plan is None else plan.to_json()


# what the planner and the rules read ---------------------------------------------------------------------------------
def load_handoff_history(connection: Connection, ids: Sequence[str], hashes: Sequence[str],
                         contacts_since: datetime | None, history: BatchHistory) -> None:
    """Pauses agreed at the batch's hand-offs (newest first) and, since ``contacts_since``, people's contacts
    with its borrowers (by account, or by borrower hash for caps counted per borrower)."""
    closed = select(handoffs.c.id, handoffs.c.account_id, handoffs.c.outcome, handoffs.c.until, handoffs.c.due_date,
                    handoffs.c.closed_at, handoffs.c.borrower_hash, handoffs.c.plan).where(
        handoffs.c.status == "closed")
    holds = closed.where(handoffs.c.outcome.in_(sorted(HOLD_OUTCOMES))).order_by(handoffs.c.closed_at.desc(),
                                                                                  handoffs.c.id.desc())
    for row in rows_among(connection, holds, handoffs.c.account_id, ids):
        plan = RepaymentPlan.from_json(row.plan) if row.plan else None
        history.holds.setdefault(row.account_id, []).append(Hold(row.id, row.outcome, row.until, row.due_date, plan))
    if contacts_since is None:
        return
    contacts = closed.where(handoffs.c.outcome.in_(sorted(CONTACT_OUTCOMES)), handoffs.c.closed_at >= contacts_since)
    seen: set[int] = set()
    for column, values in ((handoffs.c.account_id, ids), (handoffs.c.borrower_hash, hashes)):
        for row in rows_among(connection, contacts, column, values):
            if row.id not in seen:
                seen.add(row.id)
                history.add_contact(Contact(-(CONTACT_ID_OFFSET + row.id), row.account_id,
                                            ChannelKind.HANDOFF.value, None, row.closed_at, row.borrower_hash))

