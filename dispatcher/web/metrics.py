"""``GET /metrics`` (Prometheus text format).

Metrics are read from the ledger and the broker, so they cover every worker on
every machine without a push gateway: attempts by channel and status, retries,
provider latency, batches waiting in the queue, the version of schedules.yaml in
force, and per run name the last success and whether its latest ended run failed.

The text is computed in a thread of its own at most once per
:data:`METRICS_MAX_AGE` seconds and shared by every scrape in between (or
waiting while it is computed). When ``DISPATCHER_METRICS_TOKEN`` is set, a scrape
must carry ``Authorization: Bearer <token>``, else it gets 401.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from sqlalchemy import func, select

from dispatcher.app import App
from dispatcher.executors import QUEUE
from dispatcher.ledger.runs import FAILED
from dispatcher.ledger.tables import attempts
from dispatcher.masking import mask_url
from dispatcher.web.limits import Handler
from dispatcher.web.refreshed import Refreshed

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Upper bounds of the provider latency histogram, in milliseconds."""

LATENCY_WINDOW = timedelta(hours=1)
"""Provider latency is measured over the attempts of this last stretch of time."""

METRICS_MAX_AGE = 15.0
"""Seconds one computed metrics text answers scrapes (the ledger is read at most this often)."""

METRICS_WAIT = 10.0
"""Seconds a scrape waits for the metrics being computed before it gets 503."""


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




def metrics_text(app: App) -> Refreshed[bytes]:
    """The metrics of ``app`` in the Prometheus text format, computed off the event loop and kept a while."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(app))
    return Refreshed(lambda: generate_latest(registry), METRICS_MAX_AGE, "metrics")


def metrics_handler(metrics: Refreshed[bytes], token: str | None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if token is not None and not _authorized(request, token):
            raise web.HTTPUnauthorized(text="metrics need a bearer token",
                                       headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        try:
            body = await metrics.get(METRICS_WAIT)
        except TimeoutError:
            raise web.HTTPServiceUnavailable(text=f"metrics not computed within {METRICS_WAIT:g} s; retry") from None
        except Exception as exc:  # the ledger being down: say so, no traceback
            log.warning("cannot compute the metrics: %s", type(exc).__name__)
            raise web.HTTPServiceUnavailable(text=f"metrics unavailable: {type(exc).__name__}") from None
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


def _authorized(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
