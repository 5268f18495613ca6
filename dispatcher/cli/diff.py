"""``dispatcher diff [OLD] NEW``: who gains, loses or gets a changed reminder if NEW replaces OLD.

Both versions are planned by ``dispatcher plan``'s code (:mod:`dispatcher.pipeline.dry_run`) over
the same accounts (NEW's source) at the same moment, reading the ledger's history and
writing nothing; :mod:`dispatcher.schedule.diff` compares the two. Without OLD the
version the daemon runs is taken from the ledger (:mod:`dispatcher.ledger.config_versions`),
with its own template snapshot.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from dispatcher.app import App, build_app
from dispatcher.cli import common
from dispatcher.cli.progress import Progress
from dispatcher.errors import DispatcherError
from dispatcher.ledger.config_versions import load_stored, running
from dispatcher.output import to_json, write_rows
from dispatcher.pipeline.dry_run import changes_between
from dispatcher.rules.content import template_checks
from dispatcher.schedule.diff import AccountChange, Reminder, Totals
from dispatcher.schedule.loader import LoadedSchedule, load_schedule
from dispatcher.settings import Settings

CHANGE_COLUMNS = ("account_id", "change", "step", "channel", "template", "when")
TOTAL_COLUMNS = ("totals", "gained", "lost", "changed", "net")
_WIDTHS = {"change": 7, "step": 20, "channel": 18, "template": 30, "when": 47, "totals": 30}
ARROW = " → "
NOW = "now"
"""A table's ``when`` of a reminder that goes out at the moment planned for (JSON gives the time)."""
LATER = "later"
"""A table's ``when`` of a reminder deferred to a later run that named no time."""


def diff_command(args: argparse.Namespace) -> int:
    settings = common.settings(args)
    new = _load(args.new, settings)
    app = build_app(settings, new, migrate=False)
    at = common.moment(args.at, app)
    old = _load(args.old, settings) if args.old else _running(app)
    app.pipeline.source.check_contract()  # a broken mapping is refused before any output
    with Progress(f"planning versions {old.version} and {new.version}", unit=" decisions") as bar:
        changes = list(changes_between(app, app.build_pipeline(old), app.pipeline, at, bar.advance))
    totals = Totals.of(changes)
    zone = common.shown_zone(args, app)
    if args.format == "json":
        print(to_json({"at": at.astimezone(zone), "old": old.version, "new": new.version,
                       "changes": [_json_change(c, zone) for c in changes], "totals": totals.as_dict()}))
    else:
        write_rows(sys.stdout, (_row(c, zone, at) for c in changes), CHANGE_COLUMNS, "table", widths=_WIDTHS)
        print()
        write_rows(sys.stdout, _total_rows(totals), TOTAL_COLUMNS, "table", widths=_WIDTHS)
    print(f"diff at {at.isoformat()}: version {old.version} -> {new.version}: {totals.summary()}", file=sys.stderr)
    return 0


def _load(path: str, settings: Settings) -> LoadedSchedule:
    """A schedule file and the templates beside it, checked as the daemon checks them; ConfigError if invalid."""
    return load_schedule(Path(path), settings.env, check_templates=template_checks)


def _running(app: App) -> LoadedSchedule:
    stored = running(app.engine)
    if stored is None:
        raise DispatcherError("no running configuration version is recorded in the ledger (the daemon records "
                              "each version it loads): name the OLD file, e.g. dispatcher diff schedules.yaml NEW")
    return load_stored(stored, app.settings.env)


def _json_change(change: AccountChange, zone: tzinfo) -> dict[str, Any]:
    def side(reminder: Reminder | None) -> dict[str, Any] | None:
        if reminder is None:
            return None
        return {**reminder.as_dict(), "when": reminder.when.astimezone(zone) if reminder.when else None}

    return {"account_id": change.account_id, "change": change.change.value, "old": side(change.old),
            "new": side(change.new)}


def _row(change: AccountChange, zone: tzinfo, at: datetime) -> dict[str, Any]:
    """One table row: each field as the side that has it, or ``old → new`` where they differ."""
    row: dict[str, Any] = {"account_id": change.account_id, "change": change.change.value}
    sides = [r for r in (change.old, change.new) if r is not None]
    for name in ("step", "channel", "template"):
        values = [str(getattr(r, name) or "") for r in sides]
        row[name] = values[0] if len(set(values)) == 1 else ARROW.join(values)
    row["when"] = _when(*(r.when for r in sides), zone=zone, at=at)
    return row


def _when(*times: datetime | None, zone: tzinfo, at: datetime) -> str:
    """``now`` (the moment planned for), a deferred reminder's time to the minute, or ``old → new`` (the new one
    without its date when it is the same day)."""
    texts = [_time(t, zone, at) for t in times]
    if len(set(texts)) == 1:
        return texts[0]
    before, after = texts
    if before[:11] == after[:11] and before != NOW:  # the same date: the second shows the time only
        after = after[11:]
    return f"{before}{ARROW}{after}"


def _time(value: datetime | None, zone: tzinfo, at: datetime) -> str:
    if value is None:
        return LATER
    return NOW if value == at else value.astimezone(zone).isoformat(sep=" ", timespec="minutes")


def _total_rows(totals: Totals) -> Iterator[dict[str, Any]]:
    for kind, tallies in (("step", totals.by_step), ("channel", totals.by_channel)):
        for name, tally in sorted(tallies.items()):
            yield {"totals": f"{kind} {name}", **tally.as_dict()}
    yield {"totals": "all", "gained": totals.gained, "lost": totals.lost, "changed": totals.changed,
           "net": totals.gained - totals.lost}
