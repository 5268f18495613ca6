"""A Twilio REST API stand-in: the Messages resource of API version 2010-04-01.

``POST /2010-04-01/Accounts/{Sid}/Messages.json`` creates a message (201 and a
message resource, as Twilio answers) and ``GET`` on the same path lists them
with Twilio's paging shape. HTTP Basic auth must carry the configured SID and
token, else 401 with error 20003. Failures are scripted with :meth:`fail_next`
(the next create) or :meth:`fail_for` (every create to one number).
"""

from __future__ import annotations

import base64
import re
import secrets
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

from . import HttpStandin, Recorded, Reply

_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
DEFAULT_MESSAGES = {
    20003: "Authenticate",
    20429: "Too Many Requests",
    21211: "The 'To' number is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21604: "A 'To' phone number is required.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}


@dataclass(frozen=True)
class Failure:
    """A scripted error answer."""

    status: int
    code: int
    message: str | None = None
    retry_after: int | None = None

    def reply(self) -> Reply:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return Reply(self.status, twilio_error(self.status, self.code, self.message), headers)


def twilio_error(status: int, code: int, message: str | None = None) -> dict[str, Any]:
    """Twilio's error body: code, message, more_info, status."""
    return {
        "code": code,
        "message": message or DEFAULT_MESSAGES.get(code, "Error"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class TwilioStandin(HttpStandin):
    """Accepts messages for one account; ``messages`` holds the created resources."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-auth-token") -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, Any]] = []
        self.page_size = 50
        """Default page size of the list endpoint (Twilio's is 50)."""
        self._next: deque[Failure] = deque()
        self._rules: dict[str, Failure] = {}
        self._every: Failure | None = None

    def fail_next(
        self, status: int, code: int, message: str | None = None, retry_after: int | None = None
    ) -> None:
        """Answer the next create with this error (queued: call several times for several)."""
        with self.lock:
            self._next.append(Failure(status, code, message, retry_after))

    def fail_for(self, to: str, status: int, code: int, message: str | None = None) -> None:
        """Answer every create to ``to`` with this error."""
        with self.lock:
            self._rules[to] = Failure(status, code, message)

    def fail_all(self, status: int, code: int, message: str | None = None) -> None:
        """Answer every create with this error; ``{to}`` in ``message`` is replaced by the number, as Twilio's
        21211 answer quotes it ("The 'To' number +86... is not a valid phone number.")."""
        with self.lock:
            self._every = Failure(status, code, message)

    @property
    def creates(self) -> list[Recorded]:
        """Every create request received, failed or not."""
        return [r for r in self.requests if r.method == "POST"]

    def respond(self, request: Recorded) -> Reply:
        match = _MESSAGES.match(request.path)
        if match is None:
            return Reply(404, twilio_error(404, 20404, f"The requested resource {request.path} not found"))
        if match["sid"] != self.account_sid or not self._authorized(request):
            return Reply(401, twilio_error(401, 20003))
        return self._create(request) if request.method == "POST" else self._list(request)

    def _authorized(self, request: Recorded) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    def _create(self, request: Recorded) -> Reply:
        form = request.form
        missing = self._missing(form)
        if missing is not None:
            return Failure(400, missing).reply()
        failure = self._next.popleft() if self._next else self._rules.get(form["To"], self._every)
        if failure is not None:
            return replace(failure, message=failure.message.replace("{to}", form["To"])).reply() \
                if failure.message else failure.reply()
        resource = self._resource(form)
        self.messages.append(resource)
        return Reply(201, resource)

    @staticmethod
    def _missing(form: dict[str, str]) -> int | None:
        if not form.get("To"):
            return 21604
        if not form.get("Body"):
            return 21602
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return 21603
        return None

    def _resource(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC)).replace("GMT", "+0000")
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}"
        return {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": form["Body"],
            "date_created": now, "date_sent": now, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0",
            "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"}, "to": form["To"], "uri": f"{uri}.json",
        }

    def _list(self, request: Recorded) -> Reply:
        query = {k: v[0] for k, v in request.query.items()}
        found = [m for m in self.messages if _matches(m, query)]
        size = int(query.get("PageSize", self.page_size))
        page = int(query.get("Page", 0))
        chunk = found[page * size:(page + 1) * size]
        base = request.path
        keep = {k: v for k, v in query.items() if k not in ("Page", "PageToken")}
        has_next = (page + 1) * size < len(found)
        next_query = urlencode({**keep, "PageSize": size, "Page": page + 1, "PageToken": f"PA{page + 1}"})
        return Reply(200, {
            "messages": [{**m, "status": "sent"} for m in chunk],
            "end": page * size + len(chunk) - 1, "first_page_uri": f"{base}?{urlencode({**keep, 'Page': 0})}",
            "next_page_uri": f"{base}?{next_query}" if has_next else None,
            "page": page, "page_size": size, "previous_page_uri": None, "start": page * size,
            "uri": f"{base}?{urlencode(query)}",
        })


def _matches(message: dict[str, Any], query: dict[str, str]) -> bool:
    """Twilio's list filters: ``To``, ``From`` and ``DateSent>``, which Twilio applies by GMT day."""
    if "To" in query and message["to"] != query["To"]:
        return False
    if "From" in query and message["from"] != query["From"]:
        return False
    after = query.get("DateSent>")
    if after:
        day = datetime.fromisoformat(after[:10]).date()
        return parsedate_to_datetime(message["date_sent"]).date() >= day
    return True
