"""SMS through Twilio Programmable Messaging: sends posted with aiohttp, lookups through the ``twilio`` SDK.

A send is one ``POST {base}/2010-04-01/Accounts/{Sid}/Messages.json`` with the
documented form (``To``, ``From`` or ``MessagingServiceSid``, ``Body``,
``StatusCallback``, ``ValidityPeriod``) and Basic auth, posted from the channel's
own aiohttp session, the HTTP client the SDK's async client uses too. The SDK's
create path was a quarter of the CPU a reminder costs in ``bench/delivery.py``
(four layers of request wrappers, form encoding through ``aiohttp.FormData``, a
``MessageInstance`` with every date parsed) for one field of the answer, the SID;
the answer's status, Twilio error code and ``Retry-After`` header are read here.

Lookups after a timeout or a crash (:meth:`TwilioSmsChannel.find_sent`) page
through ``messages.list_async`` of the SDK, with three adjustments:

* the Api domain's ``base_url`` is set to ``TWILIO_API_BASE_URL`` and the
  client's region and edge are cleared, so a stand-in (or proxy) receives the
  exact URL; ``TWILIO_REGION``/``TWILIO_EDGE`` are ignored for sends as well;
* ``AsyncTwilioHttpClient`` ignores its own ``timeout`` (the SDK passes
  ``timeout=None`` per request, which aiohttp reads as "no timeout"), so a
  subclass supplies the configured timeout;
* the SDK hands aiohttp a ``BasicAuth`` object, deprecated since aiohttp 3.12,
  so the subclass sends the same ``Authorization: Basic`` header itself.
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import twilio
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Effect, Message
from dispatcher.channels.provider_settings import TwilioSettings, parse_retry_after
from dispatcher.errors import DeliveryError, TransientDeliveryError
from dispatcher.masking import mask_text

OPTED_OUT_CODES = frozenset({21610})
"""Twilio error codes meaning the recipient replied STOP: suppress SMS, never retry."""
BAD_ADDRESS_CODES = frozenset({21211, 21614})
"""Invalid number, number is not a mobile: the address is useless for SMS."""
TOO_MANY_REQUESTS_CODE = 20429

log = logging.getLogger(__name__)

USER_AGENT = f"overdue-dispatcher twilio-python/{twilio.__version__}"


class _TimedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's aiohttp client with a default timeout and a plain Basic auth header."""

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        auth = kwargs.pop("auth", None)
        if auth is not None:  # the SDK's aiohttp.BasicAuth is deprecated in aiohttp 3.12+
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": _basic(*auth)}
        return await super().request(method, url, **kwargs)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_BYTE = [chr(b) if b in _UNRESERVED else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)]


def form_encode(fields: list[tuple[str, str]]) -> bytes:
    """``urllib.parse.urlencode(fields)`` as bytes, byte by byte through a table: half its CPU on a Chinese SMS."""
    item = _FORM_BYTE.__getitem__
    return "&".join(f"{''.join(map(item, k.encode()))}={''.join(map(item, v.encode()))}"
                    for k, v in fields).encode("ascii")


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def twilio_answer(status: int, raw: bytes, retry_after: str | None, what: str) -> DeliveryResult:
    """The result of Twilio's answer to a create request: a refusal classified, else sent with the SID (``None``
    when an accepted answer has no readable SID: it was created all the same)."""
    if status >= 300:
        code, text = _error_parts(status, raw)
        return classify_twilio_error(status, code, text, parse_retry_after(retry_after))
    try:
        sid = json.loads(raw)["sid"]
    except (ValueError, KeyError, TypeError):
        log.warning("Twilio accepted %s (HTTP %d) but its answer has no readable SID", what, status)
        return DeliveryResult.sent(None)
    return DeliveryResult.sent(str(sid))


def classify_twilio_error(
    status: int, code: int | None, message: str, retry_after: float | None = None
) -> DeliveryResult:
    """Map a Twilio REST error to a result: 429 and 5xx are transient, other 4xx permanent."""
    error_code = str(code if code is not None else status)
    if status == 429 or code == TOO_MANY_REQUESTS_CODE or status >= 500:
        return DeliveryResult.transient(error_code, message, retry_after)
    if code in OPTED_OUT_CODES:
        return DeliveryResult.permanent(error_code, message, Effect.OPTED_OUT)
    if code in BAD_ADDRESS_CODES:
        return DeliveryResult.permanent(error_code, message, Effect.BAD_ADDRESS)
    return DeliveryResult.permanent(error_code, message)


def _error_parts(status: int, raw: bytes) -> tuple[int | None, str]:
    """The Twilio error code and message of an error answer; a body that is not Twilio's JSON gives its start."""
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        text = raw[:200].decode("utf-8", "replace").strip()
        return None, f"HTTP {status}: {text}" if text else f"HTTP {status}"
    code = payload.get("code")
    parts = [payload.get("message"), payload.get("title"), payload.get("detail")]
    text = " - ".join(str(p) for p in parts if p) or f"HTTP {status}"
    return (code if isinstance(code, int) else None), text


class TwilioSmsChannel:
    """Sends one SMS per :meth:`send` call; HTTP sessions open on first use and close in :meth:`aclose`."""

    kind = ChannelKind.SMS
    provider = "twilio"

    def __init__(self, settings: TwilioSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._http: _TimedHttpClient | None = None
        self._client: Any = None
        self._url = f"{settings.api_base_url.rstrip('/')}/2010-04-01/Accounts/{settings.account_sid}/Messages.json"
        self._headers = {"Authorization": _basic(settings.account_sid, settings.auth_token),
                         "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
                         "User-Agent": USER_AGENT}
        optional = {"From": settings.from_number, "MessagingServiceSid": settings.messaging_service_sid,
                    "StatusCallback": settings.status_callback, "ValidityPeriod": settings.validity_period}
        self._fixed = [(k, str(v)) for k, v in optional.items() if v is not None]

    def _twilio(self) -> Any:
        """The SDK client for lookups, bound to the running loop's aiohttp session, created lazily."""
        if self._client is None:
            s = self.settings
            self._http = _TimedHttpClient(timeout=s.timeout)
            client = Client(s.account_sid, s.auth_token, http_client=self._http)
            client.region = client.edge = None  # TWILIO_REGION/EDGE would rewrite the base URL's host
            client.api.base_url = s.api_base_url
            self._client = client
        return self._client

    def _sender(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._session

    def _form(self, message: Message) -> bytes:
        return form_encode([("To", message.to), *self._fixed, ("Body", message.body)])

    async def send(self, message: Message) -> DeliveryResult:
        """POST one message; never raises for a refusal or a network failure. Error texts come back masked."""
        return (await self._post(message)).about(message.to)

    async def _post(self, message: Message) -> DeliveryResult:
        try:
            async with self._sender().post(self._url, data=self._form(message), headers=self._headers) as response:
                status, raw = response.status, await response.read()
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return DeliveryResult.transient("timeout", f"no answer in {self.settings.timeout:g} s")
        except aiohttp.ClientError as exc:
            return DeliveryResult.transient("connection", f"cannot reach Twilio: {exc!r}")
        return twilio_answer(status, raw, retry_after, f"message {message.attempt_id}")

    async def find_sent(self, to: str, since: datetime, body: str | None = None) -> list[str]:
        """SIDs of messages to ``to`` created at or after ``since`` (naive means UTC), oldest pages first;
        with ``body``, only messages with exactly that text.

        Used to reconcile a send that crashed after Twilio accepted it. Raises
        :class:`TransientDeliveryError` when Twilio cannot be asked now and
        :class:`DeliveryError` when it refuses the lookup.
        """
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        since = since.replace(microsecond=0)  # Twilio's dates have whole seconds
        try:
            found = await self._twilio().messages.list_async(to=to, date_sent_after=since)
        except TwilioException as exc:
            raise _lookup_error(exc) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TransientDeliveryError(mask_text(f"Twilio message lookup failed: {exc!r}"), code="connection") \
                from exc
        return [str(m.sid) for m in found if _created_since(m, since) and (body is None or m.body == body)]

    async def aclose(self) -> None:
        """Close the aiohttp sessions; the next send or lookup opens a new one."""
        session, http, self._session, self._http, self._client = self._session, self._http, None, None, None
        if session is not None:
            await session.close()
        if http is not None:
            await http.close()


def _lookup_error(exc: TwilioException) -> DeliveryError:
    """List pages fail with a bare ``TwilioException(message, response)``, creates with richer ones."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status, text = int(exc.status), str(exc)
    else:
        response = exc.args[1] if len(exc.args) > 1 else None
        status, text = int(getattr(response, "status_code", 0)), f"{exc.args[0]}: {response}"
    error = TransientDeliveryError if status == 429 or status >= 500 else DeliveryError
    return error(mask_text(f"Twilio message lookup failed: {text}"), code=str(status))


def _created_since(instance: Any, since: datetime) -> bool:
    """Twilio filters ``DateSent>`` by day; keep only messages created at or after ``since``."""
    created = instance.date_created
    return not isinstance(created, datetime) or created >= since
