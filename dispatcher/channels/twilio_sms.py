"""SMS through Twilio Programmable Messaging, with the ``twilio`` SDK's aiohttp client.

The SDK is used as is, with four adjustments made here:

* the Api domain's ``base_url`` is set to ``TWILIO_API_BASE_URL`` and the
  client's region and edge are cleared, so a stand-in (or proxy) receives the
  exact URL ``{base}/2010-04-01/Accounts/{Sid}/Messages.json``;
* ``AsyncTwilioHttpClient`` ignores its own ``timeout`` (the SDK passes
  ``timeout=None`` per request, which aiohttp reads as "no timeout"), so a
  subclass supplies the configured timeout;
* the SDK hands aiohttp a ``BasicAuth`` object, deprecated since aiohttp 3.12,
  so the subclass sends the same ``Authorization: Basic`` header itself;
* ``TwilioRestException`` carries no response headers, so the same subclass
  copies ``Retry-After`` into a per-task context variable that :meth:`send`
  reads after a 429 or 5xx.
"""

from __future__ import annotations

import base64
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from dispatcher.channels.base import ChannelKind, DeliveryResult, Effect, Message
from dispatcher.channels.provider_settings import TwilioSettings, parse_retry_after
from dispatcher.errors import DeliveryError, TransientDeliveryError

OPTED_OUT_CODES = frozenset({21610})
"""Twilio error codes meaning the recipient replied STOP: suppress SMS, never retry."""
BAD_ADDRESS_CODES = frozenset({21211, 21614})
"""Invalid number, number is not a mobile: the address is useless for SMS."""
TOO_MANY_REQUESTS_CODE = 20429

_response_headers: ContextVar[dict[str, str] | None] = ContextVar("twilio_response_headers", default=None)


class _TimedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """The SDK's aiohttp client with a default timeout and Retry-After capture."""

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        auth = kwargs.pop("auth", None)
        if auth is not None:  # the SDK's aiohttp.BasicAuth is deprecated in aiohttp 3.12+
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": _basic(*auth)}
        response = await super().request(method, url, **kwargs)
        captured = _response_headers.get()
        if captured is not None and response.headers is not None:
            captured["Retry-After"] = response.headers.get("Retry-After", "")
        return response


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


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


def _error_parts(exc: TwilioRestException | TwilioServiceException) -> tuple[int, int | None, str]:
    if isinstance(exc, TwilioServiceException):
        return int(exc.status), exc.code, " - ".join(p for p in (exc.title, exc.detail) if p)
    code = exc.code if isinstance(exc.code, int) else None
    return int(exc.status), code, str(exc.msg)


class TwilioSmsChannel:
    """Sends one SMS per :meth:`send` call; the HTTP session opens on first use, closes in :meth:`aclose`."""

    kind = ChannelKind.SMS
    provider = "twilio"

    def __init__(self, settings: TwilioSettings) -> None:
        self.settings = settings
        self._http: _TimedHttpClient | None = None
        self._client: Any = None

    def _twilio(self) -> Any:
        """The SDK client bound to the running loop's aiohttp session, created lazily."""
        if self._client is None:
            s = self.settings
            self._http = _TimedHttpClient(timeout=s.timeout)
            client = Client(s.account_sid, s.auth_token, http_client=self._http)
            client.region = client.edge = None  # TWILIO_REGION/EDGE would rewrite the base URL's host
            client.api.base_url = s.api_base_url
            self._client = client
        return self._client

    def _form(self, message: Message) -> dict[str, Any]:
        s = self.settings
        fields: dict[str, Any] = {"to": message.to, "body": message.body}
        optional = {
            "from_": s.from_number,
            "messaging_service_sid": s.messaging_service_sid,
            "status_callback": s.status_callback,
            "validity_period": s.validity_period,
        }
        fields.update({k: v for k, v in optional.items() if v is not None})
        return fields

    async def send(self, message: Message) -> DeliveryResult:
        """POST one message; never raises for a refusal or a network failure."""
        captured: dict[str, str] = {}
        token = _response_headers.set(captured)
        try:
            created = await self._twilio().messages.create_async(**self._form(message))
        except (TwilioRestException, TwilioServiceException) as exc:
            status, code, text = _error_parts(exc)
            return classify_twilio_error(status, code, text, parse_retry_after(captured.get("Retry-After")))
        except TimeoutError:
            return DeliveryResult.transient("timeout", f"no answer in {self.settings.timeout:g} s")
        except aiohttp.ClientError as exc:
            return DeliveryResult.transient("connection", f"cannot reach Twilio: {exc!r}")
        finally:
            _response_headers.reset(token)
        return DeliveryResult.sent(str(created.sid))

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
            raise TransientDeliveryError(f"Twilio message lookup failed: {exc!r}", code="connection") from exc
        return [str(m.sid) for m in found if _created_since(m, since) and (body is None or m.body == body)]

    async def aclose(self) -> None:
        """Close the aiohttp session; the next send opens a new one."""
        http, self._http, self._client = self._http, None, None
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
    return error(f"Twilio message lookup failed: {text}", code=str(status))


def _created_since(instance: Any, since: datetime) -> bool:
    """Twilio filters ``DateSent>`` by day; keep only messages created at or after ``since``."""
    created = instance.date_created
    return not isinstance(created, datetime) or created >= since
