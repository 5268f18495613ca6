"""The aiohttp application behind ``dispatcher web``: routes and connection handling; handlers live beside it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dispatcher.app import App
from dispatcher.channels.provider_settings import STATUS_CALLBACK_PATH
from dispatcher.web.access_log import RouteAccessLogger
from dispatcher.web.api_handoffs import add_handoff_routes
from dispatcher.web.health import health_checks, health_handler
from dispatcher.web.limits import LINGER_SECONDS, BodyLimits, body_limits
from dispatcher.web.metrics import metrics_handler, metrics_site, metrics_text
from dispatcher.web.refreshed import Refreshed
from dispatcher.web.report_page import add_report_routes
from dispatcher.web.twilio_hooks import inbound_handler, spool_drainer, status_handler
from dispatcher.web.twilio_voice_hooks import add_voice_routes
from dispatcher.web.unsubscribe_page import confirm_handler, unsubscribe_handler
from dispatcher.web.verify_page import add_verify_routes

INBOUND_PATH = "/webhooks/twilio/inbound"
"""Where Twilio posts replies to our SMS (configure it on the number or messaging service)."""

KEEPALIVE_TIMEOUT = 15.0
"""Seconds a connection may go without a complete request (idle, or headers trickling in) before it is closed."""

BACKLOG = 1024
"""Connections the kernel holds for ``accept`` (aiohttp's 128 is short for a burst of provider callbacks)."""


def build_web_app(app: App, metrics_host: str = "127.0.0.1") -> web.Application:
    """Webhooks, unsubscribe pages, metrics, health and the hand-off API bound to ``app``'s ledger and settings.

    With ``DISPATCHER_METRICS_PORT`` set, ``/metrics`` is served at that port instead, on
    ``DISPATCHER_METRICS_HOST`` or else ``metrics_host`` (the web server's own host).
    """
    limits = BodyLimits.from_settings(app.settings)
    web_app = web.Application(client_max_size=limits.max_bytes, middlewares=[body_limits(limits)])
    metrics, checks = metrics_text(app), health_checks(app)
    web_app.on_cleanup.append(_closing(metrics, checks))
    web_app.router.add_post(STATUS_CALLBACK_PATH, status_handler(app))
    web_app.router.add_post(INBOUND_PATH, inbound_handler(app))
    add_voice_routes(web_app.router, app)  # call progress and the calls' key-press menu
    web_app.cleanup_ctx.append(spool_drainer(app))  # applies replies spooled while the ledger was locked
    web_app.router.add_get("/unsubscribe/{token}", confirm_handler(app))
    web_app.router.add_post("/unsubscribe/{token}", unsubscribe_handler(app))
    token, metrics_port = app.settings.metrics_token, app.settings.metrics_port
    if metrics_port is None:
        web_app.router.add_get("/metrics", metrics_handler(metrics, token))
    else:
        host = app.settings.metrics_host or metrics_host
        web_app.cleanup_ctx.append(metrics_site(metrics, token, host, metrics_port))
    web_app.router.add_get("/healthz", health_handler(checks))
    add_handoff_routes(web_app.router, app)  # only with DISPATCHER_API_TOKEN set
    add_report_routes(web_app.router, app)  # /report, behind the same token
    add_verify_routes(web_app.router, app)  # public: a borrower checks a field visit's code
    return web_app


def server_options() -> dict[str, Any]:
    """How connections are handled, for ``web.run_app`` and ``web.AppRunner`` alike."""
    return {"access_log_class": RouteAccessLogger, "keepalive_timeout": KEEPALIVE_TIMEOUT,
            "lingering_time": LINGER_SECONDS}


def serve(app: App, host: str, port: int, listening: Callable[[], None] = lambda: None) -> None:
    """Serve until interrupted (SIGINT / SIGTERM); ``listening`` is called once the port is bound (a port in use
    raises ``OSError`` before it is)."""
    web.run_app(build_web_app(app, metrics_host=host), host=host, port=port, backlog=BACKLOG,
                print=lambda _banner: listening(), handle_signals=True, **server_options())


def _closing(*cached: Refreshed[Any]) -> Callable[[web.Application], Awaitable[None]]:
    async def close(_web_app: web.Application) -> None:
        for value in cached:
            value.close()

    return close
