"""TwilioSmsChannel against the Twilio stand-in: form fields, auth, error mapping, timeouts, find_sent."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standins.twilio_server import TwilioStandin

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel, Effect, Message, Outcome
from dispatcher.channels.provider_settings import TwilioSettings
from dispatcher.channels.twilio_sms import TwilioSmsChannel, form_encode
from dispatcher.errors import ConfigError, DeliveryError, TransientDeliveryError

T = TypeVar("T")
TO = "+14155550100"


def settings_for(server: TwilioStandin, **env: str) -> TwilioSettings:
    base = {
        "TWILIO_ACCOUNT_SID": server.account_sid,
        "TWILIO_AUTH_TOKEN": server.auth_token,
        "TWILIO_FROM_NUMBER": "+14155550999",
        "TWILIO_API_BASE_URL": server.url,
        "TWILIO_TIMEOUT": "2",
        "DISPATCHER_PUBLIC_URL": "https://reminders.example.com/",
        "TWILIO_VALIDITY_PERIOD": "3600",
    }
    settings = TwilioSettings.from_env({**base, **env})
    assert settings is not None
    return settings


def sms(to: str = TO, attempt_id: int = 1) -> Message:
    return Message(attempt_id, "acct-1/gentle/0", "acct-1", ChannelKind.SMS, to,
                   "ACME: 1,250.00 CNY due 2024-06-01. Reply STOP to opt out.")


def with_channel(settings: TwilioSettings, use: Callable[[TwilioSmsChannel], Awaitable[T]]) -> T:
    async def run() -> T:
        channel = TwilioSmsChannel(settings)
        try:
            return await use(channel)
        finally:
            await channel.aclose()

    return asyncio.run(run())


def test_send_posts_the_documented_form_with_basic_auth(twilio: TwilioStandin) -> None:
    result = with_channel(settings_for(twilio), lambda c: c.send(sms()))

    assert result.outcome is Outcome.SENT
    assert result.provider_message_id == twilio.messages[0]["sid"]
    assert result.provider_message_id is not None and len(result.provider_message_id) == 34
    (request,) = twilio.creates
    assert request.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert request.form == {
        "To": TO,
        "From": "+14155550999",
        "Body": sms().body,
        "StatusCallback": "https://reminders.example.com/webhooks/twilio/status",
        "ValidityPeriod": "3600",
    }
    credentials = base64.b64encode(f"{twilio.account_sid}:{twilio.auth_token}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {credentials}"


def test_messaging_service_replaces_from(twilio: TwilioStandin) -> None:
    settings = settings_for(twilio, TWILIO_FROM_NUMBER="", TWILIO_MESSAGING_SERVICE_SID="MG" + "1" * 32,
                            DISPATCHER_PUBLIC_URL="", TWILIO_VALIDITY_PERIOD="")
    result = with_channel(settings, lambda c: c.send(sms()))

    assert result.outcome is Outcome.SENT
    assert twilio.creates[0].form == {"To": TO, "MessagingServiceSid": "MG" + "1" * 32, "Body": sms().body}


def test_channel_satisfies_the_protocol(twilio: TwilioStandin) -> None:
    channel = TwilioSmsChannel(settings_for(twilio))
    assert isinstance(channel, Channel)
    assert (channel.kind, channel.provider) == (ChannelKind.SMS, "twilio")


def test_region_and_edge_from_the_environment_are_ignored(
    twilio: TwilioStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "au1")
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    assert with_channel(settings_for(twilio), lambda c: c.send(sms())).outcome is Outcome.SENT


ERRORS = [
    # status, code, retry_after header, outcome, effect, retry_after
    (400, 21610, None, Outcome.PERMANENT, Effect.OPTED_OUT, None),
    (400, 21211, None, Outcome.PERMANENT, Effect.BAD_ADDRESS, None),
    (400, 21614, None, Outcome.PERMANENT, Effect.BAD_ADDRESS, None),
    (400, 21408, None, Outcome.PERMANENT, Effect.NONE, None),
    (403, 20003, None, Outcome.PERMANENT, Effect.NONE, None),
    (429, 20429, 2, Outcome.TRANSIENT, Effect.NONE, 2.0),
    (429, 20429, None, Outcome.TRANSIENT, Effect.NONE, None),
    (500, 20500, None, Outcome.TRANSIENT, Effect.NONE, None),
    (503, 20503, 30, Outcome.TRANSIENT, Effect.NONE, 30.0),
]


@pytest.mark.parametrize(("status", "code", "header", "outcome", "effect", "retry_after"), ERRORS)
def test_error_mapping(twilio: TwilioStandin, status: int, code: int, header: int | None,
                       outcome: Outcome, effect: Effect, retry_after: float | None) -> None:
    twilio.fail_next(status, code, retry_after=header)
    result = with_channel(settings_for(twilio), lambda c: c.send(sms()))

    assert (result.outcome, result.error_code, result.effect, result.retry_after) == (
        outcome, str(code), effect, retry_after)
    assert result.error_message


def test_per_recipient_rule_only_hits_that_number(twilio: TwilioStandin) -> None:
    twilio.fail_for("+14155550666", 400, 21610)

    async def both(channel: TwilioSmsChannel) -> list[Any]:
        return list(await asyncio.gather(channel.send(sms("+14155550666")), channel.send(sms(TO))))

    opted_out, sent = with_channel(settings_for(twilio), both)
    assert (opted_out.outcome, opted_out.effect) == (Outcome.PERMANENT, Effect.OPTED_OUT)
    assert sent.outcome is Outcome.SENT


def test_wrong_credentials_are_a_permanent_401(twilio: TwilioStandin) -> None:
    result = with_channel(settings_for(twilio, TWILIO_AUTH_TOKEN="wrong"), lambda c: c.send(sms()))
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "20003")


def test_timeout_is_transient(twilio: TwilioStandin) -> None:
    twilio.delay = 1.0
    result = with_channel(settings_for(twilio, TWILIO_TIMEOUT="0.2"), lambda c: c.send(sms()))
    assert (result.outcome, result.error_code) == (Outcome.TRANSIENT, "timeout")


def test_unreachable_server_is_transient(twilio: TwilioStandin) -> None:
    url = twilio.url
    twilio.close()
    result = with_channel(settings_for(twilio, TWILIO_API_BASE_URL=url), lambda c: c.send(sms()))
    assert (result.outcome, result.error_code) == (Outcome.TRANSIENT, "connection")


def test_find_sent_lists_sids_to_one_number_across_pages(twilio: TwilioStandin) -> None:
    twilio.page_size = 2
    since = datetime.now(UTC) - timedelta(seconds=5)

    async def scenario(channel: TwilioSmsChannel) -> tuple[list[str], list[str], list[str]]:
        sent = [await channel.send(sms(attempt_id=i)) for i in range(3)]
        await channel.send(sms("+14155550777"))
        found = await channel.find_sent(TO, since)
        later = await channel.find_sent(TO, datetime.now(UTC) + timedelta(minutes=1))
        return [str(r.provider_message_id) for r in sent], found, later

    sent, found, later = with_channel(settings_for(twilio), scenario)
    assert found == sent
    assert later == []
    lists = [r for r in twilio.requests if r.method == "GET"]
    assert lists[0].query["To"] == [TO]
    assert lists[0].query["DateSent>"] == [since.strftime("%Y-%m-%dT%H:%M:%SZ")]
    assert len(lists) == 2 + 2  # Twilio filters by day: both lookups read two pages


def test_find_sent_raises_delivery_errors(twilio: TwilioStandin) -> None:
    with pytest.raises(DeliveryError) as refused:
        with_channel(settings_for(twilio, TWILIO_AUTH_TOKEN="wrong"),
                     lambda c: c.find_sent(TO, datetime(2024, 1, 1)))
    assert refused.value.code == "401"
    assert not isinstance(refused.value, TransientDeliveryError)
    twilio.delay = 1.0
    with pytest.raises(TransientDeliveryError):
        with_channel(settings_for(twilio, TWILIO_TIMEOUT="0.2"),
                     lambda c: c.find_sent(TO, datetime(2024, 1, 1)))


SETTINGS_ERRORS = [
    ({"TWILIO_ACCOUNT_SID": "AC1"}, ["TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER"]),
    ({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_FROM_NUMBER": "+1",
      "TWILIO_TIMEOUT": "0", "TWILIO_VALIDITY_PERIOD": "99999", "TWILIO_API_BASE_URL": "ftp://x"},
     ["TWILIO_TIMEOUT", "TWILIO_VALIDITY_PERIOD", "TWILIO_API_BASE_URL"]),
]


@pytest.mark.parametrize(("env", "names"), SETTINGS_ERRORS)
def test_settings_report_every_problem(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        TwilioSettings.from_env(env)
    assert sorted(p.message.split(":")[0] for p in info.value.problems) == sorted(names)


def test_settings_defaults_and_secret_hidden() -> None:
    assert TwilioSettings.from_env({}) is None
    settings = TwilioSettings.from_env(
        {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "s3cret", "TWILIO_FROM_NUMBER": "+1"})
    assert settings is not None
    assert (settings.api_base_url, settings.timeout, settings.status_callback) == (
        "https://api.twilio.com", 10.0, None)
    assert "s3cret" not in repr(settings)


@given(st.lists(st.tuples(st.text(), st.text()), max_size=5))
def test_form_encode_matches_urlencode(fields: list[tuple[str, str]]) -> None:
    clean = [(k, v) for k, v in fields if not any(0xD800 <= ord(c) <= 0xDFFF for c in k + v)]  # unencodable
    assert form_encode(clean) == urlencode(clean).encode("ascii")


def test_an_error_answer_that_is_not_twilio_json_is_classified_by_its_status() -> None:
    from dispatcher.channels.twilio_sms import _error_parts, classify_twilio_error

    code, text = _error_parts(502, b"<html><body>Bad Gateway</body></html>")  # a proxy in front of the API
    assert (code, text) == (None, "HTTP 502: <html><body>Bad Gateway</body></html>")
    assert classify_twilio_error(502, code, text).outcome is Outcome.TRANSIENT
    assert _error_parts(400, b'{"code": 21211, "message": "Invalid To", "status": 400}') == (21211, "Invalid To")
