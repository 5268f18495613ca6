"""``dispatcher web``: GET /metrics (Prometheus text) and GET /healthz, through aiohttp's test client.

Run metrics and the runs health check are driven from the ``runs`` table alone
(runs started and ended through the RunLedger on the fixed clock). For the rest,
one run goes out (SMS and calls through the Twilio stand-in, which refuses the
first create once with a 503 so that one message is retried; push and email to
the outbox). The metrics are then compared with the ledger itself. The queue gauge
and the broker health check use a Redis database of their own (``broker_url_db``).

The metrics text is computed at most once per 15 s and shared by concurrent scrapes
(counted at the ledger, with the counting statement held by an SQLAlchemy hook
while /healthz is asked); ``DISPATCHER_METRICS_TOKEN`` guards it when set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import NOW, FixedClock
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, select
from standins.twilio_server import TwilioStandin
from webserver import serving

from dispatcher.app import App, build_app
from dispatcher.demo import seed_demo
from dispatcher.errors import ConfigError
from dispatcher.ledger.tables import attempts
from dispatcher.pipeline.executors import QUEUE
from dispatcher.pipeline.run import Runner
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
    # the 503 went to whichever Twilio create came first, an SMS or a call (both are in flight at once), and was retried
    failed = {channel: n for (channel, status), n in counts.items() if status == "failed"}
    assert counts[("sms", "sent")] > 0 and list(failed.values()) == [1] and set(failed) <= {"sms", "voice"}, counts
    (retried,) = failed
    assert {dict(k)["channel"]: v for k, v in samples["dispatcher_attempts"].items()
            if dict(k)["status"] == "sent"}["sms"] == counts[("sms", "sent")]
    assert {(dict(k)["channel"], dict(k)["status"]): int(v) for k, v in samples["dispatcher_attempts"].items()} \
        == counts

    assert samples["dispatcher_retries_total"] == {(("channel", retried),): 1.0}  # a counter: `_total`
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
    assert json.loads(body) == {"status": "ok", "database": "ok", "runs": "ok"}


def test_healthz_checks_the_broker(ran: Any, broker_url_db: str) -> None:
    status, body = get(ran(DISPATCHER_BROKER_URL=broker_url_db), "/healthz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "database": "ok", "runs": "ok", "broker": "ok"}


def test_healthz_is_503_when_the_broker_is_down_and_metrics_still_answer(ran: Any) -> None:
    app = ran(DISPATCHER_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0")
    status, body = get(app, "/healthz")
    assert status == 503, body
    answer = json.loads(body)
    assert (answer["status"], answer["database"]) == ("unhealthy", "ok")
    assert answer["broker"].startswith("unreachable")
    samples = scrape(app)  # a broker outage must not break the scrape
    assert samples["dispatcher_attempts"] and not samples.get("dispatcher_queue_batches")


# runs: last success, failed, and /healthz ------------------------------------------------------------------------
def run_samples(app: App) -> tuple[dict[str, float], dict[str, float]]:
    """(dispatcher_last_success_timestamp_seconds, dispatcher_run_failed) by run name."""
    samples = scrape(app)
    return ({dict(k)["run"]: v for k, v in samples.get("dispatcher_last_success_timestamp_seconds", {}).items()},
            {dict(k)["run"]: v for k, v in samples.get("dispatcher_run_failed", {}).items()})


def ended(app: App, name: str, fire_time: datetime, status: str, at: datetime, error: str | None = None) -> int:
    run_id = app.runs.start(name, fire_time, "v1", "daemon-a", fire_time)
    assert run_id is not None
    if error is not None:
        assert app.runs.fail(run_id, error, {}, at)
    else:
        assert app.runs.finish(run_id, status, {}, at)
    return run_id


def health(app: App) -> tuple[int, dict[str, str]]:
    status, body = get(app, "/healthz")
    return status, json.loads(body)


def test_run_metrics_per_run_name(app: App, clock: FixedClock) -> None:
    day = timedelta(days=1)
    ended(app, "morning", NOW - 2 * day, "completed", NOW - 2 * day + timedelta(minutes=3))
    ended(app, "morning", NOW - day, "failed", NOW - day + timedelta(minutes=1), error="source unreachable")
    ended(app, "evening", NOW - 2 * day, "failed", NOW - 2 * day + timedelta(minutes=1), error="boom")
    ended(app, "evening", NOW - day, "completed", NOW - day + timedelta(minutes=9))
    ended(app, "evening", NOW - timedelta(hours=1), "interrupted", NOW - timedelta(minutes=50))
    assert app.runs.start("follow-up", NOW - timedelta(hours=2), "v1", "dead", NOW - timedelta(hours=2))  # abandoned
    assert app.runs.start("manual", clock(), "v1", "alive", clock())  # running, nothing ended yet
    ended(app, "startup", NOW - day, "completed", NOW - day + timedelta(seconds=30))
    assert app.runs.start("startup", clock(), "v1", "alive", clock())  # running after a success

    statements: list[str] = []
    event.listen(app.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    success, failed = run_samples(app)
    assert sum(1 for s in statements if re.search(r"\bruns\b", s)) == 1  # one grouped query for every run name

    assert success == {"morning": (NOW - 2 * day + timedelta(minutes=3)).timestamp(),
                       "evening": (NOW - day + timedelta(minutes=9)).timestamp(),
                       "startup": (NOW - day + timedelta(seconds=30)).timestamp()}
    assert failed == {"morning": 1.0, "evening": 0.0, "follow-up": 1.0, "manual": 0.0, "startup": 0.0}


def test_run_metrics_on_an_empty_ledger(app: App) -> None:
    assert run_samples(app) == ({}, {})


def test_healthz_is_red_after_a_failed_run_and_green_after_a_later_completed_one(app: App,
                                                                                  clock: FixedClock) -> None:
    assert health(app) == (200, {"status": "ok", "database": "ok", "runs": "ok"})
    failed = ended(app, "morning", NOW - timedelta(days=1), "failed", NOW - timedelta(days=1),
                   error="source unreachable: connection refused")
    ended(app, "evening", NOW - timedelta(days=1), "completed", NOW - timedelta(days=1))
    status, body = health(app)
    assert status == 503
    assert body == {"status": "unhealthy", "database": "ok",
                    "runs": f"run morning #{failed} of {(NOW - timedelta(days=1)).isoformat()} failed: "
                            "source unreachable: connection refused"}
    assert run_samples(app)[1] == {"morning": 1.0, "evening": 0.0}

    ended(app, "morning", NOW, "completed", clock())
    assert health(app) == (200, {"status": "ok", "database": "ok", "runs": "ok"})
    assert run_samples(app)[1] == {"morning": 0.0, "evening": 0.0}


def test_a_failed_one_off_run_turns_healthz_red_for_two_days_only(app: App) -> None:
    ended(app, "manual", NOW - timedelta(days=2, minutes=1), "failed", NOW - timedelta(days=2), error="boom")
    assert health(app)[0] == 200  # past the horizon: no longer red ...
    assert run_samples(app)[1] == {"manual": 1.0}  # ... while the metric still says it failed
    ended(app, "manual", NOW - timedelta(days=1), "failed", NOW - timedelta(days=1), error="boom")
    assert health(app)[0] == 503


def test_healthz_is_red_while_a_run_is_abandoned_and_green_once_it_is_closed(app: App, clock: FixedClock) -> None:
    run_id = app.runs.start("morning", NOW, "v1", "dead", clock())
    assert run_id is not None
    assert health(app)[0] == 200  # its lease holds
    clock.advance(app.runs.lease + timedelta(seconds=1))
    status, body = health(app)  # shown abandoned before anyone marks it
    assert (status, body["runs"]) == (503, f"run morning #{run_id} of {NOW.isoformat()} abandoned")
    assert app.runs.abandon_expired(clock()) == [run_id]
    assert health(app)[0] == 503
    assert app.runs.close(run_id, clock()).closed
    assert health(app) == (200, {"status": "ok", "database": "ok", "runs": "ok"})
    assert run_samples(app)[1] == {"morning": 0.0}


# the cache, the token, a broken ledger ---------------------------------------------------------------------------
PATIENCE = 30.0
"""Generous bound on a single answer (a failure when exceeded, not a measurement)."""

GROUPED_ATTEMPTS = re.compile(r"FROM attempts GROUP BY attempts\.channel, attempts\.status")
"""The statement /metrics counts attempts with."""


class Gate:
    """Holds every statement counting attempts by channel and status until opened (an SQLAlchemy event hook)."""

    def __init__(self, app: App) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.held = 0
        event.listen(app.engine, "before_cursor_execute", self._hold)

    def _hold(self, _connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if GROUPED_ATTEMPTS.search(statement):
            self.held += 1
            self.entered.set()
            self.opened.wait(PATIENCE)


def test_parallel_scrapes_share_one_computation_and_healthz_answers_meanwhile(ran: Any) -> None:
    app = ran()
    gate = Gate(app)

    async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
        async with session.get(url) as response:
            return response.status, await response.text()

    async def go() -> tuple[tuple[int, str], int, list[tuple[int, str]]]:
        async with serving(app) as (host, port), \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            scrapes = [asyncio.create_task(fetch(session, f"http://{host}:{port}/metrics")) for _ in range(100)]
            try:
                for _ in range(int(PATIENCE / 0.01)):  # until the one computation is held in the ledger
                    if gate.entered.is_set():
                        break
                    await asyncio.sleep(0.01)
                health = await asyncio.wait_for(fetch(session, f"http://{host}:{port}/healthz"), PATIENCE)
                waiting = sum(1 for scrape in scrapes if not scrape.done())
            finally:
                gate.opened.set()
            return health, waiting, await asyncio.gather(*scrapes)

    (health_status, health_body), waiting, answers = asyncio.run(go())
    assert (health_status, json.loads(health_body)["status"]) == (200, "ok")
    assert waiting == 100  # /healthz answered while every scrape waited on the ledger
    assert gate.held == 1  # 100 scrapes, one reading of the ledger
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1


def test_metrics_are_read_from_the_ledger_at_most_once_per_15_seconds(app: App, clock: FixedClock) -> None:
    statements: list[str] = []
    event.listen(app.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    async def go() -> list[str]:
        async with TestClient(TestServer(build_web_app(app))) as client:
            bodies = [await (await client.get("/metrics")).text()]
            ended(app, "morning", NOW, "completed", clock())
            bodies.append(await (await client.get("/metrics")).text())
            return bodies

    first, second = asyncio.run(go())
    assert first == second  # the run ended in between shows at the next computation, not before
    assert "dispatcher_run_failed{" not in second
    assert sum(1 for s in statements if GROUPED_ATTEMPTS.search(s)) == 1


TOKEN = "scrape-7f3a9c"


def test_metrics_token_is_required_when_set(ran: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = ran(DISPATCHER_METRICS_TOKEN=TOKEN)
    tries = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN}"}]

    async def go() -> tuple[list[tuple[int, str]], int]:
        async with TestClient(TestServer(build_web_app(app))) as client:
            answers = []
            for headers in tries:
                response = await client.get("/metrics", headers=headers)
                answers.append((response.status, response.headers.get("WWW-Authenticate", "")))
            return answers, (await client.get("/healthz")).status

    answers, health = asyncio.run(go())
    assert answers[:4] == [(401, 'Bearer realm="metrics"')] * 4
    assert answers[4][0] == 200
    assert health == 200  # /healthz stays open to load balancers
    assert TOKEN not in caplog.text and TOKEN not in repr(app.settings)


def test_metrics_and_healthz_answer_503_when_the_ledger_is_broken(app: App, ledger_backend: str) -> None:
    with app.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE attempts" + (" CASCADE" if ledger_backend == "postgresql" else ""))
    status, body = get(app, "/metrics")
    assert status == 503 and body.startswith("metrics unavailable: ") and "Traceback" not in body


# Prometheus conventions, the cost on a large ledger, a port of its own ------------------------------------------
def test_metric_names_and_units_follow_prometheus_conventions(ran: Any) -> None:
    status, body = get(ran(), "/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert "# TYPE dispatcher_retries_total counter" in body
    for family in families.values():
        assert not re.search(r"_(ms|milliseconds|millis)\b", family.name)
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
            for labels in {tuple((k, v) for k, v in s.labels.items() if k != "le") for s in family.samples}:
                bounds = [s.labels["le"] for s in family.samples
                          if s.name.endswith("_bucket") and tuple((k, v) for k, v in s.labels.items() if k != "le")
                          == labels]
                assert bounds[-1] == "+Inf" and [float(b) for b in bounds] == sorted(float(b) for b in bounds)
                assert float(bounds[0]) < 1  # bounds in seconds: the first is a few milliseconds
    assert families["dispatcher_provider_latency_seconds"].type == "histogram"


def test_a_scrape_reads_attempts_in_two_aggregated_statements_bounded_in_time(ran: Any) -> None:
    app = ran()
    statements: list[str] = []
    event.listen(app.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    scrape(app)
    on_attempts = [s for s in statements if re.search(r"\bFROM attempts\b", s)]
    assert len(on_attempts) == 2  # the grouped count (with the retries), the latency
    assert all("count(" in s.lower() for s in on_attempts)  # aggregated by the database: no row travels
    (latency,) = [s for s in on_attempts if "duration_ms" in s]
    assert "attempts.created_at >=" in latency  # the created_at index bounds the rows read


def test_latency_leaves_out_attempts_booked_before_the_lookback(ran: Any) -> None:
    app = ran()
    before = scrape(app)["dispatcher_provider_latency_seconds_count"][(("provider", "twilio"),)]
    now = app.clock()
    with app.engine.begin() as connection:
        for booked in (now - timedelta(days=1), now - timedelta(days=3)):
            connection.execute(attempts.insert().values(
                reminder_key=f"late|{booked.date()}", account_id="late", step="gentle", occurrence=0,
                channel="sms", try_no=1, status="sent", provider="twilio", duration_ms=120, created_at=booked,
                updated_at=now))
    after = scrape(ran())["dispatcher_provider_latency_seconds_count"][(("provider", "twilio"),)]
    assert after == before + 1  # booked a day ago: in; three days ago: out (LATENCY_LOOKBACK)


def test_metrics_on_a_port_of_their_own(ran: Any) -> None:
    port = closed_port()
    app = ran(DISPATCHER_METRICS_PORT=str(port), DISPATCHER_METRICS_TOKEN=TOKEN, DISPATCHER_METRICS_HOST="127.0.0.1")
    assert (app.settings.metrics_port, app.settings.metrics_host) == (port, "127.0.0.1")

    async def go() -> dict[str, int]:
        runner = web.AppRunner(build_web_app(app, metrics_host="0.0.0.0"))  # the variable wins
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        main = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                async def status(url: str, **headers: str) -> int:
                    async with session.get(url, headers=headers) as response:
                        return response.status

                return {"main": await status(f"http://127.0.0.1:{main}/metrics",
                                             Authorization=f"Bearer {TOKEN}"),
                        "healthz": await status(f"http://127.0.0.1:{main}/healthz"),
                        "own, no token": await status(f"http://127.0.0.1:{port}/metrics"),
                        "own": await status(f"http://127.0.0.1:{port}/metrics", Authorization=f"Bearer {TOKEN}")}
        finally:
            await runner.cleanup()

    assert asyncio.run(go()) == {"main": 404, "healthz": 200, "own, no token": 401, "own": 200}
    with socket.socket() as probe:  # the metrics site closed with the web app
        probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("value", ["0", "65536", "http"])
def test_a_bad_metrics_port_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_METRICS_PORT"):
        Settings.from_env({"DISPATCHER_METRICS_PORT": value})
