"""``dispatcher replies`` and ``dispatcher plan`` after inbound replies posted to the web app, signed as Twilio does."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import NOW, Cli
from sqlalchemy import insert
from standins.twilio_server import TwilioStandin
from twilio.request_validator import RequestValidator

from dispatcher.app import App, build_app
from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.replies.inbound import read_reply, to_entry
from dispatcher.replies.words import Vocabulary
from dispatcher.settings import Settings
from dispatcher.web.server import INBOUND_PATH, build_web_app
from dispatcher.web.twilio_hooks import web_inbox

PUBLIC_URL = "https://reminders.example.test"
PHONE = "+8613800138007"
OUR_NUMBER = "+14155550999"


@pytest.fixture
def web_env(workdir: Path, monkeypatch: pytest.MonkeyPatch, twilio: TwilioStandin) -> TwilioStandin:
    """The workdir's environment with a public URL and Twilio credentials, so signed requests verify."""
    for name, value in {"DISPATCHER_PUBLIC_URL": PUBLIC_URL, "DISPATCHER_SECRET_KEY": "replies-secret",
                        "TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
                        "TWILIO_FROM_NUMBER": OUR_NUMBER, "TWILIO_API_BASE_URL": twilio.url}.items():
        monkeypatch.setenv(name, value)
    return twilio


@pytest.fixture
def borrower_app(web_env: TwilioStandin, app: App) -> App:
    """One borrower two days overdue (gentle: push and SMS) whose number is ``PHONE``."""
    demo_metadata.create_all(app.engine)
    with app.engine.begin() as connection:
        connection.execute(insert(demo_accounts), [{
            "account_id": "A-REPLY", "name": "李娜", "phone": PHONE, "email": "li.na@example.cn",
            "push_token": "fcm-token-reply", "locale": "zh-CN", "timezone": "Asia/Shanghai", "currency": "CNY",
            "overdue_amount": "880.00", "due_date": NOW.date() - timedelta(days=2)}])
    return app


def post_replies(app: App, auth_token: str, replies: Sequence[tuple[str, str]]) -> list[int]:
    """Post (sender, body) replies to the inbound webhook, signed; the status of each."""
    async def go() -> list[int]:
        async with TestClient(TestServer(build_web_app(app))) as client:
            statuses = []
            for sender, body in replies:
                form = {"MessageSid": "SM" + secrets.token_hex(16), "From": sender, "To": OUR_NUMBER,
                        "Body": body}
                signature = RequestValidator(auth_token).compute_signature(PUBLIC_URL + INBOUND_PATH, form)
                response = await client.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": signature})
                statuses.append(response.status)
            return statuses

    return asyncio.run(go())


def sms_plan(cli: Cli) -> dict[str, Any]:
    code, out, err = cli("plan", "--format", "json", "--at", NOW.isoformat())
    assert code == 0, err
    (row,) = json.loads(out)
    (sms,) = [c for c in row["channels"] if c["channel"] == "sms"]
    return dict(sms)


@pytest.mark.parametrize("sender", ["8613800138007", "+86 138 0013 8007", "0086 138 0013 8007", PHONE])
def test_plan_shows_the_suppression_after_a_stop_from_any_spelling_of_the_number(
    cli: Cli, borrower_app: App, web_env: TwilioStandin, sender: str
) -> None:
    assert sms_plan(cli)["verdict"] == "send"

    assert post_replies(borrower_app, web_env.auth_token, [(sender, "Stop.")]) == [200]

    sms = sms_plan(cli)
    assert (sms["verdict"], sms["rule_id"]) == ("suppress", "opt-out")
    assert "inbound_stop" in sms["detail"]


def test_the_webhook_hears_the_words_schedules_yaml_adds(cli: Cli, workdir: Path, web_env: TwilioStandin,
                                                        clock: Any) -> None:
    """``replies.opt_out`` / ``opt_in`` of schedules.yaml reach the inbound webhook, not only ``validate``."""
    schedules = workdir / "schedules.yaml"
    words = "\nreplies:\n  opt_out: {zh-CN: [别再烦我]}\n  opt_in: {zh-CN: [请继续提醒]}\n"
    schedules.write_text(schedules.read_text(encoding="utf-8") + words, encoding="utf-8")
    app = build_app(Settings.from_env(), clock=clock)
    try:
        demo_metadata.create_all(app.engine)
        with app.engine.begin() as connection:
            connection.execute(insert(demo_accounts), [{
                "account_id": "A-WORDS", "name": "李娜", "phone": PHONE, "locale": "zh-CN", "timezone": "Asia/Shanghai",
                "currency": "CNY", "overdue_amount": "880.00", "due_date": NOW.date() - timedelta(days=2)}])
        assert sms_plan(cli)["verdict"] == "send"
        assert post_replies(app, web_env.auth_token, [(PHONE, "别再烦我")]) == [200]
        sms = sms_plan(cli)
        assert (sms["verdict"], sms["rule_id"]) == ("suppress", "opt-out")
        clock.now += timedelta(minutes=5)
        assert post_replies(app, web_env.auth_token, [(PHONE, "请继续提醒")]) == [200]
        assert sms_plan(cli)["verdict"] == "send"
    finally:
        app.engine.dispose()


def test_replies_lists_every_reply_and_the_unclear_ones_apart(
    cli: Cli, borrower_app: App, web_env: TwilioStandin
) -> None:
    bodies = ["退订！", "I will pay tomorrow", "不要再打了, call +8613912345678"]
    assert post_replies(borrower_app, web_env.auth_token, [(PHONE, b) for b in bodies]) == [200] * 3

    code, out, _ = cli("replies", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["decision"], r["outcome"]) for r in rows] == [("opt_out", "suppressed"), ("other", "none"),
                                                              ("unclear", "none")]
    assert PHONE not in out and "+8613912345678" not in out
    assert {r["sender"] for r in rows} == {"+86138****8007"}

    code, out, _ = cli("replies", "--unclear", "--format", "csv")
    assert code == 0
    (unclear,) = list(csv.DictReader(io.StringIO(out)))
    assert unclear["decision"] == "unclear" and unclear["text"].startswith("不要再打了")

    code, _, err = cli("replies", "--mark-read", unclear["id"])
    assert code == 0 and "1 reply(ies) marked read" in err
    code, out, _ = cli("replies", "--unclear", "--unread", "--format", "json")
    assert (code, json.loads(out)) == (0, [])

    code, out, err = cli("replies")
    assert code == 0 and "3 reply(ies)" in err and "退订" in out


def test_replies_applies_what_the_web_app_spooled(cli: Cli, borrower_app: App) -> None:
    inbox = web_inbox(borrower_app)
    reply = read_reply({"MessageSid": "SM" + "a" * 32, "From": "8613800138007", "To": OUR_NUMBER, "Body": "TD"},
                       Vocabulary.build(), "CN", NOW)
    assert reply is not None
    inbox.spool.append(to_entry(reply))  # as the web app does while the ledger is locked

    code, out, err = cli("replies", "--format", "json")

    assert code == 0 and "1 spooled reply(ies) applied" in err
    assert [(r["keyword"], r["outcome"]) for r in json.loads(out)] == [("TD", "suppressed")]
    assert not inbox.spool.path.exists()
    assert (sms_plan(cli)["verdict"]) == "suppress"
