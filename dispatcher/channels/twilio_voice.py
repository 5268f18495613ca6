"""Reminder calls through Twilio Programmable Voice: one ``POST …/Calls.json`` per reminder, from aiohttp.

A call is ``POST {base}/2010-04-01/Accounts/{Sid}/Calls.json`` with the form of
Twilio's API description: ``To``, ``From`` (``TWILIO_VOICE_FROM``, else the SMS
sender ``TWILIO_FROM_NUMBER``), ``Twiml`` (what the call says, built by
:class:`~dispatcher.channels.voice_script.CallScript`), ``MachineDetection=DetectMessageEnd``
with ``AsyncAmd=false`` (Twilio waits until it knows whether a person or a machine
answered and, for a machine, until its beep, so the voicemail holds the whole
greeting) and, with ``DISPATCHER_PUBLIC_URL``, ``StatusCallback`` at
``/webhooks/twilio/voice-status`` for the events ``initiated ringing answered
completed``. The answer's call SID (``CA…``) is the attempt's provider message id.

The Twilio account, its base URL (``TWILIO_API_BASE_URL``), timeout and error
classification are those of SMS: 429 and 5xx are transient (``Retry-After``
honoured), other 4xx permanent; 21211 (invalid ``To``) marks the number bad for calls. A request
that times out may have placed the call: it fails (error code ``timeout``) instead of being retried.
Twilio cannot be asked afterwards which call belonged to which attempt, so a call is
handed over (``sending``) before it is placed and a crash leaves it ``unknown``, never
placed twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Message
from dispatcher.channels.provider_settings import TwilioSettings, _Problems
from dispatcher.channels.twilio_sms import USER_AGENT, _basic, form_encode, twilio_answer
from dispatcher.channels.voice_script import MAX_TWIML, MENU_PATH, CallScript
from dispatcher.phones import parse

VOICE_STATUS_CALLBACK_PATH = "/webhooks/twilio/voice-status"
"""Where the web app receives call progress, below ``DISPATCHER_PUBLIC_URL``."""

STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
"""The call progress events Twilio reports (each a ``StatusCallbackEvent`` field of the request)."""

MACHINE_DETECTION = "DetectMessageEnd"
"""Answering-machine detection that waits for the machine's greeting to end before the TwiML starts."""


@dataclass(frozen=True, slots=True)
class TwilioVoiceSettings:
    """Calls through the SMS Twilio account: its credentials and endpoint, a caller id, the web app's URL."""

    twilio: TwilioSettings
    from_number: str
    public_url: str | None = None
    secret: bytes = field(default=b"", repr=False)

    @property
    def status_callback(self) -> str | None:
        return self.public_url + VOICE_STATUS_CALLBACK_PATH if self.public_url else None

    def script(self) -> CallScript:
        """What calls say: with the key-press menu on ``dispatcher web`` when there is a public URL."""
        return call_script(self.public_url, self.secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str], twilio: TwilioSettings | None) -> TwilioVoiceSettings | None:
        """``None`` without Twilio credentials or without a caller id (``TWILIO_VOICE_FROM`` or ``TWILIO_FROM_NUMBER``);
        raises ConfigError for a caller id that is not an E.164 number."""
        if twilio is None:
            return None
        p = _Problems(env)
        sender = p.get("TWILIO_VOICE_FROM") or twilio.from_number
        if sender is None:
            return None
        if not sender.startswith("+") or isinstance(parse(sender), str):
            p.add("TWILIO_VOICE_FROM", f"{sender!r} is not an E.164 phone number (+country code and number)")
        public = p.get("DISPATCHER_PUBLIC_URL")
        p.raise_if_any()
        return cls(twilio, sender, public.rstrip("/") if public else None,
                   (p.get("DISPATCHER_SECRET_KEY") or "").encode())


def call_script(public_url: str | None, secret: bytes) -> CallScript:
    """The call script of a deployment: a menu on ``dispatcher web`` only with a public URL and the secret."""
    if public_url and secret:
        return CallScript(public_url.rstrip("/") + MENU_PATH, secret)
    return CallScript()


class TwilioVoiceChannel:
    """Places one call per :meth:`send`; the HTTP session opens on first use and closes in :meth:`aclose`."""

    kind = ChannelKind.VOICE
    provider = "twilio"

    def __init__(self, settings: TwilioVoiceSettings) -> None:
        self.settings = settings
        self.script = settings.script()
        twilio = settings.twilio
        self._session: aiohttp.ClientSession | None = None
        self._url = f"{twilio.api_base_url.rstrip('/')}/2010-04-01/Accounts/{twilio.account_sid}/Calls.json"
        self._headers = {"Authorization": _basic(twilio.account_sid, twilio.auth_token),
                         "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                         "User-Agent": USER_AGENT}
        fixed = [("From", settings.from_number), ("MachineDetection", MACHINE_DETECTION), ("AsyncAmd", "false")]
        if settings.status_callback:
            fixed += [("StatusCallback", settings.status_callback), ("StatusCallbackMethod", "POST")]
            fixed += [("StatusCallbackEvent", event) for event in STATUS_CALLBACK_EVENTS]
        self._fixed = fixed

    def form(self, message: Message) -> list[tuple[str, str]]:
        """The fields of the call's request, in order (``StatusCallbackEvent`` once per event)."""
        return [("To", message.to), *self._fixed, ("Twiml", self.script.twiml(message))]

    async def send(self, message: Message) -> DeliveryResult:
        """Place the call; never raises for a refusal or a network failure. Error texts come back masked."""
        fields = self.form(message)
        twiml = fields[-1][1]
        if len(twiml) > MAX_TWIML:
            return DeliveryResult.permanent("twiml_too_long", f"the call's TwiML has {len(twiml)} characters, "
                                            f"more than Twilio's {MAX_TWIML}: shorten the voice templates")
        return (await self._post(message, form_encode(fields))).about(message.to)

    async def _post(self, message: Message, data: bytes) -> DeliveryResult:
        timeout = self.settings.twilio.timeout
        try:
            async with self._sender().post(self._url, data=data, headers=self._headers) as response:
                status, raw = response.status, await response.read()
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:  # Twilio may have placed it: not retried, a second try could ring twice
            return DeliveryResult.permanent("timeout", f"no answer in {timeout:g} s; the call may have been placed, "
                                            "so it is not tried again (dispatcher retry places it on purpose)")
        except aiohttp.ClientError as exc:
            return DeliveryResult.transient("connection", f"cannot reach Twilio: {exc!r}")
        return twilio_answer(status, raw, retry_after, f"call {message.attempt_id}")

    def _sender(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.twilio.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
