"""A Twilio stand-in that also places calls: ``POST /2010-04-01/Accounts/{Sid}/Calls.json``.

Messages work as in :class:`~standins.twilio_server.TwilioStandin`. Every Calls.json
request is checked against Twilio's published OpenAPI description
(:mod:`standins.openapi_form`: required ``To`` and ``From``, known field names,
types, enums, URLs) and against what the description's texts document without a
schema: ``Twiml`` at most 4,000 characters and well-formed, ``MachineDetection``
``Enable`` or ``DetectMessageEnd``, ``StatusCallbackEvent`` among ``initiated ringing
answered completed``, ``AsyncAmd`` ``true`` or ``false``. An invalid request is
answered 400 (Twilio's 21205-style error) and kept in ``invalid``; a valid one gets
201 and a call resource with a ``CA…`` SID, kept in ``calls``. Scripted failures
(``fail_next``, ``fail_for``, ``fail_all``) apply to calls too.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

from . import Recorded, Reply
from .openapi_form import request_problems
from .twilio_server import TwilioStandin, twilio_error

CALLS_PATH = "/2010-04-01/Accounts/{AccountSid}/Calls.json"
"""The operation's path in the description."""
_CALLS = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Calls\.json$")
MAX_TWIML = 4000
DOCUMENTED = {
    "MachineDetection": {"Enable", "DetectMessageEnd"},
    "StatusCallbackEvent": {"initiated", "ringing", "answered", "completed"},
    "AsyncAmd": {"true", "false"},
}
"""Values the description's texts list for fields whose schema has no enum."""


def call_problems(account_sid: str, fields: dict[str, list[str]]) -> list[str]:
    """Every way a Calls.json create breaks Twilio's description (empty: valid)."""
    problems = request_problems(CALLS_PATH, "post", {"AccountSid": account_sid}, fields)
    for name, allowed in DOCUMENTED.items():
        problems += [f"{name}: {value!r} is not one of {sorted(allowed)}" for value in fields.get(name, [])
                     if value not in allowed]
    if not fields.get("Twiml") and not fields.get("Url") and not fields.get("ApplicationSid"):
        problems.append("one of Url, Twiml or ApplicationSid is required")
    for twiml in fields.get("Twiml", []):
        if len(twiml) > MAX_TWIML:
            problems.append(f"Twiml: {len(twiml)} characters, more than {MAX_TWIML}")
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError as exc:
            problems.append(f"Twiml: not well-formed XML ({exc})")
        else:
            if root.tag != "Response":
                problems.append(f"Twiml: the root is <{root.tag}>, not <Response>")
    return problems


class TwilioVoiceStandin(TwilioStandin):
    """Accepts messages and calls for one account; ``calls`` holds the created call resources."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "test-auth-token") -> None:
        super().__init__(account_sid, auth_token)
        self.calls: list[dict[str, Any]] = []
        self.invalid: list[tuple[Recorded, list[str]]] = []

    @property
    def creates(self) -> list[Recorded]:
        """Every message create received, failed or not (calls are in :attr:`call_requests`)."""
        return [r for r in self.requests if r.method == "POST" and not _CALLS.match(r.path)]

    @property
    def call_requests(self) -> list[Recorded]:
        """Every Calls.json create received, valid or not."""
        return [r for r in self.requests if r.method == "POST" and _CALLS.match(r.path)]

    def respond(self, request: Recorded) -> Reply:
        match = _CALLS.match(request.path)
        if match is None:
            return super().respond(request)
        if match["sid"] != self.account_sid or not self._authorized(request):
            return Reply(401, twilio_error(401, 20003))
        if request.method != "POST":
            return Reply(405, twilio_error(405, 20004, "Method not allowed"))
        fields = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
        problems = call_problems(match["sid"], fields)
        if problems:
            self.invalid.append((request, problems))
            return Reply(400, twilio_error(400, 21205, "; ".join(problems)))
        form = {name: values[0] for name, values in fields.items()}
        failure = self._next.popleft() if self._next else self._rules.get(form["To"], self._every)
        if failure is not None:
            return failure.reply()
        resource = self._call(form)
        self.calls.append(resource)
        return Reply(201, resource)

    def _call(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "CA" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC)).replace("GMT", "+0000")
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}"
        return {
            "account_sid": self.account_sid, "answered_by": None, "api_version": "2010-04-01", "caller_name": None,
            "date_created": now, "date_updated": now, "direction": "outbound-api", "duration": None,
            "end_time": None, "forwarded_from": None, "from": form["From"], "from_formatted": form["From"],
            "group_sid": None, "parent_call_sid": None, "phone_number_sid": None, "price": None,
            "price_unit": "USD", "sid": sid, "start_time": None, "status": "queued",
            "subresource_uris": {}, "to": form["To"], "to_formatted": form["To"], "trunk_sid": None,
            "uri": f"{uri}.json", "queue_time": "0",
        }
