"""``dispatcher attempts``, ``dispatcher runs [--close N]``, ``dispatcher rejects`` and ``dispatcher db upgrade``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dispatcher.cli import common
from dispatcher.cli.progress import Progress
from dispatcher.errors import ConfigError
from dispatcher.ledger.database import create_ledger_engine, current_revision, upgrade
from dispatcher.ledger.queries import ATTEMPT_FIELDS, AttemptFilter, iter_attempts, list_rejects, list_runs
from dispatcher.ledger.retention import purge
from dispatcher.ledger.runs import CloseResult, shown_status
from dispatcher.output import write_rows
from dispatcher.schedule.models import parse_duration
from dispatcher.zones import zone

_TABLE = ("id", "account_id", "step", "bucket", "channel", "try_no", "status", "address", "provider_message_id",
          "error_code", "rule_id", "attempted_at")
RUN_COLUMNS = ("id", "name", "fire_time", "status", "daemon_id", "config_version", "started_at", "finished_at",
               "counts")
"""Columns of ``dispatcher runs`` as a table; JSON and CSV add ``RUN_DETAILS``, the table ``error`` when set."""
RUN_DETAILS = ("lease_until", "takeovers", "task_failures", "error")
_RUN_WIDTHS = {"id": 5, "name": 10, "fire_time": 26, "status": 11, "daemon_id": 20, "counts": 80, "error": 60}
_WIDTHS = {"id": 7, "account_id": 12, "step": 8, "bucket": 6, "channel": 6, "try_no": 3, "status": 10, "address": 16,
           "provider_message_id": 24, "error_code": 14, "rule_id": 12, "attempted_at": 26}


def parse_since(text: str | None, default_zone: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not an ISO date or time like 2026-12-01 or 2026-12-01T08:00") from None
    return value if value.tzinfo else value.replace(tzinfo=zone(default_zone))


def attempts_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    where = AttemptFilter(account_id=args.account, status=args.status, channel=args.channel, run_id=args.run,
                          since=parse_since(args.since, app.pipeline.loaded.schedule.timezone), limit=args.limit)
    rows = iter_attempts(app.engine, where)
    columns = ATTEMPT_FIELDS if args.format != "table" else _TABLE
    count = write_rows(sys.stdout, rows, columns, args.format, widths=_WIDTHS, zone=common.shown_zone(args, app))
    if args.format == "table":
        print(f"{count} attempt(s)", file=sys.stderr)
    return 0


def runs_command(args: argparse.Namespace) -> int:
    if args.force and args.close is None:
        raise ConfigError("--force goes with --close RUN_ID")
    app = common.app(args)
    if args.close is not None:
        return _close(app.runs.close(args.close, app.clock(), force=args.force))
    now = app.clock()
    rows = [{**row, "status": shown_status(row["status"], row["lease_until"], now)}
            for row in list_runs(app.engine, args.limit)]
    if args.format == "json":  # an object in JSON; CSV and tables keep the stored text
        rows = [{**row, "counts": counts_object(row["counts"])} for row in rows]
    columns: tuple[str, ...] = (*RUN_COLUMNS, *RUN_DETAILS)
    if args.format == "table":
        columns = (*RUN_COLUMNS, "error") if any(row["error"] for row in rows) else RUN_COLUMNS
    write_rows(sys.stdout, rows, columns, args.format, widths=_RUN_WIDTHS, zone=common.shown_zone(args, app))
    return 0


def counts_object(text: str | None) -> dict[str, Any]:
    """A run's stored ``counts`` (JSON text) as an object; ``{}`` when missing or unreadable."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _close(result: CloseResult) -> int:
    """Print what ``runs --close`` did; 1 when it was refused."""
    if not result.closed:
        print(f"dispatcher: {result.refusal}", file=sys.stderr)
        return 1
    fired = result.fire_time.isoformat() if result.fire_time else "?"
    print(f"closed run #{result.run_id} ({result.name} of {fired}), which was {result.previous} "
          f"on {result.daemon_id}")
    if result.live_lease:
        print(f"its daemon {result.daemon_id} still held the lease: it stops carrying the run out at its next "
              "renewal")
    print(_unsettled_line(result.unsettled))
    return 0


def _unsettled_line(unsettled: Mapping[str, int]) -> str:
    if not any(unsettled.values()):
        return "no attempt of the run is left planned, claimed or sending"
    counts = ", ".join(f"{status}={count}" for status, count in unsettled.items())
    return (f"attempts of the run not settled: {counts}; the next run sends the planned ones and its reconciler "
            "settles the claimed and sending ones (claimed go back to planned, sending are checked with the provider)")


def rejects_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    if args.limit < 0:
        raise ConfigError(f"--limit: {args.limit} is negative (0 lists every rejected row)")
    rows, total = list_rejects(app.engine, args.run, args.limit)
    write_rows(sys.stdout, rows, ("run_id", "account_id", "field", "reason"), args.format,
               widths={"run_id": 6, "account_id": 12, "field": 16, "reason": 70})
    if total > len(rows):
        print(f"the newest {len(rows)} of {total} rejected row(s); --limit 0 lists every one", file=sys.stderr)
    return 0


def purge_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    try:
        older_than = parse_duration(args.older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    with Progress("counting what purge would delete" if args.dry_run else "purging"):
        counts = purge(app.engine, older_than, app.pipeline.policy.retention, app.clock(), dry_run=args.dry_run)
    verb, erase = ("would delete", "would erase") if args.dry_run else ("deleted", "erased")
    print(f"{verb}: " + ", ".join(f"{table}={count}" for table, count in counts.deleted.items()))
    print(f"{erase} the personal data of {counts.erased} attempt(s) kept as reminder keys (so that nothing is sent "
          f"twice) and of {counts.erased_replies} inbound reply(ies) kept by message id (so that a replay changes "
          f"nothing); kept {counts.active_suppressions} active suppression(s) (opt-outs) and "
          f"{counts.unread_replies} old reply(ies) still to read")
    return 0


def db_command(args: argparse.Namespace) -> int:
    engine = create_ledger_engine(common.settings(args).database_url)
    if args.action == "upgrade":
        upgrade(engine)
    print(f"ledger at revision {current_revision(engine)}")
    return 0
