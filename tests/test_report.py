"""``dispatcher report`` and ``/report``: a fortnight of real runs, then the page.

The ledger is filled by the product itself: demo borrowers, ``Runner`` runs at fixed clocks
(09:00 and 18:30 in the schedule's zone) over 14 days, some borrowers paying in the lender's
table between runs and one replying STOP. The page's tables are compared with the ledger read
here directly (and with ``dispatcher attempts``), the cure figures with
:mod:`dispatcher.outcomes.measures`; then headless Chromium opens it: no console message (the
page's Content-Security-Policy turns any request into one), nothing wider than a 375 px phone,
no text over other text.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import random
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from browser import TIMEOUT, chromium, png_size
from conftest import Cli, FixedClock
from markupsafe import escape
from sqlalchemy import func, select, update
from webserver import serving

from dispatcher.app import App, build_app
from dispatcher.demo import demo_accounts, seed_demo
from dispatcher.ledger.suppressions import suppress
from dispatcher.ledger.tables import attempts
from dispatcher.outcomes.measures import cure_rates, make_rate
from dispatcher.pipeline.history import CONTACT_STATUSES
from dispatcher.pipeline.run import Runner
from dispatcher.report.cures import Cures
from dispatcher.report.page import Figures, render_page
from dispatcher.report.period import Period
from dispatcher.report.queries import CHANNEL_STATUSES, ChannelStatuses, StepFunnel, Tally
from dispatcher.report.volume import Day
from dispatcher.rules.policy import resolve_policy
from dispatcher.settings import Settings

ACCOUNTS = 100
DAYS = 14
FEW_DAYS = 4
RUN_TIMES = (("morning", time(9, 0)), ("evening", time(18, 30)))
PAY_CHANCE = 0.15
"""Chance that a borrower reminded since the last run pays everything before the next one."""
TOKEN = "report-token-9d2e"
SHANGHAI = ZoneInfo("Asia/Shanghai")


# the fortnight ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fortnight:
    app: App
    first: datetime
    last: datetime
    stopped_phone: str


def _reminded_since(app: App, since: datetime) -> list[str]:
    query = (select(attempts.c.account_id).distinct()
             .where(attempts.c.status.in_(("sent", "delivered")), attempts.c.attempted_at >= since)
             .order_by(attempts.c.account_id))
    with app.engine.connect() as connection:
        return list(connection.execute(query).scalars())


def _pay(app: App, rng: random.Random, since: datetime) -> None:
    """Borrowers reminded since ``since`` pay in full, at random: their balance is 0 in the lender's table."""
    payers = [account for account in _reminded_since(app, since) if rng.random() < PAY_CHANCE]
    if payers:
        with app.engine.begin() as connection:
            connection.execute(update(demo_accounts).where(demo_accounts.c.account_id.in_(payers))
                               .values(overdue_amount="0.00"))


def _stop(app: App, now: datetime) -> str:
    """A borrower answers STOP (the suppression ``inbound_stop`` the reply webhook records); returns the phone."""
    with app.engine.connect() as connection:
        phone = connection.execute(select(demo_accounts.c.phone).where(demo_accounts.c.phone.like("+86%"))
                                   .order_by(demo_accounts.c.account_id).limit(1)).scalar_one()
    suppress(app.engine, "sms", phone, "inbound_stop", now)
    return str(phone)


def simulate(app: App, clock: FixedClock, days: int) -> Fortnight:
    """Seed the demo borrowers, then ``days`` days of runs with payments between them and one STOP on day 3."""
    start = clock.now.astimezone(SHANGHAI).date()
    seed_demo(app.engine, ACCOUNTS, start)
    rng = random.Random(12)
    first, last, stopped = clock.now, clock.now, ""
    for day in range(days):
        for name, at in RUN_TIMES:
            clock.now = datetime.combine(start + timedelta(days=day), at, SHANGHAI).astimezone(UTC)
            if day or name != "morning":
                _pay(app, rng, last)
            if day == 3 and name == "morning":
                stopped = _stop(app, clock.now)
            assert Runner(app).run(name, clock.now).status == "completed"
            last = clock.now
    return Fortnight(app, first, last, stopped)


@pytest.fixture
def fortnight(app: App, clock: FixedClock) -> Fortnight:
    return simulate(app, clock, DAYS)


@pytest.fixture
def few_days(app: App, clock: FixedClock) -> Fortnight:
    return simulate(app, clock, FEW_DAYS)


# reading the page ------------------------------------------------------------------------------------------------
class _Tables(HTMLParser):
    """Every ``<table id>`` of a page: row ``data-key`` → column (``data-col``) → text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self._table: str | None = None
        self._row: str | None = None
        self._cols: list[str] = []
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("id"):
            self._table = found["id"]
            self.tables[str(self._table)] = {}
        elif tag == "tr" and self._table and found.get("data-key"):
            self._row = found["data-key"]
            self.tables[self._table][str(self._row)] = {}
        elif self._row is not None and found.get("data-col"):
            self._cols.append(str(found["data-col"]))
            self._text.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span") and self._cols and self._table and self._row is not None:
            self.tables[self._table][self._row][self._cols.pop()] = self._text.pop().strip()
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._text:
            self._text[-1] += data


def tables_of(page: str) -> dict[str, dict[str, dict[str, str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def number(text: str) -> int:
    return int(text.replace(",", ""))


def column(table: dict[str, dict[str, str]], col: str) -> dict[str, int]:
    return {key: number(cells[col]) for key, cells in table.items() if cells.get(col)}


def write_report(cli: Cli, folder: Path, *options: str) -> str:
    out = folder / "report.html"
    code, stdout, stderr = cli("report", *options, "--out", str(out))
    assert code == 0, stderr
    assert "\r" not in stderr  # progress is drawn on a terminal only
    assert stdout == ""
    return out.read_text(encoding="utf-8")


# the ledger, read here -------------------------------------------------------------------------------------------
def ledger_counts(app: App, *keys: str, statuses: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    columns = [attempts.c[key] for key in keys]
    query = select(*columns, func.count()).group_by(*columns)
    if statuses:
        query = query.where(attempts.c.status.in_(statuses))
    with app.engine.connect() as connection:
        return {tuple(str(part) for part in row[:-1]): int(row[-1]) for row in connection.execute(query)}


def contacts_per_day(app: App) -> Counter[str]:
    query = select(attempts.c.attempted_at).where(attempts.c.status.in_(sorted(CONTACT_STATUSES)),
                                                  attempts.c.channel != "handoff")
    with app.engine.connect() as connection:
        return Counter(at.astimezone(SHANGHAI).date().isoformat() for at in connection.execute(query).scalars())


# the tests -------------------------------------------------------------------------------------------------------
def test_the_figures_on_the_page_are_the_ledgers(fortnight: Fortnight, cli: Cli, tmp_path: Path) -> None:
    app = fortnight.app
    page = write_report(cli, tmp_path)
    tables = tables_of(page)

    code, _, listed = cli("attempts", "--status", "sent")
    assert code == 0
    sent_listed = int(re.search(r"(\d+) attempt\(s\)", listed).group(1))  # type: ignore[union-attr]
    assert not ledger_counts(app, "status", statuses=("delivered", "undelivered"))  # the outbox has no receipts
    assert number(tables["funnel"]["total"]["sent"]) == sent_listed > 0

    sent = {key[0]: n for key, n in ledger_counts(app, "step", statuses=("sent",)).items()}
    assert column(tables["funnel"], "sent") == {**dict.fromkeys(column(tables["funnel"], "due"), 0), **sent,
                                                "total": sent_listed}
    by_status = ledger_counts(app, "status", "channel")
    shown = {(status, channel): number(text) for status, cells in tables["channels"].items()
             for channel, text in cells.items() if number(text)}
    assert shown == by_status
    decided = ledger_counts(app, "status", "rule_id", statuses=("suppressed", "deferred"))
    assert {tuple(key.split("/", 1)): n for key, n in column(tables["rules"], "count").items()} == decided
    assert {day: n for day, n in column(tables["daily"], "total").items() if n} == contacts_per_day(app)
    assert set(column(tables["daily"], "total")) == {
        (fortnight.first.astimezone(SHANGHAI).date() + timedelta(days=n)).isoformat() for n in range(DAYS)}
    assert column(tables["opt-outs"], "count") == {"inbound_stop/sms/active": 1}
    assert all(cells["within"] == "yes" for cells in tables["caps"].values()) and len(tables["caps"]) == 3

    # cure rates per step and per variant, each with its interval, as the measures compute them
    since = datetime.combine(fortnight.first.astimezone(SHANGHAI).date(), time(), SHANGHAI)
    until = datetime.combine(fortnight.last.astimezone(SHANGHAI).date() + timedelta(days=1), time(), SHANGHAI)
    for by in ("step", "variant", "channel", "bucket"):
        expected = {r.key: (r.reminded, r.cured, f"{100 * r.low:.1f}", f"{100 * r.high:.1f}")
                    for r in cure_rates(app.engine, by, since, until)}  # type: ignore[arg-type]
        table = tables[f"cures-{by}"]
        assert {key: (number(c["reminded"]), number(c["cured"]), c["low"], c["high"]) for key, c in table.items()} \
            == expected, by
    assert sum(number(c["cured"]) for c in tables["cures-step"].values()) > 0
    assert set(tables["cures-variant"]) == {"firm/firm", "firm/firm_help"}
    steps = [step for step in tables["funnel"] if step != "total"]
    assert column(tables["funnel"], "cured") == {
        **dict.fromkeys(steps, 0),
        **{key: number(c["cured"]) for key, c in tables["cures-step"].items()}}
    assert "firm/firm/firm_help" in tables["comparisons"]
    assert_no_personal_data_nor_links(fortnight, page)


def assert_no_personal_data_nor_links(fortnight: Fortnight, page: str) -> None:
    with fortnight.app.engine.connect() as connection:
        rows = connection.execute(select(demo_accounts.c.phone, demo_accounts.c.email, demo_accounts.c.name)).all()
    words = {value for row in rows for value in row if value and len(value) > 3}
    assert words and not [word for word in words if word in page or html.escape(word) in page]
    assert fortnight.stopped_phone not in page
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page.lower()
    assert "default-src 'none'" in page


def test_the_period_options(few_days: Fortnight, cli: Cli, tmp_path: Path) -> None:
    start = few_days.first.astimezone(SHANGHAI).date()
    page = write_report(cli, tmp_path, "--since", str(start + timedelta(days=2)), "--until",
                        str(start + timedelta(days=3)))
    assert list(tables_of(page)["daily"]) == [str(start + timedelta(days=n)) for n in (2, 3)]
    code, _, err = cli("report", "--since", "3 March")
    assert code == 2 and "--since '3 March' is not an ISO date" in err
    code, _, err = cli("report", "--since", "2026-03-05", "--until", "2026-03-01")
    assert code == 2 and "--until" in err


def test_failures_and_lifted_opt_outs_are_drawn_tabled_and_escaped(app: App) -> None:
    period = Period(datetime(2026, 3, 1, tzinfo=SHANGHAI), datetime(2026, 3, 3, tzinfo=SHANGHAI), SHANGHAI)
    hostile = '<script>alert("x")</script>'
    rate = make_rate("gentle", 40, 10)
    figures = Figures(
        period, period.until, "cn", [StepFunnel("gentle", 50, 40, 30, 6)],
        [ChannelStatuses("sms", dict.fromkeys(CHANNEL_STATUSES, 0) | {"sent": 40, "failed": 6})],
        [Tally(("sms", "permanent", "21211"), 4), Tally(("sms", "transient", hostile), 2)],
        [Tally(("deferred", "window"), 3)], [Tally(("inbound_stop", "sms", "lifted"), 2)],
        [Day(date(2026, 3, 1), {"sms": 3}, 1), Day(date(2026, 3, 2), {}, 0)], ["sms"], [],
        Cures(7, {"step": [rate], "channel": [], "bucket": [], "variant": []}, [], make_rate("promise_to_pay", 0, 0)))
    page = render_page(figures, resolve_policy(app.pipeline.loaded.schedule))
    tables = tables_of(page)
    assert column(tables["failures"], "count") == {"sms/permanent/21211": 4, f"sms/transient/{hostile}": 2}
    assert column(tables["opt-outs"], "count") == {"inbound_stop/sms/lifted": 2}
    assert tables["cures-step"]["gentle"] == {"reminded": "40", "cured": "10", "rate": "25.0",
                                              "low": f"{100 * rate.low:.1f}", "high": f"{100 * rate.high:.1f}"}
    assert hostile not in page and str(escape(hostile)) in page
    # funnel, channels, failures, rules, cure by step, daily, busiest, opt-outs, wide and narrow; no empty chart
    assert page.count("<svg") == 2 * 8


# the browser -----------------------------------------------------------------------------------------------------
_TEXT_BOXES = """
window.addEventListener("load", function () {
  var doc = document.querySelector("iframe").contentDocument, boxes = [], walker, node;
  walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  while ((node = walker.nextNode())) {
    var text = node.textContent.trim(), owner = node.parentElement;
    if (!text || owner.closest("style") || owner.closest("[transform*=rotate]")) continue;
    var range = doc.createRange();
    range.selectNodeContents(node);
    Array.prototype.forEach.call(range.getClientRects(), function (r) {
      if (r.width > 0 && r.height > 0) boxes.push([r.left, r.top, r.right, r.bottom, text.slice(0, 40)]);
    });
  }
  var over = [];
  for (var i = 0; i < boxes.length; i++) for (var j = i + 1; j < boxes.length; j++) {
    var a = boxes[i], b = boxes[j];
    var w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    if (w > 1 && h > 1) over.push([a[4], b[4]]);
  }
  var out = document.createElement("pre");
  out.id = "overlaps";
  out.textContent = JSON.stringify({boxes: boxes.length, over: over.slice(0, 20)});
  document.body.appendChild(out);
});
"""


def _run_chromium(binary: str, page: str, width: int, *args: str, script: str = "") -> subprocess.CompletedProcess[str]:
    """``page`` in an iframe ``width`` px wide (as tests/browser.py shows it), Chromium's console on stderr."""
    frame = (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="display:block;border:0;width:{width}px;'
             f'height:20000px"></iframe>')
    wrapper = f'<!DOCTYPE html><html><body style="margin:0">{frame}<script>{script}</script></body></html>'
    with tempfile.TemporaryDirectory(prefix="chromium-") as folder:
        path = Path(folder) / "wrapper.html"
        path.write_text(wrapper if script else page, encoding="utf-8")
        command = [binary, "--headless", "--disable-gpu", "--no-first-run", "--disable-extensions",
                   "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={folder}/profile",
                   f"--window-size={max(width, 500)},1600", "--enable-logging=stderr", "--v=0", *args, path.as_uri()]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def console_messages(binary: str, page: str) -> list[str]:
    """What the page wrote to Chromium's console while loading: errors, CSP refusals (a request it tried)."""
    done = _run_chromium(binary, page, 1280, "--dump-dom")
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def overlapping_text(binary: str, page: str, width: int) -> dict[str, Any]:
    done = _run_chromium(binary, page, width, "--dump-dom", script=_TEXT_BOXES)
    found = re.search(r'<pre id="overlaps">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-500:]
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


@pytest.mark.browser  # the page's figures are compared on both ledgers above; its layout is the same
def test_chromium_opens_it_offline_and_it_reads_at_1280_and_375_px(fortnight: Fortnight, cli: Cli,
                                                                     tmp_path: Path) -> None:
    browser = chromium()
    page = write_report(cli, tmp_path)
    broken = page.replace("</body>", '<img src="https://cdn.example/x.png"><script>console.error(1)</script></body>')
    assert len(console_messages(browser.binary, broken)) == 2  # the check sees a request and an error
    assert console_messages(browser.binary, page) == []

    stacked = '<p style="position:absolute;top:0">one line</p><p style="position:absolute;top:4px">another</p>'
    assert overlapping_text(browser.binary, stacked, 375)["over"] == [["one line", "another"]]  # the check works
    for layout in browser.layouts(page, (1280, 375)):
        assert not layout.overflows, layout
    for width in (1280, 375):
        shot = browser.screenshot(page, width, tmp_path / f"report-{width}.png")
        assert png_size(shot) == (width, 1600)
        found = overlapping_text(browser.binary, page, width)
        assert found["boxes"] > 200 and found["over"] == [], found


# the web page ----------------------------------------------------------------------------------------------------
def _get(app: App, path: str, token: str | None) -> tuple[int, str, dict[str, str]]:
    async def go() -> tuple[int, str, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with serving(app) as (host, port), aiohttp.ClientSession() as session, \
                session.get(f"http://{host}:{port}{path}", headers=headers) as response:
            return response.status, await response.text(), dict(response.headers)

    return asyncio.run(go())


@pytest.fixture
def served(few_days: Fortnight, clock: FixedClock) -> Iterator[App]:
    app = build_app(Settings.from_env({**Settings.from_env().env, "DISPATCHER_API_TOKEN": TOKEN}), clock=clock)
    yield app
    app.engine.dispose()


def test_web_serves_the_same_page_behind_the_token(served: App, few_days: Fortnight, cli: Cli,
                                                   tmp_path: Path) -> None:
    assert _get(few_days.app, "/report", TOKEN)[0] == 404  # no token configured: no page
    assert _get(served, "/report", None)[0] == 401
    assert _get(served, "/report", "wrong")[0] == 401
    status, text, headers = _get(served, "/report", TOKEN)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    assert tables_of(text)["funnel"] == tables_of(write_report(cli, tmp_path))["funnel"]
    status, text, _ = _get(served, "/report?since=yesterday", TOKEN)
    assert status == 400 and text == "since 'yesterday' is not an ISO date like 2026-12-01"

