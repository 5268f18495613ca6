"""The narrow channel interface every provider implements.

A channel turns one :class:`Message` into one :class:`DeliveryResult`. It never
retries, never touches the ledger and never decides whether a borrower may be
contacted: retries, fallback, rate limits and compliance wrap the call in
:mod:`dispatcher.pipeline.deliver`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, replace
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from dispatcher.channel_kind import ChannelKind
from dispatcher.masking import mask_text, mask_token
from dispatcher.records import record


class Outcome(StrEnum):
    """What a provider said about one message."""

    SENT = "sent"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class Effect(StrEnum):
    """A consequence of a permanent failure for future messages to the same address."""

    NONE = "none"
    OPTED_OUT = "opted_out"  # the recipient opted out at the provider (Twilio 21610)
    BAD_ADDRESS = "bad_address"  # invalid or non-mobile number, rejected mailbox
    DEAD_TOKEN = "dead_token"  # FCM token unregistered or mismatched


@record
class Message:
    """One rendered message for one recipient on one channel.

    ``attempt_id`` is the ledger row claimed for this send; providers may use it
    as an idempotency key. SMS uses ``body``; email ``subject``, ``body`` (text)
    and ``html``; push ``title``, ``body`` and ``data``; a call ``title`` (the greeting anyone may hear),
    ``body`` (said after a key press) and ``data["hotline"]``.
    """

    attempt_id: int
    reminder_key: str
    account_id: str
    channel: ChannelKind
    to: str
    body: str
    subject: str | None = None
    html: str | None = None
    title: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    locale: str = "en-US"


@record
class DeliveryResult:
    """The provider's answer: never a bare bool, so retry decisions keep their reason."""

    outcome: Outcome
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after: float | None = None
    effect: Effect = Effect.NONE

    def __post_init__(self) -> None:
        """Provider texts echo addresses (Twilio 21211 quotes the number): they are kept masked, as logs are."""
        if self.error_message:
            object.__setattr__(self, "error_message", mask_text(self.error_message))

    def about(self, address: str) -> DeliveryResult:
        """This result with ``address`` masked wherever its error text still quotes it (any token shape)."""
        text = self.error_message
        if not text or not address or address not in text:
            return self
        return replace(self, error_message=text.replace(address, mask_token(address)))

    @classmethod
    def sent(cls, provider_message_id: str | None) -> DeliveryResult:
        return cls(Outcome.SENT, provider_message_id=provider_message_id)

    @classmethod
    def transient(
        cls, code: str | None, message: str, retry_after: float | None = None
    ) -> DeliveryResult:
        return cls(Outcome.TRANSIENT, error_code=code, error_message=message, retry_after=retry_after)

    @classmethod
    def permanent(cls, code: str | None, message: str, effect: Effect = Effect.NONE) -> DeliveryResult:
        return cls(Outcome.PERMANENT, error_code=code, error_message=message, effect=effect)


AMBIGUOUS_ERRORS = frozenset({"timeout", "connection"})
"""Transient error codes after which the provider may or may not have taken the message."""


@runtime_checkable
class SentLookup(Protocol):
    """A channel whose provider can be asked which messages it took (Twilio's message list)."""

    async def find_sent(self, to: str, since: datetime, body: str | None = None) -> list[str]: ...


@runtime_checkable
class AttemptLookup(Protocol):
    """A channel that can say whether it took the message of one attempt (the outbox: it is the provider).

    ``find_attempt`` returns the provider message id recorded for ``attempt_id``,
    or ``None`` when the channel never took that message; it raises
    :class:`~dispatcher.errors.DeliveryError` when it cannot tell.
    """

    async def find_attempt(self, attempt_id: int) -> str | None: ...


@runtime_checkable
class Channel(Protocol):
    """A way to hand messages to one provider.

    ``send`` is called once per message, possibly many at a time on one event
    loop; it must not raise for a provider refusal or a network failure but
    return the matching :class:`DeliveryResult`. ``aclose`` releases
    connections at the end of a batch or run.
    """

    kind: ChannelKind
    provider: str

    async def send(self, message: Message) -> DeliveryResult: ...

    async def aclose(self) -> None: ...
