"""Stopping delivery mid-run, as processes: kill -9, SIGTERM and SIGINT of ``dispatcher run --once``, and a broken
template saved under a running daemon. Nothing may be lost and nothing sent twice.

Every test works in the ``workdir`` fixture's directory (its ledger: SQLite or the session's PostgreSQL schema,
given to the processes through ``DISPATCHER_DATABASE_URL``) on a copy of the shipped schedules.yaml put on profile
``none`` with only the blocklist and retention of ``compliance`` kept (no contact window, caps or holidays: the real
clock never defers anything), and runs real processes: ``python -m dispatcher …`` in a process group of its own,
killed at teardown. The channels are the outbox's (``outbox/sms.jsonl``, ``outbox/push.jsonl``,
``outbox/email/<attempt:08d>-<account>.eml``), which is the provider here: what it holds was sent.

After the follow-up run(s) each test demands of the outbox and the ledger:

* 0 duplicated: no attempt id twice in the outbox, no (reminder, channel) there under two attempt ids, none
  ``sent`` twice in the ledger;
* 0 lost: the ``sent`` attempts of the ledger are exactly the outbox's messages (with the provider id
  ``outbox-<kind>-<attempt>``), nothing is left ``planned``, ``claimed`` or ``sending``, and the sent
  (reminder, channel) pairs are exactly those a dry ``dispatcher plan --format json`` said were due before the first
  run (unless a borrower's local date changed in between: then the plan's keys are not the runs' keys);
* at most ``DISPATCHER_CONCURRENCY`` (32) attempts ``unknown``.

A signal must also stop promptly: no more than the messages in flight may follow it. That check fails today (see
its comment in the signal test).

The daemon test's borrowers are checked per account instead (each gets its SMS and its push once).

Runtime on a 2-core machine (SQLite): kill -9 ~40 s (20,000 borrowers, ~15,700 messages), SIGTERM ~28 s (6,000
borrowers, ~11,300 messages), SIGINT ~14 s (2,000), the daemon test waits for two per-minute cron fires after its
start (70-130 s, ~100 s on average): ~3 minutes for the module; about a third more on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from editing import line_col, replace_file
from rows import demo_row, seed_rows
from ruamel.yaml import YAML
from sqlalchemy import Engine, create_engine, func, select

from dispatcher.compose.layout import TemplateSet
from dispatcher.ledger.group_commit import LAG_LIMIT
from dispatcher.ledger.tables import attempts, handoffs, runs
from dispatcher.pipeline.claim_ahead import AHEAD_PER_PLACE
from dispatcher.schedule.loader import content_version

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
IN_FLIGHT = 32
"""``DISPATCHER_CONCURRENCY``'s default: attempts claimed or in flight at once, the most a crash may cut off."""
UNSETTLED = ("planned", "claimed", "sending")
FOREIGN_ENV = ("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_", "CELERY_", "EMAIL_FROM")
"""Variables of the calling environment not passed on (the workdir's own DISPATCHER_* are passed explicitly)."""
WORKDIR_ENV = ("DISPATCHER_DATABASE_URL", "DISPATCHER_OUTBOX_DIR", "DISPATCHER_SCHEDULES")
CLI_TIMEOUT = 60.0
RUN_TIMEOUT = 150.0
STOP_TIMEOUT = 30.0

SUMMARY = re.compile(
    r"^run (?P<name>\S+) #(?P<run_id>\d+): (?P<status>\w+); accounts=(?P<accounts>\d+), rejected=(?P<rejected>\d+), "
    r"planned=(?P<planned>\d+): sent=(?P<sent>\d+), failed=(?P<failed>\d+), suppressed=(?P<suppressed>\d+), "
    r"deferred=(?P<deferred>\d+), unknown=(?P<unknown>\d+), pending=(?P<pending>\d+)", re.MULTILINE)


# --------------------------------------------------------------------------------------------------------------
# the working directory and its processes


def schedule_text(runs_yaml: list[dict[str, str]] | None = None, ladder: list[dict[str, Any]] | None = None) -> str:
    """The shipped schedules.yaml on profile ``none`` without window, caps or holidays; ``runs``/``ladder`` replaced
    when given."""
    yaml = YAML()
    data = yaml.load((REPO / "schedules.yaml").read_text("utf-8"))
    data["profile"] = "none"
    kept = {k: v for k, v in (data.get("compliance") or {}).items() if k in ("blocklist", "retention")}
    if kept:
        data["compliance"] = kept
    else:
        data.pop("compliance", None)
    if runs_yaml is not None:
        data["runs"] = runs_yaml
    if ladder is not None:
        data["ladder"] = ladder
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


class Proc:
    """A ``python -m dispatcher …`` process in its own process group, stdout and stderr in files of the workdir."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.log"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "dispatcher", *args], cwd=cwd, env=env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{self.name} still running after {timeout:g} s\n{self.tail()}") from exc

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            self.popen.wait(10)

    def stdout(self) -> str:
        return self.out_path.read_text("utf-8", errors="replace")

    def log(self) -> str:
        return self.err_path.read_text("utf-8", errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join([f"--- {self.name} stdout ---", self.stdout(),
                          f"--- {self.name} log (last {lines} lines) ---", *self.log().splitlines()[-lines:]])


class Site:
    """The workdir as the dispatcher's processes see it: environment, outbox, ledger."""

    def __init__(self, workdir: Path, ledger_url: str) -> None:
        self.dir = workdir
        base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
        self.env = {**base, **{k: os.environ[k] for k in WORKDIR_ENV}, "PYTHONUNBUFFERED": "1",
                    "DISPATCHER_LOG_LEVEL": "INFO"}
        self.outbox = Outbox(Path(os.environ["DISPATCHER_OUTBOX_DIR"]))
        self.ledger = LedgerView(create_engine(ledger_url))
        self.procs: list[Proc] = []

    def start(self, name: str, *args: str, **env: str) -> Proc:
        proc = Proc(name, list(args), {**self.env, **env}, self.dir)
        self.procs.append(proc)
        return proc

    def cli(self, name: str, *args: str, timeout: float = CLI_TIMEOUT, **env: str) -> Proc:
        """Run a command to its end; it must exit 0."""
        proc = self.start(name, *args, **env)
        code = proc.wait(timeout)
        assert code == 0, f"dispatcher {' '.join(args)} exited with {code}\n{proc.tail()}"
        return proc

    def plan_due(self) -> Plan:
        return Plan(json.loads(self.cli("plan", "plan", "--format", "json").stdout()))

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        self.ledger.engine.dispose()


@pytest.fixture
def site(workdir: Path, ledger_url: str) -> Iterator[Site]:
    """The workdir on its own schedule (profile ``none``, shipped ladder); every process killed at teardown."""
    (workdir / "schedules.yaml").write_text(schedule_text(), "utf-8")
    made = Site(workdir, ledger_url)
    yield made
    made.close()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, proc: Proc | None = None,
               interval: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; fails after ``timeout`` s or when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) before {what}\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g} s" + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(interval)
    return value


# --------------------------------------------------------------------------------------------------------------
# what was sent: the outbox, the ledger, the plan, the printed summary


@dataclass(frozen=True)
class OutboxMessage:
    channel: str
    attempt_id: int
    account_id: str
    text: str


class Outbox:
    """The outbox files read as the test's evidence of what was sent (every record, duplicates kept)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def sms_lines(self) -> int:
        try:
            return (self.dir / "sms.jsonl").read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def messages(self) -> list[OutboxMessage]:
        found = [m for kind in ("sms", "push", "voice") for m in self._lines(kind)]
        folder = self.dir / "email"
        names = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        for name in names:
            if (match := re.fullmatch(r"(\d{8})-(.+)\.eml", name)) is not None:
                found.append(OutboxMessage("email", int(match[1]), match[2], ""))
        return found

    def torn(self) -> list[str]:
        """Lines of the JSONL files that are not a whole record with an attempt id (the outbox promises none)."""
        return [line for kind in ("sms", "push", "voice") for line in self._raw(kind) if _record(line) is None]

    def _raw(self, kind: str) -> list[str]:
        try:
            return (self.dir / f"{kind}.jsonl").read_text("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def _lines(self, kind: str) -> Iterator[OutboxMessage]:
        for line in self._raw(kind):
            record = _record(line)
            if record is not None:
                yield OutboxMessage(kind, record["attempt_id"], str(record["account_id"]), str(record["text"]))


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and type(record.get("attempt_id")) is int else None


class LedgerView:
    """Reads of the ledger the processes write."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def statuses(self) -> Counter[str]:
        query = select(attempts.c.status, func.count()).group_by(attempts.c.status)
        with self.engine.connect() as connection:
            return Counter({str(status): int(n) for status, n in connection.execute(query)})

    def attempts(self, *where: Any) -> list[dict[str, Any]]:
        query = select(attempts).where(*where).order_by(attempts.c.id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def handoff_items(self) -> dict[int, tuple[OutboxMessage, int]]:
        """attempt id → (the work item as a message, its id): the evidence of a sent ``handoff`` attempt."""
        query = select(handoffs.c.id, handoffs.c.attempt_id, handoffs.c.account_id).order_by(handoffs.c.id)
        with self.engine.connect() as connection:
            return {int(r.attempt_id): (OutboxMessage("handoff", int(r.attempt_id), str(r.account_id), ""), int(r.id))
                    for r in connection.execute(query)}

    def runs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(select(runs).order_by(runs.c.id)).mappings()]

    def run(self, run_id: int) -> dict[str, Any]:
        return next(r for r in self.runs() if r["id"] == run_id)


@dataclass(frozen=True)
class Summary:
    """The line ``dispatcher run --once`` prints: ``run NAME #ID: STATUS; accounts=…, pending=…; …``."""

    name: str
    run_id: int
    status: str
    accounts: int
    rejected: int
    planned: int
    sent: int
    failed: int
    suppressed: int
    deferred: int
    unknown: int
    pending: int

    @classmethod
    def of(cls, proc: Proc) -> Summary:
        found = list(SUMMARY.finditer(proc.stdout()))
        assert len(found) == 1, f"expected one run summary on stdout\n{proc.tail()}"
        values = found[0].groupdict()
        return cls(**{f.name: values[f.name] if f.type == "str" else int(values[f.name]) for f in fields(cls)})

    def outcomes(self) -> int:
        return self.sent + self.failed + self.suppressed + self.deferred + self.unknown + self.pending


class Plan:
    """What ``dispatcher plan --format json`` said was due: (reminder_key, channel) with the verdict ``send``."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.due = {(r["reminder_key"], c["channel"]) for r in rows for c in r["channels"] if c["verdict"] == "send"}
        self.local_dates = {(r["zone"], r["local_date"]) for r in rows if r["zone"] and r["local_date"]}

    def still_today(self) -> bool:
        """Whether every borrower's local date is still the one planned for (else the reminder keys moved on)."""
        return all(datetime.now(ZoneInfo(zone)).date().isoformat() == day for zone, day in self.local_dates)


def check_exactly_once(site: Site, due: Plan | None = None) -> dict[str, Any]:
    """0 duplicated, 0 lost, nothing unsettled, unknown ≤ 32 (see the module docstring); returns the figures."""
    items = site.ledger.handoff_items()
    messages = site.outbox.messages() + [m for m, _item in items.values()]
    items = {attempt_id: item for attempt_id, (_m, item) in items.items()}
    by_id = {a["id"]: a for a in site.ledger.attempts()}
    statuses = Counter(str(a["status"]) for a in by_id.values())
    figures = {"outbox": len(messages), "statuses": dict(statuses)}
    assert not site.outbox.torn(), f"torn outbox lines: {site.outbox.torn()[:3]}"

    twice = {k: n for k, n in Counter((m.channel, m.attempt_id) for m in messages).items() if n > 1}
    assert not twice, f"{len(twice)} attempt(s) written to the outbox more than once, e.g. {list(twice.items())[:5]}"
    unknown_ids = [m for m in messages if m.attempt_id not in by_id]
    assert not unknown_ids, f"outbox messages of attempts the ledger does not have: {unknown_ids[:5]}"
    wrong = [m for m in messages if by_id[m.attempt_id]["channel"] != m.channel]
    assert not wrong, f"outbox messages in another channel's file than their attempt's: {wrong[:5]}"
    per_reminder = Counter((by_id[m.attempt_id]["reminder_key"], m.channel) for m in messages)
    doubled = {k: n for k, n in per_reminder.items() if n > 1}
    assert not doubled, f"{len(doubled)} reminder(s) reached the outbox twice on one channel: {list(doubled)[:5]}"

    sent = [a for a in by_id.values() if a["status"] == "sent"]
    sent_twice = {k: n for k, n in Counter((a["reminder_key"], a["channel"]) for a in sent).items() if n > 1}
    assert not sent_twice, f"{len(sent_twice)} (reminder, channel) sent twice in the ledger: {list(sent_twice)[:5]}"
    in_outbox = {(m.channel, m.attempt_id) for m in messages}
    in_ledger = {(a["channel"], a["id"]) for a in sent}
    assert in_ledger == in_outbox, (f"ledger sent but not in the outbox: {sorted(in_ledger - in_outbox)[:5]} "
                                    f"({len(in_ledger - in_outbox)}); in the outbox but not sent in the ledger: "
                                    f"{sorted(in_outbox - in_ledger)[:5]} ({len(in_outbox - in_ledger)}); {figures}")
    ids = [a for a in sent if a["provider_message_id"] != (
        f"outbox-{a['channel']}-{a['id']}" if a["channel"] != "handoff" else f"handoff:{items.get(a['id'])}")]
    assert not ids, f"sent attempts with another provider id than the outbox's: {ids[:3]}"
    assert not {s: statuses[s] for s in UNSETTLED if statuses[s]}, f"attempts left unsettled: {figures}"
    assert statuses["unknown"] <= IN_FLIGHT, figures

    if due is not None and due.still_today():
        got = {(a["reminder_key"], a["channel"]) for a in sent}
        assert got == due.due, (f"sent but not due at planning: {sorted(got - due.due)[:5]} ({len(got - due.due)}); "
                                f"due but never sent: {sorted(due.due - got)[:5]} ({len(due.due - got)}); {figures}")
    return figures


def check_completed(summary: Summary, proc: Proc) -> None:
    """A follow-up run that delivered all it planned: ``completed``, planned == sent, nothing failed or pending."""
    assert summary.status == "completed", proc.tail()
    assert (summary.planned, summary.failed, summary.unknown, summary.pending) == (summary.sent, 0, 0, 0), summary


# --------------------------------------------------------------------------------------------------------------
# 1. kill -9 mid-delivery

KILL_ACCOUNTS = 20_000
KILL_AT_SMS = 500
ONE_MESSAGE_LADDER = [
    {"step": "mail", "days_overdue": "1-12", "channels": ["email"], "template": "firm"},
    {"step": "nudge", "days_overdue": "13-25", "channels": ["push"], "template": "gentle"},
    {"step": "text", "days_overdue": "26-", "channels": ["sms"], "template": "final_notice"},
]
"""One message per demo borrower, spread over the three channels (the shipped ladder sends ~1.9 per borrower, which
would make 20,000 borrowers a two-minute run on a 2-core machine)."""


@pytest.mark.timeout(240)
def test_kill_9_mid_delivery_then_the_next_run_reconciles_and_finishes(site: Site) -> None:
    (site.dir / "schedules.yaml").write_text(schedule_text(ladder=ONE_MESSAGE_LADDER), "utf-8")
    site.cli("seed", "seed-demo", "--accounts", str(KILL_ACCOUNTS))
    due = site.plan_due()
    assert len(due.due) > 10_000, len(due.due)

    first = site.start("run-1", "run", "--once")
    wait_until(lambda: site.outbox.sms_lines() > KILL_AT_SMS, 120, f"{KILL_AT_SMS} SMS in the outbox", first)
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    at_kill = site.ledger.statuses()
    written = site.outbox.messages()
    print(f"\n[kill -9] outbox: {len(written)} messages of {len(due.due)} due; ledger at the kill: {dict(at_kill)}")
    # claimed: at most AHEAD_PER_PLACE x DISPATCHER_CONCURRENCY claimed ahead + the messages in flight + the outcomes
    # still lagging (at most LAG_LIMIT, for channels that can be asked after a crash, as the outbox); handed over
    # (`sending`, only for SMTP and FCM): at most the messages in flight
    assert at_kill["claimed"] <= (AHEAD_PER_PLACE + 1) * IN_FLIGHT + LAG_LIMIT, at_kill
    assert at_kill["sending"] <= IN_FLIGHT, at_kill
    assert len(written) < len(due.due), "the kill came after the run had sent everything"
    status_of = {a["id"]: a["status"] for a in site.ledger.attempts()}
    # what the outbox took but the ledger does not say sent must still be claimed (the outbox takes messages without
    # a hand-over marker, it can be asked): the reconciler asks the outbox about those; one left `planned` would be
    # sent a second time
    unrecorded = Counter(status_of.get(m.attempt_id, "missing") for m in written
                         if status_of.get(m.attempt_id) != "sent")
    assert set(unrecorded) <= {"claimed"}, unrecorded

    time.sleep(1.5)  # older than DISPATCHER_RECONCILE_AFTER
    second = site.start("run-2", "run", "--once", DISPATCHER_RECONCILE_AFTER="1")
    assert second.wait(RUN_TIMEOUT) == 0, second.tail()
    summary = Summary.of(second)
    check_completed(summary, second)
    if at_kill["claimed"]:
        assert "claimed by a deliverer that stopped" in second.log(), second.tail()
    figures = check_exactly_once(site, due)
    print(f"[kill -9] follow-up: {summary}; {figures}")


# --------------------------------------------------------------------------------------------------------------
# 2. SIGTERM / SIGINT mid-delivery


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("signum", "code", "accounts"), [(signal.SIGTERM, 143, 6000), (signal.SIGINT, 130, 2000)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_cleanly_and_the_next_run_sends_the_rest(site: Site, signum: int, code: int,
                                                                         accounts: int) -> None:
    site.cli("seed", "seed-demo", "--accounts", str(accounts))
    due = site.plan_due()

    first = site.start("run-1", "run", "--once")
    wait_until(lambda: site.outbox.sms_lines() > 300, 90, "300 SMS in the outbox", first)
    first.signal(signum)
    at_signal = len(site.outbox.messages())
    assert first.wait(STOP_TIMEOUT) == code, first.tail()

    stopped = Summary.of(first)
    statuses = site.ledger.statuses()
    after_signal = len(site.outbox.messages()) - at_signal
    print(f"\n[{signal.Signals(signum).name}] {after_signal} message(s) written after the signal; {stopped}; "
          f"ledger: {dict(statuses)}")
    assert stopped.status == "interrupted", first.tail()
    assert stopped.planned == stopped.outcomes(), stopped
    assert stopped.pending > 0, "stopped after everything was sent: the signal did not land mid-delivery"
    assert statuses["claimed"] == statuses["sending"] == 0, statuses
    assert (stopped.sent, stopped.pending) == (statuses["sent"], statuses["planned"]), (stopped, statuses)
    row = site.ledger.run(stopped.run_id)
    assert row["status"] == "interrupted" and row["finished_at"] is not None, row
    counts = json.loads(row["counts"])
    assert (counts["planned"], counts["sent"], counts["pending"]) == (stopped.planned, stopped.sent, stopped.pending)
    # a clean stop records every message it handed over: the outbox and the ledger agree already
    handed = [m for m, _item in site.ledger.handoff_items().values()]
    assert {(m.channel, m.attempt_id) for m in site.outbox.messages() + handed} == {
        (a["channel"], a["id"]) for a in site.ledger.attempts(attempts.c.status == "sent")}
    assert "Traceback" not in first.log()

    second = site.cli("run-2", "run", "--once", timeout=RUN_TIMEOUT)
    summary = Summary.of(second)
    check_completed(summary, second)
    figures = check_exactly_once(site, due)
    assert stopped.sent + summary.sent == figures["outbox"], (stopped, summary, figures)
    print(f"[{signal.Signals(signum).name}] follow-up: {summary}; {figures}")

    # A stop finishes what was claimed or in flight (≤ 32) and claims nothing more; the slack covers the moment the
    # signal handler takes to run. (This caught a stop noticed only at the run lease's next 0.5 s poll: 130-500
    # messages after the signal.)
    assert after_signal <= 2 * IN_FLIGHT, (f"{after_signal} messages written after the {signal.Signals(signum).name} "
                                           f"was sent: the run kept claiming new attempts after the stop request")


# --------------------------------------------------------------------------------------------------------------
# 3. a broken template saved under a running daemon

SMS_TEMPLATE = "gentle/zh-CN/sms.txt.j2"
OLD_WORDING = "如已还款请忽略。"
NEW_WORDING = "如您已还款，请忽略本短信。"
BROKEN_LINE = "{% iff paid %}"
"""A typo of ``{% if %}``: Jinja's "unknown tag 'iff'", reported at the tag's name (column 4)."""
BATCH = 15
CRON_WAIT = 80.0
"""Seconds to wait for the next per-minute cron fire and its run."""


def add_borrowers(engine: Engine, prefix: str) -> list[str]:
    """:data:`BATCH` zh-CN borrowers two days overdue in their zone: the ``gentle`` step, SMS and push."""
    due = datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=2)
    rows = [demo_row(f"{prefix}{n:04d}", due, phone=f"+86139{ord(prefix[0]):03d}{n:05d}")
            for n in range(BATCH)]
    seed_rows(engine, *rows)
    return [r["account_id"] for r in rows]


def all_sent(site: Site, accounts: list[str]) -> bool:
    """Whether the ledger records every one of these borrowers' SMS and push as sent (their outbox lines come
    first)."""
    sent = {(a["account_id"], a["channel"])
            for a in site.ledger.attempts(attempts.c.account_id.in_(accounts), attempts.c.status == "sent")}
    return sent == {(account, channel) for account in accounts for channel in ("sms", "push")}


def sms_texts(site: Site, accounts: list[str]) -> dict[str, str]:
    wanted = set(accounts)
    return {m.account_id: m.text for m in site.outbox.messages() if m.channel == "sms" and m.account_id in wanted}


def booked_by(site: Site, accounts: list[str]) -> dict[str, Any]:
    """The run rows that booked these borrowers' attempts, by id."""
    run_ids = {a["run_id"] for a in site.ledger.attempts(attempts.c.account_id.in_(accounts))}
    return {r["id"]: r for r in site.ledger.runs() if r["id"] in run_ids}


def sms_template_versions(site: Site, accounts: list[str]) -> set[str]:
    found = site.ledger.attempts(attempts.c.account_id.in_(accounts), attempts.c.channel == "sms")
    return {str(a["template_version"]) for a in found}


@pytest.mark.timeout(240)
def test_the_daemon_refuses_a_broken_template_and_keeps_sending_with_the_last_good_one(site: Site) -> None:
    schedules = site.dir / "schedules.yaml"
    schedules.write_text(schedule_text(runs_yaml=[{"name": "minutely", "cron": "* * * * *"}]), "utf-8")
    sms = site.dir / "templates" / SMS_TEMPLATE
    original = sms.read_text("utf-8")
    assert OLD_WORDING in original
    old_version = content_version(schedules.read_bytes(), TemplateSet.read(site.dir / "templates"))
    site.cli("migrate", "db", "upgrade")  # the ledger's tables exist before the test polls them
    first = add_borrowers(site.ledger.engine, "S")

    daemon = site.start("daemon", "run")
    wait_until(lambda: all_sent(site, first), CRON_WAIT, "the first run (catch-up at start)", daemon, interval=0.2)
    assert f"daemon started (schedules.yaml version {old_version})" in daemon.log()

    broken = original.replace(OLD_WORDING, f"{OLD_WORDING}\n{BROKEN_LINE}", 1)
    line, col = line_col(broken, "iff paid")
    saved_broken = datetime.now(UTC)
    replace_file(sms, broken)
    wait_until(lambda: "configuration edit refused" in daemon.log(), 10, "the refusal", daemon)
    assert f"templates/{SMS_TEMPLATE}:{line}:{col}: " in daemon.log(), daemon.tail()
    assert daemon.alive()

    after_broken = add_borrowers(site.ledger.engine, "A")
    wait_until(lambda: all_sent(site, after_broken), CRON_WAIT, "a run after the broken save", daemon, interval=0.2)
    texts = sms_texts(site, after_broken)
    assert sorted(texts) == after_broken, texts
    assert all(OLD_WORDING in text and NEW_WORDING not in text for text in texts.values()), texts
    assert len(sms_template_versions(site, first)) == 1
    assert sms_template_versions(site, after_broken) == sms_template_versions(site, first)
    fired = booked_by(site, after_broken)
    assert fired and all(r["name"] == "minutely" and r["started_at"] > saved_broken
                         and r["config_version"] == old_version for r in fired.values()), fired

    fixed = original.replace(OLD_WORDING, NEW_WORDING, 1)
    replace_file(sms, fixed)
    new_version = content_version(schedules.read_bytes(), TemplateSet.read(site.dir / "templates"))
    reloaded = f"configuration reloaded: version {new_version} replaces {old_version}"
    wait_until(lambda: reloaded in daemon.log(), 10, "the reload of the fixed template", daemon)

    after_fix = add_borrowers(site.ledger.engine, "C")
    wait_until(lambda: all_sent(site, after_fix), CRON_WAIT, "a run after the fixed save", daemon, interval=0.2)
    texts = sms_texts(site, after_fix)
    assert sorted(texts) == after_fix, texts
    assert all(NEW_WORDING in text and OLD_WORDING not in text for text in texts.values()), texts
    assert sms_template_versions(site, after_fix).isdisjoint(sms_template_versions(site, first))
    fired = booked_by(site, after_fix)
    assert fired and all(r["config_version"] == new_version for r in fired.values()), fired

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(STOP_TIMEOUT) == 0, daemon.tail()
    log = daemon.log()
    assert "daemon stopped" in log and "Traceback" not in log, daemon.tail()
    assert log.count("configuration edit refused") == 1 and log.count("configuration reloaded") == 1, daemon.tail()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 2, errors  # the problem and the refusal, nothing else (no failed run)

    check_exactly_once(site)
    everyone = [*first, *after_broken, *after_fix]
    sent = Counter((a["account_id"], a["channel"]) for a in site.ledger.attempts(attempts.c.status == "sent"))
    assert sent == {(account, channel): 1 for account in everyone for channel in ("sms", "push")}, sent


def test_the_summary_pattern_reads_the_printed_line() -> None:
    """The regular expression the tests above read ``run --once``'s line with (a changed format fails here first)."""
    line = ("run manual #3: completed; accounts=6000, rejected=6, planned=6867: sent=6867, failed=0, suppressed=0, "
            "deferred=0, unknown=0, pending=0; not contacted at planning: suppressed=947, deferred=0")
    match = SUMMARY.search(line)
    assert match is not None
    assert (match["run_id"], match["status"], match["planned"], match["sent"]) == ("3", "completed", "6867", "6867")

