"""SmtpEmailChannel against a real aiosmtpd server: MIME shape, headers, reuse, TLS, error mapping."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, TypeVar

import pytest
from standins.smtp_server import SmtpStandin, free_port, tls_contexts

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel, DeliveryResult, Effect, Message, Outcome
from dispatcher.channels.headers import UNSAFE_HEADER
from dispatcher.channels.provider_settings import SmtpSecurity, SmtpSettings
from dispatcher.channels.smtp_email import SmtpEmailChannel, build_email
from dispatcher.errors import ConfigError

T = TypeVar("T")
SENDER = "ACME Collections <reminders@acme.example>"
UNSUBSCRIBE = "<https://reminders.acme.example/unsubscribe/TOKEN>"
ONE_CLICK = "List-Unsubscribe=One-Click"


def settings_for(server: SmtpStandin, security: str = "none", **env: str) -> SmtpSettings:
    base = {"SMTP_HOST": server.host, "SMTP_PORT": str(server.port), "SMTP_SECURITY": security,
            "EMAIL_FROM": SENDER, "SMTP_TIMEOUT": "2"}
    settings = SmtpSettings.from_env({**base, **env})
    assert settings is not None
    return settings


def mail(to: str = "borrower@example.com", attempt_id: int = 42) -> Message:
    return Message(attempt_id, "acct-1/firm/1", "acct-1", ChannelKind.EMAIL, to,
                   "Dear Li Wei,\n1 250,00 CNY is overdue. 请于 2024-06-01 前还款。\n",
                   subject="Repayment reminder / 还款提醒",
                   html="<p>Dear Li Wei, <b>1 250,00 CNY</b> is overdue.</p>",
                   headers={"List-Unsubscribe": UNSUBSCRIBE, "List-Unsubscribe-Post": ONE_CLICK})


def with_channel(
    settings: SmtpSettings, use: Callable[[SmtpEmailChannel], Awaitable[T]], **kwargs: Any
) -> T:
    async def run() -> T:
        channel = SmtpEmailChannel(settings, **kwargs)
        try:
            return await use(channel)
        finally:
            await channel.aclose()

    return asyncio.run(run())


def body_of(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # MIME text travels in canonical CRLF form


def test_send_delivers_multipart_alternative_with_unsubscribe_headers(smtp: SmtpStandin) -> None:
    result = with_channel(settings_for(smtp), lambda c: c.send(mail()))

    assert result.outcome is Outcome.SENT
    (received,) = smtp.messages
    assert (received.mail_from, received.rcpt_tos) == ("reminders@acme.example", ["borrower@example.com"])
    parsed = received.message
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["From"] == SENDER
    assert parsed["To"] == "borrower@example.com"
    assert parsed["Subject"] == "Repayment reminder / 还款提醒"
    assert parsed["Date"].datetime.tzinfo is not None
    assert parsed["Message-ID"] == result.provider_message_id
    assert re.fullmatch(r"<reminder\.42\.[0-9a-f]{16}@acme\.example>", parsed["Message-ID"])
    assert parsed["List-Unsubscribe"] == UNSUBSCRIBE
    assert parsed["List-Unsubscribe-Post"] == ONE_CLICK
    assert body_of(parsed, "plain") == mail().body
    assert body_of(parsed, "html").strip() == mail().html
    assert all(byte < 128 for byte in received.data)  # 7-bit clean for any relay


def test_text_only_message_is_a_single_part() -> None:
    plain = Message(1, "k", "a", ChannelKind.EMAIL, "b@example.com", "hello", subject="s")
    built = build_email(plain, SENDER, date=datetime(2024, 6, 1, 9, 0, tzinfo=UTC))
    assert built.get_content_type() == "text/plain"
    assert built["Date"] == "Sat, 01 Jun 2024 09:00:00 +0000"
    assert build_email(plain, SENDER)["Message-ID"] == built["Message-ID"]  # stable for one attempt


INJECTIONS = [
    pytest.param({"subject": "Dear 王伟\r\nBcc: x@evil.example"}, "Subject", id="crlf-in-subject"),
    pytest.param({"subject": "Dear Li\nBcc: x@evil.example"}, "Subject", id="lf-in-subject"),
    pytest.param({"subject": "Dear Li\rBcc: x@evil.example"}, "Subject", id="cr-in-subject"),
    pytest.param({"subject": "Dear Li\u2028Bcc: x@evil.example"}, "Subject", id="line-separator"),
    pytest.param({"subject": "Dear Li\x00"}, "Subject", id="nul"),
    pytest.param({"to": "b@example.com\r\nBcc: x@evil.example"}, "To", id="crlf-in-to"),
    pytest.param({"headers": {"List-Unsubscribe": "<https://u.example/t>\r\nBcc: x@evil.example"}},
                 "List-Unsubscribe", id="crlf-in-extra-header"),
    pytest.param({"headers": {"X-Evil\r\nBcc": "x@evil.example"}}, "X-Evil\r\nBcc", id="crlf-in-header-name"),
]
"""A borrower's name (in the subject), address or an extra header carrying a line break or control character."""


def injected(fields: dict[str, Any]) -> Message:
    base: dict[str, Any] = {"subject": "Dear Li", "to": "b@example.com", "headers": {}}
    base.update(fields)
    return Message(1, "k", "a", ChannelKind.EMAIL, base["to"], "x", subject=base["subject"], headers=base["headers"])


@pytest.mark.parametrize(("fields", "header"), INJECTIONS)
def test_a_control_character_in_any_header_refuses_the_message(
    smtp: SmtpStandin, fields: dict[str, Any], header: str
) -> None:
    """Regression: a CR/LF in a borrower's name could add a Bcc; such a message is refused, never stripped."""
    result = with_channel(settings_for(smtp), lambda c: c.send(injected(fields)))
    assert (result.outcome, result.error_code, result.effect) == (Outcome.PERMANENT, UNSAFE_HEADER, Effect.NONE)
    assert result.error_message is not None and f"header {header!r} contains U+" in result.error_message
    assert smtp.messages == [] and smtp.connections == 0  # refused before the relay is even reached


def test_a_tab_and_non_ascii_in_headers_are_fine(smtp: SmtpStandin) -> None:
    long_subject = "还款提醒：" + "您的借款已逾期，请尽快还款。" * 6  # folded over several encoded lines
    fine = injected({"subject": long_subject + "\tend"})
    result = with_channel(settings_for(smtp), lambda c: c.send(fine))
    assert result.outcome is Outcome.SENT
    assert smtp.messages[0].message["Subject"] == long_subject + "\tend"


def test_one_connection_is_reused_across_sends(smtp: SmtpStandin) -> None:
    async def scenario(channel: SmtpEmailChannel) -> list[DeliveryResult]:
        first = [await channel.send(mail(attempt_id=i)) for i in range(3)]
        return first + list(await asyncio.gather(*(channel.send(mail(attempt_id=10 + i)) for i in range(3))))

    results = with_channel(settings_for(smtp), scenario)
    assert [r.outcome for r in results] == [Outcome.SENT] * 6
    assert len(smtp.messages) == 6
    assert smtp.connections == 1
    assert len({m.peer for m in smtp.messages}) == 1


def test_connection_is_reopened_after_the_server_drops_it(smtp: SmtpStandin) -> None:
    async def scenario(channel: SmtpEmailChannel) -> list[DeliveryResult]:
        first = await channel.send(mail(attempt_id=1))
        smtp.drop_connections()
        await asyncio.sleep(0.05)
        return [first, await channel.send(mail(attempt_id=2))]

    results = with_channel(settings_for(smtp), scenario, idle_check_after=0.0)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert smtp.connections == 2


ERRORS = [
    # (scripted on RCPT or DATA, reply) -> outcome, error_code, effect
    ("rcpt", "550 5.1.1 No such user", Outcome.PERMANENT, "550", Effect.BAD_ADDRESS),
    ("rcpt", "551 5.1.6 User not local", Outcome.PERMANENT, "551", Effect.BAD_ADDRESS),
    ("rcpt", "553 5.1.3 Bad mailbox syntax", Outcome.PERMANENT, "553", Effect.BAD_ADDRESS),
    ("rcpt", "552 5.2.2 Mailbox full", Outcome.PERMANENT, "552", Effect.NONE),
    ("rcpt", "450 4.2.1 Mailbox busy", Outcome.TRANSIENT, "450", Effect.NONE),
    ("data", "554 5.7.1 Message rejected as spam", Outcome.PERMANENT, "554", Effect.NONE),
    ("data", "550 5.7.1 Policy rejection", Outcome.PERMANENT, "550", Effect.NONE),
    ("data", "451 4.3.0 Try again later", Outcome.TRANSIENT, "451", Effect.NONE),
]


@pytest.mark.parametrize(("stage", "reply", "outcome", "code", "effect"), ERRORS)
def test_error_mapping(smtp: SmtpStandin, stage: str, reply: str, outcome: Outcome, code: str,
                       effect: Effect) -> None:
    if stage == "rcpt":
        smtp.reject("borrower@example.com", reply)
    else:
        smtp.fail_next_data(reply)

    async def scenario(channel: SmtpEmailChannel) -> list[DeliveryResult]:
        return [await channel.send(mail()), await channel.send(mail("other@example.com"))]

    refused, sent = with_channel(settings_for(smtp), scenario)
    assert (refused.outcome, refused.error_code, refused.effect) == (outcome, code, effect)
    assert reply.split(" ", 1)[1] in str(refused.error_message)
    assert sent.outcome is Outcome.SENT
    assert smtp.connections == 1  # a refusal does not cost the connection


def test_timeout_is_transient_and_the_next_send_reconnects(smtp: SmtpStandin) -> None:
    smtp.stall_next_data(1.0)

    async def scenario(channel: SmtpEmailChannel) -> list[DeliveryResult]:
        return [await channel.send(mail(attempt_id=1)), await channel.send(mail(attempt_id=2))]

    timed_out, sent = with_channel(settings_for(smtp, SMTP_TIMEOUT="0.3"), scenario)
    assert (timed_out.outcome, timed_out.error_code) == (Outcome.TRANSIENT, "timeout")
    assert sent.outcome is Outcome.SENT
    assert smtp.connections == 2


def test_unreachable_server_is_transient() -> None:
    settings = SmtpSettings("127.0.0.1", free_port(), SENDER, SmtpSecurity.NONE, timeout=1)
    result = with_channel(settings, lambda c: c.send(mail()))
    assert (result.outcome, result.error_code) == (Outcome.TRANSIENT, "connection")


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_modes(security: str) -> None:
    server_tls, client_tls = tls_contexts()
    options = {"starttls": server_tls} if security == "starttls" else {"implicit_tls": server_tls}
    with SmtpStandin(**options) as smtp:
        result = with_channel(settings_for(smtp, security), lambda c: c.send(mail()), ssl_context=client_tls)
        assert result.outcome is Outcome.SENT
        assert len(smtp.messages) == 1


def test_untrusted_certificate_is_transient() -> None:
    server_tls, _ = tls_contexts()
    with SmtpStandin(starttls=server_tls) as smtp:
        result = with_channel(settings_for(smtp, "starttls"), lambda c: c.send(mail()),
                              ssl_context=ssl.create_default_context())
        assert result.outcome is Outcome.TRANSIENT
        assert smtp.messages == []


def test_channel_satisfies_the_protocol(smtp: SmtpStandin) -> None:
    channel = SmtpEmailChannel(settings_for(smtp))
    assert isinstance(channel, Channel)
    assert (channel.kind, channel.provider) == (ChannelKind.EMAIL, "smtp")


def test_settings() -> None:
    assert SmtpSettings.from_env({}) is None
    defaults = SmtpSettings.from_env({"SMTP_HOST": "mail", "EMAIL_FROM": SENDER, "SMTP_USERNAME": "u",
                                      "SMTP_PASSWORD": "hunter2"})
    assert defaults is not None
    assert (defaults.security, defaults.port, defaults.timeout) == (SmtpSecurity.STARTTLS, 587, 10.0)
    assert "hunter2" not in repr(defaults)
    implicit = SmtpSettings.from_env({"SMTP_HOST": "mail", "EMAIL_FROM": SENDER, "SMTP_SECURITY": "SSL"})
    assert implicit is not None and implicit.port == 465
    with pytest.raises(ConfigError) as info:
        SmtpSettings.from_env({"SMTP_HOST": "mail", "SMTP_SECURITY": "tls", "SMTP_USERNAME": "u"})
    assert len(info.value.problems) == 3
