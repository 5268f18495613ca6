"""``/api/handoffs``: the work items of hand-off steps for a CRM or an agents' desk, behind a bearer token.

* ``GET /api/handoffs?queue=Q&status=open|claimed|closed&account=ID&limit=N``: ``{"handoffs": [...]}``,
  most urgent first;
* ``GET /api/handoffs/{id}``: one work item with its events (who did what, when);
* ``POST /api/handoffs/{id}/claim`` with ``{"agent": "A"}``;
* ``POST /api/handoffs/{id}/close`` with ``{"outcome": "...", "agents": ["A", "B"], "until": "YYYY-MM-DD",
  "note": "..."}`` (``agent`` also takes a single name).

The routes exist only when ``DISPATCHER_API_TOKEN`` is set (otherwise every path
answers 404). Each request needs ``Authorization: Bearer <token>`` (compared in
constant time), else 401. Answers are JSON; a refusal is ``{"error": "..."}`` with
400 (a wrong value), 404 (no such work item), 409 (its status does not allow it)
or 503 with ``Retry-After`` (the ledger is locked or down). Ledger work runs in a
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import date
from typing import Any, TypeVar

from aiohttp import web

from dispatcher.app import App
from dispatcher.errors import LedgerError
from dispatcher.handoffs.repayment_plans import Instalment, PlanError
from dispatcher.handoffs.visit_claims import authorise, plan_start, visit_collectors
from dispatcher.ladder import local_date
from dispatcher.ledger.handoffs import (
    STATUSES,
    Closing,
    HandoffConflict,
    HandoffError,
    InvalidHandoffAction,
    UnknownHandoff,
    claim_handoff,
    close_handoff,
    get_handoff,
    list_handoffs,
    public,
)
from dispatcher.output import plain
from dispatcher.web.bearer import bearer_ok
from dispatcher.web.limits import Handler
from dispatcher.zones import zone

log = logging.getLogger(__name__)

API_TOKEN_VARIABLE = "DISPATCHER_API_TOKEN"
"""The environment variable holding the bearer token of ``/api/handoffs``."""

BASE_PATH = "/api/handoffs"

LEDGER_WAIT = 5.0
"""Seconds a request waits for the ledger before it gets 503."""

RETRY_AFTER = 30
"""Seconds the 503 answer's ``Retry-After`` suggests."""

MAX_LIMIT = 1000
"""The most work items one listing returns."""

_STATUS_OF: Mapping[type[HandoffError], int] = {UnknownHandoff: 404, HandoffConflict: 409, InvalidHandoffAction: 400}

_T = TypeVar("_T")


def api_token(env: Mapping[str, str]) -> str | None:
    """The configured token, or ``None``: the API is off."""
    return env.get(API_TOKEN_VARIABLE, "").strip() or None


def add_handoff_routes(router: web.UrlDispatcher, app: App) -> None:
    """Register the API on ``router`` when ``DISPATCHER_API_TOKEN`` is set; without it nothing is served."""
    token = api_token(app.settings.env)
    if token is None:
        return
    router.add_get(BASE_PATH, _guarded(token, _list(app)))
    router.add_get(BASE_PATH + r"/{id:\d+}", _guarded(token, _show(app)))
    router.add_post(BASE_PATH + r"/{id:\d+}/claim", _guarded(token, _claim(app)))
    router.add_post(BASE_PATH + r"/{id:\d+}/close", _guarded(token, _close(app)))


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False, default=plain), status=status,
                        content_type="application/json", headers=headers)


def _error(message: str, status: int) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER)} if status == 503 else None
    return _json({"error": message}, status, headers)


def _guarded(token: str, handler: Handler) -> Handler:
    """``handler`` behind the bearer token, its known refusals turned into JSON answers."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not bearer_ok(request, token):
            return web.Response(status=401, text="the hand-off API needs a bearer token",
                                headers={"WWW-Authenticate": 'Bearer realm="handoffs"'})
        try:
            return await handler(request)
        except HandoffError as exc:
            return _error(str(exc), _STATUS_OF.get(type(exc), 400))
        except (LedgerError, TimeoutError) as exc:
            reason = f"no answer within {LEDGER_WAIT:g} s" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("%s %s: the ledger cannot answer now (%s)", request.method, BASE_PATH, reason)
            return _error("the ledger cannot answer now; try again", 503)

    return handle


async def _off_loop(call: Callable[[], _T]) -> _T:
    return await asyncio.wait_for(asyncio.to_thread(call), LEDGER_WAIT)


def _id(request: web.Request) -> int:
    return int(request.match_info["id"])


def _list(app: App) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        query = request.query
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise InvalidHandoffAction(f"status {status!r} is not one of {', '.join(STATUSES)}")
        limit = _limit(query.get("limit"))
        rows = await _off_loop(lambda: list_handoffs(app.engine, queue=query.get("queue") or None, status=status,
                                                     account_id=query.get("account") or None, limit=limit))
        return _json({"handoffs": [public(row) for row in rows]})

    return handle


def _limit(text: str | None) -> int:
    if not text:
        return MAX_LIMIT
    if not text.isdigit() or not 0 < int(text) <= MAX_LIMIT:
        raise InvalidHandoffAction(f"limit {text!r} is not a number from 1 to {MAX_LIMIT}")
    return int(text)


def _show(app: App) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        handoff_id = _id(request)
        return _json(public(await _off_loop(lambda: get_handoff(app.engine, handoff_id))))

    return handle


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text() or "{}")
    except ValueError:
        raise InvalidHandoffAction("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidHandoffAction("the body must be a JSON object")
    return body


def _text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidHandoffAction(f"{name} must be a string")
    return value


def _claim(app: App) -> Handler:
    """``{"agent": "A"}``; a visit also names its collectors, ``"collectors": ["Name:STAFFID", ...]`` (at least
    two), and may give ``"valid_days"``: the answer then carries the authorisation line."""
    async def handle(request: web.Request) -> web.StreamResponse:
        handoff_id, body = _id(request), await _body(request)
        agent, given, valid_days = _text(body, "agent"), body.get("collectors", []), body.get("valid_days", 7)
        if not agent:
            raise InvalidHandoffAction("name the agent who claims it: {\"agent\": \"...\"}")
        if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
            raise InvalidHandoffAction("collectors must be a list of \"Name:STAFFID\" texts")
        if not isinstance(valid_days, int) or isinstance(valid_days, bool) or not 1 <= valid_days <= 90:
            raise InvalidHandoffAction("valid_days must be a whole number of days from 1 to 90")

        def claim() -> dict[str, Any]:
            collectors = visit_collectors(app, handoff_id, given)  # refused before claiming
            item = claim_handoff(app.engine, handoff_id, agent, app.clock())
            found = public(item)
            if collectors:
                found["authorisation"] = authorise(app, item, collectors, valid_days)
            return found

        return _json(await _off_loop(claim))

    return handle


def _closing(body: Mapping[str, Any]) -> Closing:
    agents = body.get("agents", [])
    single = _text(body, "agent")
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise InvalidHandoffAction("agents must be a list of names")
    until = _text(body, "until")
    try:
        day = date.fromisoformat(until) if until else None
    except ValueError:
        raise InvalidHandoffAction(f"until {until!r} is not an ISO date like 2026-12-31") from None
    given = body.get("instalments", [])
    if not isinstance(given, list) or not all(isinstance(i, str) for i in given):
        raise InvalidHandoffAction("instalments must be a list of \"YYYY-MM-DD:AMOUNT\" texts")
    try:
        instalments = tuple(Instalment.parse(text) for text in given)
    except PlanError as exc:
        raise InvalidHandoffAction(str(exc)) from None
    return Closing(_text(body, "outcome") or "", tuple(agents) + ((single,) if single else ()), day,
                   _text(body, "note"), _text(body, "place"), instalments)


def _close(app: App) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        handoff_id, closing = _id(request), _closing(await _body(request))
        now = app.clock()
        today = local_date(now, zone(app.pipeline.loaded.schedule.timezone))

        def close() -> dict[str, Any]:
            start = plan_start(app, handoff_id, closing.outcome)  # a plan starts from the source's amount now
            return close_handoff(app.engine, handoff_id, replace(closing, start_amount=start), now, today)

        return _json(public(await _off_loop(close)))

    return handle
