"""``dispatcher web``: GET /metrics (Prometheus text) and GET /healthz, through aiohttp's test client.

One run goes out (SMS through the Twilio stand-in, which refuses the first message once
with a 503 so that one SMS is retried; push and email to the outbox). The metrics are
then compared with the ledger itself. The queue gauge and the broker health check use
a Redis database of their own (``broker_url_db``).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from conftest import NOW, FixedClock
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from standins.twilio_server import TwilioStandin

from dispatcher.app import App, build_app
from dispatcher.demo import seed_demo
from dispatcher.executors import QUEUE
from dispatcher.ledger.tables import attempts
from dispatcher.runner import Runner
from dispatcher.settings import Settings
from dispatcher.web.server import build_web_app


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def ran(workdir: Path, clock: FixedClock, twilio: TwilioStandin, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """After one run at 09:00 Shanghai: ``web(**env)`` builds the app ``dispatcher web`` would serve."""
    for name, value in {"TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
                        "TWILIO_FROM_NUMBER": "+14155550999", "TWILIO_API_BASE_URL": twilio.url,
                        "TWILIO_TIMEOUT": "3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DISPATCHER_BROKER_URL", raising=False)
    daemon = build_app(Settings.from_env(), clock=clock)
    seed_demo(daemon.engine, 60, NOW.date())
    twilio.fail_next(503, 20500, "Service Unavailable")
    assert Runner(daemon).run("morning", NOW).status == "completed"
    daemon.engine.dispose()
    built: list[App] = []

    def web(**env: str) -> App:
        app = build_app(Settings.from_env({**Settings.from_env().env, **env}), clock=clock)
        built.append(app)
        return app

    yield web
    for app in built:
        app.engine.dispose()


def get(app: App, path: str) -> tuple[int, str]:
    async def fetch() -> tuple[int, str]:
        async with TestClient(TestServer(build_web_app(app))) as client:
            response = await client.get(path)
            return response.status, await response.text()

    return asyncio.run(fetch())


def scrape(app: App) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → (sorted labels) → value."""
    status, body = get(app, "/metrics")
    assert status == 200, body
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def ledger_counts(app: App) -> dict[tuple[str, str], int]:
    with app.engine.connect() as connection:
        rows = connection.execute(select(attempts.c.channel, attempts.c.status, func.count())
                                  .group_by(attempts.c.channel, attempts.c.status))
        return {(channel, status): int(count) for channel, status, count in rows}


def test_metrics_match_the_ledger(ran: Any) -> None:
    app = ran()
    samples = scrape(app)
    counts = ledger_counts(app)
    assert counts[("sms", "sent")] > 0 and counts[("sms", "failed")] == 1  # the 503, retried
    assert {dict(k)["channel"]: v for k, v in samples["dispatcher_attempts"].items()
            if dict(k)["status"] == "sent"}["sms"] == counts[("sms", "sent")]
    assert {(dict(k)["channel"], dict(k)["status"]): int(v) for k, v in samples["dispatcher_attempts"].items()} \
        == counts

    assert samples["dispatcher_retries"] == {(("channel", "sms"),): 1.0}
    assert samples["dispatcher_config_info"] == {(("version", app.pipeline.loaded.version),): 1.0}


def test_provider_latency_histogram(ran: Any) -> None:
    app = ran()
    samples = scrape(app)
    with app.engine.connect() as connection:
        timed = [(provider, int(ms)) for provider, ms in connection.execute(
            select(attempts.c.provider, attempts.c.duration_ms).where(attempts.c.duration_ms.is_not(None)))]
    twilio_ms = [ms for provider, ms in timed if provider == "twilio"]
    assert twilio_ms
    buckets = {dict(k)["le"]: v for k, v in samples["dispatcher_provider_latency_seconds_bucket"].items()
               if dict(k)["provider"] == "twilio"}
    assert buckets["+Inf"] == len(twilio_ms)
    bounds = sorted((float(le), value) for le, value in buckets.items() if le != "+Inf")
    assert [v for _, v in bounds] == sorted(v for _, v in bounds)  # cumulative
    for bound, value in bounds:
        assert value == sum(1 for ms in twilio_ms if ms <= bound * 1000)
    assert samples["dispatcher_provider_latency_seconds_count"][(("provider", "twilio"),)] == len(twilio_ms)
    assert samples["dispatcher_provider_latency_seconds_sum"][(("provider", "twilio"),)] == pytest.approx(
        sum(twilio_ms) / 1000)
    assert {dict(k)["provider"] for k in samples["dispatcher_provider_latency_seconds_count"]} == {
        provider for provider, _ in timed}


def test_queue_batches_is_the_length_of_the_dispatcher_list(ran: Any, broker_url_db: str) -> None:
    assert not scrape(ran()).get("dispatcher_queue_batches")  # no broker: no sample
    app = ran(DISPATCHER_BROKER_URL=broker_url_db)
    client = redis.Redis.from_url(broker_url_db, socket_timeout=2)
    try:
        assert scrape(app)["dispatcher_queue_batches"] == {(): 0.0}
        client.rpush(QUEUE, *[f'{{"batch": {n}}}' for n in range(7)])
        assert scrape(app)["dispatcher_queue_batches"] == {(): float(client.llen(QUEUE))} == {(): 7.0}
        client.lpop(QUEUE, 3)
        assert scrape(app)["dispatcher_queue_batches"] == {(): 4.0}
    finally:
        client.close()


def test_healthz_ok_without_a_broker(ran: Any) -> None:
    status, body = get(ran(), "/healthz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "database": "ok"}


def test_healthz_checks_the_broker(ran: Any, broker_url_db: str) -> None:
    status, body = get(ran(DISPATCHER_BROKER_URL=broker_url_db), "/healthz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "database": "ok", "broker": "ok"}


def test_healthz_is_503_when_the_broker_is_down_and_metrics_still_answer(ran: Any) -> None:
    app = ran(DISPATCHER_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0")
    status, body = get(app, "/healthz")
    assert status == 503, body
    answer = json.loads(body)
    assert (answer["status"], answer["database"]) == ("unhealthy", "ok")
    assert answer["broker"].startswith("unreachable")
    samples = scrape(app)  # a broker outage must not break the scrape
    assert samples["dispatcher_attempts"] and not samples.get("dispatcher_queue_batches")
