"""The access log of ``dispatcher web``: route templates, never a token, a query string or a client address.

An unsubscribe link's token is a working credential that carries the address, so
``/unsubscribe/{token}`` is logged as its template. A request no route matched
shows only its first path segment when that looks like a plain word.
"""

from __future__ import annotations

import logging
import re

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import AbstractResource, BaseRequest, Request, StreamResponse

_PLAIN_SEGMENT = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
"""A first path segment short and plain enough to name what was probed (``/wp-admin``), not a token."""


class RouteAccessLogger(AbstractAccessLogger):
    """One line per request: method, route template, status, seconds taken."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.3fs", request.method, route_of(request), response.status, time)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def route_of(request: BaseRequest) -> str:
    """The template of the route that matched ``request`` (``/unsubscribe/{token}``), else a masked path."""
    resource = _resource(request)
    if resource is not None:
        return resource.canonical
    first, _, rest = request.path.lstrip("/").partition("/")
    shown = first if _PLAIN_SEGMENT.fullmatch(first) else ("…" if first else "")
    return f"/{shown}/… (no route)" if rest else f"/{shown} (no route)"


def _resource(request: BaseRequest) -> AbstractResource | None:
    """The resource routed to; None when nothing matched or the request could not even be parsed (400)."""
    if not isinstance(request, Request):
        return None
    try:
        return request.match_info.route.resource
    except (AssertionError, AttributeError):  # never routed: no match info
        return None
