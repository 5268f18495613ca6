"""The floor of the embedded pipeline: the least work that produces the same outbox and ledger rows.

Issue 13 measures the product's pipeline against this. Per batch of 1,000 source rows
(the product's own :class:`~dispatcher.pipeline.source.AccountSource`: rows read and parsed,
phones included) it picks each account's step (the ladder, no rules), renders every
part with the product's composer (its sandboxed Jinja environment and templates),
writes the same outbox files (``sms.jsonl``, ``push.jsonl``, ``voice.jsonl``, one
``email/<attempt>-<account>.eml`` per email, written under a temporary name and
renamed as the outbox does) and books the reminders, attempts and hand-off work items
in one transaction per batch. No rules, caps, history, claims, re-checks, group
commits, event loop or threads. It runs under the same garbage-collector settings as
the product's run (:func:`~dispatcher.pipeline.loops.settle_heap` first, as
:meth:`~dispatcher.pipeline.run.Runner.run` does): the ratio compares the work, not the collector.

So that both runs write the same messages and rows, the verdicts the product's rules
reached (suppressed and deferred attempts) are read from the product's ledger before
the floor starts and replayed as a lookup: the floor never evaluates a rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, insert, select

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Message
from dispatcher.channels.eml import eml_bytes
from dispatcher.compose.handoff import work_item_data
from dispatcher.compose.renderer import RenderContext
from dispatcher.ladder import days_overdue, due_step, local_date, pay_by, reminder_key
from dispatcher.ledger.handoffs import SYSTEM_ACTOR
from dispatcher.ledger.tables import attempts, handoff_events, handoffs, reminders
from dispatcher.masking import address_hash, mask_address, mask_text
from dispatcher.pipeline.history import borrower_key
from dispatcher.pipeline.jobs import DeliveryJob
from dispatcher.pipeline.loops import settle_heap
from dispatcher.pipeline.plan import address_for, routes
from dispatcher.zones import home_zone

_UNSENT: dict[str, Any] = dict.fromkeys(
    ("rule_id", "detail", "not_before", "provider", "template", "template_version", "content_hash",
     "provider_message_id", "attempted_at", "duration_ms"))
"""The columns an attempt row leaves empty until it is sent: every row carries every key (one executemany)."""

Verdicts = dict[tuple[str, str], dict[str, Any]]
"""(reminder_key, channel) → the product's suppressed or deferred row (status, try_no, rule_id, detail, not_before)."""


def read_verdicts(engine: Engine) -> Verdicts:
    """The attempts the product did not send (its rules' and planner's verdicts), to replay."""
    query = select(attempts.c.reminder_key, attempts.c.channel, attempts.c.status, attempts.c.try_no,
                   attempts.c.rule_id, attempts.c.detail, attempts.c.not_before).where(
        attempts.c.status.in_(("suppressed", "deferred")))
    with engine.connect() as connection:
        return {(r.reminder_key, r.channel): {"status": r.status, "try_no": r.try_no, "rule_id": r.rule_id,
                                              "detail": r.detail, "not_before": r.not_before}
                for r in connection.execute(query)}


def dump_verdicts(verdicts: Verdicts, path: Path) -> None:
    rows = [[key, channel, {**row, "not_before": row["not_before"].isoformat() if row["not_before"] else None}]
            for (key, channel), row in verdicts.items()]
    path.write_text(json.dumps(rows))


def load_verdicts(path: Path) -> Verdicts:
    verdicts: Verdicts = {}
    for key, channel, row in json.loads(path.read_text()):
        not_before = row["not_before"]
        verdicts[(key, channel)] = {**row, "not_before": datetime.fromisoformat(not_before) if not_before else None}
    return verdicts


@dataclass
class FloorCounts:
    accounts: int = 0
    reminders: int = 0
    attempts: int = 0
    sent: int = 0


class Floor:
    """One pass over the source: step, render, write, book (see the module docstring)."""

    def __init__(self, app: App, verdicts: Verdicts, run_id: int | None) -> None:
        self.app = app
        pipeline = app.pipeline
        self.schedule = pipeline.loaded.schedule
        self.composer = pipeline.composer
        self.source = pipeline.source
        self.verdicts = verdicts
        self.run_id = run_id
        self.headers_for = app.unsubscribe_links()
        self.calls = app.providers.calls
        self.email_from = app.providers.email_from
        self.outbox = app.settings.outbox_dir
        self.engine = app.engine
        with self.engine.connect() as connection:
            self._next_attempt = int(connection.execute(select(func.max(attempts.c.id))).scalar() or 0) + 1
            self._next_handoff = int(connection.execute(select(func.max(handoffs.c.id))).scalar() or 0) + 1
        self._lines: dict[ChannelKind, int] = {}
        (self.outbox / "email").mkdir(parents=True, exist_ok=True)

    def run(self, now: datetime) -> FloorCounts:
        settle_heap()
        counts = FloorCounts()
        try:
            for batch in self.source.batches():
                counts.accounts += len(batch.accounts) + len(batch.rejects)
                self._batch(batch.accounts, now, counts)
        finally:
            for fd in self._lines.values():
                os.close(fd)
        return counts

    def _batch(self, accounts: Iterable[Account], now: datetime, counts: FloorCounts) -> None:
        dates: dict[ZoneInfo, date] = {}
        reminder_rows: list[dict[str, Any]] = []
        attempt_rows: list[dict[str, Any]] = []
        handoff_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        for account in accounts:
            booked = self._account(account, now, dates, handoff_rows, event_rows, counts)
            if booked is not None:
                reminder_rows.append(booked[0])
                attempt_rows.extend(booked[1])
        with self.engine.begin() as connection:
            if reminder_rows:
                connection.execute(insert(reminders), reminder_rows)
            if attempt_rows:
                connection.execute(insert(attempts), attempt_rows)
            if handoff_rows:
                connection.execute(insert(handoffs), handoff_rows)
                connection.execute(insert(handoff_events), event_rows)
        counts.reminders += len(reminder_rows)
        counts.attempts += len(attempt_rows)

    def _account(self, account: Account, now: datetime, dates: dict[ZoneInfo, date],
                 handoff_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]],
                 counts: FloorCounts) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The reminder row and attempt rows of one account (its messages written), or None: nothing due."""
        if account.settled:
            return None
        zone = home_zone(account, self.schedule.timezone)
        today = dates.get(zone)
        if today is None:
            today = dates[zone] = local_date(now, zone)
        days = days_overdue(account.due_date, today)
        due = due_step(self.schedule.ladder, days, account)
        if due is None:
            return None
        step = due.step
        key = reminder_key(account.account_id, account.due_date, step.step, due.occurrence)
        rows: list[dict[str, Any]] = []
        chosen = False
        for channel in routes(step):
            address = address_for(account, channel)
            base = {"reminder_key": key, "account_id": account.account_id, "step": step.step,
                    "occurrence": due.occurrence, "channel": channel.value,
                    "address": mask_address(channel.value, address) if address else None,
                    "address_hash": address_hash(address) if address else None,
                    "borrower_hash": borrower_key(account), "variant": step.variant_for(account.account_id),
                    "run_id": self.run_id, "created_at": now, "updated_at": now, **_UNSENT}
            verdict = self.verdicts.get((key, channel.value))
            if verdict is not None:
                rows.append(base | verdict | {"id": self._take_id()})
                chosen = chosen or verdict["status"] == "deferred"
                continue
            if step.fallback and chosen:
                continue
            if not address:
                rows.append(base | {"status": "suppressed", "try_no": 1, "rule_id": "no_address",
                                    "detail": f"no {channel.value} address", "id": self._take_id()})
                continue
            chosen = True
            attempt_id = self._take_id()
            job = DeliveryJob(attempt_id, 1, key, account, step.step, due.occurrence, days, today, channel,
                              address, run_id=self.run_id)
            unsubscribe_url, headers = self.headers_for(job)
            ctx = RenderContext(account, step, due.occurrence, days, pay_by(account, step, today, days), today,
                                unsubscribe_url)
            rendered = self.composer.render(ctx, channel)
            message = Message(attempt_id=attempt_id, reminder_key=key, account_id=account.account_id,
                              channel=channel, to=address, body=rendered.body, subject=rendered.subject,
                              html=rendered.html, title=rendered.title, data=rendered.data,
                              headers=headers if channel is ChannelKind.EMAIL else {}, locale=rendered.locale)
            if channel is ChannelKind.HANDOFF:
                provider, message_id = "handoff", self._handoff(message, ctx, now, handoff_rows, event_rows)
            else:
                provider, message_id = "outbox", self._write(message)
            rows.append(base | {"id": attempt_id, "status": "sent", "try_no": 1, "provider": provider,
                                "template": rendered.template, "template_version": rendered.template_version,
                                "content_hash": rendered.content_hash, "provider_message_id": message_id,
                                "attempted_at": now, "duration_ms": 0})
            counts.sent += channel is not ChannelKind.HANDOFF
        if not rows:
            return None
        reminder = {"key": key, "account_id": account.account_id, "due_date": account.due_date, "step": step.step,
                    "occurrence": due.occurrence, "run_id": self.run_id, "created_at": now, "bucket": step.bucket}
        return reminder, rows

    def _take_id(self) -> int:
        """Attempt ids are given here (the floor is the ledger's only writer): a file is named by its id."""
        taken = self._next_attempt
        self._next_attempt += 1
        return taken

    def _write(self, message: Message) -> str:
        """The outbox's files, in its formats (see :mod:`dispatcher.channels.outbox`)."""
        kind = message.channel
        if kind is ChannelKind.EMAIL:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in message.account_id)
            path = self.outbox / "email" / f"{message.attempt_id:08d}-{safe}.eml"
            temporary = path.with_name(f".{path.name}.{os.getpid()}-0.tmp")
            temporary.write_bytes(eml_bytes(message, self.email_from, datetime.now(ZoneInfo("UTC"))))
            os.replace(temporary, path)
        else:
            record: dict[str, object] = {"attempt_id": message.attempt_id, "reminder": message.reminder_key,
                                         "account_id": message.account_id, "to": message.to, "text": message.body}
            if kind is ChannelKind.PUSH:
                record["title"] = message.title
                record["data"] = dict(message.data)
            if kind is ChannelKind.VOICE:
                record["greeting"] = message.title
                record["twiml"] = self.calls.twiml(message)
            fd = self._lines.get(kind)
            if fd is None:
                fd = self._lines[kind] = os.open(self.outbox / f"{kind.value}.jsonl",
                                                 os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            os.write(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        return f"outbox-{kind.value}-{message.attempt_id}"

    def _handoff(self, message: Message, ctx: RenderContext, now: datetime, rows: list[dict[str, Any]],
                 events: list[dict[str, Any]]) -> str:
        """The work item row and its ``opened`` event, as :func:`dispatcher.ledger.handoffs.open_handoff` writes."""
        data = work_item_data(ctx)
        handoff_id = self._next_handoff
        self._next_handoff += 1
        due = data.get("due_date")
        rows.append({"id": handoff_id, "account_id": message.account_id, "reminder_key": message.reminder_key,
                     "attempt_id": message.attempt_id, "step": data["step"],
                     "due_date": date.fromisoformat(due) if due else None, "queue": data["queue"],
                     "priority": int(data["priority"]), "kind": data["kind"], "status": "open",
                     "phone": data.get("phone"), "phone_hash": data.get("phone_hash"),
                     "borrower_hash": data.get("borrower_hash"), "created_at": now})
        detail = f"{data['kind']} in queue {data['queue']} (priority {data['priority']}), step {data['step']}"
        events.append({"handoff_id": handoff_id, "action": "opened", "actor": SYSTEM_ACTOR, "at": now,
                       "detail": mask_text(detail)})
        return f"handoff:{handoff_id}"


def ledger_summary(engine: Engine) -> Mapping[str, object]:
    """What both runs must have written alike: row counts by kind, and every attempt's identity and content."""
    with engine.connect() as connection:
        by_kind = {f"{c}/{s}/{t}": n for c, s, t, n in connection.execute(
            select(attempts.c.channel, attempts.c.status, attempts.c.try_no, func.count()).group_by(
                attempts.c.channel, attempts.c.status, attempts.c.try_no))}
        content = {(k, c, s, h, r) for k, c, s, h, r in connection.execute(select(
            attempts.c.reminder_key, attempts.c.channel, attempts.c.status, attempts.c.content_hash,
            attempts.c.rule_id))}
        counted = {name: int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)
                   for name, table in (("reminders", reminders), ("attempts", attempts), ("handoffs", handoffs))}
    return {"attempts_by_kind": by_kind, "content": content, **counted}


def outbox_messages(outbox: Path) -> int:
    """Messages in an outbox directory: JSONL lines and ``.eml`` files."""
    lines = 0
    for path in outbox.glob("*.jsonl"):
        with path.open("rb") as file:
            lines += sum(1 for _ in file)
    email = outbox / "email"
    return lines + (sum(1 for p in email.iterdir() if p.suffix == ".eml") if email.is_dir() else 0)
