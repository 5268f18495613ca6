"""An FCM HTTP v1 stand-in with its own OAuth2 token endpoint.

``POST /token`` takes a JWT-bearer grant, verifies the RS256 assertion against
the public half of the key it wrote with :meth:`FcmStandin.write_service_account`
and issues a bearer token. ``POST /v1/projects/{p}/messages:send`` checks that
token and answers ``{"name": ...}`` or one of FCM's documented error bodies,
scripted with :meth:`fail_next` / :meth:`fail_for`.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import HttpStandin, Recorded, Reply

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_SEND = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNREGISTERED": 404, "SENDER_ID_MISMATCH": 403, "QUOTA_EXCEEDED": 429,
               "UNAVAILABLE": 503, "INTERNAL": 500, "THIRD_PARTY_AUTH_ERROR": 401}
RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def fcm_error(
    status: int, message: str, error_code: str | None = None, field: str | None = None
) -> dict[str, Any]:
    """FCM's error body: google.rpc.Status with an FcmError detail and optional field violation."""
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": field, "description": message}]})
    error: dict[str, Any] = {"code": status, "message": message, "status": RPC_STATUS.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


@dataclass(frozen=True)
class Failure:
    """A scripted FCM error answer, by FcmError code."""

    error_code: str
    message: str = "scripted failure"
    retry_after: int | None = None
    field: str | None = None

    def reply(self) -> Reply:
        status = HTTP_STATUS[self.error_code]
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return Reply(status, fcm_error(status, self.message, self.error_code, self.field), headers)


class FcmStandin(HttpStandin):
    """Serves one project; ``sends`` are the parsed bodies of accepted messages."""

    def __init__(self, project_id: str = "demo-project", expires_in: int = 3600) -> None:
        super().__init__()
        self.project_id = project_id
        self.client_email = f"dispatcher@{project_id}.iam.gserviceaccount.com"
        self.expires_in = expires_in
        """``expires_in`` of the tokens the token endpoint issues."""
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.sends: list[dict[str, Any]] = []
        self.refuse_all_tokens = False
        """Answer 401 to every send, even with a fresh token (a broken service account)."""
        self._next: deque[Failure] = deque()
        self._rules: dict[str, Failure] = {}
        self._every: Failure | None = None

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def write_service_account(self, path: Path) -> Path:
        """Write a service-account JSON key whose ``token_uri`` points at this stand-in."""
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
        path.write_text(json.dumps({
            "type": "service_account", "project_id": self.project_id, "private_key_id": "test-key-1",
            "private_key": pem, "client_email": self.client_email, "client_id": "1",
            "token_uri": self.token_uri,
        }), encoding="utf-8")
        return path

    def revoke_tokens(self) -> None:
        """Make every token issued so far answer 401, as after a key rotation."""
        with self.lock:
            self.revoked.update(self.issued)

    def fail_next(self, error_code: str, message: str = "scripted failure", *,
                  retry_after: int | None = None, field: str | None = None) -> None:
        """Answer the next send with this FcmError code (queued)."""
        with self.lock:
            self._next.append(Failure(error_code, message, retry_after, field))

    def fail_for(self, token: str, error_code: str, message: str = "scripted failure") -> None:
        """Answer every send to registration ``token`` with this FcmError code."""
        with self.lock:
            self._rules[token] = Failure(error_code, message)

    def fail_all(self, error_code: str, message: str = "scripted failure", *, field: str | None = None) -> None:
        """Answer every send with this FcmError code; ``{token}`` in ``message`` is replaced by the token."""
        with self.lock:
            self._every = Failure(error_code, message, None, field)

    @property
    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if _SEND.match(r.path)]

    def respond(self, request: Recorded) -> Reply:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        match = _SEND.match(request.path)
        if request.method != "POST" or match is None:
            return Reply(404, fcm_error(404, "Not Found"))
        if match["project"] != self.project_id:
            return Reply(403, fcm_error(403, "Permission denied on project", "SENDER_ID_MISMATCH"))
        if not self._authorized(request):
            return Reply(401, fcm_error(401, "Request had invalid authentication credentials."))
        return self._send(request)

    def _token(self, request: Recorded) -> Reply:
        form = request.form
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Reply(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(form.get("assertion", ""), self.key.public_key(), algorithms=["RS256"],
                                audience=self.token_uri, issuer=self.client_email,
                                options={"require": ["exp", "iat", "aud", "iss"]})
        except jwt.PyJWTError as exc:
            return Reply(400, {"error": "invalid_grant", "error_description": str(exc)})
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return Reply(400, {"error": "invalid_scope"})
        token = "ya29." + secrets.token_urlsafe(24)
        self.issued.append(token)
        return Reply(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def _authorized(self, request: Recorded) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        valid = token in self.issued and token not in self.revoked and not self.refuse_all_tokens
        return scheme == "Bearer" and valid

    def _send(self, request: Recorded) -> Reply:
        try:
            message = request.json()["message"]
        except (ValueError, KeyError, TypeError):
            return Reply(400, fcm_error(400, "Invalid JSON payload received."))
        invalid = _invalid(message)
        if invalid:
            return Reply(400, fcm_error(400, invalid, "INVALID_ARGUMENT"))
        failure = self._next.popleft() if self._next else self._rules.get(message["token"], self._every)
        if failure is not None:
            return replace(failure, message=failure.message.replace("{token}", message["token"])).reply()
        self.sends.append(message)
        return Reply(200, {"name": f"projects/{self.project_id}/messages/0:{secrets.token_hex(8)}"})


def _invalid(message: Any) -> str | None:
    """The checks FCM makes that our client could fail: a token and string-only data."""
    if not isinstance(message, dict) or not isinstance(message.get("token"), str):
        return "Recipient of the message is not set."
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return "Invalid value at 'message.data': values must be strings"
    return None
