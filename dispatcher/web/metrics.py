"""``GET /metrics`` (Prometheus text format) and ``GET /healthz``.

Metrics are read from the ledger and the broker at scrape time, so they cover
every worker on every machine without a push gateway: attempts by channel and
status, retries, provider latency, batches waiting in the queue, the version of
schedules.yaml in force, and per run name the last success and whether its latest
ended run failed. ``/healthz`` is red when the database or the broker does not
answer, or when the latest run of a run name failed or was abandoned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from sqlalchemy import func, select, text, tuple_

from dispatcher.app import App
from dispatcher.executors import QUEUE
from dispatcher.ledger.runs import FAILED, NameSummary
from dispatcher.ledger.tables import attempts, runs
from dispatcher.masking import mask_url

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds of the provider latency histogram, in milliseconds."""

LATENCY_WINDOW = timedelta(hours=1)
"""Provider latency is measured over the attempts of this last stretch of time."""


class LedgerCollector(Collector):
    """Collects the dispatcher's metrics on each scrape."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        yield from self._attempts()
        yield from self._latency()
        yield self._queue()
        yield from self._runs()
        version = GaugeMetricFamily("dispatcher_config_info", "schedules.yaml version in force", labels=["version"])
        version.add_metric([self.app.pipeline.loaded.version], 1)
        yield version

    def _attempts(self) -> Iterator[Any]:
        by_status = GaugeMetricFamily("dispatcher_attempts", "Delivery attempts in the ledger",
                                      labels=["channel", "status"])
        retries = GaugeMetricFamily("dispatcher_retries", "Tries after the first, by channel", labels=["channel"])
        with self.app.engine.connect() as connection:
            for channel, status, count in connection.execute(
                    select(attempts.c.channel, attempts.c.status, func.count())
                    .group_by(attempts.c.channel, attempts.c.status)):
                by_status.add_metric([channel, status], count)
            for channel, count in connection.execute(
                    select(attempts.c.channel, func.count()).where(attempts.c.try_no > 1)
                    .group_by(attempts.c.channel)):
                retries.add_metric([channel], count)
        yield by_status
        yield retries

    def _latency(self) -> Iterator[Any]:
        since = self.app.clock() - LATENCY_WINDOW
        family = HistogramMetricFamily("dispatcher_provider_latency_seconds",
                                       "Provider answer time over the last hour", labels=["provider"])
        with self.app.engine.connect() as connection:
            rows = connection.execute(
                select(attempts.c.provider, attempts.c.duration_ms)
                .where(attempts.c.duration_ms.is_not(None), attempts.c.updated_at >= since))
            samples: dict[str, list[int]] = {}
            for provider, duration in rows:
                samples.setdefault(provider or "unknown", []).append(int(duration))
        for provider, values in samples.items():
            buckets = [(str(bound / 1000), sum(1 for v in values if v <= bound)) for bound in LATENCY_BUCKETS_MS]
            buckets.append(("+Inf", len(values)))
            family.add_metric([provider], buckets, sum(values) / 1000)
        yield family

    def _runs(self) -> Iterator[Any]:
        success = GaugeMetricFamily("dispatcher_last_success_timestamp_seconds",
                                    "Unix time the latest completed run of each run name finished", labels=["run"])
        failed = GaugeMetricFamily("dispatcher_run_failed",
                                   "1 when the latest ended run of the run name failed or was abandoned",
                                   labels=["run"])
        for summary in self.app.runs.summaries(self.app.clock()):
            if summary.last_success is not None:
                success.add_metric([summary.name], summary.last_success.timestamp())
            failed.add_metric([summary.name], 1 if summary.last_ended_status in FAILED else 0)
        yield success
        yield failed

    def _queue(self) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily("dispatcher_queue_batches", "Delivery batches waiting in the broker queue")
        broker = self.app.settings.broker_url
        if broker and broker.startswith("redis"):
            try:
                client: Redis = Redis.from_url(broker, socket_timeout=2)
                gauge.add_metric([], int(client.llen(QUEUE)))
                client.close()
            except Exception as exc:  # the broker being down must not break the scrape
                log.warning("cannot read the queue length from %s: %s", mask_url(broker), exc)
        return gauge


def metrics_handler(app: App) -> Any:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(app))

    async def handle(_request: web.Request) -> web.StreamResponse:
        body = await asyncio.to_thread(generate_latest, registry)  # ledger and broker reads off the event loop
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


def health_handler(app: App) -> Any:
    async def handle(_request: web.Request) -> web.StreamResponse:
        checks = await asyncio.to_thread(_health, app)
        healthy = all(value == "ok" for value in checks.values())
        return web.json_response({"status": "ok" if healthy else "unhealthy", **checks}, status=200 if healthy else 503)

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


HEALTH_HORIZON = timedelta(days=2)
"""A failed run turns /healthz red for this long at most after its fire time (a later completed run of its
name clears it sooner); a one-off run (``run --once``, ``retry``) that failed does not stay red for ever, while
``dispatcher_run_failed`` keeps saying so."""


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
