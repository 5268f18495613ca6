"""Helpers of the fault tests (tests/test_faults.py): a faulty Twilio stand-in, real processes, ledger checks.

A :class:`Rig` is one working directory (schedules.yaml with a one-step SMS ladder on
profile ``none``, the shipped templates, a SQLite ledger in WAL mode that every
process writes), a Redis broker database, a Twilio stand-in on loopback and the
processes started against them: Celery workers (``python -m dispatcher worker``),
``dispatcher run --once`` and daemons. Every process runs in its own process group
so that a test can kill -9 a worker with its pool children, and the rig kills every
group it started when it is closed.

:class:`FaultyTwilio` is the Twilio stand-in with scripted faults per request: a
429 with ``Retry-After``, a 503, a request held past the client's timeout and then
dropped unprocessed (``lost``: the honest "timeout before Twilio took it"), or a
request processed and answered too late (``late``: Twilio took it, the client
timed out anyway).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import redis
from sqlalchemy import Engine, insert, select
from standins import Recorded, Reply, _Handler
from standins.twilio_server import Failure, TwilioStandin

from dispatcher.demo import demo_accounts, demo_metadata
from dispatcher.ledger.database import create_ledger_engine, upgrade
from dispatcher.ledger.tables import attempts, run_ranges, runs

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI") == "true"
FROM_NUMBER = "+14155550999"
ZONE = "Asia/Shanghai"
SETTLED = ("sent", "delivered")
UNSETTLED = ("planned", "claimed", "sending", "unknown")
PROVIDER_ENV_PREFIXES = ("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_", "CELERY_")


# --------------------------------------------------------------------------------------------
# the faulty stand-in


@dataclass(frozen=True)
class Fault:
    """What the stand-in does with one create request instead of answering 201 at once.

    ``status``: answer this error (``retry_after`` adds the header). ``hold``: wait
    this many seconds first. ``process``: create the message anyway (a late answer).
    With ``status`` 0 and ``process`` False the request is dropped without an answer.
    """

    kind: str
    status: int = 0
    code: int = 0
    retry_after: int | None = None
    hold: float = 0.0
    process: bool = False


def too_many_requests(retry_after: int = 1) -> Fault:
    return Fault("429", 429, 20429, retry_after=retry_after)


def unavailable() -> Fault:
    return Fault("503", 503, 20500)


def lost(hold: float) -> Fault:
    """Held past the client's timeout and dropped before Twilio processed it: no message exists."""
    return Fault("timeout-lost", hold=hold)


def late(hold: float) -> Fault:
    """Processed (the message exists and will be delivered), answered after the client's timeout."""
    return Fault("timeout-late", hold=hold, process=True)


class _FaultyHandler(_Handler):
    """The stand-ins' handler with a per-request fault, hold and drop; ``delay`` slows creates only."""

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            self.close_connection = True  # the client went away (killed worker, timeout): nothing to answer

    def _dispatch(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        request = Recorded(self.command, url.path, parse_qs(url.query), dict(self.headers.items()), body)
        standin = self.server.standin
        assert isinstance(standin, FaultyTwilio)
        reply: Reply | None
        with standin.lock:
            standin.requests.append(request)
            fault = standin.fault_for(request)
            if fault is None or fault.process:
                reply = standin.respond(request)
            elif fault.status:
                reply = Failure(fault.status, fault.code, retry_after=fault.retry_after).reply()
            else:
                reply = None
        hold = fault.hold if fault is not None and fault.hold else standin.delay if self.command == "POST" else 0.0
        if hold and standin.stopped.wait(hold):
            return
        if reply is None:
            self.close_connection = True  # dropped: no answer at all
            return
        self._write(reply)


class FaultyTwilio(TwilioStandin):
    """:class:`TwilioStandin` whose creates may fail by plan; ``delay`` slows every create's answer.

    ``plan(n, to, tries_to)`` is asked (under the lock) for every create: ``n`` counts
    creates, ``tries_to`` counts earlier creates to the same number. It returns a
    :class:`Fault` or None (answer normally).
    """

    def __init__(self, plan: Callable[[int, str, int], Fault | None] | None = None) -> None:
        super().__init__()
        self._server.RequestHandlerClass = _FaultyHandler
        self._server.socket.listen(1024)  # the stdlib's backlog of 5 drops SYNs when 64 clients connect at once
        self.plan = plan
        self.faults: Counter[str] = Counter()
        self.created_at: dict[str, float] = {}
        """SID → time.time() at which the stand-in created the message."""
        self._creates = 0
        self._tries: Counter[str] = Counter()

    def fault_for(self, request: Recorded) -> Fault | None:
        if request.method != "POST" or self.plan is None:
            return None
        to = request.form.get("To", "")
        n, earlier = self._creates, self._tries[to]
        self._creates += 1
        self._tries[to] += 1
        fault = self.plan(n, to, earlier)
        if fault is not None:
            self.faults[fault.kind] += 1
        return fault

    def _create(self, request: Recorded) -> Reply:
        reply = super()._create(request)
        if reply.status == 201:
            self.created_at[str(reply.body["sid"])] = time.time()
        return reply

    def count(self) -> int:
        """Messages the stand-in created so far (Twilio took them)."""
        with self.lock:
            return len(self.messages)


def first_try_faults(rate: float, faults: Iterable[Fault], seed: int = 7) -> Callable[[int, str, int], Fault | None]:
    """A plan: the first create to a number fails with probability ``rate`` (kinds in turn); later ones pass.

    Retries therefore succeed and every reminder can end delivered within
    ``DISPATCHER_MAX_TRIES`` whatever the random draw.
    """
    kinds = list(faults)
    rng = random.Random(seed)
    turn = [0]

    def plan(_n: int, _to: str, earlier: int) -> Fault | None:
        if earlier or rng.random() >= rate:
            return None
        fault = kinds[turn[0] % len(kinds)]
        turn[0] += 1
        return fault

    return plan


# --------------------------------------------------------------------------------------------
# processes


class Proc:
    """A process started in its own process group (session), its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("ab")
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the whole group: the main process and every child (prefork pool)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """kill -9 the whole group and reap the leader."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._log.close()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the group, then SIGKILL after ``timeout``; returns the exit code."""
        self.signal_group(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def group(self) -> list[int]:
        """Live (not zombie) processes of the group, read from /proc."""
        return group_members(self.popen.pid)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text("utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def group_members(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private, disk-less redis-server on ``port`` that a test may stop and start again."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]
        self.proc = Proc(f"redis-{self.port}", argv, dict(os.environ), self.workdir,
                         self.workdir / f"redis-{self.port}.log")
        wait_for(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Shut the server down: everything it held (queued tasks, unacked tasks, rate keys) is gone."""
        if self.proc is not None:
            self.proc.stop(5)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


# --------------------------------------------------------------------------------------------
# the rig


def schedule_text(task_batch: int, runs_yaml: list[dict[str, str]], source_batch: int | None = None) -> str:
    """The shipped schedules.yaml on profile ``none`` with one SMS-only step and ``delivery: {task_batch}``
    (and ``source: {batch_size: source_batch}`` when given).

    Read with ruamel (comments kept) and overridden key by key, so that edits of the
    shipped file do not break the tests: no contact window, caps or holidays (only the
    blocklist and retention of ``compliance`` stay), the given ``runs``, no rate limits.
    """
    from io import StringIO

    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load((REPO / "schedules.yaml").read_text("utf-8"))
    data["profile"] = "none"
    compliance = {k: v for k, v in (data.get("compliance") or {}).items() if k in ("blocklist", "retention")}
    if compliance:
        data["compliance"] = compliance
    else:
        data.pop("compliance", None)
    data["runs"] = runs_yaml
    data["ladder"] = [{"step": "notice", "days_overdue": "1-", "channels": ["sms"], "template": "gentle"}]
    data["delivery"] = {"task_batch": task_batch}
    if source_batch is not None:
        data["source"]["batch_size"] = source_batch
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def phone(n: int) -> str:
    return f"+86138{n:08d}"


class DuplicateSends(AssertionError):
    """Every reminder was delivered and settled, but some reached the provider more than once."""


@dataclass
class LedgerReport:
    """What the ledger and the stand-in say after a run: the acceptance numbers of every fault test.

    ``lost``: seeded reminders without a sent/delivered attempt or without a message at
    the stand-in. ``duplicated_at_provider``: numbers (``To``) the stand-in created more
    than one message for; ``duplicated_bodies``: (To, Body) pairs received more than
    once (the same text twice). ``duplicated_in_ledger``: reminders with more
    than one sent/delivered attempt. ``unsettled``: reminders with an attempt still
    planned, sending or unknown. ``sid_mismatch``: SIDs in only one of ledger and stand-in.
    """

    reminders: int
    received: int
    lost: list[str]
    duplicated_at_provider: dict[str, int]
    duplicated_bodies: int
    duplicated_in_ledger: dict[str, int]
    unsettled: dict[str, str]
    statuses: Counter[str]
    sid_mismatch: int
    duplicate_copies: list[list[float]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        return (f"reminders={self.reminders} received={self.received} lost={len(self.lost)} "
                f"duplicated(provider: To)={len(self.duplicated_at_provider)} "
                f"duplicated(provider: To+Body)={self.duplicated_bodies} "
                f"duplicated(ledger)={len(self.duplicated_in_ledger)} unsettled={len(self.unsettled)} "
                f"sid_mismatch={self.sid_mismatch} statuses={dict(self.statuses)} faults={dict(self.faults)}")

    def copies_after(self, moment: float) -> int:
        """Duplicated numbers whose every copy the stand-in created after ``moment`` (time.time())."""
        return sum(1 for times in self.duplicate_copies if min(times) >= moment)

    def check(self) -> None:
        """0 lost, 0 unsettled; then 0 duplicated, at the stand-in or in the ledger (else :class:`DuplicateSends`);
        then every SID of the ledger is one of the stand-in's and the other way round."""
        assert not self.lost, f"{len(self.lost)} reminder(s) lost, e.g. {self.lost[:5]}: {self.summary()}"
        assert not self.unsettled, (f"{len(self.unsettled)} attempt(s) left unsettled, e.g. "
                                    f"{list(self.unsettled.items())[:5]}: {self.summary()}")
        if self.duplicated_at_provider or self.duplicated_bodies or self.duplicated_in_ledger:
            raise DuplicateSends(
                f"{len(self.duplicated_at_provider)} reminder(s) reached the stand-in more than once (e.g. "
                f"{list(self.duplicated_at_provider.items())[:3]}), {len(self.duplicated_in_ledger)} have more than "
                f"one sent attempt in the ledger: {self.summary()}")
        assert self.received == self.reminders, self.summary()
        assert self.sid_mismatch == 0, f"ledger SIDs differ from the stand-in's: {self.summary()}"


class Rig:
    """One working directory, ledger, broker database and stand-in, and the processes started on them."""

    def __init__(self, tmp: Path, broker_url: str, twilio: FaultyTwilio, *, task_batch: int = 100,
                 runs_yaml: list[dict[str, str]] | None = None, source_batch: int | None = None,
                 **env: str) -> None:
        self.tmp = tmp
        self.broker_url = broker_url
        self.twilio = twilio
        self.procs: list[Proc] = []
        self.phones: dict[str, str] = {}
        shutil.copytree(REPO / "templates", tmp / "templates")
        runs_yaml = runs_yaml if runs_yaml is not None else [{"name": "minutely", "cron": "* * * * *"}]
        (tmp / "schedules.yaml").write_text(schedule_text(task_batch, runs_yaml, source_batch), "utf-8")
        self.db_url = f"sqlite:///{tmp / 'ledger.db'}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(PROVIDER_ENV_PREFIXES)}
        base.pop("TWILIO_REGION", None)
        base.pop("TWILIO_EDGE", None)
        self.env = {
            **base,
            "PYTHONUNBUFFERED": "1",
            "DISPATCHER_SCHEDULES": str(tmp / "schedules.yaml"),
            "DISPATCHER_DATABASE_URL": self.db_url,
            "DISPATCHER_OUTBOX_DIR": str(tmp / "outbox"),
            "DISPATCHER_BROKER_URL": broker_url,
            "DISPATCHER_VISIBILITY_TIMEOUT": "10",
            "DISPATCHER_RECONCILE_AFTER": "5",
            "DISPATCHER_RUN_LEASE": "5",
            "DISPATCHER_RUN_TIMEOUT": "150",
            "DISPATCHER_CONCURRENCY": "16",
            "DISPATCHER_MAX_TRIES": "3",
            "DISPATCHER_LOG_LEVEL": "INFO",
            "TWILIO_ACCOUNT_SID": twilio.account_sid,
            "TWILIO_AUTH_TOKEN": twilio.auth_token,
            "TWILIO_FROM_NUMBER": FROM_NUMBER,
            "TWILIO_API_BASE_URL": twilio.url,
            "TWILIO_TIMEOUT": "5",
            **env,
        }
        self.engine: Engine = create_ledger_engine(self.db_url)
        upgrade(self.engine)  # once, before several processes open the file
        demo_metadata.create_all(self.engine)

    # set-up ---------------------------------------------------------------------------------
    def seed(self, count: int, days_overdue: int = 5) -> None:
        """``count`` zh-CN borrowers in Shanghai with a phone only: one SMS reminder each."""
        today = datetime.now(ZoneInfo(ZONE)).date()
        rows = [self._row(n, today - timedelta(days=days_overdue)) for n in range(count)]
        with self.engine.begin() as connection:
            connection.execute(insert(demo_accounts), rows)
        self.phones = {r["account_id"]: r["phone"] for r in rows}

    @staticmethod
    def _row(n: int, due: date) -> dict[str, Any]:
        return {
            "account_id": f"F{n:06d}", "name": "王伟", "phone": phone(n), "email": None, "push_token": None,
            "locale": "zh-CN", "timezone": ZONE, "currency": "CNY", "overdue_amount": f"{1000 + n % 997}.50",
            "due_date": due, "deadline": None, "repayment_account": "6222 0212 3456 7890",
            "do_not_contact": None, "dispute": None, "promise_to_pay_until": None, "opt_out_channels": None,
        }

    # processes ------------------------------------------------------------------------------
    def start(self, name: str, args: list[str], **env: str) -> Proc:
        argv = [sys.executable, "-m", "dispatcher", *args]
        proc = Proc(name, argv, {**self.env, **env}, self.tmp, self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc

    def worker(self, name: str, concurrency: int = 2, *, ready: bool = True, **env: str) -> Proc:
        """A prefork worker with ``concurrency`` pool processes; waits until it consumes."""
        proc = self.start(name, ["worker", "--pool", "prefork", "--concurrency", str(concurrency), "--",
                                 "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
                                 "--without-heartbeat"], **env)
        if ready:
            wait_for(lambda: " ready." in proc.output() or not proc.alive(), 30, f"worker {name} to be ready",
                     interval=0.1)
            assert proc.alive(), f"worker {name} died:\n{proc.tail()}"
        return proc

    def run_once(self, name: str = "runner", **env: str) -> Proc:
        return self.start(name, ["run", "--once"], **env)

    def daemon(self, name: str, **env: str) -> Proc:
        return self.start(name, ["run"], DISPATCHER_DAEMON_ID=name, **env)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.engine.dispose()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.tail(60)}" for p in self.procs)

    # the ledger -----------------------------------------------------------------------------
    def attempts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(select(attempts).order_by(attempts.c.id)).mappings()]

    def runs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(select(runs).order_by(runs.c.id)).mappings()]

    def ranges(self) -> list[dict[str, Any]]:
        """The key ranges of every run handed to the workers (``run_ranges``)."""
        query = select(run_ranges).order_by(run_ranges.c.run_id, run_ranges.c.number)
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    def report(self) -> LedgerReport:
        """Every seeded reminder against the stand-in's messages and the ledger's attempts."""
        rows = [a for a in self.attempts() if a["try_no"] >= 1]
        by_account: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_account.setdefault(row["account_id"], []).append(row)
        with self.twilio.lock:
            messages = list(self.twilio.messages)
            created_at = dict(self.twilio.created_at)
        received = Counter((m["to"], m["body"]) for m in messages)
        per_phone = Counter(m["to"] for m in messages)
        lost: list[str] = []
        dup_ledger: dict[str, int] = {}
        unsettled: dict[str, str] = {}
        for account_id, number in self.phones.items():
            tries = by_account.get(account_id, [])
            sent = [t for t in tries if t["status"] in SETTLED]
            if len(sent) > 1:
                dup_ledger[account_id] = len(sent)
            for t in tries:
                if t["status"] in UNSETTLED:
                    unsettled[account_id] = str(t["status"])
            if not sent or per_phone[number] == 0:
                lost.append(account_id)
        dup_provider = {to: n for to, n in per_phone.items() if n > 1}
        dup_bodies = sum(1 for n in received.values() if n > 1)
        copies = [[created_at.get(str(m["sid"]), 0.0) for m in messages if m["to"] == to]
                  for to, n in per_phone.items() if n > 1]
        ledger_sids = {str(r["provider_message_id"]) for r in rows if r["status"] in SETTLED}
        return LedgerReport(
            reminders=len(self.phones), received=len(messages), lost=lost,
            duplicated_at_provider=dup_provider, duplicated_bodies=dup_bodies, duplicated_in_ledger=dup_ledger,
            unsettled=unsettled,
            statuses=Counter(str(r["status"]) for r in rows),
            sid_mismatch=len(ledger_sids ^ {str(m["sid"]) for m in messages}),
            duplicate_copies=copies, faults=Counter(self.twilio.faults),
        )
