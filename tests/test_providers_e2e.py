"""Acceptance of the providers: whole runs through the Twilio, SMTP and FCM stand-ins.

Every test builds its own working directory (schedules.yaml, templates/, a SQLite
ledger), an app on a fixed clock at 10:00 in Asia/Shanghai and, where needed,
the aiohttp web app under aiohttp's test client. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select
from standins.fcm_server import FcmStandin
from standins.smtp_server import Received, SmtpStandin
from standins.twilio_server import TwilioStandin
from twilio.request_validator import RequestValidator

from dispatcher.app import App, build_app
from dispatcher.cli import main
from dispatcher.demo import demo_accounts, demo_metadata, seed_demo
from dispatcher.ledger.tables import attempts, suppressions
from dispatcher.masking import address_hash
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.run import Runner, RunReport
from dispatcher.settings import Settings
from dispatcher.tokens import verify_unsubscribe
from dispatcher.web.server import INBOUND_PATH, build_web_app

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
"""10:00 in Asia/Shanghai, the zone of every borrower below."""
TODAY = date(2026, 3, 10)
PUBLIC_URL = "https://reminders.example.test"
SECRET = "e2e-unsubscribe-secret"
FROM_NUMBER = "+14155550999"
EMAIL_FROM = "信用钱包 <noreply@xinyongqianbao.example.cn>"
DEBT_WORDS = ("逾期", "欠款", "还款", "overdue", "debt", "repay")
CURRENCY_MARKS = ("¥", "￥", "$", "€", "£", "CNY", "USD", "元")


class Clock:
    """The app's clock; tests move it a whole number of days so runs stay at 10:00 local."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    """One working directory, its app and its clock."""

    tmp: Path
    env: dict[str, str]
    app: App
    clock: Clock

    def add(self, *rows: dict[str, Any]) -> None:
        demo_metadata.create_all(self.app.engine)
        if rows:
            with self.app.engine.begin() as connection:
                connection.execute(insert(demo_accounts), list(rows))

    def run(self) -> RunReport:
        report = Runner(self.app).run("morning", self.clock.now)
        assert report.status == "completed"
        return report

    def advance(self, days: int) -> None:
        self.clock.now += timedelta(days=days)

    def attempts(self, account_id: str | None = None, **equal: Any) -> list[dict[str, Any]]:
        query = select(attempts).order_by(attempts.c.id)
        if account_id is not None:
            query = query.where(attempts.c.account_id == account_id)
        with self.app.engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(query).mappings()]
        return [r for r in rows if all(r[k] == v for k, v in equal.items())]

    def suppressions(self, *, active: bool = True) -> list[dict[str, Any]]:
        query = select(suppressions).order_by(suppressions.c.id)
        if active:
            query = query.where(suppressions.c.lifted_at.is_(None))
        with self.app.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    @property
    def outbox(self) -> Path:
        return self.tmp / "outbox"


def provider_env(tmp: Path, twilio: TwilioStandin | None, smtp: SmtpStandin | None,
                 fcm: FcmStandin | None, ledger_url: str) -> dict[str, str]:
    env = {
        "DISPATCHER_DATABASE_URL": ledger_url,
        "DISPATCHER_OUTBOX_DIR": str(tmp / "outbox"),
        "DISPATCHER_PUBLIC_URL": PUBLIC_URL,
        "DISPATCHER_SECRET_KEY": SECRET,
        "DISPATCHER_MAX_TRIES": "3",
    }
    if twilio is not None:
        env.update(TWILIO_ACCOUNT_SID=twilio.account_sid, TWILIO_AUTH_TOKEN=twilio.auth_token,
                   TWILIO_FROM_NUMBER=FROM_NUMBER, TWILIO_API_BASE_URL=twilio.url, TWILIO_TIMEOUT="3")
    if smtp is not None:
        env.update(SMTP_HOST=smtp.host, SMTP_PORT=str(smtp.port), SMTP_SECURITY="none", EMAIL_FROM=EMAIL_FROM,
                   SMTP_TIMEOUT="3")
    if fcm is not None:
        key_file = fcm.write_service_account(tmp / "service-account.json")
        env.update(FCM_PROJECT_ID=fcm.project_id, FCM_CREDENTIALS_FILE=str(key_file), FCM_API_BASE_URL=fcm.url,
                   FCM_TIMEOUT="3")
    return env


@pytest.fixture
def make_world(tmp_path: Path, ledger_url: str) -> Iterator[Callable[..., World]]:
    """Builds a world with the given stand-ins configured (the others use the outbox)."""
    built: list[World] = []

    def make(twilio: TwilioStandin | None = None, smtp: SmtpStandin | None = None,
             fcm: FcmStandin | None = None, **extra: str) -> World:
        shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
        shutil.copytree(REPO / "templates", tmp_path / "templates")
        env = {**provider_env(tmp_path, twilio, smtp, fcm, ledger_url), **extra}
        clock = Clock()
        app = build_app(Settings.from_env(env, schedules=str(tmp_path / "schedules.yaml")), clock=clock)
        world = World(tmp_path, env, app, clock)
        world.add()  # the (empty) account table
        built.append(world)
        return world

    yield make
    for world in built:
        world.app.engine.dispose()


def borrower(account_id: str, days_overdue: int, n: int, **overrides: Any) -> dict[str, Any]:
    """A zh-CN borrower in Shanghai with all three addresses, ``days_overdue`` days late today."""
    row: dict[str, Any] = {
        "account_id": account_id, "name": "王伟", "phone": f"+86138001380{n:02d}",
        "email": f"borrower{n}@example.cn", "push_token": f"fcm-device-token-{n:04d}", "locale": "zh-CN",
        "timezone": "Asia/Shanghai", "currency": "CNY", "overdue_amount": "1234.56",
        "due_date": TODAY - timedelta(days=days_overdue), "deadline": None,
        "repayment_account": "6222 0212 3456 7890", "do_not_contact": None, "dispute": None,
        "promise_to_pay_until": None, "opt_out_channels": None,
    }
    row.update(overrides)
    return row


BLOCKLIST_TRIPPER = "L00000020"
"""A demo account whose unsubscribe token contains "MjAiLCJ" (from '20","t"'), i.e. "jail" in any case."""

FIRM = borrower("A-FIRM", 5, 1)  # firm, occurrence 0: email, SMS held back as its fallback
GENTLE = borrower("A-GENTLE", 2, 2)  # gentle: push + SMS
FINAL = borrower("A-FINAL", 20, 3)  # final, occurrence 0 (day 15-21): SMS + email + push


def post_inbound(app: App, auth_token: str, sender: str, body: str) -> int:
    """POST a correctly signed Twilio inbound message to the web app; returns the HTTP status."""
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": "AC" + "0" * 32, "From": sender,
              "To": FROM_NUMBER, "Body": body, "NumMedia": "0"}
    signature = RequestValidator(auth_token).compute_signature(PUBLIC_URL + INBOUND_PATH, params)

    async def go() -> int:
        async with TestClient(TestServer(build_web_app(app))) as client:
            response = await client.post(INBOUND_PATH, data=params, headers={"X-Twilio-Signature": signature})
            await response.read()
            return response.status

    return asyncio.run(go())


def unsubscribe_link(received: Received) -> str:
    """The one target of a received email's List-Unsubscribe header: the signed https link, never a mailto."""
    header = str(received.message["List-Unsubscribe"])
    targets = re.findall(r"<([^<>]+)>", header)
    assert len(targets) == 1 and targets[0].startswith("https://"), header
    return str(targets[0])


def check_email(received: Received) -> None:
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["Message-ID"]
    link = unsubscribe_link(received)
    assert link.startswith(f"{PUBLIC_URL}/unsubscribe/")
    claim = verify_unsubscribe(SECRET.encode(), link.removeprefix(f"{PUBLIC_URL}/unsubscribe/"))
    assert claim is not None
    assert (claim.channel, claim.address) == ("email", received.rcpt_tos[0])
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def check_push(fcm: FcmStandin, request: Any) -> None:
    assert request.path == f"/v1/projects/{fcm.project_id}/messages:send"
    scheme, _, bearer = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer" and bearer in fcm.issued
    message = request.json()["message"]
    assert {"token", "notification", "data"} <= set(message)
    assert set(message["notification"]) == {"title", "body"}
    shown = f"{message['notification']['title']} {message['notification']['body']}"
    assert not any(ch.isdigit() for ch in shown), shown
    assert not any(mark in shown for mark in CURRENCY_MARKS), shown
    assert not any(word in shown.lower() for word in DEBT_WORDS), shown
    data = message["data"]
    assert all(isinstance(v, str) for v in data.values())
    assert data["amount"] and data["deadline"] and data["account_id"]
    assert data["amount"] not in shown


def test_one_run_delivers_every_due_reminder_through_the_three_providers(
    make_world: Callable[..., World], twilio: TwilioStandin, smtp: SmtpStandin, fcm: FcmStandin
) -> None:
    world = make_world(twilio, smtp, fcm)
    seed_demo(world.app.engine, 60, TODAY)
    world.add(FIRM, GENTLE, FINAL)

    report = world.run()

    rows = world.attempts()
    messages = ("sms", "email", "push")
    sent = Counter((r["channel"], r["provider"]) for r in rows if r["status"] == "sent" and r["channel"] in messages)
    assert sent == {("sms", "twilio"): len(twilio.messages), ("email", "smtp"): len(smtp.messages),
                    ("push", "fcm"): len(fcm.sends)}
    assert min(sent.values()) >= 3
    others = [r for r in rows if r["status"] == "sent" and r["channel"] not in messages]  # the demo's later steps
    assert {r["channel"] for r in others} <= {"voice", "handoff"}
    failed = [(r["channel"], r["error_code"], r["error_message"]) for r in rows if r["status"] == "failed"]
    assert (report.counts.sent, failed) == (sum(sent.values()) + len(others), [])
    assert {r["status"] for r in rows} <= {"sent", "suppressed", "deferred"}  # nothing failed or left behind
    assert {r["rule_id"] for r in rows if r["status"] == "suppressed"} <= {"no_address"}
    assert {r["rule_id"] for r in rows if r["status"] == "deferred"} <= {"window"}  # US borrowers, evening there
    mine = {(r["account_id"], r["channel"]) for r in rows if r["account_id"].startswith("A-")}
    assert mine == {("A-FIRM", "email"), ("A-GENTLE", "push"), ("A-GENTLE", "sms"),
                    ("A-FINAL", "sms"), ("A-FINAL", "email"), ("A-FINAL", "push")}

    # Twilio: Basic auth, the documented form, the status callback URL; ids and numbers match the ledger.
    basic = "Basic " + base64.b64encode(f"{twilio.account_sid}:{twilio.auth_token}".encode()).decode()
    assert len(twilio.creates) == len(twilio.messages)
    for request in twilio.creates:
        assert request.headers["Authorization"] == basic
        form = request.form
        assert {"To", "From", "Body", "StatusCallback"} <= set(form)
        assert (form["From"], form["StatusCallback"]) == (FROM_NUMBER, f"{PUBLIC_URL}/webhooks/twilio/status")
        assert form["Body"]
    sms_rows = [r for r in rows if r["channel"] == "sms" and r["status"] == "sent"]
    assert sorted(r["provider_message_id"] for r in sms_rows) == sorted(m["sid"] for m in twilio.messages)
    assert sorted(r["address_hash"] for r in sms_rows) == sorted(address_hash(r.form["To"]) for r in twilio.creates)

    # SMTP: multipart/alternative with one-click unsubscribe headers pointing at the public URL.
    for received in smtp.messages:
        check_email(received)
    email_rows = [r for r in rows if r["channel"] == "email" and r["status"] == "sent"]
    assert sorted(r["address_hash"] for r in email_rows) == sorted(
        address_hash(m.rcpt_tos[0]) for m in smtp.messages)
    assert sorted(r["provider_message_id"] for r in email_rows) == sorted(
        str(m.message["Message-ID"]) for m in smtp.messages)

    # FCM: bearer token, v1 shape, a notification that tells onlookers nothing about a debt.
    assert len(fcm.message_requests) == len(fcm.sends)
    for request in fcm.message_requests:
        check_push(fcm, request)

    assert not world.outbox.exists() or not any(world.outbox.rglob("*"))


def test_with_only_twilio_configured_email_and_push_go_to_the_outbox(
    make_world: Callable[..., World], twilio: TwilioStandin
) -> None:
    world = make_world(twilio)
    world.add(FIRM, GENTLE, FINAL)

    world.run()

    sent = Counter((r["channel"], r["provider"]) for r in world.attempts(status="sent"))
    assert sent == {("sms", "twilio"): 2, ("email", "outbox"): 2, ("push", "outbox"): 2}
    assert sorted(m["to"] for m in twilio.messages) == sorted([GENTLE["phone"], FINAL["phone"]])
    emails = sorted((world.outbox / "email").glob("*.eml"))
    assert sorted(p.name.split("-", 1)[1] for p in emails) == ["A-FINAL.eml", "A-FIRM.eml"]
    assert all(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in p.read_bytes() for p in emails)
    pushes = [json.loads(line) for line in (world.outbox / "push.jsonl").read_text("utf-8").splitlines()]
    assert sorted(p["to"] for p in pushes) == sorted([GENTLE["push_token"], FINAL["push_token"]])
    assert not (world.outbox / "sms.jsonl").exists()


def test_inbound_stop_suppresses_sms_until_start(
    make_world: Callable[..., World], twilio: TwilioStandin, smtp: SmtpStandin, fcm: FcmStandin
) -> None:
    world = make_world(twilio, smtp, fcm)
    account = borrower("A-STOP", 15, 4)  # final: occurrence 0 today, 1 in 7 days, 2 in 14 days
    phone = account["phone"]
    world.add(account)
    world.run()
    assert [r.form["To"] for r in twilio.creates] == [phone]

    assert post_inbound(world.app, twilio.auth_token, phone, " stop ") == 200
    (stop,) = world.suppressions()
    assert (stop["channel"], stop["source"], stop["address_hash"]) == ("sms", "inbound_stop", address_hash(phone))

    world.advance(7)
    world.run()
    second = {r["channel"]: r for r in world.attempts("A-STOP", occurrence=1)}
    assert (second["sms"]["status"], second["sms"]["rule_id"]) == ("suppressed", "opt-out")
    assert (second["email"]["status"], second["email"]["provider"]) == ("sent", "smtp")
    assert (second["push"]["status"], second["push"]["provider"]) == ("sent", "fcm")
    assert [r.form["To"] for r in twilio.creates] == [phone]
    assert (len(smtp.messages), len(fcm.sends)) == (2, 2)

    assert post_inbound(world.app, twilio.auth_token, phone, "START") == 200
    assert world.suppressions() == []

    world.advance(7)
    world.run()
    third = {r["channel"]: r for r in world.attempts("A-STOP", occurrence=2)}
    assert {c: (r["status"], r["provider"]) for c, r in third.items()} == {
        "sms": ("sent", "twilio"), "email": ("sent", "smtp"), "push": ("sent", "fcm")}
    assert [r.form["To"] for r in twilio.creates] == [phone, phone]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The CLI replaces the root logger's handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_email_rejected_with_550_falls_back_to_sms_and_the_cli_shows_both(
    make_world: Callable[..., World], twilio: TwilioStandin, smtp: SmtpStandin, fcm: FcmStandin,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    world = make_world(twilio, smtp, fcm)
    world.add(FIRM)
    smtp.reject(FIRM["email"])  # 550 5.1.1 No such user here

    report = world.run()

    email, sms = world.attempts("A-FIRM")
    assert (email["channel"], email["try_no"], email["status"], email["error_class"], email["error_code"],
            email["provider"]) == ("email", 1, "failed", "permanent", "550", "smtp")
    assert (sms["channel"], sms["try_no"], sms["status"], sms["provider"], sms["parent_id"]) == (
        "sms", 1, "sent", "twilio", email["id"])
    assert sms["provider_message_id"] == twilio.messages[0]["sid"]
    assert [r.form["To"] for r in twilio.creates] == [FIRM["phone"]]
    assert smtp.messages == []
    assert [(s["channel"], s["source"]) for s in world.suppressions()] == [("email", "bad_address")]
    # one reminder planned: its email failed and its SMS fallback went out, so it counts once, as sent
    assert (report.counts.planned, report.counts.sent, report.counts.failed) == (1, 1, 0)

    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    for name in ("DISPATCHER_SOURCE_URL", "DISPATCHER_SCHEDULES", "TWILIO_REGION", "TWILIO_EDGE"):
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    code = main(["--log-level", "WARNING", "--schedules", str(world.tmp / "schedules.yaml"),
                 "attempts", "--account", "A-FIRM", "--format", "json"])
    assert code == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["channel"], r["status"], r["error_code"], r["parent_id"]) for r in listed] == [
        (email["id"], "email", "failed", "550", None), (sms["id"], "sms", "sent", None, email["id"])]


def test_fallback_never_texts_a_number_that_replied_stop(
    make_world: Callable[..., World], twilio: TwilioStandin, smtp: SmtpStandin
) -> None:
    world = make_world(twilio, smtp)
    world.add(FIRM)
    smtp.reject(FIRM["email"])
    assert post_inbound(world.app, twilio.auth_token, FIRM["phone"], "STOP") == 200

    world.run()

    (email,) = world.attempts("A-FIRM", channel="email")
    sms = world.attempts("A-FIRM", channel="sms")
    assert twilio.creates == []
    assert (email["status"], email["error_code"]) == ("failed", "550")
    assert [(r["status"], r["rule_id"], r["parent_id"]) for r in sms] == [("suppressed", "opt-out", email["id"])]


TWILIO_REFUSALS = [
    pytest.param(21610, "provider_opt_out", "opt-out", id="21610-recipient-opted-out"),
    pytest.param(21211, "bad_address", "bad-address", id="21211-invalid-number"),
]


@pytest.mark.parametrize(("code", "source", "rule_id"), TWILIO_REFUSALS)
def test_twilio_permanent_refusal_suppresses_the_number_without_retry(
    make_world: Callable[..., World], twilio: TwilioStandin, code: int, source: str, rule_id: str
) -> None:
    world = make_world(twilio)  # DISPATCHER_MAX_TRIES=3: a retry would be allowed for a transient error
    account = borrower("A-REFUSED", 15, 5)
    world.add(account)
    twilio.fail_for(account["phone"], 400, code)

    world.run()

    (sms,) = world.attempts("A-REFUSED", channel="sms")
    assert (sms["try_no"], sms["status"], sms["error_class"], sms["error_code"], sms["provider"]) == (
        1, "failed", "permanent", str(code), "twilio")
    assert len(twilio.creates) == 1
    (suppressed,) = world.suppressions()
    assert (suppressed["channel"], suppressed["source"], suppressed["account_id"]) == ("sms", source, "A-REFUSED")
    assert suppressed["address_hash"] == address_hash(account["phone"])

    world.advance(7)
    world.run()
    (later,) = world.attempts("A-REFUSED", channel="sms", occurrence=1)
    assert (later["status"], later["rule_id"]) == ("suppressed", rule_id)
    assert len(twilio.creates) == 1


def test_twilio_429_with_retry_after_is_retried_once_then_sent(
    make_world: Callable[..., World], twilio: TwilioStandin
) -> None:
    world = make_world(twilio, DISPATCHER_MAX_TRIES="2")
    world.add(GENTLE)
    twilio.fail_next(429, 20429, retry_after=1)

    started = time.monotonic()
    report = world.run()
    elapsed = time.monotonic() - started

    tries = [(r["try_no"], r["status"], r["error_class"], r["error_code"])
             for r in world.attempts("A-GENTLE", channel="sms")]
    assert tries == [(1, "failed", "transient", "20429"), (2, "sent", None, None)]
    assert len(twilio.creates) == 2 and len(twilio.messages) == 1
    assert elapsed >= 1.0  # Retry-After: 1 was honoured
    assert world.suppressions() == []
    assert (report.counts.sent, report.counts.failed) == (2, 0)  # the SMS and the (outbox) push


def test_fcm_unregistered_token_is_dead_and_later_pushes_are_suppressed(
    make_world: Callable[..., World], fcm: FcmStandin
) -> None:
    world = make_world(fcm=fcm)
    account = borrower("A-DEAD", 15, 6)
    world.add(account)
    fcm.fail_for(account["push_token"], "UNREGISTERED", "Requested entity was not found.")

    world.run()

    (push,) = world.attempts("A-DEAD", channel="push")
    assert (push["status"], push["error_class"], push["error_code"], push["provider"]) == (
        "failed", "permanent", "UNREGISTERED", "fcm")
    (dead,) = world.suppressions()
    assert (dead["channel"], dead["source"], dead["address_hash"]) == (
        "push", "dead_token", address_hash(account["push_token"]))

    world.advance(7)
    world.run()
    (later,) = world.attempts("A-DEAD", channel="push", occurrence=1)
    assert (later["status"], later["rule_id"]) == ("suppressed", "bad-address")
    assert len(fcm.message_requests) == 1


def test_an_email_whose_unsubscribe_token_spells_a_blocked_word_is_still_sent(
    make_world: Callable[..., World], twilio: TwilioStandin, smtp: SmtpStandin
) -> None:
    world = make_world(twilio, smtp)
    account = borrower(BLOCKLIST_TRIPPER, 5, 8, name="Michael Garcia", locale="en-US", email="borrower20@example.com",
                       timezone="Asia/Shanghai", currency="USD")
    world.add(account)

    world.run()

    (email,) = world.attempts(BLOCKLIST_TRIPPER, channel="email")
    assert (email["status"], email["rule_id"], email["provider"]) == ("sent", None, "smtp")
    (received,) = smtp.messages
    link = unsubscribe_link(received)
    assert "jail" in link.lower()  # the "phrase" the blocklist saw


def test_without_a_public_url_emails_carry_no_list_unsubscribe_header(
    make_world: Callable[..., World], smtp: SmtpStandin
) -> None:
    """No mailbox is advertised instead: nothing would read it."""
    world = make_world(smtp=smtp, DISPATCHER_PUBLIC_URL="")
    world.add(FIRM)

    world.run()

    (received,) = smtp.messages
    assert received.message["List-Unsubscribe"] is None and received.message["List-Unsubscribe-Post"] is None
    assert not any("mailto:" in str(value) for value in received.message.values())  # no header names a mailbox


def test_sends_in_flight_stay_within_the_bound_and_a_retry_wait_holds_up_no_other_message(
    make_world: Callable[..., World], twilio: TwilioStandin
) -> None:
    world = make_world(twilio, DISPATCHER_CONCURRENCY="2")
    world.add(*(borrower(f"A-{n}", 2, n, email=None, push_token=None) for n in range(10)))  # SMS only
    twilio.delay = 0.05
    twilio.fail_next(503, 20503)  # the first send fails transiently: its retry waits 2-4 s (below)
    app, now = world.app, world.clock.now
    jobs = []
    for batch in app.pipeline.source.batches():
        history = app.ledger.load_history(batch.accounts, app.pipeline.policy.contacts_since(now))
        jobs += app.booker().book(app.pipeline.planner.plan(batch.accounts, history, now), None, now)[0]
    deliverer = app.deliverer(app.pipeline)
    deliverer.policy = replace(deliverer.policy, backoff_base=4.0)

    async def go() -> RunCounts:
        try:
            return await deliverer.deliver(jobs)
        finally:
            await deliverer.aclose()

    counts = asyncio.run(go())

    assert (counts.sent, counts.failed) == (10, 0)
    creates = twilio.creates
    failed_to = creates[0].form["To"]
    assert [c.form["To"] for c in creates].count(failed_to) == 2 and creates[-1].form["To"] == failed_to
    assert sorted(c.form["To"] for c in creates[:-1]) == sorted(r["phone"] for r in
                                                               [borrower(f"A-{n}", 2, n) for n in range(10)])
    assert twilio.peak_in_flight == 2
    # while the first message waited for its retry, the other nine still went out two at a time
    assert max(c.in_flight for c in creates[2:-1]) == 2
