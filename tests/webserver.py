"""``dispatcher web`` served as ``serve()`` serves it (same connection options), on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from dispatcher.app import App
from dispatcher.web.server import BACKLOG, build_web_app, server_options


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[tuple[str, int]]:
    """(host, port) of ``app``'s web app while the block runs, on the running event loop."""
    runner = web.AppRunner(build_web_app(app), **server_options())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=BACKLOG).start()
    host, port = runner.addresses[0][:2]
    try:
        yield str(host), int(port)
    finally:
        await runner.cleanup()
