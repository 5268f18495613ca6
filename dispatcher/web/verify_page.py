"""``/verify``: the public page where a borrower checks the verification code of a field visit's letter.

* ``GET /verify``: a form (the lender's brand, one field);
* ``POST /verify`` with the form's ``code`` (or ``GET /verify?code=...``): genuine (for which
  collectors, names and staff ids, and the days it is valid), expired, or not genuine.

Nothing else of the debt is shown: no amount, no account. The code is looked up by
its hash (one indexed equality, whatever it is) in a thread, off the event loop; the
access log shows the route, never the query string. Each client address gets
:data:`CHECKS_PER_WINDOW` checks per :data:`WINDOW_SECONDS` (then 429), so codes
cannot be guessed at speed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from html import escape

from aiohttp import web

from dispatcher.app import App
from dispatcher.errors import LedgerError
from dispatcher.ladder import local_date
from dispatcher.ledger.visits import Verification, normalise_code, verify_code
from dispatcher.schedule.models import Brand
from dispatcher.web.limits import Handler
from dispatcher.zones import zone

VERIFY_PATH = "/verify"

CHECKS_PER_WINDOW = 10
"""Codes one client address may check per window."""

WINDOW_SECONDS = 600.0
"""The rate limit's window."""

LEDGER_WAIT = 5.0
"""Seconds a check waits for the ledger before the page says to try again."""

_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"}

_STYLE = ("body{font-family:sans-serif;max-width:32em;margin:1.5em auto;padding:0 1em;line-height:1.5}"
          "input{font-size:1.2em;padding:.3em;width:12em;text-transform:uppercase}button{font-size:1.2em}"
          ".ok{border-left:6px solid #1a7f37;padding:.2em .8em}.bad{border-left:6px solid #c62828;padding:.2em .8em}")


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key (a sliding window, in memory)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._seen: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        if len(self._seen) > 10_000:  # forget idle clients
            self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - self.window}
        seen = self._seen.setdefault(key, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            return False
        seen.append(now)
        return True


def add_verify_routes(router: web.UrlDispatcher, app: App) -> None:
    """Register the public verification page on ``router``."""
    handler = _verify(app, RateLimiter(CHECKS_PER_WINDOW, WINDOW_SECONDS))
    router.add_get(VERIFY_PATH, handler)
    router.add_post(VERIFY_PATH, handler)


def _brand(app: App) -> Brand:
    schedule = app.pipeline.loaded.schedule
    return schedule.brand_for(schedule.locale)


def _verify(app: App, limiter: RateLimiter) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        brand = _brand(app)
        form = await request.post() if request.method == "POST" else request.query
        given = form.get("code")
        code = normalise_code(given) if isinstance(given, str) else ""
        if not code:
            return _page(brand, "")
        if not limiter.allow(request.remote or "?"):
            return _page(brand, _said("bad", "Too many checks from here: wait a few minutes and try again, or "
                                             f"call {escape(brand.hotline)}."), status=429)
        today = local_date(app.clock(), zone(app.pipeline.loaded.schedule.timezone))
        try:
            found = await asyncio.wait_for(asyncio.to_thread(verify_code, app.engine, code, today), LEDGER_WAIT)
        except (LedgerError, TimeoutError):
            return _page(brand, _said("bad", "The check cannot be made now: try again shortly, or call "
                                             f"{escape(brand.hotline)}."), status=503)
        return _page(brand, _result(found, brand))

    return handle


def _said(kind: str, html: str) -> str:
    return f"<div class=\"{kind}\" role=\"status\"><p>{html}</p></div>"


def _result(found: Verification, brand: Brand) -> str:
    hotline = escape(brand.hotline)
    if not found.genuine and not found.expired:
        return _said("bad", "<b>Not genuine.</b> No authorisation of ours has this code. Do not let the visitors in "
                            f"and do not pay them; call us at {hotline}.")
    names = "".join(f"<li>{escape(c.name)} (staff id {escape(c.staff_id)})</li>" for c in found.collectors)
    days = f"from {found.valid_from} to {found.valid_until} inclusive"
    if found.expired:
        return _said("bad", f"<b>Not valid: expired or not yet valid.</b> This authorisation was for {days}. "
                            f"Do not let the visitors in; call us at {hotline}.")
    return _said("ok", f"<b>Genuine.</b> {escape(brand.name)} has authorised a field visit by:</p><ul>{names}</ul>"
                       f"<p>valid {days}. Ask each visitor for their staff card and check the names. Pay only to "
                       "the lender's official repayment account, never in cash.")


def _page(brand: Brand, result: str, status: int = 200) -> web.Response:
    name = escape(brand.name)
    body = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{name}: check a visit</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{name}</h1><h2>Check a field visit</h2>\n{result}\n"
            f"<form method=\"post\" action=\"{VERIFY_PATH}\"><label for=\"code\">Verification code on the letter"
            f"</label><br><input id=\"code\" name=\"code\" autocomplete=\"off\" maxlength=\"32\" required> "
            f"<button type=\"submit\">Check</button></form>\n"
            f"<p>Or call {escape(brand.hotline)}.</p>\n</body></html>\n")
    return web.Response(text=body, status=status, content_type="text/html", headers=_HEADERS)
