"""The report page: read every figure of a period, draw the charts, lay out ``page.html.j2``.

The page is one HTML document that needs nothing else: styles inline, charts as inline SVG,
no script, and a Content-Security-Policy that forbids any request, so a copy mailed around
opens offline and cannot call home. Every chart has its figures in a table beside it. Text from
the ledger is escaped (Jinja2 autoescape); the page holds no personal data: rule ids, channels,
steps and counts, never an address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from sqlalchemy import Engine

from dispatcher.app import App
from dispatcher.report import charts
from dispatcher.report.cures import Cures, read_cures
from dispatcher.report.period import Period, report_period
from dispatcher.report.queries import (
    CHANNEL_STATUSES,
    ChannelStatuses,
    StepFunnel,
    Tally,
    channel_statuses,
    decisions,
    failures,
    funnel,
    opt_outs,
)
from dispatcher.report.volume import CapUse, Day, cap_label, cap_uses, channels_of, contacts, daily, daily_caps
from dispatcher.rules.policy import Policy
from dispatcher.zones import zone

TEMPLATE = "page.html.j2"

_T = TypeVar("_T")

Advance = Callable[[], None]
"""Called after each part of the report is read or drawn (a progress line counts them)."""

PARTS = 8
"""How many times :func:`read_figures` and :func:`render_page` together call ``advance``."""


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything the page shows, read from the ledger for one period."""

    period: Period
    generated_at: datetime
    profile: str
    funnel: list[StepFunnel]
    channels: list[ChannelStatuses]
    failures: list[Tally]
    decisions: list[Tally]
    opt_outs: list[Tally]
    days: list[Day]
    day_channels: list[str]
    caps: list[CapUse]
    cures: Cures


def build_report(app: App, since: str | None = None, until: str | None = None,
                 advance: Advance = lambda: None) -> str:
    """The page for ``--since`` / ``--until`` (ISO dates in the schedule's zone; default: all of the ledger)."""
    pipeline = app.pipeline
    schedule = pipeline.loaded.schedule
    period = report_period(app.engine, zone(schedule.timezone), app.clock(), since, until)
    variants = {step.step: [variant.template for variant in step.variants] for step in schedule.ladder
                if step.variants}
    figures = read_figures(app.engine, pipeline.policy, period, app.clock(), [step.step for step in schedule.ladder],
                           variants, advance)
    return render_page(figures, pipeline.policy, advance)


def read_figures(engine: Engine, policy: Policy, period: Period, now: datetime, steps: Sequence[str] = (),
                 variants: Mapping[str, Sequence[str]] | None = None, advance: Advance = lambda: None) -> Figures:
    """Every figure of ``period``; ``steps`` is the ladder's order of steps."""

    def read(value: _T) -> _T:
        advance()
        return value

    made = read(contacts(engine, period, policy.per_debt))
    days = daily(made, period)
    return Figures(
        period, now, policy.profile, read(funnel(engine, period, steps)), read(channel_statuses(engine, period)),
        read(failures(engine, period)), read(decisions(engine, period)), read(opt_outs(engine, period)), days,
        channels_of(days), cap_uses(made, policy), read(read_cures(engine, period, steps, variants)))


def render_page(figures: Figures, policy: Policy, advance: Advance = lambda: None) -> str:
    """The whole HTML document."""
    cured = figures.cures.cured_by_step()
    drawn = {
        "funnel": charts.funnel_chart(figures.funnel, cured),
        "channels": charts.channel_chart(figures.channels),
        "failures": charts.failure_chart(figures.failures),
        "decisions": charts.decision_chart(figures.decisions),
        "cures": {by: charts.cure_chart(rates) for by, rates in figures.cures.rates.items()},
        "daily": charts.daily_chart(figures.days, figures.day_channels),
        "busiest": charts.busiest_chart(figures.days, [(cap_label(cap), cap) for cap in daily_caps(policy)]),
        "opt_outs": charts.opt_out_chart(figures.opt_outs),
    }
    page = _environment().get_template(TEMPLATE).render(
        f=figures, charts=drawn, cured=cured, statuses=CHANNEL_STATUSES, zone=str(figures.period.zone),
        first_day=figures.period.days()[0], last_day=figures.period.days()[-1])
    advance()
    return page


@cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("dispatcher", "report"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=_number, pct=_percent, svg=_svg, local=_local)
    return env


def _number(value: int) -> str:
    return f"{value:,}"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _svg(text: str) -> Markup:
    """pygal's own serialisation of its drawing (its text already escaped as XML)."""
    return Markup(text)  # pygal escapes the labels it writes


def _local(moment: datetime, period: Period) -> str:
    return moment.astimezone(period.zone).strftime("%Y-%m-%d %H:%M %Z")
