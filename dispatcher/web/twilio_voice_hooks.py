"""Twilio webhooks of reminder calls: call progress, and the key presses of a call's menu.

Both are signed by Twilio like the SMS webhooks (``X-Twilio-Signature`` over
``DISPATCHER_PUBLIC_URL`` + path and query, and the form): anything else gets 403
and changes nothing.

* ``POST /webhooks/twilio/voice-status``: ``CallSid``, ``CallStatus``, ``AnsweredBy``
  and ``CallDuration`` recorded on the call's attempt, statuses forward only
  (:mod:`dispatcher.ledger.calls`), in a thread on the web app's short-timeout engine;
  a ledger that cannot take it answers 503.
* ``POST /webhooks/twilio/voice-menu?c=…``: Twilio posts the key pressed
  (``Digits``) and gets the TwiML to go on with: the message and the menu again,
  or the hotline (:meth:`~dispatcher.channels.voice_script.CallScript.menu_twiml`).
  It reads nothing but its own URL, so it answers even when the ledger is down.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from dispatcher.app import App
from dispatcher.channels.twilio_voice import VOICE_STATUS_CALLBACK_PATH, call_script
from dispatcher.channels.voice_script import MENU_PATH
from dispatcher.errors import LedgerError
from dispatcher.ledger.calls import record_call_progress
from dispatcher.web.twilio_hooks import Handler, _verified, web_engine

log = logging.getLogger(__name__)


def _seconds(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


def voice_status_handler(app: App) -> Handler:
    engine = web_engine(app)

    async def handle(request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        sid, raw = form.get("CallSid", ""), form.get("CallStatus", "").lower()
        if not sid or not raw:
            return web.Response(text="ignored")
        try:
            moved = await asyncio.to_thread(record_call_progress, engine, sid, raw, app.clock(),
                                            answered_by=form.get("AnsweredBy") or None,
                                            duration=_seconds(form.get("CallDuration")))
        except LedgerError as exc:
            log.warning("call progress %s for %s not recorded: %s", raw, sid, exc)
            raise web.HTTPServiceUnavailable(text="ledger busy; try again") from exc
        if moved is None:
            log.info("call progress %s for unknown CallSid %s kept until the attempt is recorded", raw, sid)
        return web.Response(text="ok")

    return _verified(app, handle)


def voice_menu_handler(app: App) -> Handler:
    script = call_script(app.settings.public_url, app.settings.secret_key)

    async def handle(request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        here = (app.settings.public_url or "") + request.path_qs
        twiml = script.menu_twiml(request.query.get("c", ""), form.get("Digits", ""), here)
        return web.Response(text=twiml, content_type="text/xml")

    return _verified(app, handle)


def add_voice_routes(router: web.UrlDispatcher, app: App) -> None:
    """The call webhooks: progress (``voice-status``) and the menu (``voice-menu``)."""
    router.add_post(VOICE_STATUS_CALLBACK_PATH, voice_status_handler(app))
    router.add_post(MENU_PATH, voice_menu_handler(app))
