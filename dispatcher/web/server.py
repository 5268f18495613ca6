"""The aiohttp application behind ``dispatcher web``: routes only, handlers live beside it."""

from __future__ import annotations

from aiohttp import web

from dispatcher.app import App
from dispatcher.channels.provider_settings import STATUS_CALLBACK_PATH
from dispatcher.web.metrics import health_handler, metrics_handler
from dispatcher.web.twilio_hooks import inbound_handler, status_handler
from dispatcher.web.unsubscribe_page import confirm_handler, unsubscribe_handler

INBOUND_PATH = "/webhooks/twilio/inbound"
"""Where Twilio posts replies to our SMS (configure it on the number or messaging service)."""


def build_web_app(app: App) -> web.Application:
    """Webhooks and unsubscribe pages bound to ``app``'s ledger and settings."""
    web_app = web.Application()
    web_app.router.add_post(STATUS_CALLBACK_PATH, status_handler(app))
    web_app.router.add_post(INBOUND_PATH, inbound_handler(app))
    web_app.router.add_get("/unsubscribe/{token}", confirm_handler(app))
    web_app.router.add_post("/unsubscribe/{token}", unsubscribe_handler(app))
    web_app.router.add_get("/metrics", metrics_handler(app))
    web_app.router.add_get("/healthz", health_handler(app))
    return web_app


def serve(app: App, host: str, port: int) -> None:
    """Serve until interrupted (SIGINT / SIGTERM)."""
    web.run_app(build_web_app(app), host=host, port=port, print=None, handle_signals=True)
