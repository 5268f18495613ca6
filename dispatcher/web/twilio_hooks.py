"""Twilio webhooks: delivery status callbacks and inbound STOP / START replies.

Every request must carry a valid ``X-Twilio-Signature`` computed over the public
URL (``DISPATCHER_PUBLIC_URL`` + path) and the form fields; anything else gets
403 and changes nothing.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Awaitable, Callable

from aiohttp import web
from twilio.request_validator import RequestValidator

from dispatcher.app import App
from dispatcher.ledger.callbacks import advance_status
from dispatcher.ledger.suppressions import lift, suppress

log = logging.getLogger(__name__)

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "退订", "TD"})
"""Replies that opt a number out of SMS (any case, surrounding spaces ignored)."""

START_WORDS = frozenset({"START", "UNSTOP", "YES"})
"""Replies that lift an SMS opt-out."""

OPT_OUT_SOURCES = ("inbound_stop", "provider_opt_out")
"""Suppression sources a START reply lifts (not dead numbers)."""

CALLBACK_STATUS = {"sent": "sent", "delivered": "delivered", "read": "delivered", "undelivered": "undelivered",
                   "failed": "failed"}
"""Twilio ``MessageStatus`` values that move an attempt, and the status they move it to."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _verified(app: App, handler: Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]) -> Handler:
    """Wrap ``handler`` so it only runs for requests Twilio really signed."""
    twilio = app.providers.twilio

    async def checked(request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        public = app.settings.public_url
        if twilio is None or not public or not signature:
            log.warning("refused an unsigned or unverifiable Twilio request to %s", request.path)
            raise web.HTTPForbidden(text="missing or unverifiable signature")
        url = public + request.path_qs
        if not RequestValidator(twilio.auth_token).validate(url, form, signature):
            log.warning("refused a Twilio request with a bad signature to %s", request.path)
            raise web.HTTPForbidden(text="bad signature")
        return await handler(request, form)

    return checked


def status_handler(app: App) -> Handler:
    async def handle(request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        sid, raw = form.get("MessageSid", ""), form.get("MessageStatus", "").lower()
        status = CALLBACK_STATUS.get(raw)
        if not sid or status is None:
            return web.Response(text="ignored")
        moved = advance_status(app.engine, sid, status, app.clock(), error_code=form.get("ErrorCode") or None)
        if moved is None:
            log.info("status callback for unknown MessageSid %s (%s) kept until the attempt is recorded", sid, raw)
        elif moved == 0:
            log.debug("status callback %s for %s is not newer; ignored", raw, sid)
        return web.Response(text="ok")

    return _verified(app, handle)


def inbound_handler(app: App) -> Handler:
    async def handle(request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        number = form.get("From", "")
        word = unicodedata.normalize("NFKC", form.get("Body", "")).strip().upper()  # full-width ＴＤ is TD
        now = app.clock()
        if number and word in STOP_WORDS:
            suppress(app.engine, "sms", number, "inbound_stop", now, detail=f"replied {word}")
            log.info("SMS opt-out from %s (%s)", number, word)
        elif number and word in START_WORDS:
            lifted = lift(app.engine, "sms", number, now, sources=OPT_OUT_SOURCES)
            log.info("SMS opt-out lifted for %s (%s, %d suppression(s))", number, word, lifted)
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    return _verified(app, handle)
