"""Request bodies: a size limit and a read timeout, for every route of ``dispatcher web``.

Webhooks and unsubscribe forms are small. A body declared larger than the limit
gets 413 before any of it is read; a chunked body that grows past it gets 413 as
soon as it does. A body that has not arrived in full within the timeout gets 408
and its connection is closed, so idle or trickling uploads hold neither memory
nor a connection for long. Handlers then find the whole body already read.

Either refusal closes in stages (RFC 9112 §9.6): the answer, then our half of the
connection, then whatever the client still sends is read and dropped for a moment
before the socket is closed. Closing at once, with the client's bytes unread,
makes the kernel answer them with a reset, and a reset can destroy the refusal
before the client has read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from dispatcher.settings import Settings

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0
"""How long a refused connection goes on reading (and dropping) what the client sends after the refusal."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""A request handler of ``dispatcher web``."""


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """At most ``max_bytes`` of body, arrived in full within ``timeout`` seconds."""

    max_bytes: int
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(settings.web_max_body, float(settings.web_body_timeout))


def body_limits(limits: BodyLimits) -> Middleware:
    """A middleware reading each request's body under ``limits`` before the handler runs."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            refused = await _read_body(request, limits)
            if refused is not None:
                return refused
        return await handler(request)

    return limit


async def _read_body(request: web.Request, limits: BodyLimits) -> web.StreamResponse | None:
    """None once the body is read (and kept by ``request``), else the refusal, already sent."""
    declared = request.content_length
    if declared is not None and declared > limits.max_bytes:
        return await _refuse(request, 413, f"request body over {limits.max_bytes} bytes")
    try:
        async with asyncio.timeout(limits.timeout):
            await request.read()
    except TimeoutError:
        log.info("request body not received within %g s: closing the connection", limits.timeout)
        return await _refuse(request, 408, f"request body not received within {limits.timeout:g} s")
    except web.HTTPRequestEntityTooLarge:
        return await _refuse(request, 413, f"request body over {limits.max_bytes} bytes")
    return None


async def _refuse(request: web.Request, status: int, text: str) -> web.StreamResponse:
    """Send ``status`` at once, then close in stages without waiting for the rest of the body."""
    response = web.Response(status=status, text=text)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    await _linger(request)
    request.protocol.force_close()
    return response


async def _linger(request: web.Request) -> None:
    """Half-close, then drop what the client sends until it closes or ``LINGER_SECONDS`` pass."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if transport.can_write_eof():
        transport.write_eof()
    with contextlib.suppress(Exception):  # the time is up, or the client has gone: either way we close
        async with asyncio.timeout(LINGER_SECONDS):
            while await request.content.readany():
                pass
