"""``GET /metrics`` (Prometheus text format).

Metrics are read from the ledger and the broker, so they cover every worker on
every machine without a push gateway: attempts by channel and status, retries,
provider latency, batches waiting in the queue, the version of schedules.yaml in
force, and per run name the last success and whether its latest ended run failed.

Names and units follow Prometheus conventions: seconds (``_seconds``, bucket
bounds ``le`` in seconds), ``_total`` on counters (retries only grow: a purge
keeps every claim row), gauges for what goes up and down.

On a ledger of millions of attempts the text costs three statements: one
grouped count of the attempts (channel, status, and the retries with them: one
pass instead of two), the provider latency aggregated by the database over the
attempts booked in the last :data:`LATENCY_LOOKBACK` (the ``created_at`` index
bounds the rows read; no row travels to Python), and the runs' summary. The
grouped count reads only the index ``ix_attempts_status_channel_try`` (migration
0014), never the table: ``bench/metrics.py`` measures it with and without.

The text is computed in a thread of its own at most once per
:data:`METRICS_MAX_AGE` seconds and shared by every scrape in between (or
waiting while it is computed). When ``DISPATCHER_METRICS_TOKEN`` is set, a scrape
must carry ``Authorization: Bearer <token>``, else it gets 401. With
``DISPATCHER_METRICS_PORT`` the path is served on that port of its own (same
rule), and no longer on the port of the webhooks: a firewall can then open one to
Prometheus and the other to the providers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from sqlalchemy import case, func, select

from dispatcher.app import App
from dispatcher.ledger.runs import FAILED
from dispatcher.ledger.tables import attempts
from dispatcher.masking import mask_url
from dispatcher.pipeline.executors import QUEUE
from dispatcher.web.bearer import bearer_ok
from dispatcher.web.limits import Handler
from dispatcher.web.refreshed import Refreshed

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (``le``) of the provider latency histogram, in seconds (Prometheus's default buckets)."""

LATENCY_WINDOW = timedelta(hours=1)
"""Provider latency is measured over the attempts answered in this last stretch of time."""

LATENCY_LOOKBACK = timedelta(days=2)
"""Only attempts booked this recently are looked at for the latency (an indexed bound on the rows read): a
reminder left planned for days and sent in the last hour is left out of the histogram."""

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
        retries = CounterMetricFamily("dispatcher_retries", "Tries after the first, by channel", labels=["channel"])
        retried: dict[str, int] = {}
        with self.app.engine.connect() as connection:
            for channel, status, count, later_tries in connection.execute(
                    select(attempts.c.channel, attempts.c.status, func.count(),
                           func.sum(case((attempts.c.try_no > 1, 1), else_=0)))
                    .group_by(attempts.c.channel, attempts.c.status)):
                by_status.add_metric([channel, status], count)
                retried[channel] = retried.get(channel, 0) + int(later_tries or 0)
        for channel, count in sorted(retried.items()):
            if count:
                retries.add_metric([channel], count)
        yield by_status
        yield retries

    def _latency(self) -> Iterator[Any]:
        now = self.app.clock()
        family = HistogramMetricFamily("dispatcher_provider_latency_seconds",
                                       "Provider answer time over the last hour", labels=["provider"])
        duration = attempts.c.duration_ms
        query = (select(attempts.c.provider, func.count(), func.sum(duration),
                        *(func.sum(case((duration <= round(bound * 1000), 1), else_=0)) for bound in LATENCY_BUCKETS))
                 .where(attempts.c.created_at >= now - LATENCY_LOOKBACK, attempts.c.updated_at >= now - LATENCY_WINDOW,
                        duration.is_not(None))
                 .group_by(attempts.c.provider))
        totals: dict[str, list[int]] = {}
        with self.app.engine.connect() as connection:
            for provider, count, total, *below in connection.execute(query):
                sums = totals.setdefault(provider or "unknown", [0] * (len(LATENCY_BUCKETS) + 2))
                for index, value in enumerate((count, total, *below)):
                    sums[index] += int(value or 0)
        for provider, (count, total, *below) in sorted(totals.items()):
            buckets = [(_le(bound), value) for bound, value in zip(LATENCY_BUCKETS, below, strict=True)]
            family.add_metric([provider], [*buckets, ("+Inf", count)], total / 1000)
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


def _le(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (``0.005``, ``1.0``)."""
    return repr(float(bound))


def metrics_text(app: App) -> Refreshed[bytes]:
    """The metrics of ``app`` in the Prometheus text format, computed off the event loop and kept a while."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(app))
    return Refreshed(lambda: generate_latest(registry), METRICS_MAX_AGE, "metrics")


def metrics_handler(metrics: Refreshed[bytes], token: str | None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if token is not None and not bearer_ok(request, token):
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


def metrics_site(metrics: Refreshed[bytes], token: str | None, host: str,
                 port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` of the main web app serving ``GET /metrics`` alone on ``host:port`` while it runs."""

    async def site(_web_app: web.Application) -> AsyncIterator[None]:
        alone = web.Application()
        alone.router.add_get("/metrics", metrics_handler(metrics, token))
        runner = web.AppRunner(alone, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            log.info("serving /metrics on http://%s:%d", host, port)
            yield
        finally:
            await runner.cleanup()

    return site
