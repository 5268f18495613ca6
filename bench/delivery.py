#!/usr/bin/env python3
"""Benchmark SMS delivery to a loopback Twilio stand-in: in-process, Celery workers, batch sizes, and the ceiling.

One run of this script measures, each on a fresh SQLite ledger seeded with
SMS-only borrowers (a one-step ladder ``channels: [sms]`` on profile ``none``, so
every account is one SMS):

* ``ceiling``: a bare aiohttp client posting the same Twilio form requests (To,
  From, Body, Basic auth) to the same stand-in, ``DISPATCHER_CONCURRENCY`` in flight,
  on the event loop the dispatcher uses (uvloop), and again on asyncio's own loop;
* ``in-process``: ``Runner.run`` without a broker (what ``dispatcher run --once`` does);
* ``celery``: the same run with ``DISPATCHER_BROKER_URL`` and ``dispatcher worker
  --pool prefork --concurrency N`` (N = 1 and 2 pool processes), ``delivery.task_batch``
  1, 100 and 500.

The stand-in is aiohttp's low-level HTTP server on one event loop (HTTP/1.1
keep-alive, TCP_NODELAY, listen backlog 1024) in a process of its own, so
it does not share a GIL with the client. It answers 201 with a Twilio message
resource and counts what it received: ``delivered/s`` is messages / (last - first
arrival), i.e. the rate at which messages reached the stand-in; ``end-to-end/s``
divides by the whole run (``Runner.run``: planning, booking, enqueueing, following
the ledger, the final count) instead; ``1st message after`` is the time from the
start of the run to the first message; ``stand-in CPU`` is the stand-in process's
CPU time over the delivery span (80-90 % at the ceiling, which it nearly limits);
``CPU ms/reminder`` is the CPU time of the client, or of the run (runner from the
start of ``Runner.run``) plus the workers' processes during the run, per reminder
(the stand-in's not included).
Every configuration must deliver each reminder exactly once (checked per ``To``).

Peak RSS: the client or runner process (``ru_maxrss``) and, for Celery, the sum
of the worker's processes' ``VmHWM`` (main + pool).

    .venv/bin/python bench/delivery.py                     # 5,000 reminders, 1,000 for task_batch 1, 3 rounds
    .venv/bin/python bench/delivery.py --reminders 2000 --batch1-reminders 500
    .venv/bin/python bench/delivery.py --only ceiling in-process

Redis: ``--redis-url`` (default ``redis://127.0.0.1:6379/0``); the Celery runs claim
an empty database among 1-15 (database 12 preferred) with the tests' claim key and
flush it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "bench-auth-token"
FROM_NUMBER = "+14155550999"
ZONE = "Asia/Shanghai"
SAMPLE_BODY = ("【信用钱包】王伟您好，您的借款已逾期5天，待还金额¥1,234.50，请于2026年12月1日前还至官方还款账户"
               "****7890。如已还款请忽略。客服及核实短信真伪请致电400-820-1234。回复TD退订")
"""A rendered ``gentle`` SMS: the ceiling client posts bodies of the same size and script."""


def phone(n: int) -> str:
    return f"+86138{n:08d}"


# --------------------------------------------------------------------------------------------
# the stand-in (its own process)


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.per_to: dict[str, int] = {}


_STATS = _Stats()
_EXPECTED_AUTH = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
_MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


async def _handle(request: Any) -> Any:
    """One request to the stand-in: a Twilio create, ``POST /reset`` or ``GET /stats``."""
    from aiohttp import web

    if request.method == "GET":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response({"count": _STATS.count, "first": _STATS.first, "last": _STATS.last,
                                  "distinct": len(_STATS.per_to), "max_per_to": max(_STATS.per_to.values(), default=0),
                                  "cpu": usage.ru_utime + usage.ru_stime})
    form = parse_qs((await request.read()).decode("utf-8"))
    if request.path == "/reset":
        _STATS.reset()
        return web.json_response({})
    if request.path != _MESSAGES_PATH or request.headers.get("Authorization") != _EXPECTED_AUTH:
        return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
    to, sender = form.get("To", [""])[0], form.get("From", [""])[0]
    if not to or not form.get("Body"):
        return web.json_response({"code": 21604, "message": "A 'To' phone number is required.", "status": 400},
                                 status=400)
    now = time.time()
    _STATS.count += 1
    _STATS.first = _STATS.first or now
    _STATS.last = now
    _STATS.per_to[to] = _STATS.per_to.get(to, 0) + 1
    sid = "SM" + secrets.token_hex(16)
    stamp = format_datetime(datetime.now(UTC)).replace("GMT", "+0000")
    return web.json_response(
        {"account_sid": ACCOUNT_SID, "api_version": "2010-04-01", "body": form["Body"][0], "date_created": stamp,
         "date_sent": None, "date_updated": stamp, "direction": "outbound-api", "error_code": None,
         "error_message": None, "from": sender, "num_media": "0", "num_segments": "1", "price": None,
         "price_unit": "USD", "sid": sid, "status": "queued", "to": to,
         "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json"}, status=201)


def child_standin() -> None:
    """aiohttp's low-level server on one event loop: cheap per request, no GIL contention between threads."""
    from aiohttp import web

    async def serve() -> None:
        server = web.Server(_handle, access_log=None)
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(server, "127.0.0.1", 0, backlog=1024)
        print(listener.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


class Standin:
    """The stand-in process: start, reset between configurations, read its counters."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--child-standin"], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None)
            return dict(json.loads(connection.getresponse().read()))
        finally:
            connection.close()

    def reset(self) -> None:
        self._call("POST", "/reset")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


# --------------------------------------------------------------------------------------------
# the ceiling client (its own process)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_ceiling(url: str, count: int, concurrency: int, loop: str) -> None:
    import aiohttp

    async def go() -> float:
        auth = {"Authorization": _EXPECTED_AUTH}
        target = f"{url}{_MESSAGES_PATH}"
        queue = iter(range(count))
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def sender() -> None:
                for n in queue:
                    form = {"To": phone(n), "From": FROM_NUMBER, "Body": SAMPLE_BODY}
                    async with session.post(target, data=form, headers=auth) as response:
                        payload = json.loads(await response.text())
                        assert response.status == 201 and payload["sid"], payload

            started = time.perf_counter()
            await asyncio.gather(*(sender() for _ in range(concurrency)))
            return time.perf_counter() - started

    from dispatcher.pipeline.loops import loop_factory

    started_at, cpu_before = time.time(), _cpu()
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        seconds = runner.run(go())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "started_at": started_at, "cpu": _cpu() - cpu_before,
                      "peak_rss_mb": usage.ru_maxrss / 1024}))


# --------------------------------------------------------------------------------------------
# a run (its own process)


def child_run() -> None:
    from dispatcher.app import build_app
    from dispatcher.pipeline.run import Runner
    from dispatcher.settings import Settings

    app = build_app(Settings.from_env())
    started_at, cpu_before = time.time(), _cpu()
    started = time.perf_counter()
    report = Runner(app).run("bench", app.clock())
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "started_at": started_at, "status": report.status,
                      "cpu": _cpu() - cpu_before,
                      "peak_rss_mb": usage.ru_maxrss / 1024, **report.counts.as_dict()}))


def schedule_text(task_batch: int) -> str:
    """The shipped schedules.yaml on profile ``none``, one SMS step, no rate limits, the given ``task_batch``."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load((ROOT / "schedules.yaml").read_text("utf-8"))
    data["profile"] = "none"
    compliance = {k: v for k, v in (data.get("compliance") or {}).items() if k in ("blocklist", "retention")}
    data["compliance"] = compliance
    if not compliance:
        del data["compliance"]
    data["ladder"] = [{"step": "notice", "days_overdue": "1-", "channels": ["sms"], "template": "gentle"}]
    data["delivery"] = {"task_batch": task_batch}
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def seed(database_url: str, count: int) -> None:
    from sqlalchemy import insert

    from dispatcher.demo import demo_accounts, demo_metadata
    from dispatcher.ledger.database import create_ledger_engine, upgrade

    engine = create_ledger_engine(database_url)
    upgrade(engine)
    demo_metadata.create_all(engine)
    due = datetime.now(ZoneInfo(ZONE)).date() - timedelta(days=5)
    rows = [{"account_id": f"B{n:07d}", "name": "王伟", "phone": phone(n), "email": None, "push_token": None,
             "locale": "zh-CN", "timezone": ZONE, "currency": "CNY", "overdue_amount": f"{1000 + n % 997}.50",
             "due_date": due, "deadline": None, "repayment_account": "6222 0212 3456 7890", "do_not_contact": None,
             "dispute": None, "promise_to_pay_until": None, "opt_out_channels": None} for n in range(count)]
    with engine.begin() as connection:
        connection.execute(insert(demo_accounts), rows)
    engine.dispose()


# --------------------------------------------------------------------------------------------
# Redis database for the Celery runs


def claimed_database(redis_url: str) -> contextlib.AbstractContextManager[str]:
    """An empty Redis database claimed the tests' way (tests/redisdb.py), database 12 preferred."""
    sys.path.insert(0, str(ROOT / "tests"))
    from redisdb import claimed_database as claim

    return claim(redis_url, preferred=12)


# --------------------------------------------------------------------------------------------
# the driver


@dataclass
class Result:
    name: str
    reminders: int
    rate: float
    end_to_end: float
    peak_rss_mb: float
    first_after: float
    standin_cpu: float
    cpu_ms: float
    workers_cpu_ms: float = 0.0
    workers_rss_mb: float = 0.0
    low: float = 0.0
    high: float = 0.0


def _group_pids(pgid: int) -> list[Path]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                found.append(entry)
    return found


def _group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of group ``pgid``."""
    total = 0
    for entry in _group_pids(pgid):
        with contextlib.suppress(OSError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def _group_hwm_mb(pgid: int) -> float:
    """Sum of VmHWM (peak RSS) of the live processes of group ``pgid``."""
    total = 0
    for entry in _group_pids(pgid):
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def _env(workdir: Path, standin: Standin, concurrency: int, broker: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_", "CELERY_"))}
    env.update(DISPATCHER_DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}",
               DISPATCHER_OUTBOX_DIR=str(workdir / "outbox"), DISPATCHER_SCHEDULES=str(workdir / "schedules.yaml"),
               DISPATCHER_LOG_LEVEL="WARNING", DISPATCHER_CONCURRENCY=str(concurrency),
               TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM_NUMBER,
               TWILIO_API_BASE_URL=standin.url, TWILIO_TIMEOUT="10")
    if broker:
        env["DISPATCHER_BROKER_URL"] = broker
    return env


def _json_out(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _check(standin: Standin, reminders: int, name: str, cpu_before: float) -> dict[str, Any]:
    stats = standin.stats()
    span = stats["last"] - stats["first"]
    stats["busy"] = (stats["cpu"] - cpu_before) / span if span > 0 else 0.0
    if (stats["count"], stats["distinct"], stats["max_per_to"]) != (reminders, reminders, 1):
        raise SystemExit(f"{name}: the stand-in received {stats} for {reminders} reminders")
    return stats


def _rate(stats: dict[str, Any]) -> float:
    span = stats["last"] - stats["first"]
    return float(stats["count"] / span) if span > 0 else float("inf")


def measure_ceiling(standin: Standin, reminders: int, concurrency: int, loop: str) -> Result:
    standin.reset()
    cpu_before = standin.stats()["cpu"]
    out = _json_out([sys.executable, __file__, "--child-ceiling", standin.url, str(reminders), str(concurrency),
                     loop], dict(os.environ), ROOT, 600)
    stats = _check(standin, reminders, "ceiling", cpu_before)
    return Result(f"ceiling: bare aiohttp on {loop}", reminders, _rate(stats), reminders / out["seconds"],
                  out["peak_rss_mb"], stats["first"] - out["started_at"], stats["busy"], 1000 * out["cpu"] / reminders)


def measure_run(standin: Standin, reminders: int, concurrency: int, *, task_batch: int = 100,
                workers: int = 0, redis_url: str = "") -> Result:
    name = f"celery, {workers} worker process{'es' if workers > 1 else ''}, task_batch {task_batch}" if workers \
        else "in-process"
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-delivery-"))
    try:
        shutil.copytree(ROOT / "templates", workdir / "templates")
        (workdir / "schedules.yaml").write_text(schedule_text(task_batch), "utf-8")
        seed(f"sqlite:///{workdir / 'ledger.db'}", reminders)
        standin.reset()
        cpu_before = standin.stats()["cpu"]
        if not workers:
            out = _json_out([sys.executable, __file__, "--child-run"],
                            _env(workdir, standin, concurrency, None), workdir, 900)
            rss_workers = 0.0
        else:
            with claimed_database(redis_url) as broker:
                env = _env(workdir, standin, concurrency, broker)
                out, rss_workers = _celery_run(workdir, env, workers)
        if out["status"] != "completed" or out["sent"] != reminders:
            raise SystemExit(f"{name}: run {out}")
        stats = _check(standin, reminders, name, cpu_before)
        return Result(name, reminders, _rate(stats), reminders / out["seconds"], out["peak_rss_mb"],
                      stats["first"] - out["started_at"], stats["busy"], 1000 * out["cpu"] / reminders,
                      1000 * out.get("workers_cpu", 0.0) / reminders, rss_workers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def start_workers(workdir: Path, env: dict[str, str], count: int, prefix: str) -> list[subprocess.Popen[bytes]]:
    """``count`` Celery workers of one pool process each (as that many machines would run them), logging to
    ``workdir/<prefix>-N.log``; returns once each pool process has wired its delivery."""
    started: list[subprocess.Popen[bytes]] = []
    for number in range(count):
        with (workdir / f"{prefix}-{number}.log").open("wb") as out:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "--log-level", "INFO", "worker", "--pool", "prefork",
                 "--concurrency", "1", "--", "-n", f"{prefix}-{number}-{os.getpid()}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat"], env=env, cwd=workdir, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 90
    for number, worker in enumerate(started):
        log = workdir / f"{prefix}-{number}.log"
        while not _worker_ready(log, 1):
            if worker.poll() is not None or time.monotonic() > deadline:
                kill_workers(started)
                raise SystemExit(f"a Celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
    return started


def kill_workers(started: list[subprocess.Popen[bytes]]) -> None:
    """kill -9 every process of each worker's group."""
    for worker in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def _worker_ready(log: Path, workers: int) -> bool:
    """The consumer is ready and every pool process has wired its delivery."""
    text = log.read_bytes()
    return b" ready." in text and text.count(b"delivery ready in pid") >= workers


def _celery_run(workdir: Path, env: dict[str, str], workers: int) -> tuple[dict[str, Any], float]:
    log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "--log-level", "INFO", "worker", "--pool", "prefork", "--concurrency",
         str(workers), "--", "-n", f"bench-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _worker_ready(workdir / "worker.log", workers):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{(workdir / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.1)
        cpu_before = _group_cpu(worker.pid)
        out = _json_out([sys.executable, __file__, "--child-run"], env, workdir, 900)
        out["workers_cpu"] = _group_cpu(worker.pid) - cpu_before
        return out, _group_hwm_mb(worker.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reminders", type=int, default=5000, help="reminders per configuration (default 5000)")
    parser.add_argument("--batch1-reminders", type=int, default=1000,
                        help="reminders for task_batch 1, which is slow (default 1000)")
    parser.add_argument("--concurrency", type=int, default=32, help="DISPATCHER_CONCURRENCY and the ceiling's")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is shown (3)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="ceiling ceiling-asyncio in-process c1-b100 c2-b1 c2-b100 c2-b500 (default: all)")
    parser.add_argument("--child-standin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-ceiling", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_standin:
        child_standin()
        return 0
    if args.child_ceiling:
        child_ceiling(args.child_ceiling[0], int(args.child_ceiling[1]), int(args.child_ceiling[2]),
                      args.child_ceiling[3])
        return 0
    if args.child_run:
        child_run()
        return 0

    n, c = args.reminders, args.concurrency
    plan = {
        "ceiling": lambda s: measure_ceiling(s, n, c, "uvloop"),
        "ceiling-asyncio": lambda s: measure_ceiling(s, n, c, "asyncio"),
        "in-process": lambda s: measure_run(s, n, c),
        "c1-b100": lambda s: measure_run(s, n, c, task_batch=100, workers=1, redis_url=args.redis_url),
        "c2-b100": lambda s: measure_run(s, n, c, task_batch=100, workers=2, redis_url=args.redis_url),
        "c2-b1": lambda s: measure_run(s, args.batch1_reminders, c, task_batch=1, workers=2,
                                       redis_url=args.redis_url),
        "c2-b500": lambda s: measure_run(s, n, c, task_batch=500, workers=2, redis_url=args.redis_url),
    }
    chosen = args.only or list(plan)
    print(f"{os.cpu_count()} CPUs, DISPATCHER_CONCURRENCY={c}, {n} reminders per configuration "
          f"({args.batch1_reminders} for task_batch 1); SQLite ledger; stand-in in its own process", flush=True)
    results: dict[str, Result] = {}
    spread: dict[str, list[Result]] = {}
    standin = Standin()
    try:
        for _ in range(args.repeat):  # round-robin: a burst of noise on the machine hits every configuration
            for key in chosen:
                r = plan[key](standin)
                print(f"  measured {r.name}: {r.rate:,.0f}/s, end-to-end {r.end_to_end:,.0f}/s", file=sys.stderr,
                      flush=True)
                spread.setdefault(key, []).append(r)
    finally:
        standin.close()
    for key, runs in spread.items():
        ordered = sorted(runs, key=lambda r: r.rate)
        results[key] = ordered[len(ordered) // 2]
        results[key].low, results[key].high = ordered[0].rate, ordered[-1].rate
    _print_table(results)
    return 0


def _print_table(results: dict[str, Result]) -> None:
    header = ["configuration", "reminders", "delivered/s", "(min-max)", "end-to-end/s", "1st message after",
              "stand-in CPU", "CPU ms/reminder: client or runner + workers", "peak RSS runner/client",
              "peak RSS workers"]
    rows = [[r.name, f"{r.reminders:,}", f"{r.rate:,.0f}", f"{r.low:,.0f}-{r.high:,.0f}", f"{r.end_to_end:,.0f}",
             f"{r.first_after:.2f} s",
             f"{r.standin_cpu * 100:.0f} %",
             f"{r.cpu_ms:.2f} + {r.workers_cpu_ms:.2f}" if r.workers_cpu_ms else f"{r.cpu_ms:.2f}",
             f"{r.peak_rss_mb:,.0f} MB",
             f"{r.workers_rss_mb:,.0f} MB" if r.workers_rss_mb else "-"] for r in results.values()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    print("| " + " | ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                                  strict=True)))
          + " |")
    print("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                   strict=True)))
              + " |")
    print()

    def ratio(label: str, top: str, bottom: str, target: float, unit: str) -> None:
        if top in results and bottom in results:
            value = results[top].rate / results[bottom].rate
            e2e = results[top].end_to_end / results[bottom].end_to_end
            shown = f"{value * 100:.0f} %" if unit == "%" else f"{value:.1f}x"
            shown_e2e = f"{e2e * 100:.0f} %" if unit == "%" else f"{e2e:.1f}x"
            goal = f"{target * 100:.0f} %" if unit == "%" else f"{target:.0f}x"
            verdict = "met" if value >= target else "MISSED"
            print(f"{label:<44} {shown:>7} (end-to-end {shown_e2e}; target >= {goal}: {verdict})")

    ratio("in-process / ceiling (uvloop client)", "in-process", "ceiling", 0.5, "%")
    ratio("in-process / ceiling (asyncio client)", "in-process", "ceiling-asyncio", 0.5, "%")
    ratio("celery (2 workers, batch 100) / in-process", "c2-b100", "in-process", 0.7, "%")
    ratio("batch 100 / batch 1 (2 workers)", "c2-b100", "c2-b1", 10, "x")


if __name__ == "__main__":
    sys.exit(main())
