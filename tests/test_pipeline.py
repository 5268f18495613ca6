"""End to end in one process: demo table → runs → ledger and outbox, with crash, race, fallback and retry cases."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from rows import attempt_rows
from sqlalchemy import insert, select

from dispatcher.accounts import Account, RejectedRow
from dispatcher.app import App
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel, DeliveryResult, Message
from dispatcher.demo import demo_accounts, seed_demo
from dispatcher.ledger.suppressions import suppress
from dispatcher.ledger.tables import rejects, runs
from dispatcher.masking import mask_address
from dispatcher.pipeline.deliver import Deliverer, DeliveryPolicy
from dispatcher.pipeline.jobs import DeliveryJob
from dispatcher.pipeline.row_checks import parse_row
from dispatcher.pipeline.run import Runner
from dispatcher.replies.inbound import read_reply, to_entry
from dispatcher.replies.spool import Spool, spool_path
from dispatcher.replies.words import Vocabulary

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
FAST = DeliveryPolicy(concurrency=4, max_tries=3, backoff_base=0.001, backoff_cap=0.01)

BAD_ROWS = {
    "BAD-AMOUNT": ({"overdue_amount": "12,3O.00"}, "overdue_amount"),
    "BAD-ZONE": ({"timezone": "Asia/Beijing"}, "timezone"),
    "BAD-PHONE": ({"phone": "+86 123"}, "phone"),
    "BAD-EMAIL": ({"email": "wang.at.example.com"}, "email"),
    "BAD-CURRENCY": ({"currency": "rmb"}, "currency"),
    "BAD-OPTOUT": ({"opt_out_channels": "sms,fax"}, "opt_out_channels"),
}
"""Extra demo rows, each with one bad field: account id → (changes, the field that must be named)."""


def demo_row(account_id: str, today: date, **changes: Any) -> dict[str, Any]:
    return {"account_id": account_id, "name": "王伟", "phone": "+8613812345678", "email": "wang@example.cn",
            "push_token": None, "locale": "zh-CN", "timezone": "Asia/Shanghai", "currency": "CNY",
            "overdue_amount": "100.00", "due_date": today - timedelta(days=5), "deadline": None,
            "repayment_account": "6222 0212 1234 5678", "do_not_contact": None, "dispute": None,
            "promise_to_pay_until": None, "opt_out_channels": None, **changes}


def seed(app: App, count: int = 300) -> None:
    today = app.clock().date()
    seed_demo(app.engine, count, today)
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), [demo_row(k, today, **changes)
                                                    for k, (changes, _) in BAD_ROWS.items()])


def lines(outbox: Path, kind: str) -> list[dict[str, Any]]:
    path = outbox / f"{kind}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def emails(outbox: Path) -> dict[int, bytes]:
    folder = outbox / "email"
    return {int(p.name.split("-", 1)[0]): p.read_bytes() for p in sorted(folder.glob("*.eml"))} \
        if folder.exists() else {}


def outbox_ids(outbox: Path) -> Counter[int]:
    found = Counter(r["attempt_id"] for kind in ("sms", "push", "voice") for r in lines(outbox, kind))
    found.update(emails(outbox).keys())
    return found


def count_sent(app: App) -> int:
    return len(attempt_rows(app, status="sent"))


def sent_ids(app: App, channel: str) -> set[int]:
    return {r["id"] for r in attempt_rows(app, channel=channel, status="sent")}


@pytest.fixture
def outbox(app: App) -> Path:
    return app.settings.outbox_dir


@pytest.fixture
def seeded(app: App) -> App:
    seed(app)
    return app


# one run over the demo table -------------------------------------------------------------------------------------
def test_a_run_writes_the_outbox_and_the_ledger_one_to_one(seeded: App, outbox: Path) -> None:
    report = Runner(seeded).run("manual", seeded.clock())
    assert report.status == "completed"
    assert report.counts.sent > 0 and report.counts.failed == 0

    for kind in ("sms", "push"):
        written = lines(outbox, kind)
        assert sorted(r["attempt_id"] for r in written) == sorted(sent_ids(seeded, kind)), kind
        for record in written:
            (row,) = attempt_rows(seeded, id=record["attempt_id"])
            assert (row["account_id"], row["reminder_key"]) == (record["account_id"], record["reminder"])
            assert row["address"] == mask_address(kind, record["to"])
            assert record["text"].strip()
    assert all(E164.match(r["to"]) for r in lines(outbox, "sms"))
    written_emails = emails(outbox)
    assert set(written_emails) == sent_ids(seeded, "email")
    assert report.counts.sent == sum(len(sent_ids(seeded, k.value)) for k in ChannelKind)  # calls, hand-offs too


def test_every_email_is_multipart_alternative_with_text_html_and_subject(seeded: App, outbox: Path) -> None:
    Runner(seeded).run("manual", seeded.clock())
    written = emails(outbox)
    assert written
    for attempt_id, raw in written.items():
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message.get_content_type() == "multipart/alternative", attempt_id
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        assert str(message["Subject"]).strip()
        assert message.get_body(("plain",)).get_content().strip()  # type: ignore[union-attr]
        assert "<html" in message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        (row,) = attempt_rows(seeded, id=attempt_id)
        assert row["address"] == mask_address("email", str(message["To"]))


def test_every_rejected_row_is_recorded_with_its_field_and_reason(seeded: App) -> None:
    with seeded.engine.connect() as connection:
        parsed = [parse_row(r) for r in connection.execute(select(demo_accounts)).mappings()]
    expected = sorted((r.account_id, r.field) for r in parsed if isinstance(r, RejectedRow))
    assert {(k, f) for k, (_, f) in BAD_ROWS.items()} <= set(expected)

    report = Runner(seeded).run("manual", seeded.clock())
    with seeded.engine.connect() as connection:
        recorded = [dict(r) for r in connection.execute(select(rejects)).mappings()]
    assert sorted((r["account_id"], r["field"]) for r in recorded) == expected
    assert all(r["reason"].strip() and r["run_id"] == report.run_id for r in recorded)
    assert report.counts.rejected == len(expected)
    assert not attempt_rows(seeded, account_id="BAD-PHONE")


def test_a_second_run_sends_nothing_new(seeded: App, outbox: Path, clock: Any) -> None:
    first = Runner(seeded).run("morning", seeded.clock())
    before_outbox, before_sent = outbox_ids(outbox), count_sent(seeded)
    # a minute later: no borrower's local date has changed and no contact window has opened
    second = Runner(seeded).run("manual", clock.advance(timedelta(minutes=1)))
    assert (first.status, second.status) == ("completed", "completed")
    assert second.counts.sent == 0 and second.counts.planned == 0
    assert outbox_ids(outbox) == before_outbox
    assert count_sent(seeded) == before_sent


def test_the_same_run_twice_is_skipped_and_runs_are_recorded(seeded: App, clock: Any) -> None:
    fire_time = seeded.clock()
    first = Runner(seeded).run("morning", fire_time)
    again = Runner(seeded).run("morning", fire_time)
    later = Runner(seeded).run("morning", clock.advance(timedelta(days=1)))
    assert first.status == "completed" and first.run_id is not None
    assert (again.status, again.run_id, again.counts.sent) == ("skipped", None, 0)
    assert later.status == "completed"
    with seeded.engine.connect() as connection:
        recorded = [dict(r) for r in connection.execute(select(runs).order_by(runs.c.id)).mappings()]
    assert [(r["id"], r["name"], r["fire_time"], r["status"]) for r in recorded] == [
        (first.run_id, "morning", fire_time, "completed"),
        (later.run_id, "morning", fire_time + timedelta(days=1), "completed"),
    ]
    assert json.loads(recorded[0]["counts"])["sent"] == first.counts.sent
    assert all(r["finished_at"] is not None for r in recorded)


# crashes and races -----------------------------------------------------------------------------------------------
def book_everything(app: App, run_id: int | None) -> list[DeliveryJob]:
    """Plan and book every batch as a run does, delivering nothing (a run killed after booking)."""
    jobs: list[DeliveryJob] = []
    now = app.clock()
    for batch in app.pipeline.source.batches():
        decisions = app.pipeline.planner.plan(batch.accounts, app.ledger.load_history(batch.accounts), now)
        jobs += app.booker().book(decisions, run_id, now)[0]
    return jobs


def test_jobs_booked_by_an_interrupted_run_are_delivered_by_the_next_once(seeded: App, outbox: Path,
                                                                          clock: Any) -> None:
    crashed = seeded.runs.start("morning", seeded.clock(), "v", "crashed-daemon", seeded.clock())
    jobs = book_everything(seeded, crashed)
    assert jobs and not outbox_ids(outbox)
    assert {r["id"] for r in attempt_rows(seeded, status="planned")} == {j.attempt_id for j in jobs}

    report = Runner(seeded).run("retry", clock.advance(timedelta(minutes=1)))
    assert report.counts.sent == len(jobs)
    assert outbox_ids(outbox) == Counter({j.attempt_id: 1 for j in jobs if j.channel is not ChannelKind.HANDOFF})
    assert {r["id"] for r in attempt_rows(seeded, status="sent")} == {j.attempt_id for j in jobs}
    assert not attempt_rows(seeded, status="planned")

    Runner(seeded).run("later", clock.advance(timedelta(hours=3)))  # contact windows open, dates change
    delivered = outbox_ids(outbox)
    assert set(delivered.values()) == {1}
    assert all(delivered[j.attempt_id] == 1 for j in jobs if j.channel is not ChannelKind.HANDOFF)


def test_two_deliverers_given_the_same_jobs_send_each_once(seeded: App, outbox: Path) -> None:
    jobs = book_everything(seeded, None)
    first, second = seeded.deliverer(seeded.pipeline), seeded.deliverer(seeded.pipeline)

    async def both() -> tuple[Any, Any]:
        try:
            return await first.deliver(jobs), await second.deliver(jobs)
        finally:
            await first.aclose()
            await second.aclose()

    one, two = asyncio.run(both())
    assert (one.sent, one.skipped) == (len(jobs), 0)
    assert (two.sent, two.skipped) == (0, len(jobs))
    assert outbox_ids(outbox) == Counter({j.attempt_id: 1 for j in jobs if j.channel is not ChannelKind.HANDOFF})


def test_two_deliverers_racing_on_one_loop_send_each_once(seeded: App, outbox: Path) -> None:
    jobs = book_everything(seeded, None)
    deliverers = [seeded.deliverer(seeded.pipeline) for _ in range(2)]

    async def race() -> list[Any]:
        try:
            return list(await asyncio.gather(*(d.deliver(jobs) for d in deliverers)))
        finally:
            for d in deliverers:
                await d.aclose()

    counts = asyncio.run(race())
    assert sum(c.sent for c in counts) == len(jobs)
    assert outbox_ids(outbox) == Counter({j.attempt_id: 1 for j in jobs if j.channel is not ChannelKind.HANDOFF})


# fallback and retries through test channels ---------------------------------------------------------------------
@dataclass
class ScriptedChannel:
    """A channel that answers from a script (then ``sent``) and keeps every message it was given."""

    kind: ChannelKind
    script: list[DeliveryResult] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    provider: str = "scripted"
    closed: bool = False
    on_send: Callable[[], None] | None = None

    async def send(self, message: Message) -> DeliveryResult:
        self.messages.append(message)
        if self.on_send is not None:
            self.on_send()
        if self.script:
            return self.script.pop(0)
        return DeliveryResult.sent(f"{self.kind.value}-{len(self.messages)}")

    async def aclose(self) -> None:
        self.closed = True


def borrower(app: App, days: int, **changes: Any) -> Account:
    """One borrower ``days`` overdue, written to the demo table (the send-time re-check reads it there)."""
    today = app.clock().date()
    row = demo_row("F1", today, due_date=today - timedelta(days=days), **changes)
    seed_demo(app.engine, 0, today)
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), [row])
    account = parse_row(row)
    assert isinstance(account, Account)
    return account


def deliverer_with(app: App, channels: dict[str, ScriptedChannel], stopping: threading.Event | None = None,
                   ) -> Deliverer:
    """A Deliverer with the app's compliance checks, the test channels and a tiny backoff."""
    wired = app.deliverer(app.pipeline)
    kinds: dict[ChannelKind, Channel] = {k: channels.get(k.value, ScriptedChannel(k)) for k in ChannelKind}
    return Deliverer(app.ledger, app.pipeline.composer, app.pipeline.loaded.schedule, kinds, policy=FAST,
                     clock=app.clock, headers_for=wired.headers_for, send_check=wired.send_check,
                     content_check=wired.content_check, stopping=stopping)


def deliver_with(app: App, account: Account, stopping: threading.Event | None = None,
                 **channels: ScriptedChannel) -> tuple[Any, list[DeliveryJob]]:
    """Plan and book ``account`` now, then deliver its jobs through the given channels."""
    now = app.clock()
    decisions = app.pipeline.planner.plan([account], app.ledger.load_history([account]), now)
    jobs, _ = app.booker().book(decisions, None, now)
    return delivered(deliverer_with(app, channels, stopping), jobs), jobs


def delivered(deliverer: Deliverer, jobs: list[DeliveryJob]) -> Any:
    """Deliver ``jobs``, then close the deliverer; the run's counts."""
    async def go() -> Any:
        try:
            return await deliverer.deliver(jobs)
        finally:
            await deliverer.aclose()

    return asyncio.run(go())


def test_a_permanent_email_failure_falls_back_to_sms(app: App) -> None:
    account = borrower(app, 5)  # firm: [email, sms], fallback
    mail = ScriptedChannel(ChannelKind.EMAIL, [DeliveryResult.permanent("550", "mailbox unavailable")])
    sms = ScriptedChannel(ChannelKind.SMS)
    counts, jobs = deliver_with(app, account, email=mail, sms=sms)

    assert [j.channel for j in jobs] == [ChannelKind.EMAIL]
    (email_try,) = attempt_rows(app, channel="email")
    (sms_try,) = attempt_rows(app, channel="sms")
    assert (email_try["status"], email_try["error_class"], email_try["error_code"]) == ("failed", "permanent", "550")
    assert (sms_try["status"], sms_try["try_no"], sms_try["parent_id"]) == ("sent", 1, email_try["id"])
    assert sms_try["reminder_key"] == email_try["reminder_key"]
    assert sms_try["address"] == mask_address("sms", "+8613812345678")
    assert [m.to for m in sms.messages] == ["+8613812345678"]
    assert [m.attempt_id for m in sms.messages] == [sms_try["id"]]
    assert (counts.sent, counts.failed) == (1, 1)
    assert mail.closed and sms.closed


def test_after_a_fallback_the_next_run_sends_nothing(app: App, clock: Any) -> None:
    account = borrower(app, 5)
    deliver_with(app, account, email=ScriptedChannel(ChannelKind.EMAIL, [DeliveryResult.permanent("550", "no")]))
    report = Runner(app).run("next", clock.advance(timedelta(minutes=1)))
    assert report.counts.sent == 0
    assert [(r["channel"], r["status"]) for r in attempt_rows(app) if r["try_no"] >= 1] == [
        ("email", "failed"), ("sms", "sent")]


def test_a_transient_failure_is_retried_and_both_tries_recorded(app: App) -> None:
    account = borrower(app, 2, email=None)  # gentle: [push, sms]; no push token
    sms = ScriptedChannel(ChannelKind.SMS, [DeliveryResult.transient("20429", "too many requests", 0.0)])
    counts, _ = deliver_with(app, account, sms=sms)

    tries = attempt_rows(app, channel="sms")
    assert [(t["try_no"], t["status"], t["error_class"]) for t in tries] == [
        (1, "failed", "transient"), (2, "sent", None)]
    assert tries[0]["error_code"] == "20429"
    assert tries[1]["provider_message_id"] == "sms-2"
    assert tries[0]["reminder_key"] == tries[1]["reminder_key"]
    assert [m.attempt_id for m in sms.messages] == [t["id"] for t in tries]
    assert (counts.sent, counts.failed) == (1, 0)


def test_a_backoff_holds_up_only_its_own_message(app: App) -> None:
    """With one place in flight, the message after a transient failure goes out before that failure's next try:
    the try waits out its backoff apart, not in the place of the messages behind it."""
    today = app.clock().date()
    rows = [demo_row(key, today, due_date=today - timedelta(days=2), email=None, phone=phone)
            for key, phone in (("F1", "+8613812345678"), ("F2", "+8613912345678"))]
    seed_demo(app.engine, 0, today)
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), rows)
    accounts = [account for account in map(parse_row, rows) if isinstance(account, Account)]
    assert len(accounts) == 2
    now = app.clock()
    decisions = app.pipeline.planner.plan(accounts, app.ledger.load_history(accounts), now)
    jobs, _ = app.booker().book(decisions, None, now)
    sms = ScriptedChannel(ChannelKind.SMS, [DeliveryResult.transient("20429", "too many requests", 0.0)])
    deliverer = deliverer_with(app, {"sms": sms})
    deliverer.policy = replace(FAST, concurrency=1, backoff_base=0.3, backoff_cap=0.3)
    counts = delivered(deliverer, jobs)
    assert [m.account_id for m in sms.messages] == ["F1", "F2", "F1"]
    assert [(t["account_id"], t["try_no"], t["status"]) for t in attempt_rows(app, channel="sms")] == [
        ("F1", 1, "failed"), ("F2", 1, "sent"), ("F1", 2, "sent")]
    assert (counts.sent, counts.failed) == (2, 0)


def test_after_its_tries_a_failed_channel_falls_back_from_its_first_try(app: App) -> None:
    """An email that failed for now, then for good on its second try, falls back to SMS; the SMS names the email's
    first try as its parent, as when the first try fails for good."""
    account = borrower(app, 5)  # firm: [email, sms], fallback
    mail = ScriptedChannel(ChannelKind.EMAIL, [DeliveryResult.transient("451", "try again later"),
                                               DeliveryResult.permanent("550", "mailbox unavailable")])
    sms = ScriptedChannel(ChannelKind.SMS)
    counts, _ = deliver_with(app, account, email=mail, sms=sms)
    first, second = attempt_rows(app, channel="email")
    assert [(t["try_no"], t["status"], t["error_class"]) for t in (first, second)] == [
        (1, "failed", "transient"), (2, "failed", "permanent")]
    (sms_try,) = attempt_rows(app, channel="sms")
    assert (sms_try["status"], sms_try["parent_id"]) == ("sent", first["id"])
    assert (counts.sent, counts.failed) == (1, 1)


def test_a_transient_failure_stops_after_max_tries(app: App) -> None:
    account = borrower(app, 2, email=None)
    sms = ScriptedChannel(ChannelKind.SMS, [DeliveryResult.transient("503", "unavailable")] * 5)
    counts, _ = deliver_with(app, account, sms=sms)
    tries = attempt_rows(app, channel="sms")
    assert [(t["try_no"], t["status"]) for t in tries] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert len(sms.messages) == FAST.max_tries
    assert (counts.sent, counts.failed) == (0, 1)


def test_a_fallback_never_uses_a_channel_the_borrower_opted_out_of(app: App) -> None:
    """Regression: the fallback channel was sent without the opt-out check."""
    account = borrower(app, 5, opt_out_channels="sms")
    sms = ScriptedChannel(ChannelKind.SMS)
    deliver_with(app, account, email=ScriptedChannel(ChannelKind.EMAIL, [DeliveryResult.permanent("550", "no")]),
                 sms=sms)
    assert sms.messages == []
    assert [(r["try_no"], r["status"]) for r in attempt_rows(app, channel="email")] == [(1, "failed")]
    assert [(r["status"], r["rule_id"]) for r in attempt_rows(app, channel="sms")] == [("suppressed", "opt-out")]


def test_a_fallback_never_uses_a_suppressed_address(app: App) -> None:
    """Regression: a number that replied STOP was texted as the fallback of a failed email."""
    suppress(app.engine, "sms", "+8613812345678", "inbound_stop", app.clock())
    account = borrower(app, 5)
    sms = ScriptedChannel(ChannelKind.SMS)
    deliver_with(app, account, email=ScriptedChannel(ChannelKind.EMAIL, [DeliveryResult.permanent("550", "no")]),
                 sms=sms)
    assert sms.messages == []
    assert [(r["try_no"], r["status"]) for r in attempt_rows(app, channel="email")] == [(1, "failed")]


def test_a_stop_between_tries_leaves_the_message_to_the_next_run(app: App, outbox: Path, clock: Any) -> None:
    """Regression: a stop (SIGTERM) in the backoff after try 1 left the reminder 'failed' and never retried."""
    stopping = threading.Event()
    account = borrower(app, 2, email=None)
    sms = ScriptedChannel(ChannelKind.SMS, [DeliveryResult.transient("20429", "too many requests", 0.0)],
                          on_send=stopping.set)  # SIGTERM arrives while the provider answers 429
    deliver_with(app, account, stopping, sms=sms)
    assert len(sms.messages) == 1

    report = Runner(app).run("next", clock.advance(timedelta(minutes=1)))
    assert report.counts.sent == 1
    assert [r["account_id"] for r in lines(outbox, "sms")] == ["F1"]
    tries = attempt_rows(app, channel="sms")
    assert [(t["try_no"], t["status"]) for t in tries] == [(1, "failed"), (2, "sent")]


def test_a_stop_spooled_by_the_web_app_is_honoured_by_the_next_run(app: App) -> None:
    borrower(app, 20, phone="+8613800138007", email="wang@example.cn")
    form = {"MessageSid": "SM" + "5" * 32, "From": "8613800138007", "To": "+15005550006", "FromCountry": "CN",
            "Body": "退订。"}
    reply = read_reply(form, Vocabulary.build(), "CN", app.clock())
    assert reply is not None
    spool = Spool(spool_path(app.settings.database_url, app.settings.outbox_dir))
    spool.append(to_entry(reply))  # what the web app does when the ledger is locked

    report = Runner(app).run("manual", app.clock())

    assert report.status == "completed"
    assert spool.entries() == []
    by_channel = {r["channel"]: r for r in attempt_rows(app, account_id="F1")}
    assert (by_channel["sms"]["status"], by_channel["sms"]["rule_id"]) == ("suppressed", "opt-out")
    assert by_channel["email"]["status"] == "sent"
