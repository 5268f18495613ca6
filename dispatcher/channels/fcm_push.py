"""Push notifications through the FCM HTTP v1 API, with a thin aiohttp client.

aiohttp rather than ``httpx.AsyncClient``: with 100 requests in flight httpx's
async client drops to ~130 req/s on this kind of machine (encode/httpx#3215)
against ~2,000 for aiohttp, which the twilio SDK already brings in.

Authentication is Google's OAuth2 service-account flow: an RS256-signed JWT
assertion is exchanged at the key file's ``token_uri`` for a bearer token, which
is cached until shortly before it expires; one refresh runs at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Effect, Message
from dispatcher.channels.provider_settings import FcmSettings, ServiceAccount, parse_retry_after

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
"""Seconds an assertion is valid; Google accepts at most one hour."""
REFRESH_MARGIN = 60.0
"""Seconds before expiry at which a cached access token is replaced."""
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
TRANSIENT_CODES = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "UNAUTHENTICATED"})


class AuthError(Exception):
    """The OAuth2 token endpoint refused or could not be reached."""


class AccessTokens:
    """Caches the OAuth2 access token of one service account; ``clock`` is monotonic seconds."""

    def __init__(self, account: ServiceAccount, clock: Callable[[], float] = time.monotonic) -> None:
        self.account = account
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def assertion(self) -> str:
        """A signed JWT asking for the FCM scope, addressed to the token endpoint."""
        now = int(time.time())
        claims = {"iss": self.account.client_email, "scope": FCM_SCOPE, "aud": self.account.token_uri,
                  "iat": now, "exp": now + ASSERTION_LIFETIME}
        headers = {"kid": self.account.private_key_id} if self.account.private_key_id else None
        return jwt.encode(claims, self.account.private_key, algorithm="RS256", headers=headers)

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after the API rejected it, unless it was already replaced."""
        if self._token == token:
            self._token = None

    async def get(self, session: aiohttp.ClientSession) -> str:
        """The cached token, or a new one when it is missing or about to expire."""
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at - REFRESH_MARGIN:
                self._token, lifetime = await self._fetch(session)
                self._expires_at = self._clock() + lifetime
            return self._token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()}
        try:
            async with session.post(self.account.token_uri, data=form) as response:
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise AuthError(f"token endpoint unreachable: {exc!r}") from exc
        if response.status != 200 or not isinstance(body, dict) or "access_token" not in body:
            raise AuthError(f"token endpoint answered {response.status}: {body}")
        return str(body["access_token"]), float(body.get("expires_in", 3600))


def fcm_body(message: Message) -> dict[str, Any]:
    """The v1 ``messages:send`` body: token, notification, string data, high Android priority."""
    notification = {"body": message.body}
    if message.title:
        notification["title"] = message.title
    payload: dict[str, Any] = {"token": message.to, "notification": notification,
                               "android": {"priority": "high"}}
    if message.data:
        payload["data"] = {str(k): str(v) for k, v in message.data.items()}
    return {"message": payload}


def _details(error: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The FcmError ``errorCode`` and whether a field violation names the token."""
    code, about_token = None, False
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == FCM_ERROR_TYPE:
            code = detail.get("errorCode")
        if detail.get("@type") == BAD_REQUEST_TYPE:
            fields = [v.get("field") for v in detail.get("fieldViolations") or [] if isinstance(v, dict)]
            about_token = about_token or "message.token" in fields
    return code, about_token


def classify_fcm_error(status: int, body: Any, retry_after: float | None = None) -> DeliveryResult:
    """Map an FCM v1 error answer to a result (see the error table in PRODUCT.md)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code, about_token = _details(error)
    name = str(code or error.get("status") or status)
    text = str(error.get("message") or f"HTTP {status}")
    if name in DEAD_TOKEN_CODES:
        return DeliveryResult.permanent(name, text, Effect.DEAD_TOKEN)
    if name in TRANSIENT_CODES or status == 429 or status >= 500:
        return DeliveryResult.transient(name, text, retry_after)
    if name == "INVALID_ARGUMENT" and (about_token or "registration token" in text.lower()):
        return DeliveryResult.permanent(name, text, Effect.DEAD_TOKEN)
    return DeliveryResult.permanent(name, text)


class FcmPushChannel:
    """Sends one push per :meth:`send`; the HTTP session opens on first use, closes in :meth:`aclose`."""

    kind = ChannelKind.PUSH
    provider = "fcm"

    def __init__(self, settings: FcmSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.tokens = AccessTokens(settings.credentials, clock)
        self._session: aiohttp.ClientSession | None = None
        self.url = f"{settings.api_base_url}/v1/projects/{settings.project_id}/messages:send"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._session

    async def send(self, message: Message) -> DeliveryResult:
        """POST one message; on 401 refresh the token once and retry. Never raises for a refusal.
        Error texts come back masked, the token included."""
        return (await self._deliver(message)).about(message.to)

    async def _deliver(self, message: Message) -> DeliveryResult:
        body = json.dumps(fcm_body(message), ensure_ascii=False)
        try:
            result, token = await self._post(body)
            if result is None:  # 401: the token was revoked or expired early
                self.tokens.invalidate(token)
                result, token = await self._post(body)
        except AuthError as exc:
            return DeliveryResult.transient("auth", str(exc))
        except TimeoutError:
            return DeliveryResult.transient("timeout", f"no answer from FCM in {self.settings.timeout:g} s")
        except aiohttp.ClientError as exc:
            return DeliveryResult.transient("connection", f"cannot reach FCM: {exc!r}")
        return result or DeliveryResult.transient("UNAUTHENTICATED", "FCM refused a fresh access token")

    async def _post(self, body: str) -> tuple[DeliveryResult | None, str]:
        """One attempt; ``None`` as the result means the bearer token was refused (401)."""
        session = self._http()
        token = await self.tokens.get(session)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
        async with session.post(self.url, data=body.encode("utf-8"), headers=headers) as response:
            answer = await _json(response)
            if response.status == 200:
                name = answer.get("name") if isinstance(answer, dict) else None
                return DeliveryResult.sent(str(name) if name else None), token
            if response.status == 401 and not _is_third_party_auth(answer):
                return None, token
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return classify_fcm_error(response.status, answer, retry_after), token

    async def aclose(self) -> None:
        """Close the HTTP session; the next send opens a new one."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _json(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None


def _is_third_party_auth(answer: Any) -> bool:
    """401 THIRD_PARTY_AUTH_ERROR is about APNs/web-push credentials, not our bearer token."""
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, dict) and _details(error)[0] == "THIRD_PARTY_AUTH_ERROR"
