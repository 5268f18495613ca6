"""The ``voice`` channel: reminder calls through Twilio Programmable Voice, their progress and their caps.

Calls go to a Twilio stand-in that checks every Calls.json request against Twilio's
published OpenAPI description (tests/standins/twilio_voice_server.py); call
progress and the calls' menu come back signed to the web app; the call caps
(``call-cap``) are checked on the ledger's real history.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert, select
from standins.openapi_form import SUBSET, find_spec, subset
from standins.twilio_voice_server import TwilioVoiceStandin, call_problems
from twilio.request_validator import RequestValidator

from dispatcher.app import App, build_app
from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Effect, Message, Outcome
from dispatcher.channels.provider_settings import TwilioSettings
from dispatcher.channels.twilio_voice import VOICE_STATUS_CALLBACK_PATH, TwilioVoiceChannel, TwilioVoiceSettings
from dispatcher.channels.voice_script import MENU_PATH
from dispatcher.decisions import Verdict
from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.ledger.tables import attempts
from dispatcher.masking import address_hash
from dispatcher.pipeline.dry_run import decisions_at
from dispatcher.pipeline.run import Runner
from dispatcher.rules.content import lint_templates
from dispatcher.rules.policy import resolve_policy
from dispatcher.schedule.loader import load_schedule
from dispatcher.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://reminders.example.test"
SECRET = "voice-tests-secret"
FROM_NUMBER = "+14155550999"
CN_PHONE = "+8613800138007"
US_PHONE = "+12125550143"
SHANGHAI_10AM = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
NEW_YORK_10AM = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)  # EDT since 8 March
BOTH_OPEN = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
"""20:30 in Shanghai, 08:30 in New York: inside both contact windows."""

SCHEDULE = """\
timezone: Asia/Shanghai
locale: zh-CN
locales: [zh-CN, en-US]
profile: {profile}
{compliance}
brand:
  zh-CN:
    name: 信用钱包
    hotline: 400-820-1234
    website: https://www.xinyongqianbao.example.cn/verify
  en-US:
    name: Xinyong Wallet
    hotline: +86 400-820-1234
    website: https://www.xinyongqianbao.example.cn/en/verify
    countries:
      US: {{hotline: +1 888-555-0142}}
source:
  batch_size: 1000
runs:
  - {{name: morning, cron: "0 10 * * *"}}
ladder:
  - step: call
    days_overdue: 1-30
    every: 1d
    channels: [voice]
    template: call
"""


def write_schedule(folder: Path, profile: str, compliance: str = "") -> Path:
    """A schedule whose one step calls, every day, with the shipped ``call`` templates."""
    path = folder / "schedules.yaml"
    path.write_text(SCHEDULE.format(profile=profile, compliance=compliance), encoding="utf-8")
    shutil.rmtree(folder / "templates", ignore_errors=True)
    shutil.copytree(REPO / "templates" / "call", folder / "templates" / "call")
    return path


def borrower(account_id: str, *, phone: str = CN_PHONE, days: int = 5, today: date = date(2026, 3, 10),
             us: bool = False) -> dict[str, Any]:
    return {
        "account_id": account_id, "name": "Alex Morgan" if us else "李娜", "phone": phone,
        "email": None, "push_token": None, "locale": "en-US" if us else "zh-CN",
        "timezone": "America/New_York" if us else "Asia/Shanghai", "currency": "USD" if us else "CNY",
        "overdue_amount": "880.00", "due_date": today - timedelta(days=days), "deadline": None,
        "repayment_account": "6222 0212 3456 7890", "do_not_contact": None, "dispute": None,
        "promise_to_pay_until": None, "opt_out_channels": None,
    }


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    app: App
    clock: Clock
    twilio: TwilioVoiceStandin | None
    folder: Path

    def run(self, name: str = "morning") -> None:
        assert Runner(self.app).run(name, self.clock.now).status == "completed"

    def voice_attempts(self, account_id: str | None = None) -> list[dict[str, Any]]:
        query = select(attempts).where(attempts.c.channel == "voice").order_by(attempts.c.id)
        with self.app.engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(query).mappings()]
        return [r for r in rows if account_id in (None, r["account_id"])]

    def plan(self, account_id: str) -> dict[str, Any]:
        (decision,) = decisions_at(self.app, self.clock.now, account_id)
        (voice,) = decision.channels
        return {"verdict": voice.verdict, "rule_id": voice.rule_id, "detail": voice.detail,
                "not_before": voice.not_before, "reason": decision.reason}


def voice_env(folder: Path, ledger_url: str, twilio: TwilioVoiceStandin | None, public: bool) -> dict[str, str]:
    env = {"DISPATCHER_DATABASE_URL": ledger_url, "DISPATCHER_OUTBOX_DIR": str(folder / "outbox")}
    if public:
        env.update(DISPATCHER_PUBLIC_URL=PUBLIC_URL, DISPATCHER_SECRET_KEY=SECRET)
    if twilio is not None:
        env.update(TWILIO_ACCOUNT_SID=twilio.account_sid, TWILIO_AUTH_TOKEN=twilio.auth_token,
                   TWILIO_FROM_NUMBER=FROM_NUMBER, TWILIO_API_BASE_URL=twilio.url, TWILIO_TIMEOUT="3")
    return env


@pytest.fixture
def voice_twilio() -> Iterator[TwilioVoiceStandin]:
    with TwilioVoiceStandin() as server:
        yield server


@pytest.fixture
def make_world(tmp_path: Path, ledger_url: str) -> Iterator[Callable[..., World]]:
    built: list[World] = []

    def make(*rows: dict[str, Any], profile: str = "cn", now: datetime = SHANGHAI_10AM,
             twilio: TwilioVoiceStandin | None = None, public: bool = True, compliance: str = "") -> World:
        schedules = write_schedule(tmp_path, profile, compliance)
        clock = Clock(now)
        env = voice_env(tmp_path, ledger_url, twilio, public)
        app = build_app(Settings.from_env(env, schedules=str(schedules)), clock=clock)
        demo_metadata.create_all(app.engine)
        with app.engine.begin() as connection:
            connection.execute(insert(demo_accounts), list(rows))
        world = World(app, clock, twilio, tmp_path)
        built.append(world)
        return world

    yield make
    for world in built:
        world.app.engine.dispose()


# --- the web app ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Post:
    path: str
    form: Mapping[str, str]
    headers: Mapping[str, str] = field(default_factory=dict)


def signed(world: World, path: str, form: Mapping[str, str]) -> Post:
    """A request Twilio signed: over the public URL of ``path`` (with its query) and the form."""
    assert world.twilio is not None
    signature = RequestValidator(world.twilio.auth_token).compute_signature(PUBLIC_URL + path, dict(form))
    return Post(path, form, {"X-Twilio-Signature": signature})


def exchange(app: App, posts: Sequence[Post]) -> list[tuple[int, str]]:
    async def go() -> list[tuple[int, str]]:
        from dispatcher.web.server import build_web_app

        async with TestClient(TestServer(build_web_app(app))) as client:
            answers = []
            for post in posts:
                response = await client.post(post.path, data=dict(post.form), headers=dict(post.headers))
                answers.append((response.status, await response.text()))
            return answers

    return asyncio.run(go())


def progress(sid: str, status: str, **extra: str) -> dict[str, str]:
    """A call progress callback as Twilio posts it."""
    return {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": FROM_NUMBER, "To": CN_PHONE,
            "CallStatus": status, "ApiVersion": "2010-04-01", "Direction": "outbound-api",
            "CallbackSource": "call-progress-events", **extra}


def twiml_of(request_body: bytes) -> ElementTree.Element:
    (twiml,) = parse_qs(request_body.decode())["Twiml"]
    return ElementTree.fromstring(twiml)


# --- placing calls ------------------------------------------------------------------------------------------

def test_run_once_places_a_valid_call_per_due_voice_reminder_recorded_with_its_sid(
        workdir: Path, cli: Callable[..., tuple[int, str, str]], voice_twilio: TwilioVoiceStandin,
        ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_schedule(workdir, "none")  # no contact window: the real clock may be at night
    for name, value in voice_env(workdir, ledger_url, voice_twilio, public=True).items():
        monkeypatch.setenv(name, value)
    app = build_app(Settings.from_env())
    demo_metadata.create_all(app.engine)
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), [borrower("V-CN", today=today),
                                                   borrower("V-US", phone=US_PHONE, us=True, today=today)])

    code, _out, err = cli("run", "--once")

    assert code == 0, err
    assert voice_twilio.invalid == []
    requests = voice_twilio.call_requests
    assert len(requests) == 2 and len(voice_twilio.calls) == 2
    for request in requests:  # each one valid against Twilio's description
        assert call_problems(voice_twilio.account_sid, parse_qs(request.body.decode())) == []
        fields = parse_qs(request.body.decode())
        assert fields["From"] == [FROM_NUMBER]
        assert fields["MachineDetection"] == ["DetectMessageEnd"] and fields["AsyncAmd"] == ["false"]
        assert fields["StatusCallback"] == [PUBLIC_URL + VOICE_STATUS_CALLBACK_PATH]
        assert fields["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    rows = {r["account_id"]: r for r in app_attempts(app)}
    sids = {c["to"]: c["sid"] for c in voice_twilio.calls}
    assert rows["V-CN"]["provider_message_id"] == sids[CN_PHONE] and sids[CN_PHONE].startswith("CA")
    assert rows["V-US"]["provider_message_id"] == sids[US_PHONE]
    assert {r["status"] for r in rows.values()} == {"sent"} and {r["provider"] for r in rows.values()} == {"twilio"}
    app.engine.dispose()


def app_attempts(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as connection:
        return [dict(r) for r in connection.execute(
            select(attempts).where(attempts.c.channel == "voice").order_by(attempts.c.id)).mappings()]


def says(element: ElementTree.Element) -> list[tuple[str | None, str | None, str]]:
    return [(s.get("language"), s.get("voice"), s.text or "") for s in element.iter("Say")]


def test_a_call_says_the_greeting_in_the_borrowers_language_and_the_rest_only_after_a_key_press(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    world = make_world(borrower("V-CN"), borrower("V-US", phone=US_PHONE, us=True), twilio=voice_twilio,
                       now=BOTH_OPEN)
    world.run()

    by_to = {parse_qs(r.body.decode())["To"][0]: twiml_of(r.body) for r in voice_twilio.call_requests}
    for to, language, voice, brand, hotline in ((CN_PHONE, "cmn-CN", "Polly.Zhiyu", "信用钱包", "400-820-1234"),
                                                (US_PHONE, "en-US", "Polly.Joanna", "Xinyong Wallet",
                                                 "+1 888-555-0142")):
        root = by_to[to]
        (gather,) = root.findall("Gather")
        assert gather.get("numDigits") == "1"
        assert (gather.get("action") or "").startswith(PUBLIC_URL + MENU_PATH + "?c=")
        spoken = says(gather)
        assert {(lang, v) for lang, v, _ in spoken} == {(language, voice)}
        greeting = spoken[0][2]
        assert brand in greeting and hotline in greeting
        text = ElementTree.tostring(root, encoding="unicode")
        for private in ("880.00", "6222 0212 3456 7890", "李娜", "Alex Morgan"):  # nothing of the debt in clear
            assert private not in text
        assert [child.tag for child in root] == ["Gather", "Hangup"]  # no key press (a machine): hang up


def test_the_menu_repeats_the_message_or_connects_to_the_hotline(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    world = make_world(borrower("V-CN"), twilio=voice_twilio)
    world.run()
    (request,) = voice_twilio.call_requests
    action = twiml_of(request.body).find("Gather").get("action")  # type: ignore[union-attr]
    assert action is not None
    parts = urlsplit(action)
    path = f"{parts.path}?{parts.query}"

    (listen, again, connect, forged) = exchange(world.app, [
        signed(world, path, {"CallSid": "CA1", "Digits": "1"}), signed(world, path, {"CallSid": "CA1", "Digits": "1"}),
        signed(world, path, {"CallSid": "CA1", "Digits": "2"}), Post(path, {"CallSid": "CA1", "Digits": "1"})])

    assert listen[0] == 200 and listen == again
    root = ElementTree.fromstring(listen[1])
    (gather,) = root.findall("Gather")
    assert gather.get("action") == action and gather.get("numDigits") == "1"
    (message, menu) = says(gather)
    assert message[:2] == ("cmn-CN", "Polly.Zhiyu")
    assert "¥880.00" in message[2] and "6222 0212 3456 7890" in message[2] and "信用钱包" in message[2]
    assert "重听请按1" in menu[2] and "请按2" in menu[2]
    assert connect[0] == 200
    dial = ElementTree.fromstring(connect[1]).find("Dial")
    assert dial is not None and dial.text == "+864008201234"
    assert forged[0] == 403


def test_a_menu_url_that_was_altered_says_nothing(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    world = make_world(borrower("V-CN"), twilio=voice_twilio)
    path = MENU_PATH + "?c=gAAAAABnot-a-token"
    ((status, text),) = exchange(world.app, [signed(world, path, {"CallSid": "CA1", "Digits": "1"})])
    assert status == 200
    root = ElementTree.fromstring(text)
    assert [child.tag for child in root] == ["Hangup"]


# --- call progress ------------------------------------------------------------------------------------------

def test_signed_call_progress_is_recorded_forward_only_and_unsigned_is_refused(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    world = make_world(borrower("V-1"), borrower("V-2", phone="+8613900139009"), twilio=voice_twilio)
    world.run()
    sids = {r["account_id"]: r["provider_message_id"] for r in world.voice_attempts()}
    answered, missed = sids["V-1"], sids["V-2"]
    path = VOICE_STATUS_CALLBACK_PATH
    before = world.voice_attempts()

    (refused,) = exchange(world.app, [Post(path, progress(answered, "completed", AnsweredBy="human"))])
    assert refused[0] == 403 and world.voice_attempts() == before

    answers = exchange(world.app, [
        signed(world, path, progress(answered, "initiated")),
        signed(world, path, progress(answered, "ringing")),
        signed(world, path, progress(answered, "in-progress", AnsweredBy="human")),
        signed(world, path, progress(answered, "completed", AnsweredBy="human", CallDuration="42")),
        signed(world, path, progress(answered, "ringing")),  # late and out of order: changes nothing
        signed(world, path, progress(missed, "no-answer", CallDuration="0")),
        signed(world, path, progress("CA" + "f" * 32, "completed")),  # unknown: kept for later
    ])

    assert [status for status, _ in answers] == [200] * 7
    rows = {r["account_id"]: r for r in world.voice_attempts()}
    assert (rows["V-1"]["status"], rows["V-1"]["answered_by"], rows["V-1"]["call_duration"]) == \
        ("delivered", "human", 42)
    assert (rows["V-2"]["status"], rows["V-2"]["error_code"], rows["V-2"]["answered_by"]) == \
        ("undelivered", "no-answer", None)


# --- call caps ----------------------------------------------------------------------------------------------

def seed_calls(world: World, account_id: str, phone: str, times: Sequence[datetime], *,
               status: str = "undelivered", answered_by: str | None = None) -> None:
    """Calls placed earlier (another step of the ladder, an agent's dialer): one attempt each, with its SID."""
    rows = [{"reminder_key": f"{account_id}|2026-03-01|earlier|{n}", "account_id": account_id, "step": "earlier",
             "occurrence": n, "channel": "voice", "try_no": 1, "status": status, "address": "masked",
             "address_hash": address_hash(phone), "provider": "twilio", "provider_message_id": f"CA{n:032x}",
             "error_code": "no-answer" if status == "undelivered" else None, "answered_by": answered_by,
             "created_at": at, "attempted_at": at, "updated_at": at} for n, at in enumerate(times, start=1)]
    with world.app.engine.begin() as connection:
        connection.execute(insert(attempts), rows)


@pytest.mark.parametrize(("earlier", "placed"), [(6, True), (7, False)])
def test_the_eighth_call_attempt_in_seven_days_is_deferred_under_us(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin, earlier: int, placed: bool) -> None:
    world = make_world(borrower("V-US", phone=US_PHONE, us=True), profile="us", now=NEW_YORK_10AM,
                       twilio=voice_twilio)
    times = [NEW_YORK_10AM - timedelta(hours=10 * n + 5) for n in range(earlier)]  # within the last 3 days
    seed_calls(world, "V-US", US_PHONE, times)

    planned = world.plan("V-US")
    world.run()

    (attempt,) = [r for r in world.voice_attempts("V-US") if r["step"] == "call"]
    if placed:
        assert planned["verdict"] is Verdict.SEND and attempt["status"] == "sent"
        assert len(voice_twilio.calls) == 1
        return
    assert (planned["verdict"], planned["rule_id"]) == (Verdict.DEFER, "call-cap")
    assert "7 call attempts to this debt in the last 7 day(s)" in planned["detail"]
    assert planned["not_before"] == min(times) + timedelta(days=7)
    assert (attempt["status"], attempt["rule_id"], attempt["try_no"]) == ("deferred", "call-cap", 0)
    assert voice_twilio.calls == []


def test_no_call_within_seven_days_after_a_conversation_under_us(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    world = make_world(borrower("V-US", phone=US_PHONE, us=True), profile="us", now=NEW_YORK_10AM,
                       twilio=voice_twilio)
    world.run()
    (call,) = world.voice_attempts()
    exchange(world.app, [signed(world, VOICE_STATUS_CALLBACK_PATH,
                                progress(call["provider_message_id"], "completed", AnsweredBy="human",
                                         CallDuration="65"))])

    world.clock.now += timedelta(days=1)
    planned = world.plan("V-US")
    world.run()

    assert (planned["verdict"], planned["rule_id"]) == (Verdict.DEFER, "call-cap")
    assert "conversation" in planned["detail"] and "1006.14(b)(2)" in planned["detail"]
    assert planned["not_before"] == NEW_YORK_10AM + timedelta(days=7)
    assert len(voice_twilio.calls) == 1
    world.clock.now = NEW_YORK_10AM + timedelta(days=7)
    assert world.plan("V-US")["verdict"] is Verdict.SEND


def test_the_fourth_answered_call_in_a_day_is_deferred_under_cn(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    # four loans of one borrower, one phone number: cn counts calls per number
    world = make_world(*(borrower(f"V-{n}") for n in range(1, 5)), twilio=voice_twilio)
    world.run()
    placed = [r for r in world.voice_attempts() if r["try_no"] == 1]
    assert len(placed) == 3 and len(voice_twilio.calls) == 3  # the 4th waits: 3 contacts a day (cap)
    exchange(world.app, [signed(world, VOICE_STATUS_CALLBACK_PATH, progress(
        r["provider_message_id"], "completed", AnsweredBy="human", CallDuration="30")) for r in placed])

    world.clock.now += timedelta(hours=8)  # 18:00 in Shanghai, the same day
    (waiting,) = {r["account_id"] for r in world.voice_attempts()} - {r["account_id"] for r in placed}
    planned = world.plan(waiting)
    world.run()

    assert (planned["verdict"], planned["rule_id"]) == (Verdict.DEFER, "call-cap")
    assert "3 answered calls to this number in the last 1 day(s) (max 3" in planned["detail"]
    assert "GB/T 45251-2025" in planned["detail"]
    deferrals = [r for r in world.voice_attempts(waiting) if r["status"] == "deferred"]
    assert [r["rule_id"] for r in deferrals] == ["cap", "call-cap"]
    assert len(voice_twilio.calls) == 3


def test_at_most_six_dial_attempts_a_day_per_number_under_cn(
        make_world: Callable[..., World], voice_twilio: TwilioVoiceStandin) -> None:
    # without the profile's contact caps, the dial cap is what stops the 7th call to one number
    world = make_world(*(borrower(f"V-{n}") for n in range(1, 8)), twilio=voice_twilio,
                       compliance="compliance:\n  caps: []")
    world.run()

    statuses = sorted((r["status"], r["rule_id"]) for r in world.voice_attempts())
    assert statuses == [("deferred", "call-cap")] + [("sent", None)] * 6
    assert len(voice_twilio.calls) == 6


# --- without Twilio -------------------------------------------------------------------------------------------

def test_without_credentials_the_outbox_writes_voice_jsonl(make_world: Callable[..., World]) -> None:
    world = make_world(borrower("V-CN"), public=False)
    world.run()

    (line,) = (world.folder / "outbox" / "voice.jsonl").read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["to"] == CN_PHONE and "¥880.00" in record["text"]
    root = ElementTree.fromstring(record["twiml"])
    # no public URL: nowhere for a key press to go, so the call is the limited-content greeting alone
    assert [child.tag for child in root] == ["Say", "Hangup"]
    (greeting,) = says(root)
    assert greeting[:2] == ("cmn-CN", "Polly.Zhiyu") and "400-820-1234" in greeting[2]
    (attempt,) = world.voice_attempts()
    assert (attempt["status"], attempt["provider"], attempt["address"]) == ("sent", "outbox", "+86138****8007")


# --- the channel alone ----------------------------------------------------------------------------------------

def voice_settings(server: TwilioVoiceStandin, **env: str) -> TwilioVoiceSettings:
    base = {"TWILIO_ACCOUNT_SID": server.account_sid, "TWILIO_AUTH_TOKEN": server.auth_token,
            "TWILIO_FROM_NUMBER": FROM_NUMBER, "TWILIO_API_BASE_URL": server.url, "TWILIO_TIMEOUT": "1",
            "DISPATCHER_PUBLIC_URL": PUBLIC_URL, "DISPATCHER_SECRET_KEY": SECRET, **env}
    settings = TwilioVoiceSettings.from_env(base, TwilioSettings.from_env(base))
    assert settings is not None
    return settings


def call(to: str = CN_PHONE, body: str = "您的借款待还金额为¥880.00。") -> Message:
    return Message(1, "k", "V-1", ChannelKind.VOICE, to, body, title="您好，这里是信用钱包。请回电400-820-1234。",
                   data={"hotline": "400-820-1234"}, locale="zh-CN")


def place(settings: TwilioVoiceSettings, message: Message) -> Any:
    async def go() -> Any:
        channel = TwilioVoiceChannel(settings)
        try:
            return await channel.send(message)
        finally:
            await channel.aclose()

    return asyncio.run(go())


def test_the_voice_caller_id_is_its_own_number_when_given(voice_twilio: TwilioVoiceStandin) -> None:
    result = place(voice_settings(voice_twilio, TWILIO_VOICE_FROM="+14155550777"), call())
    assert result.outcome is Outcome.SENT
    (request,) = voice_twilio.call_requests
    assert parse_qs(request.body.decode())["From"] == ["+14155550777"]


@pytest.mark.parametrize(("status", "code", "outcome", "effect"), [
    (429, 20429, Outcome.TRANSIENT, Effect.NONE),
    (503, 20500, Outcome.TRANSIENT, Effect.NONE),
    (400, 21211, Outcome.PERMANENT, Effect.BAD_ADDRESS),
    (400, 21215, Outcome.PERMANENT, Effect.NONE),
])
def test_twilio_refusals_are_classified_as_for_sms(voice_twilio: TwilioVoiceStandin, status: int, code: int,
                                                   outcome: Outcome, effect: Effect) -> None:
    voice_twilio.fail_next(status, code, retry_after=2 if status == 429 else None)
    result = place(voice_settings(voice_twilio), call())
    assert (result.outcome, result.effect, result.error_code) == (outcome, effect, str(code))


def test_a_call_request_that_times_out_is_not_tried_again(voice_twilio: TwilioVoiceStandin) -> None:
    voice_twilio.delay = 2.0
    result = place(voice_settings(voice_twilio), call())
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "timeout")


def test_a_call_whose_twiml_is_too_long_is_refused_before_any_request(voice_twilio: TwilioVoiceStandin) -> None:
    long_greeting = Message(1, "k", "V-1", ChannelKind.VOICE, CN_PHONE, "x", title="很长" * 2100, locale="zh-CN")
    result = place(voice_settings(voice_twilio, DISPATCHER_PUBLIC_URL=""), long_greeting)
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "twiml_too_long")
    assert voice_twilio.call_requests == []


def test_the_stand_in_refuses_requests_twilio_would_refuse() -> None:
    sid = "AC" + "0" * 32
    assert call_problems(sid, {"To": [CN_PHONE], "From": [FROM_NUMBER], "Twiml": ["<Response/>"]}) == []
    problems = call_problems(sid, {"To": [CN_PHONE], "Twiml": ["<Response/>"], "StatusCallbackMethod": ["PUT"],
                                   "Timeout": ["ten"], "MachineDetection": ["Maybe"], "Colour": ["red"],
                                   "StatusCallback": ["not a url"]})
    assert {p.split(":")[0] for p in problems} == {"From", "StatusCallbackMethod", "Timeout", "MachineDetection",
                                                  "Colour", "StatusCallback"}
    assert call_problems("AC123", {"To": [CN_PHONE], "From": [FROM_NUMBER], "Url": ["https://x.test/t"]}) != []
    assert call_problems(sid, {"To": [CN_PHONE], "From": [FROM_NUMBER]}) == [
        "one of Url, Twiml or ApplicationSid is required"]


# --- the templates' content rules -----------------------------------------------------------------------------

def voice_lint(folder: Path) -> list[tuple[str, str, str]]:
    """(rule, file name, message) of every content problem of the folder's schedule and templates."""
    schedule = load_schedule(folder / "schedules.yaml", {}).schedule
    return [(p.rule, Path(p.file or "").name, p.message)
            for p in lint_templates(schedule, folder / "templates", resolve_policy(schedule))]


@pytest.mark.parametrize("profile", ["cn", "us"])
def test_the_shipped_call_templates_pass_the_content_rules(tmp_path: Path, profile: str) -> None:
    write_schedule(tmp_path, profile)
    assert voice_lint(tmp_path) == []


GREETING, MESSAGE = "voice_greeting.txt.j2", "voice.txt.j2"


@pytest.mark.parametrize(("part", "old", "new", "rule", "file"), [
    pytest.param(GREETING, "。请您", "，关于您的逾期借款。请您", "third-party", GREETING, id="debt-word-in-greeting"),
    pytest.param(GREETING, "。请您", "，您有{{ amount|money }}待处理。请您", "third-party", GREETING,
                 id="amount-in-greeting"),
    pytest.param(GREETING, "请您回电{{ brand.hotline }}，", "请您回电，", "content", GREETING,
                 id="greeting-without-hotline"),
    pytest.param(MESSAGE, "{{ repayment_account }}", "官方账户", "content", GREETING, id="no-repayment-account"),
    pytest.param(MESSAGE, "如您已经还款", "否则我们将起诉至法院。如您已经还款", "civil-court", MESSAGE,
                 id="threat-in-message"),
])
def test_voice_templates_that_break_a_content_rule_are_refused(
        tmp_path: Path, part: str, old: str, new: str, rule: str, file: str) -> None:
    write_schedule(tmp_path, "cn")
    path = tmp_path / "templates" / "call" / "zh-CN" / part
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")

    assert (rule, file) in [(r, f) for r, f, _ in voice_lint(tmp_path)]


def test_the_checked_subset_is_cut_from_twilios_published_description() -> None:
    """The stand-in checks calls against tests/standins/twilio_api_v2010_subset.json; where Twilio's whole
    description is beside the repository (``../shared/specs``), the subset must be exactly what it holds."""
    whole = find_spec()
    if whole is None:
        pytest.skip("Twilio's whole OpenAPI description is not beside this checkout (../shared/specs)")
    cut = subset(json.loads(whole.read_text(encoding="utf-8")))
    assert json.loads(SUBSET.read_text(encoding="utf-8")) == cut
    assert "/2010-04-01/Accounts/{AccountSid}/Calls.json" in cut["paths"]
