"""Twilio webhooks: delivery status callbacks and inbound replies (STOP, START, anything else).

Every request must carry a valid ``X-Twilio-Signature`` computed over the public
URL (``DISPATCHER_PUBLIC_URL`` + path) and the form fields; anything else gets
403 and changes nothing.

Ledger work runs in a thread, never on the event loop, on an engine that waits at
most :data:`WEB_LOCK_TIMEOUT` seconds for a lock. Twilio does not retry inbound
messages, so a reply is answered 200 only once it is durable: in the ledger, or,
when the ledger is locked or down, in the spool (:mod:`dispatcher.replies.spool`),
which a background task of the web app applies every :data:`SPOOL_INTERVAL` seconds.
A status callback the ledger cannot take gets 503 (Twilio may send it again; the
reconciler asks Twilio about sends whose outcome is unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from sqlalchemy import Engine
from twilio.request_validator import RequestValidator

from dispatcher.app import App
from dispatcher.errors import LedgerError
from dispatcher.ledger.callbacks import advance_status
from dispatcher.ledger.database import create_ledger_engine
from dispatcher.replies.inbound import Inbox, read_reply
from dispatcher.replies.spool import Spool, spool_path
from dispatcher.replies.words import Vocabulary

log = logging.getLogger(__name__)

WEB_LOCK_TIMEOUT = 2.0
"""Seconds a webhook's ledger write waits for a lock before the reply goes to the spool (or a callback gets 503)."""

SPOOL_INTERVAL = 1.0
"""Seconds between two looks at the spool by the web app's background task (a missing file costs one stat)."""

CALLBACK_STATUS = {"sent": "sent", "delivered": "delivered", "read": "delivered", "undelivered": "undelivered",
                   "failed": "failed"}
"""Twilio ``MessageStatus`` values that move an attempt, and the status they move it to."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def web_engine(app: App) -> Engine:
    """An engine on ``app``'s ledger that waits at most :data:`WEB_LOCK_TIMEOUT` seconds for a lock."""
    return create_ledger_engine(app.settings.database_url, lock_timeout=WEB_LOCK_TIMEOUT)


def web_inbox(app: App) -> Inbox:
    """The inbox of ``app``'s web process: the short-timeout ledger and the spool beside it."""
    settings = app.settings
    return Inbox(web_engine(app), Spool(spool_path(settings.database_url, settings.outbox_dir)))


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
    engine = web_engine(app)

    async def handle(request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        sid, raw = form.get("MessageSid", ""), form.get("MessageStatus", "").lower()
        status = CALLBACK_STATUS.get(raw)
        if not sid or status is None:
            return web.Response(text="ignored")
        try:
            moved = await asyncio.to_thread(advance_status, engine, sid, status, app.clock(),
                                            error_code=form.get("ErrorCode") or None)
        except LedgerError as exc:
            log.warning("status callback %s for %s not recorded: %s", raw, sid, exc)
            raise web.HTTPServiceUnavailable(text="ledger busy; try again") from exc
        if moved is None:
            log.info("status callback for unknown MessageSid %s (%s) kept until the attempt is recorded", sid, raw)
        elif moved == 0:
            log.debug("status callback %s for %s is not newer; ignored", raw, sid)
        return web.Response(text="ok")

    return _verified(app, handle)


def inbound_handler(app: App) -> Handler:
    inbox = web_inbox(app)

    async def handle(request: web.Request, form: dict[str, str]) -> web.StreamResponse:
        schedule, now = app.pipeline.loaded.schedule, app.clock()
        vocabulary = Vocabulary.build(schedule.replies.opt_out, schedule.replies.opt_in)
        reply = read_reply(form, vocabulary, app.pipeline.policy.region, now)
        if reply is None:
            return web.Response(text=EMPTY_TWIML, content_type="text/xml")
        try:
            outcome = await asyncio.to_thread(inbox.receive, reply, now)
        except LedgerError as exc:  # neither the ledger nor the spool: say so, Twilio logs the failure
            log.error("inbound reply %s from %s LOST: %s", reply.message_sid, reply.sender, exc)
            raise web.HTTPServiceUnavailable(text="cannot record the reply") from exc
        log.info("inbound %s from %s (%s): %s", reply.decision, reply.sender, reply.keyword or "-", outcome)
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    return _verified(app, handle)


def spool_drainer(app: App) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry: applies the spool in the background while the web app runs."""
    async def drain_while_running(_web_app: web.Application) -> AsyncIterator[None]:
        inbox, stopping = web_inbox(app), asyncio.Event()
        task = asyncio.create_task(_drain_until(inbox, app, stopping))
        yield
        stopping.set()
        await task
        inbox.engine.dispose()

    return drain_while_running


async def _drain_until(inbox: Inbox, app: App, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        try:
            await asyncio.to_thread(inbox.drain, app.clock())
        except Exception:  # keep draining later whatever went wrong this time
            log.exception("inbound spool %s: applying failed; will try again", inbox.spool.path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), SPOOL_INTERVAL)
