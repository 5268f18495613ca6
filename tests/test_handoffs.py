"""Hand-off to collectors: a ``handoff:`` step opens one work item per occurrence, people claim and close it, and
the outcomes feed the rules (a promise pauses the ladder, a wrong number stops SMS, a person's contact counts
toward the caps). Runs on the real ledger (SQLite here, PostgreSQL with ``--ledger=postgresql``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import FixedClock
from rows import attempt_rows, demo_row, seed_rows
from sqlalchemy import select
from test_rules import overdue

from dispatcher.app import App, build_app
from dispatcher.channel_kind import ChannelKind
from dispatcher.decisions import Decision, Verdict
from dispatcher.demo import demo_accounts
from dispatcher.ledger.handoffs import Closing, claim_handoff, close_handoff
from dispatcher.ledger.retention import purge
from dispatcher.ledger.tables import handoff_events, handoffs, suppressions
from dispatcher.masking import mask_phone
from dispatcher.pipeline.dry_run import decisions_at
from dispatcher.pipeline.history import BatchHistory, Hold
from dispatcher.pipeline.run import Runner
from dispatcher.rules.pause import HandoffPauseRule
from dispatcher.settings import Settings

Cli = Callable[..., tuple[int, str, str]]
SHANGHAI = ZoneInfo("Asia/Shanghai")

LADDER = """ladder:
  - step: gentle
    days_overdue: 1-3
    channels: [push, sms]
    template: gentle
  - step: firm
    days_overdue: 4-14
    every: 3d
    channels: [email, sms]
    template: firm
    fallback: true
  - step: final
    days_overdue: 15-29
    every: 7d
    channels: [sms, email, push]
    template: final_notice
  - step: agents
    days_overdue: 30-
    every: 7d
    handoff: {queue: agents, priority: 2, kind: call}
"""
"""The shipped ladder's message steps, ending in a weekly hand-off to the agents' queue from day 30."""


def with_handoff_ladder(path: Path, *, profile: str | None = None, caps: str | None = None) -> None:
    """Replace the ladder of the schedule at ``path`` by :data:`LADDER`; optionally the profile and the caps."""
    text = path.read_text(encoding="utf-8")
    start = text.index("\nladder:") + 1
    rest = re.search(r"\n(?=[A-Za-z_])", text[start:])
    text = text[:start] + LADDER + (text[start + rest.start() + 1:] if rest else "")
    if profile:
        text = re.sub(r"(?m)^profile: *\w+", f"profile: {profile}", text)
    if caps:
        text = re.sub(r"(?m)^compliance:\n", f"compliance:\n  caps: {caps}\n", text)
    path.write_text(text, encoding="utf-8")


def borrower(account_id: str, due_date: date, n: int, **changes: Any) -> dict[str, Any]:
    """A demo source row of borrower ``n`` (their own phone, email and push token)."""
    return demo_row(account_id, due_date, phone=f"+86138123400{n:02d}", email=f"b{n}@example.cn",
                    push_token=f"fcm:token-{n}", **changes)


def handoff_rows(app: App) -> list[dict[str, Any]]:
    with app.engine.connect() as connection:
        query = select(handoffs).order_by(handoffs.c.account_id, handoffs.c.id)
        return [dict(r) for r in connection.execute(query).mappings()]


def events_of(app: App, handoff_id: int) -> list[tuple[str, str]]:
    query = select(handoff_events.c.action, handoff_events.c.actor).where(
        handoff_events.c.handoff_id == handoff_id).order_by(handoff_events.c.id)
    with app.engine.connect() as connection:
        return [(r.action, r.actor) for r in connection.execute(query)]


def decision_of(app: App, account_id: str, now: datetime | None = None) -> Decision:
    (found,) = decisions_at(app, now or app.clock(), account_id)
    return found


def run(app: App, clock: FixedClock) -> None:
    """One run at the clock's time; the clock then moves on a minute (the next run has a fire time of its own)."""
    report = Runner(app).run("manual", clock())
    assert report.status == "completed", report
    clock.advance(timedelta(minutes=1))


def close(app: App, handoff_id: int, outcome: str, *agents: str, until: date | None = None) -> dict[str, Any]:
    """Close a work item at the app's clock (the command line reads the real clock)."""
    now = app.clock()
    return close_handoff(app.engine, handoff_id, Closing(outcome, agents, until), now, now.astimezone(SHANGHAI).date())


def build(workdir: Path, clock: FixedClock, **schedule: str) -> App:
    with_handoff_ladder(workdir / "schedules.yaml", **schedule)
    return build_app(Settings.from_env(), clock=clock)


@pytest.fixture
def ladder_app(workdir: Path, clock: FixedClock) -> Iterator[App]:
    """The app on a schedule ending in a hand-off step, profile cn, at 09:00 in Shanghai."""
    app = build(workdir, clock)
    yield app
    app.engine.dispose()


def local_today(clock: FixedClock) -> date:
    return clock.now.astimezone(SHANGHAI).date()


# once per occurrence -------------------------------------------------------------------------------------------------
def test_a_run_opens_one_work_item_per_account_at_the_handoff_step_and_a_second_run_none(
        ladder_app: App, clock: FixedClock) -> None:
    app, today = ladder_app, local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1),
              borrower("H-2", today - timedelta(days=31), 2), borrower("M-1", today - timedelta(days=5), 3))
    run(app, clock)
    items = handoff_rows(app)
    assert [(i["account_id"], i["queue"], i["priority"], i["kind"], i["status"], i["step"]) for i in items] == [
        ("H-1", "agents", 2, "call", "open", "agents"), ("H-2", "agents", 2, "call", "open", "agents")]
    assert items[0]["reminder_key"] == f"H-1|{(today - timedelta(days=40)).isoformat()}|agents|1"
    assert items[0]["phone"] == mask_phone("+8613812340001") and items[0]["phone_hash"]
    for item in items:  # opened by a claimed attempt of the hand-off channel, recorded with the work item's id
        (attempt,) = attempt_rows(app, account_id=item["account_id"])
        assert (attempt["channel"], attempt["status"], attempt["provider_message_id"], attempt["id"]) == (
            "handoff", "sent", f"handoff:{item['id']}", item["attempt_id"])
        assert events_of(app, item["id"]) == [("opened", "dispatcher")]
    assert {r["channel"] for r in attempt_rows(app, account_id="M-1", status="sent")} == {"email"}

    run(app, clock)
    assert len(handoff_rows(app)) == 2
    assert len(attempt_rows(app, channel="handoff")) == 2
    assert decision_of(app, "H-1").reason == "already_sent"

    clock.advance(timedelta(days=7))
    run(app, clock)  # the next occurrence: a new work item each
    assert [i["reminder_key"].rsplit("|", 2)[1:] for i in handoff_rows(app)] == [
        ["agents", "1"], ["agents", "2"], ["agents", "0"], ["agents", "1"]]


def test_a_handoff_waits_for_the_contact_window_like_a_message(ladder_app: App, clock: FixedClock) -> None:
    app, today = ladder_app, local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1))
    clock.now = datetime(2026, 3, 10, 22, 30, tzinfo=SHANGHAI)
    decision = decision_of(app, "H-1")
    (plan,) = decision.channels
    assert (plan.verdict, plan.rule_id, plan.not_before) == (
        Verdict.DEFER, "window", datetime(2026, 3, 11, 8, tzinfo=SHANGHAI))
    run(app, clock)
    assert handoff_rows(app) == []
    assert [(r["channel"], r["status"], r["rule_id"]) for r in attempt_rows(app, account_id="H-1")] == [
        ("handoff", "deferred", "window")]


def test_a_paused_account_gets_no_handoff(ladder_app: App, clock: FixedClock) -> None:
    app, today = ladder_app, local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1, dispute="yes"),
              borrower("H-2", today - timedelta(days=40), 2, do_not_contact="lawyer"))
    run(app, clock)
    assert handoff_rows(app) == []
    assert {(r["account_id"], r["channel"], r["rule_id"]) for r in attempt_rows(app)} == {
        ("H-1", "handoff", "pause"), ("H-2", "handoff", "pause")}


# outcomes feed the rules ---------------------------------------------------------------------------------------------
def test_a_promise_pauses_the_ladder_until_its_day_and_the_ladder_resumes_after_it(ladder_app: App, clock: FixedClock,
                                                                                   cli: Cli) -> None:
    app, today = ladder_app, local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1))
    run(app, clock)
    (item,) = handoff_rows(app)
    promise = today + timedelta(days=3)  # day 43, the last day of occurrence 1
    closed = close(app, item["id"], "promise_to_pay", "alice", until=promise)
    assert (closed["status"], closed["until"], closed["closed_by"]) == ("closed", promise, "alice")

    for day in (today + timedelta(days=1), promise):
        decision = decision_of(app, "H-1", datetime.combine(day, datetime.min.time(), SHANGHAI) + timedelta(hours=10))
        assert (decision.reason, decision.detail) == (
            "pause", f"promise to pay until {promise.isoformat()} (hand-off #{item['id']})")
    code, out, _ = cli("plan", "--at", f"{today + timedelta(days=1)}T10:00+08:00", "--account", "H-1")
    (line,) = [line for line in out.splitlines() if line.startswith("H-1")]
    assert code == 0 and re.search(rf"\bpause +promise to pay until {promise} \(hand-off #{item['id']}\)$", line)

    clock.now = datetime.combine(promise + timedelta(days=1), datetime.min.time(), SHANGHAI) + timedelta(hours=9)
    decision = decision_of(app, "H-1")
    assert decision.reason is None and decision.occurrence == 2
    run(app, clock)
    assert [i["reminder_key"].rsplit("|", 1)[1] for i in handoff_rows(app)] == ["1", "2"]


def test_a_dispute_holds_for_the_delinquency_and_a_new_due_date_starts_afresh(ladder_app: App,
                                                                             clock: FixedClock) -> None:
    app, today = ladder_app, local_today(clock)
    due = today - timedelta(days=40)
    seed_rows(app.engine, borrower("H-1", due, 1))
    run(app, clock)
    (item,) = handoff_rows(app)
    close(app, item["id"], "dispute", "bob")
    later = clock.now + timedelta(days=30)
    decision = decision_of(app, "H-1", later)
    assert (decision.reason, decision.detail) == ("pause", f"the borrower disputes the debt (hand-off #{item['id']})")
    with app.engine.begin() as connection:  # a new delinquency (a later due date) starts afresh
        connection.execute(demo_accounts.update().values(due_date=today - timedelta(days=2)))
    assert decision_of(app, "H-1").reason is None


D = date(2026, 3, 10)


@pytest.mark.parametrize(("holds", "today", "detail"), [
    ([Hold(7, "promise_to_pay", D, None)], D, "promise to pay until 2026-03-10 (hand-off #7)"),
    ([Hold(7, "promise_to_pay", D, None)], D + timedelta(days=1), None),
    ([Hold(8, "dispute", None, D - timedelta(days=40))], D + timedelta(days=90),
     "the borrower disputes the debt (hand-off #8)"),
    ([Hold(8, "dispute", None, D - timedelta(days=41))], D, None),  # another delinquency's
    ([Hold(8, "dispute", D, None)], D, "the borrower disputes the debt until 2026-03-10 (hand-off #8)"),
    ([Hold(8, "dispute", D, None)], D + timedelta(days=1), None),
    ([Hold(9, "promise_to_pay", D - timedelta(days=1), None), Hold(8, "dispute", None, None)], D,
     "the borrower disputes the debt (hand-off #8)"),  # an older hold still in force
    ([Hold(9, "paid", None, None)], D, None),
])
def test_the_pause_a_handoff_agreed(holds: list[Hold], today: date, detail: str | None) -> None:
    account = overdue(40, D)
    block = HandoffPauseRule().check(account, today, BatchHistory(holds={account.account_id: holds}))
    assert (None if block is None else (block.rule_id, block.detail)) == (detail and ("pause", detail))


def test_a_wrong_number_stops_sms_to_that_phone(ladder_app: App, clock: FixedClock, cli: Cli) -> None:
    app, today = ladder_app, local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1))
    run(app, clock)
    (item,) = handoff_rows(app)
    code, out, err = cli("handoffs", "close", str(item["id"]), "--outcome", "wrong_number", "--agent", "carol")
    assert code == 0, err
    assert f"SMS to {mask_phone('+8613812340001')} stopped" in out
    with app.engine.connect() as connection:
        found = connection.execute(select(suppressions.c.channel, suppressions.c.source, suppressions.c.address,
                                          suppressions.c.account_id)).all()
    assert ("sms", "wrong_number", mask_phone("+8613812340001"), "H-1") in found

    # another loan of the same borrower, now in the message steps: no SMS to that number, email still goes
    seed_rows(app.engine, borrower("M-1", today - timedelta(days=2), 1))
    run(app, clock)
    sms = [r for r in attempt_rows(app, account_id="M-1") if r["channel"] == "sms"]
    assert [(r["status"], r["rule_id"]) for r in sms] == [("suppressed", "bad-address")]
    assert "(wrong_number)" in sms[0]["detail"]
    assert {r["channel"] for r in attempt_rows(app, account_id="M-1", status="sent")} == {"push"}


def test_a_persons_contact_counts_toward_the_caps_and_opening_a_work_item_does_not(workdir: Path,
                                                                                  clock: FixedClock) -> None:
    app = build(workdir, clock, caps="[{max: 1, per: 1d}]")
    try:
        today = local_today(clock)
        seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1))
        run(app, clock)
        (item,) = handoff_rows(app)
        seed_rows(app.engine, borrower("M-1", today - timedelta(days=5), 1))  # the same borrower's other loan
        email = next(c for c in decision_of(app, "M-1").channels if c.channel.value == "email")
        assert email.verdict is Verdict.SEND  # the work item is not a contact

        claim_handoff(app.engine, item["id"], "dave", clock())
        close(app, item["id"], "contacted")  # closed by who claimed it
        email = next(c for c in decision_of(app, "M-1").channels if c.channel.value == "email")
        assert (email.verdict, email.rule_id) == (Verdict.DEFER, "cap")
        assert "1 contacts to this borrower in the last 1 day(s) (max 1)" in (email.detail or "")
        assert email.not_before is not None and email.not_before > app.clock()
    finally:
        app.engine.dispose()


# the command line ----------------------------------------------------------------------------------------------------
@pytest.fixture
def cli_ladder(workdir: Path, anytime: Path, ledger_url: str) -> date:
    """The workdir on the hand-off ladder (any hour, no caps) with three accounts due today (real clock); returns
    today's date in Shanghai."""
    with_handoff_ladder(anytime)
    app = build_app(Settings.from_env())
    today = datetime.now(SHANGHAI).date()
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1),
              borrower("H-2", today - timedelta(days=33), 2), borrower("M-1", today - timedelta(days=2), 3))
    app.engine.dispose()
    return today


def listed(cli: Cli, *args: str) -> list[dict[str, Any]]:
    code, out, err = cli("handoffs", "list", "--format", "json", *args)
    assert code == 0, err
    found: list[dict[str, Any]] = json.loads(out)
    return found


def test_run_once_opens_work_items_and_people_list_claim_and_close_them(cli: Cli, cli_ladder: date) -> None:
    code, out, err = cli("run", "--once")
    assert code == 0, err
    items = sorted(listed(cli), key=lambda i: str(i["account_id"]))  # ids follow the (concurrent) deliveries
    assert [(i["account_id"], i["status"], i["queue"], i["kind"]) for i in items] == [
        ("H-1", "open", "agents", "call"), ("H-2", "open", "agents", "call")]
    assert cli("run", "--once")[0] == 0
    assert len(listed(cli)) == 2

    first, second = (i["id"] for i in items)
    code, out, _ = cli("handoffs", "claim", str(first), "--agent", "alice")
    assert (code, out.strip()) == (0, f"hand-off #{first} (H-1, call in agents) claimed by alice")
    assert cli("handoffs", "claim", str(first), "--agent", "alice")[0] == 0  # again by the same agent: unchanged
    assert [i["id"] for i in listed(cli, "--status", "claimed")] == [first]
    assert [i["id"] for i in listed(cli, "--status", "open", "--queue", "agents")] == [second]
    assert listed(cli, "--queue", "legal") == []

    code, out, err = cli("handoffs", "close", str(first), "--outcome", "contacted",
                         "--note", "call me on +8613912345678")
    assert code == 0, err
    (closed,) = listed(cli, "--status", "closed")
    assert (closed["closed_by"], closed["agents"], closed["outcome"], closed["note"]) == (
        "alice", ["alice"], "contacted", "call me on +86139****5678")

    code, out, _ = cli("handoffs", "show", str(first))
    shown = json.loads(out)
    assert [(e["action"], e["actor"]) for e in shown["events"]] == [
        ("opened", "dispatcher"), ("claimed", "alice"), ("closed", "alice")]

    code, out, err = cli("handoffs", "list")
    assert code == 0 and "H-2" in out and "2 hand-off(s)" in err
    code, out, _ = cli("attempts", "--channel", "handoff", "--format", "json")
    assert {(a["account_id"], a["status"]) for a in json.loads(out)} == {("H-1", "sent"), ("H-2", "sent")}


@pytest.mark.parametrize(("args", "message"), [
    (("claim", "999", "--agent", "a"), "hand-off #999 does not exist"),
    (("close", "1", "--outcome", "visit_done", "--agent", "a"),
     "a field visit is made by at least 2 collectors: name each with --agent (1 given)"),
    (("close", "1", "--outcome", "visit_done", "--agent", "a", "--agent", " a "),
     "a field visit is made by at least 2 collectors: name each with --agent (1 given)"),
    (("close", "1", "--outcome", "promise_to_pay", "--agent", "a"),
     "a promise_to_pay needs the day it holds until (--until DATE)"),
    (("close", "1", "--outcome", "promise_to_pay", "--until", "2020-01-01", "--agent", "a"),
     "--until 2020-01-01 is in the past"),
    (("close", "1", "--outcome", "promise_to_pay", "--until", "soon", "--agent", "a"),
     "--until 'soon' is not an ISO date like 2026-12-31"),
    (("close", "1", "--outcome", "contacted", "--until", "2099-01-01", "--agent", "a"),
     "--until is for promise_to_pay and dispute, not contacted"),
    (("close", "1", "--outcome", "paid"), "hand-off #1 was never claimed: name who closes it (--agent)"),
    (("claim", "1", "--agent", "   "), "agent '   ': give a name of 1 to 64 printable characters"),
])
def test_refused_actions_are_one_line_and_exit_2(cli: Cli, cli_ladder: date, args: tuple[str, ...],
                                                 message: str) -> None:
    assert cli("run", "--once")[0] == 0
    code, out, err = cli("handoffs", *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("dispatcher: ") and message in err
    assert listed(cli, "--status", "open")[0]["id"] == 1  # nothing changed


def test_bad_transitions_are_refused(cli: Cli, cli_ladder: date) -> None:
    assert cli("run", "--once")[0] == 0
    assert cli("handoffs", "claim", "1", "--agent", "alice")[0] == 0
    code, _, err = cli("handoffs", "claim", "1", "--agent", "bob")
    assert (code, err.strip()) == (2, "dispatcher: hand-off #1 is claimed by alice")
    code, _, err = cli("handoffs", "close", "2", "--outcome", "visit_done", "--agent", "x", "--agent", "y")
    assert code == 0, err  # an unclaimed one may be closed; a visit names both collectors
    (visit,) = listed(cli, "--status", "closed")
    assert (visit["agents"], visit["closed_by"], visit["claimed_by"]) == (["x", "y"], "x", None)
    code, _, err = cli("handoffs", "claim", "2", "--agent", "alice")
    assert (code, err.strip()) == (2, "dispatcher: hand-off #2 is closed (visit_done, by x): it cannot be claimed")
    code, _, err = cli("handoffs", "close", "2", "--outcome", "paid", "--agent", "x")
    assert (code, err.strip()) == (2, "dispatcher: hand-off #2 is already closed (visit_done, by x)")


def test_plan_says_why_after_a_promise_and_plans_the_handoff_again_after_its_day(cli: Cli, cli_ladder: date) -> None:
    today = cli_ladder
    assert cli("run", "--once")[0] == 0
    until = today + timedelta(days=3)  # H-1 is on day 40: the occurrence of days 37-43 is done
    ((item_id, account),) = [(i["id"], i["account_id"]) for i in listed(cli, "--account", "H-1")]
    code, out, err = cli("handoffs", "close", str(item_id), "--outcome", "promise_to_pay", "--until",
                         until.isoformat(), "--agent", "alice")
    assert code == 0, err
    assert out.strip() == (f"hand-off #{item_id} ({account}) closed: promise_to_pay by alice; reminders paused until "
                           f"{until} inclusive; they resume after it if still due")
    code, out, _ = cli("plan", "--at", f"{today + timedelta(days=2)}T12:00+08:00", "--account", "H-1",
                       "--format", "json")
    (row,) = json.loads(out)
    assert (row["reason"], row["detail"]) == ("pause", f"promise to pay until {until} (hand-off #{item_id})")
    code, out, _ = cli("plan", "--at", f"{today + timedelta(days=4)}T12:00+08:00", "--account", "H-1",
                       "--format", "json")
    (row,) = json.loads(out)
    assert (row["reason"], row["step"], row["occurrence"]) == ("", "agents", 2)
    assert [(c["channel"], c["verdict"]) for c in row["channels"]] == [("handoff", "send")]


_KINDS = [k.value for k in ChannelKind if k is not ChannelKind.HANDOFF]
MESSAGE_CHANNELS = ", ".join(map(repr, _KINDS[:-1])) + f" or {_KINDS[-1]!r}"
"""The message channels as a refusal lists them: 'sms', 'email' or 'push' (and any added since)."""


# schedules.yaml ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("step", "message"), [
    ("    channels: [handoff]\n", f"ladder[3].channels[0]: expected {MESSAGE_CHANNELS}, got 'handoff' (a hand-off "
                                  "to people is written `handoff: {queue: NAME}`)"),
    ("    handoff: {queue: agents}\n    channels: [sms]\n",
     "ladder[3].channels: a step sends messages (channels) or hands off to people (handoff), not both"),
    ("    handoff: {queue: agents, kind: phone}\n", "ladder[3].handoff.kind: expected 'call', 'visit' or 'legal', "
                                                   "got 'phone'"),
    ("    handoff: {queue: agents, priority: 0}\n", "ladder[3].handoff.priority"),
    ("    handoff: {kind: call}\n", "missing key 'queue' in ladder[3].handoff"),
    ("", "missing key 'channels' in ladder[3]"),
])
def test_validate_refuses_a_wrong_handoff_step(cli: Cli, workdir: Path, step: str, message: str) -> None:
    path = workdir / "schedules.yaml"
    with_handoff_ladder(path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("    handoff: {queue: agents, priority: 2, kind: call}\n", step), encoding="utf-8")
    code, _, err = cli("validate")
    assert code == 1
    problems = [line.split(": ", 1)[1] for line in err.splitlines() if line.startswith(str(path))]
    assert len(problems) == 1 and problems[0].startswith(message), err


def test_a_handoff_step_needs_no_templates(cli: Cli, workdir: Path) -> None:
    with_handoff_ladder(workdir / "schedules.yaml")
    assert not (workdir / "templates" / "agents").exists()
    code, out, err = cli("validate")
    assert code == 0, out + err


def test_purge_deletes_closed_work_items_past_retention_keeps_open_ones_and_never_reopens_one(
        ladder_app: App, clock: FixedClock) -> None:
    app, today = ladder_app, local_today(clock)
    seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1),
              borrower("H-2", today - timedelta(days=31), 2))
    run(app, clock)
    first, second = handoff_rows(app)
    claim_handoff(app.engine, first["id"], "alice", app.clock())
    close(app, first["id"], "contacted", "alice")
    retention = timedelta(days=3 * 365)
    counts = purge(app.engine, retention, retention, app.clock() + retention + timedelta(days=1))
    assert (counts.deleted["handoffs"], counts.deleted["handoff_events"]) == (1, 3)  # opened, claimed, closed
    assert [r["account_id"] for r in handoff_rows(app)] == ["H-2"]
    assert events_of(app, first["id"]) == [] and events_of(app, second["id"]) == [("opened", "dispatcher")]
    run(app, clock)  # the same occurrence: its claim row is kept, so no work item is opened again
    assert [r["account_id"] for r in handoff_rows(app)] == ["H-2"]
    assert len(attempt_rows(app, channel="handoff")) == 2
