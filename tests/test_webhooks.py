"""The web app (``dispatcher web``): Twilio status callbacks, inbound STOP / START, one-click unsubscribe.

Table-driven. Each test builds its own working directory and app on a fixed
clock (10:00 in Asia/Shanghai), sends real reminders through the Twilio and SMTP
stand-ins where it needs a real MessageSid or email, and talks to the aiohttp
app through aiohttp's test client. Every refused request must change nothing.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from standins import Recorded, Reply
from standins.smtp_server import SmtpStandin
from standins.twilio_server import TwilioStandin
from twilio.request_validator import RequestValidator

from dispatcher.app import App, build_app
from dispatcher.channels.provider_settings import STATUS_CALLBACK_PATH
from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.ledger.suppressions import suppress
from dispatcher.ledger.tables import attempts, inbound_replies, suppressions
from dispatcher.masking import address_hash
from dispatcher.pipeline.run import Runner
from dispatcher.replies.inbound import read_reply, to_entry
from dispatcher.replies.spool import Spool, spool_path
from dispatcher.replies.words import Vocabulary
from dispatcher.settings import Settings
from dispatcher.tokens import sign_unsubscribe
from dispatcher.web.server import INBOUND_PATH, build_web_app
from dispatcher.web.twilio_hooks import web_inbox

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
"""10:00 in Asia/Shanghai."""
TODAY = date(2026, 3, 10)
PUBLIC_URL = "https://reminders.example.test"
SECRET = "webhook-tests-secret"
FROM_NUMBER = "+14155550999"
PHONE = "+8613800138007"
EMAIL = "borrower7@example.cn"
ACCOUNT = "A-WEB"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    tmp: Path
    app: App
    clock: Clock
    auth_token: str

    def run(self) -> None:
        assert Runner(self.app).run("morning", self.clock.now).status == "completed"

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every attempt and suppression row: what a refused request must leave untouched."""
        with self.app.engine.connect() as connection:
            return ([dict(r) for r in connection.execute(select(attempts).order_by(attempts.c.id)).mappings()],
                    [dict(r) for r in connection.execute(select(suppressions).order_by(suppressions.c.id)).mappings()])

    def sms_attempt(self) -> dict[str, Any]:
        (row,) = [r for r in self.snapshot()[0] if r["channel"] == "sms"]
        return row

    def active(self, channel: str, address: str) -> list[dict[str, Any]]:
        return [s for s in self.snapshot()[1]
                if (s["channel"], s["address_hash"], s["lifted_at"]) == (channel, address_hash(address), None)]


def borrower(account_id: str, days_overdue: int, phone: str, email: str) -> dict[str, Any]:
    return {
        "account_id": account_id, "name": "李娜", "phone": phone, "email": email,
        "push_token": f"fcm-token-{account_id}", "locale": "zh-CN", "timezone": "Asia/Shanghai", "currency": "CNY",
        "overdue_amount": "880.00", "due_date": TODAY - timedelta(days=days_overdue), "deadline": None,
        "repayment_account": "6222 0212 3456 7890", "do_not_contact": None, "dispute": None,
        "promise_to_pay_until": None, "opt_out_channels": None,
    }


@pytest.fixture
def make_world(tmp_path: Path, twilio: TwilioStandin, ledger_url: str) -> Iterator[Callable[..., World]]:
    """A world whose SMS goes to the Twilio stand-in; email to ``smtp`` when given; push to the outbox."""
    built: list[World] = []

    def make(*rows: dict[str, Any], smtp: SmtpStandin | None = None, **extra: str) -> World:
        shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
        shutil.copytree(REPO / "templates", tmp_path / "templates")
        env = {
            "DISPATCHER_DATABASE_URL": ledger_url,
            "DISPATCHER_OUTBOX_DIR": str(tmp_path / "outbox"), "DISPATCHER_PUBLIC_URL": PUBLIC_URL,
            "DISPATCHER_SECRET_KEY": SECRET, "TWILIO_ACCOUNT_SID": twilio.account_sid,
            "TWILIO_AUTH_TOKEN": twilio.auth_token, "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TWILIO_API_BASE_URL": twilio.url, "TWILIO_TIMEOUT": "3",
        }
        if smtp is not None:
            env.update(SMTP_HOST=smtp.host, SMTP_PORT=str(smtp.port), SMTP_SECURITY="none",
                       EMAIL_FROM="信用钱包 <noreply@xinyongqianbao.example.cn>", SMTP_TIMEOUT="3")
        clock = Clock()
        app = build_app(Settings.from_env({**env, **extra}, schedules=str(tmp_path / "schedules.yaml")), clock=clock)
        demo_metadata.create_all(app.engine)
        if rows:
            with app.engine.begin() as connection:
                connection.execute(insert(demo_accounts), list(rows))
        world = World(tmp_path, app, clock, twilio.auth_token)
        built.append(world)
        return world

    yield make
    for world in built:
        world.app.engine.dispose()


@dataclass(frozen=True)
class Call:
    """One HTTP request to the web app."""

    method: str
    path: str
    form: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def exchange(app: App, calls: Sequence[Call]) -> list[tuple[int, str]]:
    """Send ``calls`` in order to the web app under aiohttp's test server; (status, text) of each."""
    async def go() -> list[tuple[int, str]]:
        async with TestClient(TestServer(build_web_app(app))) as client:
            answers = []
            for call in calls:
                response = await client.request(call.method, call.path, data=call.form, headers=dict(call.headers))
                answers.append((response.status, await response.text()))
            return answers

    return asyncio.run(go())


def signature(auth_token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, dict(form))}


def signed(world: World, path: str, form: Mapping[str, str]) -> Call:
    """A request Twilio really signed: over the public URL of ``path`` and the form."""
    return Call("POST", path, form, signature(world.auth_token, PUBLIC_URL + path, form))


def status_form(sid: str, status: str, error_code: str | None = None) -> dict[str, str]:
    form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32, "From": FROM_NUMBER, "To": PHONE,
            "MessageStatus": status, "SmsStatus": status, "ApiVersion": "2010-04-01"}
    if error_code:
        form["ErrorCode"] = error_code
    return form


def inbound_form(body: str, sender: str = PHONE, sid: str | None = None, **extra: str) -> dict[str, str]:
    """An inbound SMS as Twilio posts it; each gets a fresh MessageSid unless ``sid`` is given."""
    return {"MessageSid": sid or "SM" + secrets.token_hex(16), "AccountSid": "AC" + "0" * 32, "From": sender,
            "To": FROM_NUMBER, "Body": body, "NumMedia": "0", "ApiVersion": "2010-04-01", **extra}


# Forgeries: (auth token, path, form) → headers of a request Twilio did not sign.
def _unsigned(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return {}


def _empty_signature(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": ""}


def _wrong_auth_token(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return signature("not-" + token, PUBLIC_URL + path, form)


def _garbage_signature(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": base64.b64encode(b"x" * 20).decode()}


def _another_host(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return signature(token, "https://attacker.example.test" + path, form)


def _another_path(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    other = INBOUND_PATH if path == STATUS_CALLBACK_PATH else STATUS_CALLBACK_PATH
    return signature(token, PUBLIC_URL + other, form)


def _plain_http(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return signature(token, PUBLIC_URL.replace("https://", "http://") + path, form)


def _other_form(token: str, path: str, form: Mapping[str, str]) -> dict[str, str]:
    return signature(token, PUBLIC_URL + path, {**form, "Body": "hello", "MessageStatus": "queued"})


FORGERIES = [pytest.param(f, id=f.__name__.strip("_")) for f in (
    _unsigned, _empty_signature, _wrong_auth_token, _garbage_signature, _another_host, _another_path, _plain_http,
    _other_form)]


# -- status callbacks --------------------------------------------------------------------------------------------

@pytest.fixture
def sent_world(make_world: Callable[..., World], twilio: TwilioStandin) -> World:
    """One gentle reminder (push to the outbox, SMS through Twilio) sent: the SMS attempt has a MessageSid."""
    world = make_world(borrower(ACCOUNT, 2, PHONE, EMAIL))
    world.run()
    assert world.sms_attempt()["status"] == "sent"
    assert world.sms_attempt()["provider_message_id"] == twilio.messages[0]["sid"]
    return world


CALLBACKS = [
    # callbacks in arrival order (MessageStatus, ErrorCode) → the attempt's final (status, error_code, error_class)
    pytest.param([("delivered", None)], ("delivered", None, None), id="delivered"),
    pytest.param([("read", None)], ("delivered", None, None), id="read-counts-as-delivered"),
    pytest.param([("delivered", None), ("sent", None)], ("delivered", None, None), id="late-sent-keeps-delivered"),
    pytest.param([("delivered", None), ("delivered", None)], ("delivered", None, None), id="repeated-delivered"),
    pytest.param([("sent", None), ("undelivered", "30003")], ("undelivered", "30003", "permanent"),
                 id="undelivered-30003-after-sent"),
    pytest.param([("failed", "30008")], ("failed", "30008", "permanent"), id="failed-30008"),
    pytest.param([("undelivered", "30003"), ("delivered", None)], ("undelivered", "30003", "permanent"),
                 id="no-move-between-final-states"),
    pytest.param([("queued", None), ("sending", None), ("accepted", None)], ("sent", None, None),
                 id="earlier-states-ignored"),
]


@pytest.mark.parametrize(("callbacks", "expected"), CALLBACKS)
def test_status_callback_moves_the_attempt_forward_only(
    sent_world: World, callbacks: list[tuple[str, str | None]], expected: tuple[str, str | None, str | None]
) -> None:
    world = sent_world
    sid = world.sms_attempt()["provider_message_id"]

    answers = exchange(world.app, [signed(world, STATUS_CALLBACK_PATH, status_form(sid, s, e)) for s, e in callbacks])

    assert [status for status, _ in answers] == [200] * len(callbacks)
    row = world.sms_attempt()
    assert (row["status"], row["error_code"], row["error_class"]) == expected


def test_status_callback_for_an_unknown_message_sid_is_accepted_and_changes_nothing(sent_world: World) -> None:
    before = sent_world.snapshot()
    form = status_form("SM" + "0" * 32, "undelivered", "30003")

    assert [s for s, _ in exchange(sent_world.app, [signed(sent_world, STATUS_CALLBACK_PATH, form)])] == [200]
    assert sent_world.snapshot() == before


@pytest.mark.parametrize("forge", FORGERIES)
def test_forged_status_callback_is_refused_and_changes_nothing(
    sent_world: World, forge: Callable[[str, str, Mapping[str, str]], dict[str, str]]
) -> None:
    world = sent_world
    form = status_form(world.sms_attempt()["provider_message_id"], "undelivered", "30003")
    before = world.snapshot()

    answers = exchange(world.app, [Call("POST", STATUS_CALLBACK_PATH, form,
                                        forge(world.auth_token, STATUS_CALLBACK_PATH, form))])

    assert [s for s, _ in answers] == [403]
    assert world.snapshot() == before


class CallbackTwilio(TwilioStandin):
    """Twilio calling back about message 1 while message 2 is still being created (as it does under load)."""

    def __init__(self, callback: tuple[str, str | None]) -> None:
        super().__init__()
        self.callback = callback
        self.status_url: str | None = None
        self.answers: list[int] = []

    def respond(self, request: Recorded) -> Reply:
        reply = super().respond(request)
        if request.method == "POST" and len(self.messages) == 2 and self.status_url:
            form = status_form(self.messages[0]["sid"], *self.callback)
            headers = signature(self.auth_token, PUBLIC_URL + STATUS_CALLBACK_PATH, form)
            post = urllib.request.Request(self.status_url, data=urlencode(form).encode(), headers=headers)
            with urllib.request.urlopen(post, timeout=5) as answer:
                self.answers.append(answer.status)
        return reply


class WebThread:
    """The web app served on a free loopback port by its own event loop in a thread."""

    def __init__(self, web_app: web.Application) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(web_app)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


EARLY_CALLBACKS = [
    pytest.param(("delivered", None), ("delivered", None), id="early-delivered"),
    pytest.param(("undelivered", "30003"), ("undelivered", "30003"), id="early-undelivered-30003"),
    pytest.param(("sent", None), ("sent", None), id="early-sent"),
]


@pytest.mark.parametrize(("callback", "expected"), EARLY_CALLBACKS)
def test_status_callback_arriving_before_the_batch_is_recorded_is_not_lost(
    tmp_path: Path, callback: tuple[str, str | None], expected: tuple[str, str | None], ledger_url: str
) -> None:
    with CallbackTwilio(callback) as twilio:
        shutil.copy(REPO / "schedules.yaml", tmp_path / "schedules.yaml")
        shutil.copytree(REPO / "templates", tmp_path / "templates")
        env = {"DISPATCHER_DATABASE_URL": ledger_url,
               "DISPATCHER_OUTBOX_DIR": str(tmp_path / "outbox"), "DISPATCHER_PUBLIC_URL": PUBLIC_URL,
               "DISPATCHER_SECRET_KEY": SECRET, "DISPATCHER_CONCURRENCY": "1",
               "TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
               "TWILIO_FROM_NUMBER": FROM_NUMBER, "TWILIO_API_BASE_URL": twilio.url, "TWILIO_TIMEOUT": "10"}
        app = build_app(Settings.from_env(env, schedules=str(tmp_path / "schedules.yaml")), clock=Clock())
        try:
            demo_metadata.create_all(app.engine)
            with app.engine.begin() as connection:
                connection.execute(insert(demo_accounts), [borrower("A-1", 2, "+8613800138011", "a1@example.cn"),
                                                           borrower("A-2", 2, "+8613800138012", "a2@example.cn")])
            with WebThread(build_web_app(app)) as base_url:
                twilio.status_url = base_url + STATUS_CALLBACK_PATH
                Runner(app).run("morning", NOW)
            assert twilio.answers == [200]
            with app.engine.connect() as connection:
                rows = connection.execute(select(attempts.c.provider_message_id, attempts.c.status,
                                                 attempts.c.error_code).where(attempts.c.channel == "sms")).all()
        finally:
            app.engine.dispose()
    first, second = (m["sid"] for m in twilio.messages)
    assert {r.provider_message_id: (r.status, r.error_code) for r in rows} == {
        first: expected, second: ("sent", None)}


# -- inbound replies ---------------------------------------------------------------------------------------------

STOP_BODIES = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "退订", "TD",
               "  Stop  ", "td", "stop\n", "Td",
               # issue 10: every one of these was ignored
               "Stop.", "STOP!", "退订。", "退订！", "TD退订", "回复TD", "OPT OUT", "opt-out", "Please stop",
               "\u200bSTOP\u200b", "\ufeffSTOP", "S\u200dTOP\u2060", "ＳＴＯＰ"]


@pytest.mark.parametrize("body", STOP_BODIES)
def test_inbound_stop_word_suppresses_sms_to_that_number(make_world: Callable[..., World], body: str) -> None:
    world = make_world()

    ((status, text),) = exchange(world.app, [signed(world, INBOUND_PATH, inbound_form(body))])

    assert status == 200 and "<Response>" in text
    (row,) = world.active("sms", PHONE)
    assert row["source"] == "inbound_stop"
    assert world.snapshot()[1] == [row]  # nothing else: not email, not another number


START_CASES = [
    # prior suppression source, reply → still suppressed afterwards?
    pytest.param("inbound_stop", "START", False, id="START-lifts-STOP"),
    pytest.param("inbound_stop", "unstop", False, id="UNSTOP-lifts-STOP"),
    pytest.param("inbound_stop", " Yes ", False, id="YES-lifts-STOP"),
    pytest.param("provider_opt_out", "START", False, id="START-lifts-21610"),
    pytest.param("bad_address", "START", True, id="START-keeps-dead-number"),
    pytest.param("inbound_stop", "hello", True, id="other-text-keeps-STOP"),
]


@pytest.mark.parametrize(("source", "body", "still_suppressed"), START_CASES)
def test_inbound_start_lifts_an_opt_out(make_world: Callable[..., World], source: str, body: str,
                                        still_suppressed: bool) -> None:
    world = make_world()
    assert suppress(world.app.engine, "sms", PHONE, source, NOW)

    ((status, _),) = exchange(world.app, [signed(world, INBOUND_PATH, inbound_form(body))])

    assert status == 200
    assert bool(world.active("sms", PHONE)) is still_suppressed
    (row,) = world.snapshot()[1]
    assert (row["lifted_at"] is None) is still_suppressed


def test_stop_then_start_round_trip(make_world: Callable[..., World]) -> None:
    world = make_world()
    answers = exchange(world.app, [signed(world, INBOUND_PATH, inbound_form(b))
                                   for b in ("STOP", "START", "STOP")])
    assert [s for s, _ in answers] == [200, 200, 200]
    assert len(world.active("sms", PHONE)) == 1
    assert len(world.snapshot()[1]) == 2  # the lifted one is kept as history


@pytest.mark.parametrize("body", ["Hello", "I paid yesterday", "", "好的", "STOPS", "please call me"])
def test_inbound_other_text_changes_nothing(make_world: Callable[..., World], body: str) -> None:
    world = make_world()
    ((status, _),) = exchange(world.app, [signed(world, INBOUND_PATH, inbound_form(body))])
    assert status == 200
    assert world.snapshot() == ([], [])


def kept_replies(world: World) -> list[dict[str, Any]]:
    with world.app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(inbound_replies).order_by(inbound_replies.c.id)).mappings()]


SPELLINGS = [
    # how Twilio's From might spell the borrower's +8613800138007, and what else the form says
    pytest.param("8613800138007", {"FromCountry": "CN"}, id="no-plus"),
    pytest.param("+86 138 0013 8007", {}, id="spaced"),
    pytest.param("0086 138 0013 8007", {"FromCountry": "CN"}, id="0086-with-FromCountry"),
    pytest.param("0086-138-0013-8007", {}, id="0086-dashed-no-FromCountry"),
    pytest.param("8613800138007", {}, id="no-plus-no-FromCountry-default-region"),
    pytest.param("13800138007", {"FromCountry": "CN"}, id="national"),
]


@pytest.mark.parametrize(("sender", "extra"), SPELLINGS)
def test_stop_from_another_spelling_of_the_number_suppresses_the_borrowers_number(
    make_world: Callable[..., World], sender: str, extra: dict[str, str]
) -> None:
    world = make_world()

    ((status, _),) = exchange(world.app, [signed(world, INBOUND_PATH, inbound_form("STOP", sender, **extra))])

    assert status == 200
    (row,) = world.active("sms", PHONE)
    assert row["source"] == "inbound_stop"
    (reply,) = kept_replies(world)
    assert (reply["address_hash"], reply["sender"]) == (address_hash(PHONE), "+86138****8007")


def test_every_inbound_reply_is_kept_masked_with_its_decision(make_world: Callable[..., World]) -> None:
    world = make_world()
    bodies = ["Stop.", "Call me on +8613912345678 or li.na@example.cn", "I will pay tomorrow", "不要再打了", "START"]

    answers = exchange(world.app, [signed(world, INBOUND_PATH, inbound_form(b)) for b in bodies])

    assert [s for s, _ in answers] == [200] * len(bodies)
    rows = kept_replies(world)
    assert [(r["decision"], r["keyword"], r["outcome"]) for r in rows] == [
        ("opt_out", "STOP", "suppressed"), ("other", None, "none"), ("other", None, "none"),
        ("unclear", "不要", "none"), ("opt_in", "START", "lifted")]
    assert all(r["sender"] == "+86138****8007" and r["read_at"] is None for r in rows)
    assert "+8613912345678" not in rows[1]["text"] and "li.na@example.cn" not in rows[1]["text"]
    assert rows[2]["text"] == "I will pay tomorrow"
    assert PHONE not in repr(rows)


def test_a_replayed_start_changes_nothing(make_world: Callable[..., World]) -> None:
    world = make_world()
    stop, start, stop_again = (inbound_form(b) for b in ("STOP", "START", "STOP"))

    answers = exchange(world.app, [signed(world, INBOUND_PATH, f) for f in (stop, start, stop_again, start, start)])

    assert [s for s, _ in answers] == [200] * 5
    assert len(world.active("sms", PHONE)) == 1  # the replayed START (same MessageSid) lifted nothing
    assert [r["outcome"] for r in kept_replies(world)] == ["suppressed", "lifted", "suppressed"]


def test_a_repeated_stop_is_kept_once(make_world: Callable[..., World]) -> None:
    world = make_world()
    form = inbound_form("退订")

    answers = exchange(world.app, [signed(world, INBOUND_PATH, form)] * 3)

    assert [s for s, _ in answers] == [200] * 3
    assert len(world.snapshot()[1]) == 1 and len(kept_replies(world)) == 1


LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
"""
"""Another process holding the SQLite ledger's write lock until a line arrives on its stdin."""


def post_signed(base: str, world: World, form: Mapping[str, str]) -> int:
    headers = signature(world.auth_token, PUBLIC_URL + INBOUND_PATH, form)
    request = urllib.request.Request(base + INBOUND_PATH, data=urlencode(form).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def eventually(condition: Callable[[], object], seconds: float = 60) -> None:
    """Wait until ``condition()`` holds (a generous limit: only a broken promise runs into it)."""
    limit = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < limit, "never happened"
        time.sleep(0.1)


def test_a_stop_received_while_another_process_holds_the_ledger_lock_is_honoured_once_it_is_gone(
    make_world: Callable[..., World], ledger_backend: str
) -> None:
    if ledger_backend != "sqlite":
        pytest.skip("an SQLite write lock held by another process")
    world = make_world()
    database = make_url(world.app.settings.database_url).database
    assert database is not None
    spool = Spool(spool_path(world.app.settings.database_url, world.app.settings.outbox_dir))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, database], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with WebThread(build_web_app(world.app)) as base:
            form = inbound_form("STOP")
            assert post_signed(base, world, form) == 200  # after the web lock timeout: spooled, durably
            assert [e["message_sid"] for e in spool.entries()] == [form["MessageSid"]]
            assert world.active("sms", PHONE) == []  # the lock is still held: nothing could be written
            holder.communicate("release\n", timeout=30)
            eventually(lambda: world.active("sms", PHONE))  # the web app's background task applies the spool
        eventually(lambda: not spool.path.exists())
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    (reply,) = kept_replies(world)
    assert (reply["message_sid"], reply["outcome"], reply["received_at"]) == (form["MessageSid"], "suppressed", NOW)


def test_a_start_older_than_the_numbers_latest_stop_changes_nothing(make_world: Callable[..., World]) -> None:
    world = make_world()
    inbox, vocabulary = web_inbox(world.app), Vocabulary.build()
    start = read_reply(inbound_form("START"), vocabulary, "CN", NOW + timedelta(minutes=1))
    stop = read_reply(inbound_form("STOP"), vocabulary, "CN", NOW + timedelta(minutes=2))
    assert start is not None and stop is not None

    assert inbox.receive(stop, NOW + timedelta(minutes=2)) == "suppressed"
    assert inbox.receive(start, NOW + timedelta(minutes=3)) == "superseded"  # e.g. applied late from the spool

    assert len(world.active("sms", PHONE)) == 1


def test_a_spooled_stop_older_than_a_start_applied_meanwhile_changes_nothing(
    make_world: Callable[..., World]
) -> None:
    world = make_world()
    inbox, vocabulary = web_inbox(world.app), Vocabulary.build()
    stop = read_reply(inbound_form("STOP"), vocabulary, "CN", NOW + timedelta(minutes=1))
    start = read_reply(inbound_form("START"), vocabulary, "CN", NOW + timedelta(minutes=2))
    assert start is not None and stop is not None
    inbox.spool.append(to_entry(stop))  # as when the ledger was locked

    assert inbox.receive(start, NOW + timedelta(minutes=2)) == "none"
    assert inbox.drain(NOW + timedelta(minutes=3)) == 1
    assert inbox.drain(NOW + timedelta(minutes=4)) == 0

    assert world.active("sms", PHONE) == []  # the borrower's latest word was START
    assert [r["outcome"] for r in kept_replies(world)] == ["none", "superseded"]


@pytest.mark.parametrize("forge", FORGERIES)
def test_forged_inbound_stop_is_refused(
    make_world: Callable[..., World], forge: Callable[[str, str, Mapping[str, str]], dict[str, str]]
) -> None:
    world = make_world()
    form = inbound_form("STOP")

    answers = exchange(world.app, [Call("POST", INBOUND_PATH, form, forge(world.auth_token, INBOUND_PATH, form))])

    assert [s for s, _ in answers] == [403]
    assert world.snapshot() == ([], [])


# -- one-click unsubscribe ---------------------------------------------------------------------------------------

def _valid(secret: str = SECRET) -> str:
    return sign_unsubscribe(secret.encode(), "email", EMAIL, ACCOUNT)


def _other_secret() -> str:
    return _valid("another-secret")


def _altered_address() -> str:
    payload, _, sig = _valid().partition(".")
    other = sign_unsubscribe(SECRET.encode(), "email", "someone.else@example.cn", ACCOUNT).partition(".")[0]
    assert other != payload
    return f"{other}.{sig}"


def _altered_signature() -> str:
    token = _valid()
    return token[:-2] + ("AA" if token[-2:] != "AA" else "BB")


def _no_signature() -> str:
    return _valid().partition(".")[0]


def _sms_token() -> str:
    return sign_unsubscribe(SECRET.encode(), "sms", PHONE, ACCOUNT)


def _garbage() -> str:
    return "not-a-token"


BAD_TOKENS = [pytest.param(f, id=f.__name__.strip("_")) for f in (
    _other_secret, _altered_address, _altered_signature, _no_signature, _sms_token, _garbage)]


def form_action(page: str) -> str:
    found = re.search(r'<form method="post" action="([^"]*)">', page)
    assert found is not None, page
    return html.unescape(found.group(1))


def test_unsubscribe_get_shows_a_form_and_does_not_unsubscribe(make_world: Callable[..., World]) -> None:
    world = make_world()
    path = f"/unsubscribe/{_valid()}"

    ((status, page),) = exchange(world.app, [Call("GET", path)])

    assert status == 200
    link = PUBLIC_URL + path
    assert urljoin(link, form_action(page)) == link  # the button posts back to the link itself
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert world.snapshot() == ([], [])


PREFIXED_URL = "https://lender.example.test/reminders"
"""A public URL with a path: the web app sits behind a proxy that strips ``/reminders``."""


def test_twilio_signatures_are_checked_against_a_public_url_with_a_path(make_world: Callable[..., World]) -> None:
    world = make_world(DISPATCHER_PUBLIC_URL=PREFIXED_URL)
    form = inbound_form("STOP")
    call = Call("POST", INBOUND_PATH, form, signature(world.auth_token, PREFIXED_URL + INBOUND_PATH, form))

    assert [s for s, _ in exchange(world.app, [call])] == [200]
    assert len(world.active("sms", PHONE)) == 1


@pytest.mark.parametrize("missing", ["public-url", "twilio-credentials", "signature"])
def test_a_stop_that_cannot_be_verified_is_refused_before_any_check(make_world: Callable[..., World],
                                                                     missing: str) -> None:
    """Without a public URL or Twilio's auth token no signature can be checked; without a signature there is none."""
    unset = {"public-url": {"DISPATCHER_PUBLIC_URL": ""},
             "twilio-credentials": {"TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "TWILIO_FROM_NUMBER": ""},
             "signature": {}}[missing]
    world = make_world(**unset)
    form = inbound_form("STOP")
    headers = {} if missing == "signature" else signature(world.auth_token, PUBLIC_URL + INBOUND_PATH, form)

    assert exchange(world.app, [Call("POST", INBOUND_PATH, form, headers)]) == [
        (403, "missing or unverifiable signature")]
    assert world.active("sms", PHONE) == []


def test_unsubscribe_form_posts_back_to_the_link_under_a_public_url_with_a_path(
    make_world: Callable[..., World]
) -> None:
    world = make_world(DISPATCHER_PUBLIC_URL=PREFIXED_URL)
    token = _valid()
    link = f"{PREFIXED_URL}/unsubscribe/{token}"

    ((status, page),) = exchange(world.app, [Call("GET", f"/unsubscribe/{token}")])

    assert status == 200
    assert urljoin(link, form_action(page)) == link


def test_unsubscribe_one_click_post_suppresses_email(make_world: Callable[..., World]) -> None:
    world = make_world()
    path = f"/unsubscribe/{_valid()}"

    answers = exchange(world.app, [Call("POST", path, ONE_CLICK), Call("POST", path, ONE_CLICK)])

    assert [s for s, _ in answers] == [200, 200]
    (row,) = world.snapshot()[1]
    assert (row["channel"], row["source"], row["account_id"], row["lifted_at"]) == (
        "email", "unsubscribe", ACCOUNT, None)
    assert row["address_hash"] == address_hash(EMAIL)
    assert EMAIL not in row["address"]  # stored masked


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("token", BAD_TOKENS)
def test_unsubscribe_with_a_bad_token_is_refused(make_world: Callable[..., World], token: Callable[[], str],
                                                method: str) -> None:
    world = make_world()
    form = ONE_CLICK if method == "POST" else None

    ((status, _),) = exchange(world.app, [Call(method, f"/unsubscribe/{token()}", form)])

    assert status == 403
    assert world.snapshot() == ([], [])


def test_the_link_in_a_sent_emails_list_unsubscribe_header_works(
    make_world: Callable[..., World], smtp: SmtpStandin, twilio: TwilioStandin
) -> None:
    world = make_world(borrower(ACCOUNT, 5, PHONE, EMAIL), smtp=smtp)  # firm: email (SMS is its fallback)
    world.run()
    (received,) = smtp.messages
    header = str(received.message["List-Unsubscribe"])
    (link,) = [t for t in re.findall(r"<([^<>]+)>", header) if t.startswith("https://")]
    assert link.startswith(PUBLIC_URL + "/unsubscribe/")
    path = link.removeprefix(PUBLIC_URL)

    answers = exchange(world.app, [Call("GET", path), Call("POST", path, ONE_CLICK)])

    assert [s for s, _ in answers] == [200, 200]
    (row,) = world.active("email", EMAIL)
    assert (row["source"], row["account_id"]) == ("unsubscribe", ACCOUNT)

    world.clock.now += timedelta(days=3)  # firm, occurrence 1: email is now suppressed, so SMS goes instead
    world.run()
    later = {r["channel"]: r for r in world.snapshot()[0] if r["occurrence"] == 1}
    assert (later["email"]["status"], later["email"]["rule_id"]) == ("suppressed", "opt-out")
    assert (later["sms"]["status"], later["sms"]["provider"]) == ("sent", "twilio")
    assert len(smtp.messages) == 1
    assert [r.form["To"] for r in twilio.creates] == [PHONE]
