"""``dispatcher handoffs``: the work items hand-off steps open for people; list, show, claim and close them.

A refused action (an unknown id, a closed item, a promise without ``--until``, a
visit with one agent) is one line on stderr and exit 2, as every known error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any

from dispatcher.app import App
from dispatcher.cli import common
from dispatcher.cli.visits import parse_instalments
from dispatcher.handoffs.visit_claims import authorise, plan_start, visit_collectors
from dispatcher.ladder import local_date
from dispatcher.ledger.handoffs import (
    HANDOFF_COLUMNS,
    Closing,
    InvalidHandoffAction,
    claim_handoff,
    close_handoff,
    get_handoff,
    list_handoffs,
    public,
)
from dispatcher.output import to_json, write_rows
from dispatcher.zones import zone

_WIDTHS = {"id": 6, "account_id": 12, "queue": 12, "priority": 8, "kind": 5, "status": 7, "step": 10, "phone": 15,
           "created_at": 25, "claimed_by": 12, "closed_by": 12, "outcome": 14, "until": 10}
_TABLE = ("id", "account_id", "queue", "priority", "kind", "status", "step", "phone", "created_at", "claimed_by",
          "closed_by", "outcome", "until")


def today(app: App) -> date:
    """The date now in the schedule's zone (what ``--until`` is compared with)."""
    return local_date(app.clock(), zone(app.pipeline.loaded.schedule.timezone))


def parse_until(text: str | None) -> date | None:
    """``--until``: an ISO date; raises :class:`InvalidHandoffAction` otherwise."""
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidHandoffAction(f"--until {text!r} is not an ISO date like 2026-12-31") from None


def list_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    rows = list_handoffs(app.engine, queue=args.queue, status=args.status, account_id=args.account, limit=args.limit)
    if args.format == "table":
        count = write_rows(sys.stdout, rows, _TABLE, "table", widths=_WIDTHS, zone=common.shown_zone(args, app))
        print(f"{count} hand-off(s)", file=sys.stderr)
    else:
        write_rows(sys.stdout, rows, HANDOFF_COLUMNS, args.format)
    return 0


def show_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    print(to_json(public(get_handoff(app.engine, args.id))), end="")
    return 0


def claim_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    collectors = visit_collectors(app, args.id, args.collector)  # refused before claiming
    item = claim_handoff(app.engine, args.id, args.agent, app.clock())
    print(f"hand-off #{item['id']} ({item['account_id']}, {item['kind']} in {item['queue']}) claimed by "
          f"{item['claimed_by']}")
    if collectors:
        print(authorise(app, item, collectors, args.valid_days))
    return 0


def close_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    closing = Closing(args.outcome, tuple(args.agent), parse_until(args.until), args.note, args.place,
                      parse_instalments(args.instalment), plan_start(app, args.id, args.outcome))
    item = close_handoff(app.engine, args.id, closing, app.clock(), today(app))
    print(f"hand-off #{item['id']} ({item['account_id']}) closed: {describe_outcome(item)}")
    return 0


def describe_outcome(item: dict[str, Any]) -> str:
    """One line on what a closed work item's outcome does."""
    outcome, agents = item["outcome"], ", ".join(item["agents"])
    effects = {
        "promise_to_pay": f"reminders paused until {item['until']} inclusive; they resume after it if still due",
        "dispute": f"reminders paused until {item['until']} inclusive" if item["until"]
        else "reminders paused for this delinquency",
        "wrong_number": f"SMS to {item['phone']} stopped" if item["phone"] else "no number on the work item",
        "contacted": "counted as a contact toward the caps",
        "visit_done": "counted as a contact toward the caps",
        "paid": "the source's balance decides whether reminders continue",
        "repayment_plan": f"reminders paused until {item['until']} inclusive while the instalments are kept; "
                          "a missed one resumes them",
    }
    return f"{outcome} by {agents}; {effects.get(outcome, '')}".rstrip("; ")

