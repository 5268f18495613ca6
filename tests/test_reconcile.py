"""Reconciling attempts a crash left ``sending`` (dispatcher/pipeline/reconcile.py), against the Twilio stand-in,
the SMTP stand-in and the outbox.

A "crash" is staged with the real pieces: a run is started and booked, some of its
attempts are claimed (``planned → sending``) and, for some SMS, the message is handed
to the Twilio stand-in; then nothing is recorded, as if the process died. The clock is
a fixed clock set to the real time (the stand-in stamps messages with the real time)
on profile ``none`` so that no contact window gets in the way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import FixedClock
from sqlalchemy import insert, select
from standins.smtp_server import SmtpStandin
from standins.twilio_server import TwilioStandin

from dispatcher.app import App, build_app
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Message, Outcome
from dispatcher.channels.outbox import OutboxChannel
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.cli import main
from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.jobs import DeliveryJob
from dispatcher.pipeline.reconcile import ReconcileCounts
from dispatcher.pipeline.run import Runner
from dispatcher.settings import DEFAULT_RECONCILE_AFTER, Settings

FROM_NUMBER = "+14155550999"
RECEIVED, NEVER, RECENT = "+8613800138001", "+8613800138002", "+8613800138003"
SHARED = "+8613800138004"
OLD = timedelta(seconds=DEFAULT_RECONCILE_AFTER + 60)
"""How long before the reconciliation a crashed attempt was claimed: past the threshold."""


def borrower(account_id: str, *, phone: str = "", email: str = "", push_token: str = "",
             days_overdue: int = 2, today: date) -> dict[str, Any]:
    return {
        "account_id": account_id, "name": "李娜", "phone": phone, "email": email, "push_token": push_token,
        "locale": "zh-CN", "timezone": "Asia/Shanghai", "currency": "CNY", "overdue_amount": "880.00",
        "due_date": today - timedelta(days=days_overdue), "deadline": None,
        "repayment_account": "6222 0212 3456 7890",
    }


class World:
    """The app on the workdir's ledger with SMS through the stand-in, plus ways to stage a crash."""

    def __init__(self, app: App, clock: FixedClock, twilio: TwilioStandin, outbox: Path) -> None:
        self.app, self.clock, self.twilio, self.outbox = app, clock, twilio, outbox

    @property
    def today(self) -> date:
        return self.clock().astimezone(ZoneInfo("Asia/Shanghai")).date()

    def seed(self, *rows: dict[str, Any]) -> None:
        demo_metadata.create_all(self.app.engine)
        with self.app.engine.begin() as connection:
            connection.execute(insert(demo_accounts), list(rows))

    def book_crashed_run(self) -> dict[tuple[str, str], DeliveryJob]:
        """A run started, planned and booked by a daemon that then died: (account, channel) → job."""
        app, pipeline = self.app, self.app.pipeline
        run_id = app.runs.start("crashed", self.clock(), pipeline.loaded.version, "crashed-daemon", self.clock())
        (batch,) = list(pipeline.source.batches())
        decisions = pipeline.planner.plan(batch.accounts, app.ledger.load_history(batch.accounts), self.clock())
        jobs, _ = app.booker().book(decisions, run_id, self.clock())
        return {(job.account.account_id, job.channel.value): job for job in jobs}

    def claim(self, *jobs: DeliveryJob, at: datetime) -> None:
        """``planned → sending`` as the deliverer does just before calling the provider."""
        claimed = self.app.ledger.start_sending([job.attempt_id for job in jobs], at)
        assert claimed == {job.attempt_id for job in jobs}

    def hand_to_twilio(self, job: DeliveryJob) -> str:
        """The provider call of a claimed SMS that went through before the crash; returns its SID."""
        async def send() -> str:
            assert self.app.providers.twilio is not None
            channel = TwilioSmsChannel(self.app.providers.twilio)
            try:
                result = await channel.send(Message(job.attempt_id, job.reminder_key, job.account.account_id,
                                                    ChannelKind.SMS, job.address, "信用钱包: 请还款。回复TD退订"))
            finally:
                await channel.aclose()
            assert result.outcome is Outcome.SENT and result.provider_message_id
            return result.provider_message_id

        return asyncio.run(send())

    def reconcile(self) -> ReconcileCounts:
        """What a run does first: settle attempts ``sending`` for longer than DISPATCHER_RECONCILE_AFTER."""
        async def settle() -> ReconcileCounts:
            reconciler = self.app.reconciler(self.app.pipeline)
            now = self.clock()
            try:
                return await reconciler.reconcile(now - timedelta(seconds=self.app.settings.reconcile_after), now)
            finally:
                await reconciler.aclose()

        return asyncio.run(settle())

    def attempt(self, attempt_id: int) -> dict[str, Any]:
        with self.app.engine.connect() as connection:
            return dict(connection.execute(select(attempts).where(attempts.c.id == attempt_id)).mappings().one())

    def rows(self, account_id: str, channel: str) -> list[dict[str, Any]]:
        query = select(attempts).where(attempts.c.account_id == account_id, attempts.c.channel == channel,
                                       attempts.c.try_no >= 1).order_by(attempts.c.id)
        with self.app.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    def received(self, phone: str) -> list[str]:
        return [m["sid"] for m in self.twilio.messages if m["to"] == phone]


@pytest.fixture
def make_world(anytime: Path, workdir: Path, twilio: TwilioStandin, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    built: list[App] = []

    def make(**env: str) -> World:
        monkeypatch.delenv("TWILIO_REGION", raising=False)
        monkeypatch.delenv("TWILIO_EDGE", raising=False)
        for name, value in {"TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
                            "TWILIO_FROM_NUMBER": FROM_NUMBER, "TWILIO_API_BASE_URL": twilio.url,
                            "TWILIO_TIMEOUT": "3", **env}.items():
            monkeypatch.setenv(name, value)
        clock = FixedClock(datetime.now(UTC).replace(microsecond=0) - OLD - timedelta(minutes=1))
        app = build_app(Settings.from_env(), clock=clock)
        built.append(app)
        return World(app, clock, twilio, workdir / "outbox")

    yield make
    for app in built:
        app.engine.dispose()


def test_an_sms_twilio_received_is_marked_sent_with_its_sid_and_not_sent_again(make_world: Any) -> None:
    world = make_world()
    world.seed(borrower("S-1", phone=RECEIVED, today=world.today))
    job = world.book_crashed_run()[("S-1", "sms")]
    world.claim(job, at=world.clock())
    sid = world.hand_to_twilio(job)  # ... and the process died before recording the answer
    assert world.attempt(job.attempt_id)["status"] == "sending"

    world.clock.advance(OLD)
    counts = world.reconcile()
    assert (counts.found_sent, counts.resent, counts.unknown) == (1, 0, 0)
    row = world.attempt(job.attempt_id)
    assert (row["status"], row["provider_message_id"]) == ("sent", sid)
    assert "reconciled" in row["detail"]

    assert Runner(world.app).run("morning", world.clock()).status == "completed"
    assert world.received(RECEIVED) == [sid]  # not sent twice
    assert [r["status"] for r in world.rows("S-1", "sms")] == ["sent"]


def test_an_sms_twilio_never_received_is_planned_again_and_the_next_run_sends_it_once(make_world: Any) -> None:
    world = make_world()
    world.seed(borrower("S-2", phone=NEVER, today=world.today))
    job = world.book_crashed_run()[("S-2", "sms")]
    world.claim(job, at=world.clock())  # died between the claim and the provider call

    world.clock.advance(OLD)
    counts = world.reconcile()
    assert (counts.found_sent, counts.resent, counts.unknown) == (0, 1, 0)
    row = world.attempt(job.attempt_id)
    assert (row["status"], row["attempted_at"], row["provider_message_id"]) == ("planned", None, None)
    assert world.received(NEVER) == []

    report = Runner(world.app).run("morning", world.clock())
    assert report.status == "completed" and report.counts.sent == 1
    (sid,) = world.received(NEVER)
    (row,) = world.rows("S-2", "sms")  # the same claim, sent: no second try row
    assert (row["id"], row["status"], row["provider_message_id"]) == (job.attempt_id, "sent", sid)
    assert Runner(world.app).run("evening", world.clock()).counts.sent == 0
    assert world.received(NEVER) == [sid]


def test_the_next_run_reconciles_by_itself(make_world: Any) -> None:
    """Runner.run reconciles before booking: the crashed SMS is recorded or resent, each exactly once."""
    world = make_world()
    world.seed(borrower("S-1", phone=RECEIVED, today=world.today), borrower("S-2", phone=NEVER, today=world.today))
    jobs = world.book_crashed_run()
    world.claim(jobs[("S-1", "sms")], jobs[("S-2", "sms")], at=world.clock())
    sid = world.hand_to_twilio(jobs[("S-1", "sms")])
    world.clock.advance(OLD)

    assert Runner(world.app).run("morning", world.clock()).status == "completed"
    assert world.received(RECEIVED) == [sid]
    assert len(world.received(NEVER)) == 1
    assert {a: [r["status"] for r in world.rows(a, "sms")] for a in ("S-1", "S-2")} == {
        "S-1": ["sent"], "S-2": ["sent"]}


def test_two_crashed_sms_to_one_number_with_one_received_settle_as_one_sent_one_resent(make_world: Any) -> None:
    """Two loans of one borrower (a shared phone): Twilio's one message must not settle both attempts."""
    world = make_world()
    world.seed(borrower("L-1", phone=SHARED, today=world.today), borrower("L-2", phone=SHARED, today=world.today))
    jobs = world.book_crashed_run()
    first, second = jobs[("L-1", "sms")], jobs[("L-2", "sms")]
    world.claim(first, second, at=world.clock())
    sid = world.hand_to_twilio(second)
    world.clock.advance(OLD)

    counts = world.reconcile()
    assert (counts.found_sent, counts.resent) == (1, 1)
    statuses = sorted((world.attempt(j.attempt_id)["status"], world.attempt(j.attempt_id)["provider_message_id"])
                      for j in (first, second))
    assert statuses == [("planned", None), ("sent", sid)]
    Runner(world.app).run("morning", world.clock())
    assert len(world.received(SHARED)) == 2  # one message per loan, as booked
    assert sorted(world.attempt(j.attempt_id)["status"] for j in (first, second)) == ["sent", "sent"]


def smtp_env(smtp: SmtpStandin) -> dict[str, str]:
    """Email through the SMTP stand-in: a relay nobody can ask whether it took a message."""
    return {"SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
            "EMAIL_FROM": "Reminders <reminders@example.cn>"}


@pytest.mark.parametrize(("policy", "expected"), [(None, "unknown"), ("mark-unknown", "unknown"),
                                                  ("resend", "planned")])
def test_a_crashed_smtp_email_follows_the_unknown_outcome_policy(make_world: Any, smtp: SmtpStandin,
                                                                 policy: str | None, expected: str) -> None:
    world = make_world(**smtp_env(smtp), **({"DISPATCHER_UNKNOWN_OUTCOME": policy} if policy else {}))
    world.seed(borrower("E-1", email="e1@example.cn", days_overdue=5, today=world.today))  # firm: email
    email = world.book_crashed_run()[("E-1", "email")]
    world.claim(email, at=world.clock())
    world.clock.advance(OLD)

    counts = world.reconcile()
    assert (counts.found_sent, counts.resent, counts.unknown) == (
        (0, 0, 1) if expected == "unknown" else (0, 1, 0))
    row = world.attempt(email.attempt_id)
    assert row["status"] == expected
    if expected == "unknown":
        assert row["error_code"] == "outcome_unknown" and row["attempted_at"] is not None
    else:
        assert row["attempted_at"] is None

    Runner(world.app).run("morning", world.clock())
    if expected == "unknown":  # never blindly resent
        assert [r["status"] for r in world.rows("E-1", "email")] == ["unknown"]
        assert smtp.messages == []
    else:
        assert [r["status"] for r in world.rows("E-1", "email")] == ["sent"]
        assert len(smtp.messages) == 1


def test_a_crashed_outbox_send_is_asked_of_the_outbox_whatever_the_policy(make_world: Any) -> None:
    """The outbox is the provider: what it wrote is sent, what it never wrote goes out once, none unknown."""
    world = make_world()
    world.seed(borrower("E-1", email="e1@example.cn", days_overdue=5, today=world.today),  # firm: email
               borrower("P-1", push_token="fcm-token-P-1", today=world.today),  # gentle: push
               borrower("P-2", push_token="fcm-token-P-2", today=world.today))
    jobs = world.book_crashed_run()
    email, push, written = jobs[("E-1", "email")], jobs[("P-1", "push")], jobs[("P-2", "push")]
    world.claim(email, push, written, at=world.clock())
    asyncio.run(write_to_outbox(world, written))  # handed over and written, then the process died

    world.clock.advance(OLD)
    counts = world.reconcile()
    assert (counts.found_sent, counts.resent, counts.unknown) == (1, 2, 0)
    assert world.attempt(written.attempt_id)["provider_message_id"] == f"outbox-push-{written.attempt_id}"
    Runner(world.app).run("morning", world.clock())
    assert [r["status"] for r in world.rows("E-1", "email")] == ["sent"]
    pushed = [json.loads(line)["attempt_id"]
              for line in (world.outbox / "push.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(pushed) == sorted([push.attempt_id, written.attempt_id])  # each exactly once
    assert len(list((world.outbox / "email").glob("*.eml"))) == 1


async def write_to_outbox(world: World, job: DeliveryJob) -> None:
    channel = OutboxChannel(job.channel, world.outbox)
    try:
        result = await channel.send(Message(job.attempt_id, job.reminder_key, job.account.account_id, job.channel,
                                            job.address, "您有一条新消息"))
    finally:
        await channel.aclose()
    assert result.outcome is Outcome.SENT


def test_a_recent_sending_attempt_is_left_alone(make_world: Any) -> None:
    world = make_world()
    world.seed(borrower("S-3", phone=RECENT, today=world.today), borrower("S-2", phone=NEVER, today=world.today))
    jobs = world.book_crashed_run()
    world.claim(jobs[("S-2", "sms")], at=world.clock())
    world.clock.advance(OLD)
    recent_at = world.clock() - timedelta(seconds=DEFAULT_RECONCILE_AFTER - 30)  # may still be in flight
    world.claim(jobs[("S-3", "sms")], at=recent_at)
    before = world.attempt(jobs[("S-3", "sms")].attempt_id)

    counts = world.reconcile()
    assert (counts.found_sent, counts.resent, counts.unknown) == (0, 1, 0)  # only the old one
    assert world.attempt(jobs[("S-3", "sms")].attempt_id) == before
    Runner(world.app).run("morning", world.clock())
    assert world.received(RECENT) == []  # claimed by someone still working on it: not sent by this run
    assert world.attempt(jobs[("S-3", "sms")].attempt_id)["status"] == "sending"


def test_attempts_status_unknown_lists_the_unknown_one(make_world: Any, smtp: SmtpStandin,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    world = make_world(**smtp_env(smtp))
    world.seed(borrower("E-1", email="e1@example.cn", days_overdue=5, today=world.today),
               borrower("S-1", phone=RECEIVED, today=world.today))
    jobs = world.book_crashed_run()
    world.claim(jobs[("E-1", "email")], at=world.clock())
    world.clock.advance(OLD)
    world.reconcile()
    Runner(world.app).run("morning", world.clock())  # S-1 is sent normally

    capsys.readouterr()
    assert main(["attempts", "--status", "unknown", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["account_id"], a["channel"], a["status"], a["error_code"]) for a in listed] == [
        ("E-1", "email", "unknown", "outcome_unknown")]
    assert main(["attempts", "--status", "unknown"]) == 0
    table = capsys.readouterr().out
    assert "E-1" in table and "S-1" not in table


def test_a_message_of_an_attempt_still_in_flight_does_not_settle_a_crashed_one(make_world: Any) -> None:
    """Two loans of one borrower (profile none: no per-borrower cap): L-1 crashed before Twilio, L-2 is in flight."""
    world = make_world()
    world.seed(borrower("L-1", phone=SHARED, today=world.today), borrower("L-2", phone=SHARED, today=world.today))
    jobs = world.book_crashed_run()
    crashed, in_flight = jobs[("L-1", "sms")], jobs[("L-2", "sms")]
    world.claim(crashed, at=world.clock())
    world.clock.advance(OLD)
    world.claim(in_flight, at=world.clock() - timedelta(seconds=5))  # a worker is sending it right now
    sid = world.hand_to_twilio(in_flight)  # Twilio took it; the worker has not recorded the answer yet

    world.reconcile()
    row = world.attempt(crashed.attempt_id)
    assert row["provider_message_id"] != sid, "the crashed attempt took the in-flight attempt's message"
    assert row["status"] in ("sending", "planned")
