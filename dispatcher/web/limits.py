"""Request bodies: a size limit and a read timeout, for every route of ``dispatcher web``.

Webhooks and unsubscribe forms are small. A body declared larger than the limit
gets 413 before any of it is read; a chunked body that grows past it gets 413 as
soon as it does. A body that has not arrived in full within the timeout gets 408
and its connection is closed, so idle or trickling uploads hold neither memory
nor a connection for long. Handlers then find the whole body already read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from dispatcher.settings import Settings

log = logging.getLogger(__name__)

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
    """None once the body is read (and kept by ``request``), else the refusal to send."""
    declared = request.content_length
    if declared is not None and declared > limits.max_bytes:
        return _too_large(limits)
    try:
        async with asyncio.timeout(limits.timeout):
            await request.read()
    except TimeoutError:
        return await _timed_out(request, limits)
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limits)
    return None


def _too_large(limits: BodyLimits) -> web.StreamResponse:
    """413; the server reads and drops what the client still sends for a moment, then closes."""
    response = web.Response(status=413, text=f"request body over {limits.max_bytes} bytes")
    response.force_close()
    return response


async def _timed_out(request: web.Request, limits: BodyLimits) -> web.StreamResponse:
    """408, sent at once, then the connection is closed without waiting for the rest of the body."""
    log.info("request body not received within %g s: closing the connection", limits.timeout)
    response = web.Response(status=408, text=f"request body not received within {limits.timeout:g} s")
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response
