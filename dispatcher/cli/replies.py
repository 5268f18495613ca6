"""``dispatcher replies``: borrowers' replies kept in the ledger, the unclear ones for a person to read."""

from __future__ import annotations

import argparse
import sys

from dispatcher.app import App
from dispatcher.cli import common
from dispatcher.ledger.replies import REPLY_COLUMNS, list_replies, mark_read
from dispatcher.output import write_rows
from dispatcher.replies.inbound import drain_spool

_WIDTHS = {"id": 6, "received_at": 26, "channel": 5, "sender": 16, "decision": 8, "keyword": 12, "outcome": 10,
           "text": 60, "read_at": 26}


def _apply_spool(app: App) -> int:
    """Replies the web app spooled while the ledger was locked or down, applied now."""
    settings = app.settings
    return drain_spool(app.engine, settings.database_url, settings.outbox_dir, app.clock())


def replies_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    applied = _apply_spool(app)
    if applied:
        print(f"{applied} spooled reply(ies) applied", file=sys.stderr)
    if args.mark_read:
        marked = mark_read(app.engine, args.mark_read, app.clock())
        print(f"{marked} reply(ies) marked read", file=sys.stderr)
        return 0
    rows = list_replies(app.engine, unclear=args.unclear, unread=args.unread)
    count = write_rows(sys.stdout, rows, REPLY_COLUMNS, args.format, widths=_WIDTHS)
    if args.format == "table":
        print(f"{count} reply(ies)", file=sys.stderr)
    return 0
