"""The report's charts: pygal SVG, drawn twice (wide and narrow) to be inlined in the page.

pygal's SVG would load its tooltip script from a CDN and carries an inline config script:
both are left out (``js=[]`` and :func:`_without_scripts`), so the page runs no script and asks
the network for nothing. Its CSS is inlined by pygal itself. The SVG has a ``viewBox`` and no
size, so it takes the width of its box; a phone gets the narrow drawing, whose text stays legible
once scaled down, and the page's CSS shows one of the two.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pygal  # type: ignore[import-untyped]
from pygal.style import Style  # type: ignore[import-untyped]

from dispatcher.outcomes.measures import Rate
from dispatcher.report.queries import CHANNEL_STATUSES, ChannelStatuses, StepFunnel, Tally
from dispatcher.report.volume import Day
from dispatcher.schedule.models import Cap


def _drop_map_finder() -> None:
    """pygal appends a legacy ``sys.meta_path`` finder for its map plug-ins (``pygal.maps.*``, unused here) that
    has no ``find_spec``: from then on every failed import anywhere warns (ImportWarning). Take it out again."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, pygal.PluginImportFixer)]


_drop_map_finder()

WIDE = (960, 420)
"""Size of the drawing shown on a screen wider than a phone (scaled to the page's width)."""
NARROW = (420, 440)
"""Size of the drawing shown on a phone: close to its width, so text keeps its size."""

STYLE = Style(
    background="transparent", plot_background="transparent", foreground="#222", foreground_strong="#111",
    foreground_subtle="#ccc", opacity="0.9", opacity_hover="1", transition="none",
    font_family="system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', sans-serif",
    label_font_size=13, major_label_font_size=13, legend_font_size=14, value_font_size=12, tooltip_font_size=12,
    colors=("#1f6feb", "#2da44e", "#d29922", "#cf222e", "#8250df", "#57606a", "#bf3989", "#0a7f86"),
)
"""Distinct hues, taken by the series in this order, readable on a white page."""


@dataclass(frozen=True, slots=True)
class Chart:
    """One chart, drawn for a wide screen and for a phone."""

    wide: str
    narrow: str


Series = Sequence[tuple[str, Sequence[Any]]]


def _without_scripts(root: Any) -> Any:
    """Drop pygal's ``<script>`` and comment nodes (a config for its tooltips, links to its site)."""
    for parent in list(root.iter()):
        for child in list(parent):
            if not isinstance(child.tag, str) or child.tag.rsplit("}", 1)[-1] == "script":
                parent.remove(child)
    return root


def _draw(kind: Callable[..., Any], labels: Sequence[str], series: Series,
          strokes: Mapping[str, Mapping[str, Any]] | None = None, **options: Any) -> Chart:
    """``series`` (title, values) over ``labels``, a series named in ``strokes`` drawn with its own stroke."""
    drawings = []
    for width, height in (WIDE, NARROW):
        narrow = width == NARROW[0]
        chart = kind(style=STYLE, js=[], width=width, height=height, disable_xml_declaration=True,
                     legend_at_bottom=True, legend_at_bottom_columns=_columns(series, narrow), truncate_legend=-1,
                     x_label_rotation=45 if narrow and len(labels) > 4 else 0, truncate_label=14 if narrow else 24,
                     show_minor_x_labels=not narrow or len(labels) <= 8, x_labels_major_every=_every(labels, narrow),
                     margin=8, margin_bottom=24 if narrow else 8, spacing=10, **options)
        chart.add_xml_filter(_without_scripts)
        chart.x_labels = list(labels)
        for title, values in series:
            stroke = (strokes or {}).get(title)
            chart.add(title, list(values), **({"stroke_style": dict(stroke)} if stroke else {}))
        drawings.append(str(chart.render(is_unicode=True)))
    return Chart(*drawings)


def _columns(series: Series, narrow: bool) -> int:
    """Legend entries per row: all on one row on a wide screen, two a row on a phone."""
    return min(len(series), 2 if narrow else 6) or 1


def _every(labels: Sequence[str], narrow: bool) -> int | None:
    """Every how many x labels one is shown: all of a few, about 7 of many on a phone."""
    return max(1, len(labels) // 7) if narrow and len(labels) > 8 else None


def funnel_chart(steps: Sequence[StepFunnel], cured: Mapping[str, Rate] | None) -> Chart | None:
    if not steps:
        return None
    series: list[tuple[str, list[int]]] = [
        ("due", [s.due for s in steps]), ("sent", [s.sent for s in steps]),
        ("delivered", [s.delivered for s in steps])]
    if cured is not None:
        series.append(("cured", [cured[s.step].cured if s.step in cured else 0 for s in steps]))
    return _draw(pygal.Bar, [s.step for s in steps], series)


def channel_chart(channels: Sequence[ChannelStatuses]) -> Chart | None:
    if not channels:
        return None
    shown = [status for status in CHANNEL_STATUSES if any(c.counts[status] for c in channels)]
    return _draw(pygal.StackedBar, [c.channel for c in channels],
                 [(status, [c.counts[status] for c in channels]) for status in shown])


def failure_chart(failures: Sequence[Tally]) -> Chart | None:
    """Failures by channel (bars), stacked by error class."""
    if not failures:
        return None
    channels = sorted({t.key[0] for t in failures})
    classes = sorted({t.key[1] for t in failures})
    totals = {(channel, error_class): 0 for channel in channels for error_class in classes}
    for tally in failures:
        totals[tally.key[0], tally.key[1]] += tally.count
    return _draw(pygal.StackedBar, channels,
                 [(error_class, [totals[channel, error_class] for channel in channels]) for error_class in classes])


def decision_chart(decisions: Sequence[Tally]) -> Chart | None:
    """Suppressions and deferrals by rule id (horizontal bars)."""
    if not decisions:
        return None
    rules = sorted({t.key[1] for t in decisions})
    statuses = sorted({t.key[0] for t in decisions})
    counts = {(t.key[0], t.key[1]): t.count for t in decisions}
    return _draw(pygal.HorizontalStackedBar, rules,
                 [(status, [counts.get((status, rule), 0) for rule in rules]) for status in statuses])


def cure_chart(rates: Sequence[Rate]) -> Chart | None:
    """Cure rates in percent, each with its 95 % interval as a whisker."""
    if not rates:
        return None
    values = [{"value": round(100 * r.rate, 1), "ci": {"low": round(100 * r.low, 1), "high": round(100 * r.high, 1)}}
              for r in rates]
    return _draw(pygal.Bar, [r.key for r in rates], [("cure rate %", values)], range=(0, 100),
                 show_legend=False)


def daily_chart(days: Sequence[Day], channels: Sequence[str]) -> Chart | None:
    """Contacts per day, stacked by channel."""
    if not any(day.total for day in days):
        return None
    return _draw(pygal.StackedBar, [day.day.strftime("%m-%d") for day in days],
                 [(channel, [day.by_channel.get(channel, 0) for day in days]) for channel in channels])


def busiest_chart(days: Sequence[Day], caps: Sequence[tuple[str, Cap]]) -> Chart | None:
    """The most contacts one borrower got each day, against each daily cap (dashed flat lines)."""
    if not any(day.total for day in days):
        return None
    dashed = {"dasharray": "8,5", "width": 2}
    series = [(f"cap: {label}", [cap.max] * len(days)) for label, cap in caps]
    series.append(("busiest borrower", [day.busiest for day in days]))  # last: drawn over a cap it reaches
    top = max([day.busiest for day in days] + [cap.max for _, cap in caps])
    return _draw(pygal.Line, [day.day.strftime("%m-%d") for day in days], series,
                 {**{title: dashed for title, _ in series[:-1]}, "busiest borrower": {"width": 4}},
                 include_x_axis=True, dots_size=3, y_labels=list(range(0, top + 2, max(1, (top + 1) // 8))))


def opt_out_chart(opt_outs: Sequence[Tally]) -> Chart | None:
    """Suppressed addresses by source, stacked by channel."""
    if not opt_outs:
        return None
    sources = sorted({t.key[0] for t in opt_outs})
    channels = sorted({t.key[1] for t in opt_outs})
    counts: dict[tuple[str, str], int] = {}
    for tally in opt_outs:
        counts[tally.key[0], tally.key[1]] = counts.get((tally.key[0], tally.key[1]), 0) + tally.count
    return _draw(pygal.StackedBar, sources,
                 [(channel, [counts.get((source, channel), 0) for source in sources]) for channel in channels])
