"""Compliance end to end: the shipped schedules.yaml (profile cn), the demo table, real runs and the command line."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rows import attempt_rows, demo_row, seed_rows
from sqlalchemy import Engine, create_engine, func, insert, select

from dispatcher import daemon
from dispatcher.app import App, build_app
from dispatcher.daemon import trigger_for
from dispatcher.ledger.replies import InboundReply, list_replies, mark_read, record_reply
from dispatcher.ledger.retention import PERSONAL_COLUMNS
from dispatcher.ledger.suppressions import lift, suppress
from dispatcher.ledger.tables import attempts, inbound_replies, reminders, runs, suppressions
from dispatcher.masking import address_hash
from dispatcher.pipeline.dry_run import decisions_at
from dispatcher.pipeline.run import Runner
from dispatcher.settings import Settings

SHANGHAI = timedelta(hours=8)

Cli = Callable[..., tuple[int, str, str]]


def shanghai(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Shanghai wall-clock time (UTC+8) as an aware UTC datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC) - SHANGHAI


def new_yorker(account_id: str, due_date: date, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"name": "Mary Smith", "phone": "+12125550142", "email": "mary@example.com",
                              "locale": "en-US", "timezone": "America/New_York", "currency": "USD",
                              "repayment_account": "https://pay.xinyongqianbao.example.cn/r/abc123"}
    return demo_row(account_id, due_date, **{**values, **changes})


def outbox_lines(app: App, kind: str) -> list[dict[str, Any]]:
    path = app.settings.outbox_dir / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def outbox_emails(app: App) -> list[Path]:
    folder = app.settings.outbox_dir / "email"
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def run_at(app: App, clock: Any, moment: datetime, name: str = "manual") -> Any:
    clock.now = moment
    report = Runner(app).run(name, moment)
    assert report.status == "completed"
    return report


def sent(app: App, **where: Any) -> Counter[tuple[str, str]]:
    """(reminder key, channel) of every sent attempt, counted."""
    return Counter((r["reminder_key"], r["channel"]) for r in attempt_rows(app, status="sent", **where))


# (a) the window: deferred by one run, sent by the next, exactly once ---------------------------------------------
def test_a_reminder_due_at_2130_is_deferred_then_sent_once_the_next_morning(app: App, clock: Any) -> None:
    seed_rows(app.engine, demo_row("W1", date(2026, 3, 9)))  # day 1 on 2026-03-10: gentle, push and SMS
    evening = run_at(app, clock, shanghai(2026, 3, 10, 21, 30), "evening")
    assert (evening.counts.sent, evening.counts.deferred, evening.counts.planned) == (0, 2, 0)
    rows = attempt_rows(app, account_id="W1")
    assert sorted((r["channel"], r["status"], r["try_no"], r["rule_id"]) for r in rows) == [
        ("push", "deferred", 0, "window"), ("sms", "deferred", 0, "window")]
    assert all(r["not_before"] == shanghai(2026, 3, 11, 8) for r in rows)
    assert all("21:30 Asia/Shanghai" in r["detail"] for r in rows)
    assert not outbox_lines(app, "sms") and not outbox_lines(app, "push")

    morning = run_at(app, clock, shanghai(2026, 3, 11, 9), "morning")
    assert morning.counts.sent == 2
    later = [run_at(app, clock, shanghai(2026, 3, 11, 9, 5)), run_at(app, clock, shanghai(2026, 3, 11, 18, 30)),
             run_at(app, clock, shanghai(2026, 3, 12, 9))]
    assert [r.counts.sent for r in later] == [0, 0, 0]
    key = "W1|2026-03-09|gentle|0"
    assert sent(app) == Counter({(key, "push"): 1, (key, "sms"): 1})
    (sms_row,) = attempt_rows(app, status="sent", channel="sms")
    assert sms_row["attempted_at"] == shanghai(2026, 3, 11, 9)
    assert [m["reminder"] for m in outbox_lines(app, "sms")] == [key]
    assert [m["reminder"] for m in outbox_lines(app, "push")] == [key]


# (b) the cap: a 4th contact in 7 days waits until the oldest leaves the rolling week -----------------------------
@pytest.fixture
def capped(workdir: Path, clock: Any) -> Iterator[App]:
    """The shipped schedule with ``compliance: {caps: [{max: 3, per: 7d}]}``."""
    path = workdir / "schedules.yaml"
    text, found = re.subn(r"(?m)^compliance:$", "compliance:\n  caps: [{max: 3, per: 7d}]",
                          path.read_text(encoding="utf-8"))
    assert found == 1
    path.write_text(text, encoding="utf-8")
    built = build_app(Settings.from_env(), clock=clock)
    assert [(c.max, c.per) for c in built.pipeline.policy.caps] == [(3, timedelta(days=7))]
    yield built
    built.engine.dispose()


def test_a_fourth_reminder_in_seven_days_is_deferred_by_the_cap(capped: App, clock: Any) -> None:
    app = capped
    seed_rows(app.engine, demo_row("C1", date(2026, 3, 9)))
    assert run_at(app, clock, shanghai(2026, 3, 10, 9)).counts.sent == 2  # day 1: gentle push + SMS
    assert run_at(app, clock, shanghai(2026, 3, 13, 9)).counts.sent == 1  # day 4: firm email (SMS is fallback)

    day7 = run_at(app, clock, shanghai(2026, 3, 16, 9))  # day 7: firm occurrence 1 would be the 4th contact
    assert (day7.counts.sent, day7.counts.deferred) == (0, 1)
    firm1 = "C1|2026-03-09|firm|1"
    (deferred,) = attempt_rows(app, reminder_key=firm1)
    assert (deferred["channel"], deferred["status"], deferred["rule_id"]) == ("email", "deferred", "cap")
    assert deferred["not_before"] == shanghai(2026, 3, 17, 9)  # the day-1 contacts leave the week
    assert "3 contacts" in deferred["detail"]

    assert run_at(app, clock, shanghai(2026, 3, 16, 18, 30)).counts.sent == 0  # still 3 in the week
    assert run_at(app, clock, shanghai(2026, 3, 17, 9)).counts.sent == 1  # day 8: the same reminder goes out
    assert run_at(app, clock, shanghai(2026, 3, 17, 18, 30)).counts.sent == 0
    assert sent(app, reminder_key=firm1) == Counter({(firm1, "email"): 1})
    assert [r["status"] for r in attempt_rows(app, reminder_key=firm1)] == ["deferred", "sent"]  # same deferral once
    assert len(outbox_emails(app)) == 2


# (c) a promise to pay pauses the ladder; a broken promise resumes it ---------------------------------------------
def test_a_promise_to_pay_pauses_and_a_broken_promise_resumes_the_ladder(app: App, clock: Any) -> None:
    seed_rows(app.engine, demo_row("PTP", date(2026, 3, 8), promise_to_pay_until=date(2026, 3, 12)))
    for moment in (shanghai(2026, 3, 10, 9), shanghai(2026, 3, 12, 18, 30)):
        report = run_at(app, clock, moment)
        assert (report.counts.sent, report.counts.planned) == (0, 0)
        (decision,) = decisions_at(app, moment)
        assert decision.reason == "pause"
        assert "2026-03-12" in decision.detail
    paused = attempt_rows(app)  # each decision not to contact is recorded once per reminder and channel
    assert {(r["step"], r["channel"]) for r in paused} == {("gentle", "push"), ("gentle", "sms"),
                                                           ("firm", "email"), ("firm", "sms")}
    assert all((r["status"], r["rule_id"], r["try_no"]) == ("suppressed", "pause", 0) for r in paused)
    assert len(paused) == 4

    report = run_at(app, clock, shanghai(2026, 3, 13, 9))  # day 5, promise broken, still overdue: firm goes out
    assert report.counts.sent == 1
    assert sent(app) == Counter({("PTP|2026-03-08|firm|0", "email"): 1})
    assert all(r["status"] == "suppressed" for r in attempt_rows(app, step="gentle"))  # not sent late


# command line -----------------------------------------------------------------------------------------------------
# (d) plan at 22:00 Shanghai: Shanghai borrowers wait, New York borrowers (09:00 there) are contacted ----------------
def test_plan_at_2200_shanghai_defers_shanghai_and_contacts_new_york(cli: Cli, workdir: Path,
                                                                     ledger_url: str) -> None:
    engine = create_engine(ledger_url)
    due = date(2026, 11, 29)
    seed_rows(engine, demo_row("SH1", due), demo_row("SH2", due, phone="+8613900001111", timezone=None),
              new_yorker("NY1", due), new_yorker("NY2", due, phone="+12125550143"))
    engine.dispose()
    code, out, err = cli("plan", "--at", "2026-12-01T22:00+08:00", "--format", "json")
    assert code == 0, err
    rows = {r["account_id"]: r for r in json.loads(out)}
    assert set(rows) == {"SH1", "SH2", "NY1", "NY2"}
    for account_id in ("SH1", "SH2"):
        row = rows[account_id]
        assert (row["reason"], row["contacted"], row["zone"]) == ("window", False, "Asia/Shanghai")
        assert {c["channel"]: (c["verdict"], c["rule_id"]) for c in row["channels"]} == {
            "push": ("defer", "window"), "sms": ("defer", "window")}
        assert {datetime.fromisoformat(c["not_before"]) for c in row["channels"]} == {shanghai(2026, 12, 2, 8)}
    for account_id in ("NY1", "NY2"):
        row = rows[account_id]
        assert (row["reason"], row["contacted"], row["zone"]) == ("", True, "America/New_York")
        assert {c["channel"]: c["verdict"] for c in row["channels"]} == {"push": "send", "sms": "send"}
    assert "window=2" in err and "contacted=2" in err


# (e) deferred and suppressed attempts are listed with their rule --------------------------------------------------
def test_attempts_lists_deferred_and_suppressed_rows_with_their_rule(app: App, clock: Any, cli: Cli) -> None:
    seed_rows(app.engine, demo_row("D1", date(2026, 3, 8)),
              demo_row("S1", date(2026, 3, 8), phone="+8613900001111", opt_out_channels="sms"))
    run_at(app, clock, shanghai(2026, 3, 10, 22))

    code, out, err = cli("attempts", "--status", "deferred", "--format", "json")
    assert code == 0, err
    deferred = json.loads(out)
    assert sorted((r["account_id"], r["channel"], r["rule_id"]) for r in deferred) == [
        ("D1", "push", "window"), ("D1", "sms", "window"), ("S1", "push", "window")]
    assert all(datetime.fromisoformat(r["not_before"]) == shanghai(2026, 3, 11, 8) for r in deferred)
    assert all(r["try_no"] == 0 and r["detail"] for r in deferred)

    code, out, err = cli("attempts", "--status", "suppressed", "--format", "json")
    assert code == 0, err
    (suppressed,) = json.loads(out)
    assert (suppressed["account_id"], suppressed["channel"], suppressed["rule_id"]) == ("S1", "sms", "opt-out")
    assert suppressed["address"] == "+86139****1111"
    assert "+8613900001111" not in out

    code, out, _ = cli("attempts", "--status", "suppressed")
    assert code == 0 and "opt-out" in out


# (f) purge keeps the retention period, the reminder keys and active opt-outs -------------------------------------
def _old_rows(engine: Engine, now: datetime) -> None:
    """Per age (5 and 2 years ago): a run, a reminder with a sent claim and a deferral, a reminder never claimed
    (held), an active opt-out and a lifted one."""
    with engine.begin() as connection:
        for label, age in (("old", timedelta(days=5 * 365)), ("recent", timedelta(days=2 * 365))):
            at = now - age
            key, held = f"{label}|2020-01-01|gentle|0", f"{label}|2020-01-01|firm|0"
            connection.execute(insert(runs), [{"name": label, "fire_time": at, "status": "completed",
                                               "config_version": "x", "daemon_id": "test", "started_at": at,
                                               "finished_at": at, "counts": "{}"}])
            connection.execute(insert(reminders), [
                {"key": k, "account_id": label, "due_date": date(2020, 1, 1), "step": k.split("|")[2],
                 "occurrence": 0, "created_at": at} for k in (key, held)])
            row = {"reminder_key": key, "account_id": label, "step": "gentle", "occurrence": 0, "channel": "sms",
                   "created_at": at, "updated_at": at}
            connection.execute(insert(attempts), [
                {**row, "try_no": 0, "status": "deferred", "rule_id": "window", "not_before": at}])
            connection.execute(insert(attempts), [
                {**row, "try_no": 1, "status": "sent", "address": "+86138****5678",
                 "address_hash": address_hash("+8613812345678"), "borrower_hash": address_hash("+8613812345678"),
                 "provider_message_id": f"SM{label}", "error_message": "+8613812345678 was slow", "detail": "x",
                 "content_hash": "c0ffee", "attempted_at": at}])
            connection.execute(insert(suppressions), [
                {"channel": "sms", "address_hash": address_hash(f"+86139{n}{label}"), "address": "+86139****0000",
                 "account_id": label, "source": "inbound_stop", "created_at": at, "lifted_at": lifted}
                for n, lifted in ((1, None), (2, at + timedelta(days=1)))])


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {t.name: int(connection.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (attempts, reminders, runs, suppressions)}


def _suppressions(engine: Engine) -> set[tuple[str | None, bool]]:
    """(account id, active) of every suppression."""
    with engine.connect() as connection:
        return {(r.account_id, r.lifted_at is None) for r in connection.execute(select(suppressions))}


def test_purge_refuses_less_than_the_retention_and_deletes_only_older_rows(app: App, clock: Any, cli: Cli) -> None:
    seed_rows(app.engine, demo_row("R1", date(2026, 3, 8)))
    run_at(app, clock, shanghai(2026, 3, 10, 9))  # today's rows, on the fixed clock
    _old_rows(app.engine, datetime.now(UTC))
    before = _counts(app.engine)
    assert before == {"attempts": 6, "reminders": 5, "runs": 3, "suppressions": 4}

    code, out, err = cli("purge", "--older-than", "1y")
    assert code != 0
    assert "retention" in (out + err)
    assert re.search(r"1095 days|\b3 ?y(ears?)?\b|three years", out + err), out + err
    assert _counts(app.engine) == before

    code, out, err = cli("purge", "--older-than", "4y", "--dry-run")
    assert code == 0, err
    tables = "handoff_events=0, visit_authorisations=0, handoffs=0, attempts=1, reminders=1, rejects=0, runs=1, " \
        "suppressions=1"
    assert f"would delete: {tables}" in out
    assert _counts(app.engine) == before

    code, out, err = cli("purge", "--older-than", "4y")
    assert code == 0, err
    assert f"deleted: {tables}" in out
    assert "erased the personal data of 1 attempt(s)" in out and "kept 2 active suppression(s)" in out
    # the old deferral, held reminder, run and lifted opt-out are gone; its claim and active opt-out are kept
    assert _counts(app.engine) == {"attempts": 5, "reminders": 4, "runs": 2, "suppressions": 3}
    assert _suppressions(app.engine) == {("old", True), ("recent", True), ("recent", False)}
    (old,) = attempt_rows(app, account_id="old")
    assert (old["reminder_key"], old["channel"], old["try_no"], old["status"]) == ("old|2020-01-01|gentle|0", "sms",
                                                                                   1, "sent")
    assert [old[c] for c in PERSONAL_COLUMNS] == [None] * len(PERSONAL_COLUMNS)
    recent = attempt_rows(app, account_id="recent", try_no=1)[0]
    assert recent["address_hash"] and recent["error_message"]  # younger than the cut-off: untouched
    assert {r["account_id"] for r in attempt_rows(app)} == {"old", "recent", "R1"}


def _reply(sid: str, decision: str, text: str, at: datetime) -> InboundReply:
    return InboundReply(sid, "sms", "+86139****4444", address_hash("+8613900004444"), text, decision,
                        text if decision.startswith("opt") else None, at)


def _replies(engine: Engine) -> dict[str, tuple[str, str, str]]:
    """message id → (sender, text, address hash) of every kept reply."""
    with engine.connect() as connection:
        return {r.message_sid: (r.sender, r.text, r.address_hash) for r in connection.execute(select(inbound_replies))}


def test_purge_keeps_replies_to_read_and_the_message_id_of_every_reply(app: App, cli: Cli) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=5 * 365), now - timedelta(days=365)
    start = _reply("SMstart", "opt_in", "START", old)
    for reply in (start, _reply("SMunclear", "unclear", "who is this?", old),
                  _reply("SMread", "unclear", "wrong number?", old), _reply("SMstop", "opt_out", "STOP", recent)):
        record_reply(app.engine, reply, reply.received_at)
    (read,) = [r["id"] for r in list_replies(app.engine) if r["text"] == "wrong number?"]
    assert mark_read(app.engine, [read], old) == 1

    code, out, err = cli("purge", "--older-than", "4y")
    assert code == 0, err
    kept = _replies(app.engine)
    assert kept["SMunclear"] == ("+86139****4444", "who is this?", address_hash("+8613900004444"))  # still to read
    assert kept["SMstart"] == kept["SMread"] == ("", "", "")  # erased, their message ids kept
    assert kept["SMstop"][1] == "STOP"  # younger than the cut-off
    assert "and of 2 inbound reply(ies)" in out and "1 old reply(ies) still to read" in out

    assert record_reply(app.engine, replace(start, received_at=now), now) is None  # a replayed START: nothing
    assert _suppressions(app.engine) == {(None, True)}  # the STOP of a year ago still holds


@pytest.fixture
def open_ended(workdir: Path, clock: Any) -> Iterator[App]:
    """The shipped schedule whose last step (``final``, made day 15 onwards) has no ``every``: it goes out once."""
    path = workdir / "schedules.yaml"
    text = path.read_text(encoding="utf-8")
    text = text[:text.index("\n  - step: call")] + "\n"  # the calls and hand-offs after it left out
    text, found = re.subn(r"(?m)^    days_overdue: 15-29\n    every: 7d\n", "    days_overdue: 15-\n", text)
    assert found == 1
    path.write_text(text, encoding="utf-8")
    built = build_app(Settings.from_env(), clock=clock)
    final = built.pipeline.loaded.schedule.step_named("final")
    assert final is not None and final.every_days is None
    yield built
    built.engine.dispose()


def test_after_a_purge_nothing_is_sent_twice_and_active_opt_outs_still_hold(open_ended: App, clock: Any,
                                                                           cli: Cli) -> None:
    app = open_ended
    first, later = shanghai(2021, 3, 10, 9), shanghai(2026, 3, 10, 9)  # more than 3 years apart
    seed_rows(app.engine, demo_row("P1", date(2021, 2, 20)),  # day 18 in 2021: final, for good
              demo_row("P2", date(2026, 2, 20), phone="+8613900002222", email="p2@example.cn"))  # overdue in 2026
    stopped = datetime(2021, 1, 5, tzinfo=UTC)
    assert suppress(app.engine, "email", "wang@example.cn", "unsubscribe", stopped, account_id="P1")
    assert suppress(app.engine, "sms", "+8613900002222", "inbound_stop", stopped, account_id="P2")
    assert suppress(app.engine, "sms", "+8613900003333", "inbound_stop", stopped, account_id="P3")
    assert lift(app.engine, "sms", "+8613900003333", stopped + timedelta(days=1), sources=("inbound_stop",)) == 1

    assert run_at(app, clock, first).counts.sent == 2  # P1: SMS and push; its email is opted out
    final = "P1|2021-02-20|final|0"
    assert sent(app) == Counter({(final, "sms"): 1, (final, "push"): 1})

    code, purged, err = cli("purge", "--older-than", "3y")  # on the real clock: 2021 is past the retention
    assert code == 0, err

    code, out, err = cli("plan", "--at", later.isoformat(), "--format", "json")
    assert code == 0, err
    plan = {row["account_id"]: row for row in json.loads(out)}
    assert plan["P1"]["reason"] == "already_sent" and plan["P1"]["reminder_key"] == final

    report = run_at(app, clock, later)
    assert sent(app, account_id="P1") == Counter({(final, "sms"): 1, (final, "push"): 1})  # nothing twice
    (p2_sms,) = attempt_rows(app, account_id="P2", channel="sms")
    assert (p2_sms["status"], p2_sms["rule_id"]) == ("suppressed", "opt-out")  # the 2021 STOP still holds
    assert (report.counts.sent, report.counts.suppressed) == (2, 1)  # P2: email and push
    assert [line["account_id"] for line in outbox_lines(app, "sms")] == ["P1"]

    assert _suppressions(app.engine) == {("P1", True), ("P2", True)}  # the lifted one is gone
    assert all(r["address_hash"] is None and r["address"] is None for r in attempt_rows(app, account_id="P1"))
    assert "erased the personal data of 3 attempt(s)" in purged and "kept 2 active suppression(s)" in purged


# the shipped run times and borrowers in other zones ---------------------------------------------------------------
def fire_times(app: App, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """Every (fire time, run name) of the shipped schedule's runs between ``start`` and ``end``."""
    schedule = app.pipeline.loaded.schedule
    found: list[tuple[datetime, str]] = []
    for run in schedule.runs:
        trigger = trigger_for(run, schedule.timezone)
        probe = trigger.get_next_fire_time(None, start)
        while probe is not None and probe < end:
            found.append((probe.astimezone(UTC), run.name))
            probe = trigger.get_next_fire_time(probe, probe + timedelta(seconds=1))
    return sorted(found)


def run_like_the_daemon(app: App, clock: Any, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    """The daemon itself (:class:`dispatcher.daemon.Daemon`) from ``start`` to ``end`` on the fixed clock.

    Its scheduler is started paused: it keeps and times the jobs the daemon adds
    (the follow-up run for deferred reminders, scheduled by the daemon after each
    run) but never fires them on the real clock. The test plays the timer: it moves
    the clock to the next cron time of the shipped runs or to the follow-up job's
    time, whichever comes first, and calls the daemon's job there. Returns every
    (moment, run name) fired; each run must have completed.
    """
    scheduled = fire_times(app, start, end)
    clock.now = start
    fired: list[tuple[datetime, str]] = []
    runner = daemon.Daemon(app)
    runner._scheduler.start(paused=True)
    try:
        while True:
            job = runner._scheduler.get_job("follow-up")
            due = job.next_run_time if job is not None and job.next_run_time < end else None
            if scheduled and (due is None or scheduled[0][0] <= due):
                clock.now, name = scheduled.pop(0)
                runner._fire(name)
            elif job is not None and due is not None:
                job.remove()  # a date job is gone once it fired
                clock.now, name = due, "follow-up"
                job.func(*job.args)
            else:
                break
            fired.append((clock.now, name))
    finally:
        runner.shutdown()
    with app.engine.connect() as connection:
        statuses = connection.execute(select(runs.c.name, runs.c.status).order_by(runs.c.id)).all()
    assert [tuple(s) for s in statuses] == [(name, "completed") for _, name in fired]
    return fired


def test_a_new_york_borrower_in_winter_is_reached_by_the_shipped_runs(app: App, clock: Any) -> None:
    seed_rows(app.engine, new_yorker("NYW", date(2026, 11, 30)))
    run_like_the_daemon(app, clock, datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC))
    assert sent(app)  # 09:00 Shanghai is 20:00 in New York in winter: inside the window


def test_a_new_york_borrower_in_summer_is_reached_by_the_daemons_follow_up_run(app: App, clock: Any) -> None:
    """The shipped runs (09:00 and 18:30 Shanghai = 21:00 and 06:30 EDT) defer a New York borrower every time;
    the follow-up run the daemon schedules for the deferral's ``not_before`` reaches them."""
    seed_rows(app.engine, new_yorker("NYS", date(2026, 6, 30)))
    fired = run_like_the_daemon(app, clock, datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 7, 8, tzinfo=UTC))
    assert (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), "follow-up") in fired
    reached = attempt_rows(app, status="sent")
    assert reached, f"{len(attempt_rows(app, status='deferred'))} deferrals and no contact in a week"
    first = min(r["attempted_at"] for r in reached)
    assert first == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)  # 08:00 EDT, 20:00 Shanghai: the first allowed moment
    once = sent(app)
    assert once[("NYS|2026-06-30|gentle|0", "sms")] == once[("NYS|2026-06-30|gentle|0", "push")] == 1
    assert set(once.values()) == {1}  # each reminder once per channel, follow-up runs or not
