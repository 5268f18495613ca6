"""``GET /report[?since=DATE&until=DATE]``: the page ``dispatcher report`` writes, behind the bearer token.

Served only when ``DISPATCHER_API_TOKEN`` is set, with the hand-off API's check of
``Authorization: Bearer <token>`` (401 otherwise); without the variable the path answers 404.
A bad date is 400, a ledger that cannot answer 503 with ``Retry-After``. The ledger is read in a
thread, one report at a time, so that a reload storm cannot fill the thread pool.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from dispatcher.app import App
from dispatcher.errors import ConfigError, LedgerError
from dispatcher.report.page import build_report
from dispatcher.report.period import read_day
from dispatcher.web.api_handoffs import RETRY_AFTER, api_token
from dispatcher.web.bearer import bearer_ok
from dispatcher.web.limits import Handler

log = logging.getLogger(__name__)

REPORT_PATH = "/report"

REPORT_WAIT = 60.0
"""Seconds a request waits for its report (its turn, then the ledger's figures) before it gets 503."""

HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                      "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}
"""The page runs no script and loads nothing: the policy says so to the browser as well."""


def add_report_routes(router: web.UrlDispatcher, app: App) -> None:
    """Register ``/report`` when ``DISPATCHER_API_TOKEN`` is set; without it nothing is served."""
    token = api_token(app.settings.env)
    if token is not None:
        router.add_get(REPORT_PATH, report_handler(app, token))


def report_handler(app: App, token: str) -> Handler:
    turn = asyncio.Lock()

    async def handle(request: web.Request) -> web.StreamResponse:
        if not bearer_ok(request, token):
            return web.Response(status=401, text="the report needs a bearer token",
                                headers={"WWW-Authenticate": 'Bearer realm="report"'})
        since, until = request.query.get("since") or None, request.query.get("until") or None
        try:
            for name, value in (("since", since), ("until", until)):
                if value:
                    read_day(value, name)  # refused here in the query's words, not the command line's
            async with asyncio.timeout(REPORT_WAIT), turn:
                page = await asyncio.to_thread(build_report, app, since, until)
        except ConfigError as exc:
            return web.Response(status=400, text=str(exc))
        except (LedgerError, SQLAlchemyError, TimeoutError) as exc:
            log.warning("GET %s: the ledger cannot answer now (%s)", REPORT_PATH, type(exc).__name__)
            return web.Response(status=503, text="the ledger cannot answer now; try again",
                                headers={"Retry-After": str(RETRY_AFTER)})
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=HEADERS)

    return handle
