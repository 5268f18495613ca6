"""One-click email unsubscribe (RFC 8058).

``POST /unsubscribe/{token}`` (what mail clients send for ``List-Unsubscribe-Post``)
suppresses email to the token's address at once. ``GET`` shows a page with one
button that POSTs: link scanners fetch every URL of a message with GET, so a GET
alone must not unsubscribe anyone. A token that does not verify gets 403.

The ledger is written in a thread, never on the event loop. When it is locked or
down (no answer within :data:`LEDGER_WAIT` seconds, or an error), the reader gets
a 503 page asking to try again, never a traceback; a write that was only slow may
still land, and a second press changes nothing more.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from dispatcher.app import App
from dispatcher.errors import LedgerError
from dispatcher.ledger.suppressions import suppress
from dispatcher.masking import mask_email
from dispatcher.tokens import UnsubscribeClaim, verify_unsubscribe
from dispatcher.web.limits import Handler

log = logging.getLogger(__name__)

LEDGER_WAIT = 5.0
"""Seconds an unsubscribe waits for the ledger before the page asks the reader to try again."""

RETRY_AFTER = 60
"""Seconds the 503 page's ``Retry-After`` suggests."""

_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em">
<h1 style="font-size:1.3em">{title}</h1><p>{text}</p>{form}</body></html>"""


def _claim(app: App, request: web.Request) -> UnsubscribeClaim:
    secret = app.settings.secret_key
    claim = verify_unsubscribe(secret, request.match_info["token"]) if secret else None
    if claim is None or claim.channel != "email":
        log.warning("refused an unsubscribe request with an invalid token")
        raise web.HTTPForbidden(text="invalid unsubscribe link")
    return claim


def _page(title: str, text: str, form: str = "", status: int = 200) -> web.Response:
    return web.Response(text=_PAGE.format(title=title, text=text, form=form), content_type="text/html",
                        status=status)


def confirm_handler(app: App) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        _claim(app, request)
        button = ('<form method="post" action="">'  # the link itself, whatever proxy prefix it came through
                  '<button type="submit" name="List-Unsubscribe" value="One-Click">Unsubscribe / 退订</button></form>')
        return _page("Unsubscribe from reminder emails / 退订提醒邮件",
                     "Press the button to stop reminder emails to this address. / 点击按钮即可退订提醒邮件。", button)

    return handle


def unsubscribe_handler(app: App) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        claim = _claim(app, request)
        try:
            new = await asyncio.wait_for(asyncio.to_thread(
                suppress, app.engine, "email", claim.address, "unsubscribe", app.clock(), account_id=claim.account_id,
                detail="one-click unsubscribe"), LEDGER_WAIT)
        except (LedgerError, TimeoutError) as exc:
            reason = f"no answer within {LEDGER_WAIT:g} s" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("could not record the unsubscribe of %s now (%s): asked to try again",
                        mask_email(claim.address), reason)
            return _unavailable()
        log.info("email to %s unsubscribed (%s)", mask_email(claim.address), "new" if new else "already")
        return _page("Unsubscribed / 已退订", "You will receive no more reminder emails at this address. "
                     "/ 此邮箱将不再收到提醒邮件。")

    return handle


def _unavailable() -> web.Response:
    page = _page("Please try again / 请稍后再试",
                 "Your unsubscribe could not be recorded just now. Please press the button again in a minute. "
                 "/ 暂时无法记录退订，请一分钟后再点击一次按钮。", status=503)
    page.headers["Retry-After"] = str(RETRY_AFTER)
    return page
