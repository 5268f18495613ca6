"""FcmPushChannel against the FCM stand-in: OAuth2 flow, v1 message shape, error mapping, token cache."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from standins.fcm_server import FcmStandin

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel, DeliveryResult, Effect, Message, Outcome
from dispatcher.channels.fcm_push import FcmPushChannel, classify_fcm_error
from dispatcher.channels.provider_settings import FcmSettings
from dispatcher.errors import ConfigError

T = TypeVar("T")
DEVICE = "fcm-token-abc:APA91b"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(fcm: FcmStandin, tmp_path: Path) -> FcmSettings:
    key_file = fcm.write_service_account(tmp_path / "service-account.json")
    loaded = FcmSettings.from_env({"FCM_CREDENTIALS_FILE": str(key_file), "FCM_API_BASE_URL": fcm.url,
                                   "FCM_TIMEOUT": "2"})
    assert loaded is not None
    return loaded


def push(to: str = DEVICE) -> Message:
    return Message(7, "acct-1/gentle/0", "acct-1", ChannelKind.PUSH, to,
                   "You have a new message from ACME", title="ACME",
                   data={"reminder": "acct-1/gentle/0", "screen": "repayment"})


def with_channel(settings: FcmSettings, use: Callable[[FcmPushChannel], Awaitable[T]],
                 clock: Callable[[], float] | None = None) -> T:
    async def run() -> T:
        channel = FcmPushChannel(settings, clock=clock) if clock else FcmPushChannel(settings)
        try:
            return await use(channel)
        finally:
            await channel.aclose()

    return asyncio.run(run())


def test_send_posts_a_v1_message_with_a_bearer_token(fcm: FcmStandin, settings: FcmSettings) -> None:
    result = with_channel(settings, lambda c: c.send(push()))

    assert result.outcome is Outcome.SENT
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith("projects/demo-project/messages/")
    (request,) = fcm.message_requests
    assert request.path == "/v1/projects/demo-project/messages:send"
    assert request.headers["Authorization"] == f"Bearer {fcm.issued[0]}"
    assert request.json() == {"message": {
        "token": DEVICE,
        "notification": {"title": "ACME", "body": "You have a new message from ACME"},
        "data": {"reminder": "acct-1/gentle/0", "screen": "repayment"},
        "android": {"priority": "high"},
    }}
    assert not any(ch.isdigit() for ch in str(request.json()["message"]["notification"]))  # no amount


def test_channel_satisfies_the_protocol(settings: FcmSettings) -> None:
    channel = FcmPushChannel(settings)
    assert isinstance(channel, Channel)
    assert (channel.kind, channel.provider) == (ChannelKind.PUSH, "fcm")


ERRORS = [
    # scripted errorCode, field, retry_after header, outcome, effect, retry_after
    ("UNREGISTERED", None, None, Outcome.PERMANENT, Effect.DEAD_TOKEN, None),
    ("SENDER_ID_MISMATCH", None, None, Outcome.PERMANENT, Effect.DEAD_TOKEN, None),
    ("INVALID_ARGUMENT", "message.token", None, Outcome.PERMANENT, Effect.DEAD_TOKEN, None),
    ("INVALID_ARGUMENT", "message.android.ttl", None, Outcome.PERMANENT, Effect.NONE, None),
    ("QUOTA_EXCEEDED", None, 60, Outcome.TRANSIENT, Effect.NONE, 60.0),
    ("UNAVAILABLE", None, 5, Outcome.TRANSIENT, Effect.NONE, 5.0),
    ("UNAVAILABLE", None, None, Outcome.TRANSIENT, Effect.NONE, None),
    ("INTERNAL", None, None, Outcome.TRANSIENT, Effect.NONE, None),
    ("THIRD_PARTY_AUTH_ERROR", None, None, Outcome.PERMANENT, Effect.NONE, None),
]


@pytest.mark.parametrize(("code", "field", "header", "outcome", "effect", "retry_after"), ERRORS)
def test_error_mapping(
    fcm: FcmStandin, settings: FcmSettings, code: str, field: str | None,
    header: int | None, outcome: Outcome, effect: Effect, retry_after: float | None,
) -> None:
    fcm.fail_next(code, "scripted", retry_after=header, field=field)
    result = with_channel(settings, lambda c: c.send(push()))

    assert (result.outcome, result.error_code, result.effect, result.retry_after) == (
        outcome, code, effect, retry_after)


def test_invalid_token_message_without_field_is_a_dead_token(fcm: FcmStandin, settings: FcmSettings) -> None:
    text = "The registration token is not a valid FCM registration token"  # FCM's real answer
    fcm.fail_next("INVALID_ARGUMENT", text)
    result = with_channel(settings, lambda c: c.send(push()))
    assert result == DeliveryResult.permanent("INVALID_ARGUMENT", text, Effect.DEAD_TOKEN)


def test_non_json_5xx_is_transient() -> None:
    assert classify_fcm_error(502, None).outcome is Outcome.TRANSIENT


def test_token_is_cached_across_sends_and_refreshed_after_expiry(
    fcm: FcmStandin, settings: FcmSettings
) -> None:
    clock = Clock()

    async def scenario(channel: FcmPushChannel) -> list[DeliveryResult]:
        results = list(await asyncio.gather(*(channel.send(push(f"device-{i}")) for i in range(5))))
        clock.now += 3600 - 30  # inside the refresh margin of a one-hour token
        results.append(await channel.send(push()))
        return results

    results = with_channel(settings, scenario, clock)
    assert [r.outcome for r in results] == [Outcome.SENT] * 6
    assert len(fcm.issued) == 2  # five concurrent sends shared one token; one refresh after expiry
    bearers = [r.headers["Authorization"] for r in fcm.message_requests]
    assert bearers == [f"Bearer {fcm.issued[0]}"] * 5 + [f"Bearer {fcm.issued[1]}"]


def test_401_refreshes_the_token_once_and_retries(fcm: FcmStandin, settings: FcmSettings) -> None:
    async def scenario(channel: FcmPushChannel) -> DeliveryResult:
        await channel.send(push())
        fcm.revoke_tokens()
        return await channel.send(push())

    assert with_channel(settings, scenario).outcome is Outcome.SENT
    assert len(fcm.issued) == 2
    assert [r.headers["Authorization"][7:] for r in fcm.message_requests] == [
        fcm.issued[0], fcm.issued[0], fcm.issued[1]]


def test_401_after_a_fresh_token_is_transient(fcm: FcmStandin, settings: FcmSettings) -> None:
    fcm.refuse_all_tokens = True
    result = with_channel(settings, lambda c: c.send(push()))
    assert (result.outcome, result.error_code) == (Outcome.TRANSIENT, "UNAUTHENTICATED")
    assert len(fcm.message_requests) == 2
    assert len(fcm.issued) == 2


def test_token_endpoint_refusal_is_transient(fcm: FcmStandin, settings: FcmSettings, tmp_path: Path) -> None:
    other = FcmStandin()  # same token_uri shape, but a different key: the assertion will not verify
    wrong_key = other.write_service_account(tmp_path / "other.json")
    text = wrong_key.read_text().replace(other.token_uri, fcm.token_uri).replace(
        other.client_email, fcm.client_email)
    wrong_key.write_text(text)
    other.close()
    loaded = FcmSettings.from_env({"FCM_CREDENTIALS_FILE": str(wrong_key), "FCM_API_BASE_URL": fcm.url})
    assert loaded is not None
    result = with_channel(loaded, lambda c: c.send(push()))
    assert (result.outcome, result.error_code) == (Outcome.TRANSIENT, "auth")
    assert fcm.message_requests == []


def test_timeout_is_transient(fcm: FcmStandin, settings: FcmSettings) -> None:
    async def scenario(channel: FcmPushChannel) -> DeliveryResult:
        await channel.tokens.get(channel._http())
        fcm.delay = 1.0
        return await channel.send(push())

    slow = FcmSettings(settings.project_id, settings.credentials, settings.api_base_url, timeout=0.2)
    result = with_channel(slow, scenario)
    assert (result.outcome, result.error_code) == (Outcome.TRANSIENT, "timeout")


def test_settings(tmp_path: Path, fcm: FcmStandin) -> None:
    assert FcmSettings.from_env({}) is None
    with pytest.raises(ConfigError):
        FcmSettings.from_env({"FCM_PROJECT_ID": "p"})
    with pytest.raises(ConfigError):
        FcmSettings.from_env({"FCM_CREDENTIALS_FILE": str(tmp_path / "missing.json")})
    key_file = fcm.write_service_account(tmp_path / "sa.json")
    loaded = FcmSettings.from_env({"FCM_CREDENTIALS_FILE": str(key_file), "FCM_PROJECT_ID": "override"})
    assert loaded is not None
    assert (loaded.project_id, loaded.api_base_url) == ("override", "https://fcm.googleapis.com")
    assert "PRIVATE KEY" not in repr(loaded)
