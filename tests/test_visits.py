"""Field visits borrowers can verify: claiming a ``visit`` hand-off names at least two collectors and issues an
authorisation, ``dispatcher handoffs authorisation`` prints its letter, and ``/verify`` on ``dispatcher web``
tells a borrower whether a code is genuine, for whom and until when, and nothing about the debt."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from conftest import FixedClock
from rows import demo_row, seed_rows
from test_handoffs import SHANGHAI, borrower, build, decision_of, handoff_rows, local_today, run
from test_handoffs_web import TOKEN, calls
from webserver import serving

from dispatcher.app import App, build_app
from dispatcher.decisions import Decision
from dispatcher.demo import demo_accounts
from dispatcher.handoffs.repayment_plans import Instalment, RepaymentPlan
from dispatcher.ledger.handoffs import Closing, WorkItem, close_handoff, get_handoff, open_handoff
from dispatcher.ledger.retention import purge
from dispatcher.ledger.visits import CODE_ALPHABET, CODE_LENGTH, normalise_code
from dispatcher.settings import Settings
from dispatcher.web.verify_page import CHECKS_PER_WINDOW

Cli = Callable[..., tuple[int, str, str]]
COLLECTORS = ("--collector", "Zhang Wei:SH-1001", "--collector", "Li Na:SH-1002")


@pytest.fixture
def visit_app(workdir: Path) -> Iterator[App]:
    """The shipped schedule's app at the real time (the command line reads the real clock), with one open visit
    work item (#1, account V-1) and one call item (#2, account C-1)."""
    app = build_app(Settings.from_env(), clock=FixedClock(datetime.now(UTC)))
    for account, kind in (("V-1", "visit"), ("C-1", "call")):
        open_handoff(app.engine, WorkItem(account, f"{account}|2026-01-01|visit|1", None, "visit", None, "field", 1,
                                          kind), app.clock())
    yield app
    app.engine.dispose()


def claimed(cli: Cli, *collectors: str) -> str:
    """Claim the visit with ``collectors`` and return the code its letter prints."""
    code, out, err = cli("handoffs", "claim", "1", "--agent", "zhang", *collectors)
    assert code == 0, err
    assert "visit authorised until" in out
    code, letter, err = cli("handoffs", "authorisation", "1")
    assert code == 0, err
    found = re.search(r"Verification code: ([A-Z0-9-]+)", letter)
    assert found
    return found.group(1)


def verify(app: App, *checks: tuple[str, str | None]) -> list[tuple[int, str]]:
    """Each (method, code) check's (status, page) against ``app``'s web app; POST sends the form."""

    async def go() -> list[tuple[int, str]]:
        async with serving(app) as (host, port), aiohttp.ClientSession() as session:
            found = []
            for method, code in checks:
                url = f"http://{host}:{port}/verify"
                if method == "POST":
                    response = await session.post(url, data={"code": code or ""})
                else:
                    response = await session.get(url, params={"code": code} if code is not None else None)
                async with response:
                    found.append((response.status, await response.text()))
            return found

    return asyncio.run(go())


# claiming and the letter ---------------------------------------------------------------------------------------------
def test_a_visit_claimed_with_two_collectors_prints_a_letter_in_text_and_html(visit_app: App, cli: Cli,
                                                                              workdir: Path) -> None:
    code = claimed(cli, *COLLECTORS)
    assert len(normalise_code(code)) == CODE_LENGTH and set(normalise_code(code)) <= set(CODE_ALPHABET)
    today = datetime.now(UTC).date()
    status, text, _ = cli("handoffs", "authorisation", "1")
    assert status == 0
    assert "信用钱包" in text  # the default locale's brand
    assert "Zhang Wei (staff id SH-1001)" in text and "Li Na (staff id SH-1002)" in text
    assert re.search(r"Valid from (\S+) to (\S+) inclusive", text)
    start, end = re.search(r"Valid from (\S+) to (\S+) inclusive", text).groups()  # type: ignore[union-attr]
    assert (datetime.fromisoformat(end) - datetime.fromisoformat(start)).days == 7
    assert abs((datetime.fromisoformat(start).date() - today).days) <= 1
    assert "https://www.xinyongqianbao.example.cn/verify" in text and "400-820-1234" in text
    status, _, err = cli("handoffs", "authorisation", "1", "--format", "html", "--out", str(workdir / "letter.html"))
    assert status == 0, err
    html = (workdir / "letter.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and code in html and "SH-1002" in html
    assert not re.search(r"(src|href)=\"(?!https://www\.xinyongqianbao)", html)  # nothing loaded from anywhere
    assert "<script" not in html
    # claiming again by the same agent keeps the same authorisation
    assert cli("handoffs", "claim", "1", "--agent", "zhang", *COLLECTORS)[0] == 0
    assert re.search(r"Verification code: ([A-Z0-9-]+)", cli("handoffs", "authorisation", "1")[1]).group(1) == code  # type: ignore[union-attr]


def test_a_visit_claim_with_one_collector_is_refused_and_claims_nothing(visit_app: App, cli: Cli) -> None:
    for collectors in ((), COLLECTORS[:2], ("--collector", "Zhang Wei:SH-1001", "--collector", "Zhang W:SH-1001")):
        code, _, err = cli("handoffs", "claim", "1", "--agent", "zhang", *collectors)
        assert code == 2 and "at least 2 collectors" in err
    code, _, err = cli("handoffs", "claim", "1", "--agent", "zhang", "--collector", "Zhang Wei", *COLLECTORS)
    assert code == 2 and "Name:STAFFID" in err
    code, out, _ = cli("handoffs", "list", "--format", "json", "--status", "claimed")
    assert code == 0 and "V-1" not in out
    code, _, err = cli("handoffs", "authorisation", "1")
    assert code == 2 and "no visit authorisation" in err


def test_collectors_are_only_for_visits(visit_app: App, cli: Cli) -> None:
    code, _, err = cli("handoffs", "claim", "2", "--agent", "zhang", *COLLECTORS)
    assert code == 2 and "--collector is for visit hand-offs" in err
    assert cli("handoffs", "claim", "2", "--agent", "zhang")[0] == 0


# /verify ---------------------------------------------------------------------------------------------------------
def test_verify_says_genuine_for_whom_and_until_when_and_nothing_about_the_debt(visit_app: App, cli: Cli) -> None:
    code = claimed(cli, *COLLECTORS)
    (form, posted, queried, lower) = verify(visit_app, ("GET", None), ("POST", code), ("GET", code),
                                            ("POST", code.lower().replace("-", " ")))
    assert form[0] == 200 and "<form" in form[1] and "Genuine" not in form[1]
    for status, page in (posted, queried, lower):
        assert status == 200 and "Genuine." in page
        assert "Zhang Wei (staff id SH-1001)" in page and "Li Na (staff id SH-1002)" in page
        assert re.search(r"from \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d inclusive", page)
        assert "V-1" not in page and "amount" not in page.lower() and normalise_code(code) not in page
        assert "¥" not in page and "overdue" not in page.lower()


def test_verify_says_expired_after_the_last_day_and_a_made_up_code_is_not_genuine(
        visit_app: App, cli: Cli, caplog: pytest.LogCaptureFixture) -> None:
    code = claimed(cli, *COLLECTORS)
    made_up = "ABCDE-FGHJK" if normalise_code(code) != "ABCDEFGHJK" else "ZZZZZ-ZZZZZ"
    clock = visit_app.clock
    assert isinstance(clock, FixedClock)
    clock.advance(timedelta(days=7))
    (last_day,) = verify(visit_app, ("POST", code))
    assert "Genuine." in last_day[1]
    clock.advance(timedelta(days=2))
    with caplog.at_level("INFO"):
        (expired, fake) = verify(visit_app, ("POST", code), ("GET", made_up))
    assert expired[0] == 200 and "expired" in expired[1] and "Genuine." not in expired[1]
    assert fake[0] == 200 and "Not genuine." in fake[1] and "Zhang" not in fake[1]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert normalise_code(code) not in logged and "FGHJK" not in logged and "ZZZZZ" not in logged


def test_verify_limits_the_checks_per_client(visit_app: App) -> None:
    pages = verify(visit_app, *([("POST", "ABCDE-FGHJK")] * (CHECKS_PER_WINDOW + 1)))
    assert [status for status, _ in pages] == [200] * CHECKS_PER_WINDOW + [429]
    assert "Too many checks" in pages[-1][1]


# visit outcomes and repayment plans ----------------------------------------------------------------------------------
def test_a_visit_outcome_records_its_collectors_and_place_masked(visit_app: App, cli: Cli) -> None:
    claimed(cli, *COLLECTORS)
    code, _, err = cli("handoffs", "close", "1", "--outcome", "visit_done", "--agent", "Zhang Wei")
    assert code == 2 and "at least 2 collectors" in err
    code, _, err = cli("handoffs", "close", "1", "--outcome", "visit_done", "--agent", "Zhang Wei", "--agent",
                         "Li Na", "--place", "borrower's home, call 13812345678 at the gate", "--note", "agreed")
    assert code == 0, err
    item = get_handoff(visit_app.engine, 1)
    assert item["agents"] == ["Zhang Wei", "Li Na"] and item["closed_at"] is not None
    assert item["place"].startswith("borrower's home") and "13812345678" not in item["place"]
    (closed,) = [e for e in item["events"] if e["action"] == "closed"]
    assert "place: borrower's home" in closed["detail"] and "13812345678" not in closed["detail"]
    assert [e["action"] for e in item["events"]] == ["opened", "claimed", "authorised", "closed"]


def test_purge_past_retention_deletes_a_closed_visits_authorisation_and_its_code_no_longer_checks(
        visit_app: App, cli: Cli) -> None:
    code = claimed(cli, *COLLECTORS)
    assert cli("handoffs", "close", "1", "--outcome", "visit_done", "--agent", "Zhang Wei", "--agent", "Li Na")[0] == 0
    retention = timedelta(days=3 * 365)
    counts = purge(visit_app.engine, retention, retention, datetime.now(UTC) + retention + timedelta(days=1))
    assert counts.deleted["visit_authorisations"] == 1
    ((status, page),) = verify(visit_app, ("GET", code))
    assert status == 200 and "Not genuine" in page

def test_a_repayment_plan_starts_from_the_sources_overdue_amount(visit_app: App, cli: Cli) -> None:
    seed_rows(visit_app.engine, demo_row("C-1", date(2026, 1, 1), overdue_amount="1000.00"))
    today = datetime.now(UTC).date()
    first, second = today + timedelta(days=10), today + timedelta(days=40)
    for args, error in ((("--agent", "a"), "needs its instalments"),
                        (("--agent", "a", "--instalment", "soon:500"), "DATE:AMOUNT"),
                        (("--agent", "a", "--instalment", f"{first}:-5"), "above zero"),
                        (("--agent", "a", "--instalment", f"{first}:500", "--until", str(second)), "no --until")):
        code, _, err = cli("handoffs", "close", "2", "--outcome", "repayment_plan", *args)
        assert code == 2 and error in err, err
    code, out, err = cli("handoffs", "close", "2", "--outcome", "repayment_plan", "--agent", "a",
                         "--instalment", f"{second}:500.00", "--instalment", f"{first}:500.00")
    assert code == 0 and "a missed one resumes them" in out, err
    item = get_handoff(visit_app.engine, 2)
    assert item["until"] == second
    assert RepaymentPlan.from_json(item["plan"]) == RepaymentPlan(
        (Instalment(first, Decimal("500.00")), Instalment(second, Decimal("500.00"))), Decimal("1000.00"))


def test_a_kept_plan_pauses_the_ladder_and_a_missed_instalment_resumes_it(workdir: Path, clock: FixedClock) -> None:
    app = build(workdir, clock)
    try:
        today = local_today(clock)
        seed_rows(app.engine, borrower("H-1", today - timedelta(days=40), 1, overdue_amount="100.00"))
        run(app, clock)
        (item,) = handoff_rows(app)
        first, last = today + timedelta(days=5), today + timedelta(days=20)
        plan = (Instalment(first, Decimal("60.00")), Instalment(last, Decimal("40.00")))
        close_handoff(app.engine, item["id"], Closing("repayment_plan", ("alice",), instalments=plan,
                                                      start_amount=Decimal("100.00")), clock(), today)

        def on(day: date) -> Decision:
            return decision_of(app, "H-1", datetime.combine(day, datetime.min.time(), SHANGHAI) + timedelta(hours=10))

        kept = on(first)  # its last day to pay
        assert (kept.reason, kept.detail) == ("pause", f"repayment plan until {last}: kept so far, next instalment "
                                                       f"60.00 by {first} (hand-off #{item['id']})")
        missed = on(first + timedelta(days=1))  # nothing paid: broken, the ladder resumes
        assert missed.reason is None and missed.step is not None and missed.step.step == "agents"
        with app.engine.begin() as connection:  # 60 paid: kept again
            connection.execute(demo_accounts.update().values(overdue_amount="40.00"))
        assert on(first + timedelta(days=1)).reason == "pause"
        assert on(last + timedelta(days=1)).reason is None  # the plan is over and 40 is still due
    finally:
        app.engine.dispose()


D = date(2026, 12, 1)
PLAN = RepaymentPlan((Instalment(D, Decimal("500.00")), Instalment(D + timedelta(days=31), Decimal("500.00"))),
                     Decimal("1200.00"))


@pytest.mark.parametrize(("overdue", "today", "holds", "says"), [
    ("1200.00", D, True, "kept so far, next instalment 500.00 by 2026-12-01"),
    ("1200.00", D + timedelta(days=1), False, "instalment 2026-12-01 (500.00) missed, 1200.00 still overdue"),
    ("700.00", D + timedelta(days=1), True, "next instalment 500.00 by 2027-01-01"),
    ("650.00", D + timedelta(days=32), False, "instalment 2027-01-01 (500.00) missed"),
    ("200.00", D + timedelta(days=32), True, "no more due"),
])
def test_the_plan_holds_while_the_overdue_amount_is_down_by_the_instalments_due(
        overdue: str, today: date, holds: bool, says: str) -> None:
    assert PLAN.holds(Decimal(overdue), today) is holds
    assert says in PLAN.explain(Decimal(overdue), today)


def test_the_api_claims_a_visit_only_with_two_collectors_and_returns_its_authorisation(workdir: Path) -> None:
    app = build_app(Settings.from_env({**Settings.from_env().env, "DISPATCHER_API_TOKEN": TOKEN}),
                    clock=FixedClock(datetime.now(UTC)))
    open_handoff(app.engine, WorkItem("V-1", "V-1|2026-01-01|visit|0", None, "visit", None, "field", 1, "visit"),
                 app.clock())
    claim = "/api/handoffs/1/claim"
    (one, bad_days) = calls(
        app, ("POST", claim, {"agent": "zhang", "collectors": ["Zhang Wei:SH-1001"]}, TOKEN),
        ("POST", claim, {"agent": "zhang", "collectors": ["Zhang Wei:SH-1001", "Li Na:SH-1002"],
                         "valid_days": 0}, TOKEN))
    assert one[0] == 400 and "collector" in one[1]["error"]
    assert bad_days[0] == 400 and "valid_days" in bad_days[1]["error"]
    assert get_handoff(app.engine, 1)["status"] == "open"  # refused before anything was claimed
    (two,) = calls(app, ("POST", claim, {"agent": "zhang", "collectors": ["Zhang Wei:SH-1001", "Li Na:SH-1002"]},
                         TOKEN))
    assert two[0] == 200 and two[1]["status"] == "claimed"
    code = re.search(r"code ([A-Z0-9-]+)", two[1]["authorisation"])
    assert code is not None
    ((status, page),) = verify(app, ("GET", code.group(1)))
    assert status == 200 and "SH-1002" in page and "Not genuine" not in page
    app.engine.dispose()


def test_the_api_closes_with_a_visits_place_and_a_repayment_plan_from_the_sources_amount(workdir: Path) -> None:
    app = build_app(Settings.from_env({**Settings.from_env().env, "DISPATCHER_API_TOKEN": TOKEN}),
                    clock=FixedClock(datetime.now(UTC)))
    seed_rows(app.engine, demo_row("C-1", date(2026, 1, 1), overdue_amount="1000.00"))
    for account, kind in (("V-1", "visit"), ("C-1", "call")):
        open_handoff(app.engine, WorkItem(account, f"{account}|2026-01-01|x|0", None, "x", None, "q", 1, kind),
                     app.clock())
    first = datetime.now(UTC).date() + timedelta(days=10)
    bad, plan, visit = calls(
        app, ("POST", "/api/handoffs/2/close", {"outcome": "repayment_plan", "agent": "a",
                                                "instalments": ["soon:500"]}, TOKEN),
        ("POST", "/api/handoffs/2/close", {"outcome": "repayment_plan", "agent": "a",
                                           "instalments": [f"{first}:500.00"]}, TOKEN),
        ("POST", "/api/handoffs/1/close", {"outcome": "visit_done", "agents": ["Zhang Wei", "Li Na"],
                                           "place": "at the gate, call 13812345678"}, TOKEN))
    assert bad[0] == 400 and "DATE:AMOUNT" in bad[1]["error"]
    assert plan[0] == 200 and visit[0] == 200
    assert RepaymentPlan.from_json(get_handoff(app.engine, 2)["plan"]) == RepaymentPlan(
        (Instalment(first, Decimal("500.00")),), Decimal("1000.00"))
    place = get_handoff(app.engine, 1)["place"]
    assert place.startswith("at the gate") and "13812345678" not in place
    app.engine.dispose()
