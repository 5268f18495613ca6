"""What a reminder call says: its TwiML, built with the ``twilio`` SDK's :class:`VoiceResponse`.

A call must not tell whoever picks up (a relative, a colleague, an answering
machine) anything about the debt, so every call starts with the
*limited-content* greeting (the ``voice_greeting.txt.j2`` template: the brand and
the hotline, nothing else, the shape of Reg F's limited-content message) and says
the reminder itself (``voice.txt.j2``) only after a key press:

* with a menu URL (``DISPATCHER_PUBLIC_URL`` set, ``dispatcher web`` reachable):
  ``<Gather numDigits="1">`` around the greeting and "press 1 to listen"; the key
  press makes Twilio post to ``/webhooks/twilio/voice-menu``, which answers with
  the message and a second ``<Gather>``: 1 hears it again, 2 is connected to the
  hotline (``<Dial>``). Nobody pressing (an answering machine: answering-machine
  detection starts the TwiML after its beep) falls through to ``<Hangup/>``: the
  voicemail holds the greeting only. What the menu says travels in the action URL
  encrypted (Fernet, under a key derived from the first key of the
  ``DISPATCHER_SECRET_KEY`` ring; every key of the ring opens it, see
  :mod:`dispatcher.keyring`), so no proxy log or Twilio debugger URL shows an
  amount or an account;
* without one, Twilio has nowhere to send a key press (an inline ``Twiml`` has no
  document URL for a ``<Gather>`` to post to, and nothing but a request can branch
  a TwiML document), so the call says the greeting and hangs up: a limited-content
  message to everyone, asking the borrower to call the hotline.

Voices: ``cmn-CN`` (Amazon Polly Zhiyu) for Chinese, ``en-US`` (Polly Joanna) for
English; another language is passed as its locale with Twilio's default voice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field

import phonenumbers
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from twilio.twiml import TwiML
from twilio.twiml.voice_response import VoiceResponse

from dispatcher.channels.base import Message
from dispatcher.keyring import ring
from dispatcher.phones import region_of

MENU_PATH = "/webhooks/twilio/voice-menu"
"""Where ``dispatcher web`` answers a key press during a call, below ``DISPATCHER_PUBLIC_URL``."""

MENU_TOKEN_TTL = 24 * 3600
"""Seconds a menu URL stays usable (a call lasts minutes; Twilio never fetches it later)."""

MAX_TWIML = 4000
"""The most characters Twilio accepts in a call's ``Twiml`` parameter."""

GATHER_TIMEOUT = 6
"""Seconds a ``<Gather>`` waits for a key after its prompt."""

REPEAT, CONNECT = "1", "2"
"""The menu's keys: hear the message (again), be connected to the hotline."""


@dataclass(frozen=True, slots=True)
class Voice:
    """How ``<Say>`` speaks one locale."""

    language: str
    voice: str | None
    listen: str
    repeat: str
    connect: str
    connecting: str
    goodbye: str


_CHINESE = Voice("cmn-CN", "Polly.Zhiyu", listen="如需收听本条消息，请按1。", repeat="重听请按1。",
                 connect="转接客服热线请按2。", connecting="正在为您转接客服热线，请稍候。",
                 goodbye="感谢您的接听，再见。")
_ENGLISH = Voice("en-US", "Polly.Joanna", listen="To listen to this message, press 1.",
                 repeat="To hear this message again, press 1.", connect=" To be connected to our hotline, press 2.",
                 connecting="Connecting you to our hotline. Please hold.", goodbye="Thank you. Goodbye.")
VOICES = {"zh": _CHINESE, "en": _ENGLISH}
"""The voice and the menu's words per language."""


def voice_for(locale: str) -> Voice:
    """The voice of ``locale``: by its language; English words with the locale's own language otherwise."""
    found = VOICES.get(locale.split("-", 1)[0].lower())
    if found is not None:
        return found
    english = _ENGLISH
    return Voice(locale, None, english.listen, english.repeat, english.connect, english.connecting, english.goodbye)


def dialable(hotline: str | None, to: str) -> str | None:
    """The hotline as E.164, read in the region of the number called; ``None`` when it is not a valid number."""
    if not hotline:
        return None
    try:
        number = phonenumbers.parse(hotline, region_of(to))
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class MenuState:
    """What the menu of one call says: the message, in which locale, and where key 2 connects."""

    locale: str
    text: str
    hotline: str | None


@dataclass(frozen=True)
class CallScript:
    """Builds the TwiML of reminder calls and of their menu; ``menu_url`` is ``None`` without a public URL."""

    menu_url: str | None = None
    secret: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.menu_url and not self.secret:
            raise ValueError("a call menu needs DISPATCHER_SECRET_KEY to encrypt what it says")

    def twiml(self, message: Message) -> str:
        """The call's TwiML: the greeting (``message.title``), then the message behind a key press."""
        voice = voice_for(message.locale)
        greeting = message.title or ""
        response = VoiceResponse()
        if self.menu_url:
            state = MenuState(message.locale, message.body, dialable(message.data.get("hotline"), message.to))
            gather = response.gather(action=f"{self.menu_url}?c={self.seal(state)}", method="POST",
                                     num_digits=1, timeout=GATHER_TIMEOUT)
            _say(gather, voice, greeting)
            _say(gather, voice, voice.listen)
        else:
            _say(response, voice, greeting)
        response.hangup()
        return str(response.to_xml(xml_declaration=False))

    def menu_twiml(self, token: str, digits: str, action: str) -> str:
        """The answer to a key press: the message and the menu again (``action`` is this URL), or the hotline."""
        response = VoiceResponse()
        state = self.open(token)
        if state is None:  # expired or not ours: say nothing about anything
            response.hangup()
            return str(response.to_xml())
        voice = voice_for(state.locale)
        if digits == CONNECT and state.hotline:
            _say(response, voice, voice.connecting)
            response.dial(state.hotline)
            return str(response.to_xml())
        gather = response.gather(action=action, method="POST", num_digits=1, timeout=GATHER_TIMEOUT)
        _say(gather, voice, state.text)
        _say(gather, voice, voice.repeat + (voice.connect if state.hotline else ""))
        _say(response, voice, voice.goodbye)
        response.hangup()
        return str(response.to_xml())

    def seal(self, state: MenuState) -> str:
        """``state`` encrypted and authenticated for the menu URL (URL-safe base64)."""
        payload = json.dumps({"l": state.locale, "t": state.text, "h": state.hotline}, ensure_ascii=False)
        return self._fernet().encrypt(payload.encode()).decode("ascii")

    def open(self, token: str) -> MenuState | None:
        """The state sealed in ``token``, or ``None`` when it is not ours, altered or older than a day."""
        if not self.secret:
            return None
        try:
            raw = json.loads(self._fernet().decrypt(token.encode("ascii"), ttl=MENU_TOKEN_TTL))
        except (InvalidToken, UnicodeEncodeError, ValueError):
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("l"), str) or not isinstance(raw.get("t"), str):
            return None
        hotline = raw.get("h")
        return MenuState(raw["l"], raw["t"], hotline if isinstance(hotline, str) else None)

    def _fernet(self) -> MultiFernet:
        """Encrypts with the ring's first key, decrypts with any of its keys."""
        return MultiFernet([_fernet(secret) for secret in ring(self.secret)])


def _fernet(secret: bytes) -> Fernet:
    key = hmac.new(secret, b"dispatcher voice menu", hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _say(parent: TwiML, voice: Voice, text: str) -> None:
    if text:
        parent.say(text, language=voice.language, **({"voice": voice.voice} if voice.voice else {}))
