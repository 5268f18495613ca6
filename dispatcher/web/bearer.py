"""The bearer-token check of the routes for staff and machines (/api/handoffs, /report, /metrics)."""

from __future__ import annotations

import hmac

from aiohttp import web


def bearer_ok(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
