"""``GET /healthz``: red when the database or the broker does not answer, or a run name's latest run failed.

The checks run in a thread of their own, at most once per :data:`HEALTH_MAX_AGE`
seconds, whatever the number of callers (:class:`~dispatcher.web.refreshed.Refreshed`);
checks that give no answer within :data:`HEALTH_WAIT` seconds make the answer 503.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from aiohttp import web
from redis import Redis
from sqlalchemy import select, text, tuple_

from dispatcher.app import App
from dispatcher.ledger.runs import NameSummary
from dispatcher.ledger.tables import runs
from dispatcher.web.limits import Handler
from dispatcher.web.refreshed import Refreshed

log = logging.getLogger(__name__)

HEALTH_MAX_AGE = 2.0
"""Seconds one result of the checks answers ``/healthz``."""

HEALTH_WAIT = 5.0
"""Seconds ``/healthz`` waits for checks in progress before it answers 503."""

HEALTH_HORIZON = timedelta(days=2)
"""A failed run turns /healthz red for this long at most after its fire time (a later completed run of its
name clears it sooner); a one-off run (``run --once``, ``retry``) that failed does not stay red for ever, while
``dispatcher_run_failed`` keeps saying so."""


def health_checks(app: App) -> Refreshed[dict[str, str]]:
    """The checks of ``app``, computed off the event loop and shared by concurrent requests."""
    return Refreshed(lambda: _health(app), HEALTH_MAX_AGE, "healthz")


def health_handler(checks: Refreshed[dict[str, str]]) -> Handler:
    async def handle(_request: web.Request) -> web.StreamResponse:
        try:
            answer = await checks.get(HEALTH_WAIT)
        except TimeoutError:
            log.warning("health checks gave no answer within %g s", HEALTH_WAIT)
            answer = {"database": f"no answer within {HEALTH_WAIT:g} s"}
        healthy = all(value == "ok" for value in answer.values())
        return web.json_response({"status": "ok" if healthy else "unhealthy", **answer}, status=200 if healthy else 503)

    return handle


def _health(app: App) -> dict[str, str]:
    """Whether the database and the broker answer and the latest runs did not fail (blocking: run in a thread)."""
    checks: dict[str, str] = {}
    try:
        with app.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if checks["database"] == "ok":
        try:
            checks["runs"] = _runs_health(app)
        except Exception as exc:
            checks["runs"] = f"unreadable: {type(exc).__name__}"
    broker = app.settings.broker_url
    if broker:
        try:
            client: Redis = Redis.from_url(broker, socket_timeout=2)
            client.ping()
            client.close()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
    return checks


def _runs_health(app: App) -> str:
    """``ok``, or each run name whose latest run failed or was abandoned, with the run's id and error."""
    now = app.clock()
    failing = [summary for summary in app.runs.summaries(now)
               if summary.failing and summary.latest_fire_time > now - HEALTH_HORIZON]
    if not failing:
        return "ok"
    return "; ".join(_failure(summary, details) for summary, details in zip(failing, _details(app, failing),
                                                                                 strict=True))


def _details(app: App, failing: Sequence[NameSummary]) -> list[tuple[int, str | None]]:
    """(id, error) of the latest run of each failing run name."""
    keys = [(summary.name, summary.latest_fire_time) for summary in failing]
    query = (select(runs.c.name, runs.c.fire_time, runs.c.id, runs.c.error)
             .where(tuple_(runs.c.name, runs.c.fire_time).in_(keys)))
    with app.engine.connect() as connection:
        found = {(row.name, row.fire_time): (int(row.id), row.error) for row in connection.execute(query)}
    return [found.get(key, (0, None)) for key in keys]


def _failure(summary: NameSummary, details: tuple[int, str | None]) -> str:
    run_id, error = details
    text = f"run {summary.name} #{run_id} of {summary.latest_fire_time.isoformat()} {summary.latest_status}"
    return f"{text}: {error}" if error else text
