"""The argument parser of every command.

Handlers are named, not imported (``"dispatcher.cli.schedule:validate_command"``):
:func:`dispatcher.cli.main` imports only the module of the command it runs, so
``dispatcher validate`` does not pay for the delivery stack's imports.
"""

from __future__ import annotations

import argparse
from typing import Any

from dispatcher.channel_kind import ChannelKind
from dispatcher.cli.examples import add_examples
from dispatcher.settings import LOG_LEVELS
from dispatcher.states import HANDOFF_OUTCOMES, HANDOFF_STATUSES, RETRY_LIMIT, RETRYABLE

DEMO_ACCOUNTS = 1000
"""Demo borrowers ``run --demo`` and ``seed-demo`` create by default."""

STATUSES = ("planned", "claimed", "sending", "sent", "delivered", "failed", "undelivered", "suppressed", "deferred",
            "unknown")
"""The attempt statuses ``dispatcher attempts --status`` accepts."""


_UTC_HELP = "tables: times in UTC (default: the schedule's zone, offset shown)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher", description="Overdue-repayment reminder dispatcher (see README.md).")
    parser.add_argument("--schedules", metavar="PATH",
                        help="schedules.yaml to use (default: $DISPATCHER_SCHEDULES, else ./schedules.yaml)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        help="default: $DISPATCHER_LOG_LEVEL, else INFO; DEBUG also prints the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_run_commands, _schedule_commands, _inspect_commands, _ledger_commands, _retry_commands,
                _replies_commands, _handoff_commands, _completion_command):
        add(commands)
    return add_examples(parser)


def _run_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="start the daemon (or do one run with --once)")
    run.add_argument("--once", action="store_true", help="do one run now and exit")
    run.add_argument("--run-now", action="store_true", help="do a first run at start, then follow the schedule")
    run.add_argument("--demo", action="store_true",
                     help=f"seed {DEMO_ACCOUNTS} demo borrowers if the demo table is empty; implies --run-now")
    run.add_argument("--name", default=None, help="the run's name in the ledger (default: manual / startup)")
    run.set_defaults(handler="dispatcher.cli.run:run_command")
    seed = commands.add_parser("seed-demo", help="fill the demo account table with synthetic borrowers")
    seed.add_argument("--accounts", type=int, default=DEMO_ACCOUNTS, metavar="N")
    seed.add_argument("--replace", action="store_true", help="empty the demo table first")
    seed.set_defaults(handler="dispatcher.cli.run:seed_command")
    worker = commands.add_parser(
        "worker", help="start a Celery worker for $DISPATCHER_BROKER_URL (extra options go to celery worker)")
    worker.add_argument("--pool", default="prefork", help="celery pool: prefork, threads, solo ...")
    worker.add_argument("--concurrency", type=int, help="worker processes (default: CPU count)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="more `celery worker` options")
    worker.set_defaults(handler="dispatcher.cli.run:worker_command")
    web = commands.add_parser("web", help="serve webhooks (Twilio status, inbound STOP) and unsubscribe links")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.set_defaults(handler="dispatcher.cli.run:web_command")


def _schedule_commands(commands: Any) -> None:
    validate = commands.add_parser("validate", help="check schedules.yaml, its templates and the "
                                                                 "source query's columns")
    validate.add_argument("path", nargs="?", help="the file (default: --schedules, $DISPATCHER_SCHEDULES, "
                                                   "./schedules.yaml)")
    validate.add_argument("--format", choices=["text", "json"], default="text")
    validate.set_defaults(handler="dispatcher.cli.schedule:validate_command")


def _inspect_commands(commands: Any) -> None:
    plan = commands.add_parser("plan", help="dry run: who would get what now (or --at), and why not")
    plan.add_argument("--at", metavar="ISO-TIME", help="the moment to plan for (default: now)")
    plan.add_argument("--format", choices=["table", "json"], default="table")
    plan.add_argument("--account", metavar="ID", help="only this account")
    plan.set_defaults(handler="dispatcher.cli.inspect:plan_command")
    preview = commands.add_parser("preview", help="print the rendered messages of one account")
    preview.add_argument("account_id", metavar="ACCOUNT_ID")
    preview.add_argument("--step", help="render this step (default: the step due now)")
    preview.add_argument("--channel", choices=[c.value for c in ChannelKind])
    preview.add_argument("--at", metavar="ISO-TIME", help="the moment (default: now)")
    preview.set_defaults(handler="dispatcher.cli.inspect:preview_command")
    diff = commands.add_parser(
        "diff", help="who gains, loses or gets a changed reminder if NEW replaces OLD (default: the running "
                     "version)",
        description="Plan both configuration versions over the same accounts (NEW's source) at the same moment, "
                    "writing nothing, and list every account that gains, loses or gets a changed reminder (step, "
                    "channel, template, when), with totals per step and channel. Without OLD: the version the "
                    "daemon loaded last, from the ledger, with its own templates. NEW's templates are the "
                    "templates/ directory beside it.")
    diff.add_argument("old", nargs="?", metavar="OLD", help="the schedules.yaml in use (default: the running version)")
    diff.add_argument("new", metavar="NEW", help="the edited schedules.yaml")
    diff.add_argument("--at", metavar="ISO-TIME", help="the moment to plan for (default: now)")
    diff.add_argument("--format", choices=["table", "json"], default="table")
    diff.add_argument("--utc", action="store_true", help="times in UTC (default: the schedule's zone, offset shown)")
    diff.set_defaults(handler="dispatcher.cli.diff:diff_command")


def _ledger_commands(commands: Any) -> None:
    attempts = commands.add_parser("attempts", help="list delivery attempts from the ledger")
    attempts.add_argument("--account", metavar="ID")
    attempts.add_argument("--since", metavar="DATE", help="ISO date or time (read in the schedule's zone)")
    attempts.add_argument("--status", choices=STATUSES)
    attempts.add_argument("--channel", choices=[c.value for c in ChannelKind])
    attempts.add_argument("--run", type=int, metavar="RUN_ID")
    attempts.add_argument("--limit", type=int)
    attempts.add_argument("--format", choices=["table", "json", "csv"], default="table")
    attempts.add_argument("--utc", action="store_true", help=_UTC_HELP)
    attempts.set_defaults(handler="dispatcher.cli.ledger:attempts_command")
    runs = commands.add_parser("runs", help="list the latest runs (or close one that will never finish)")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--format", choices=["table", "json", "csv"], default="table")
    runs.add_argument("--utc", action="store_true", help=_UTC_HELP)
    runs.add_argument("--close", type=int, metavar="RUN_ID",
                      help="end a run that will never finish (status closed); its unsettled attempts are left to "
                           "the next run and the reconciler")
    runs.add_argument("--force", action="store_true",
                      help="with --close: close it even though its daemon still holds the lease")
    runs.set_defaults(handler="dispatcher.cli.ledger:runs_command")
    rejects = commands.add_parser("rejects", help="list source rows rejected for bad data")
    rejects.add_argument("--run", type=int, metavar="RUN_ID")
    rejects.add_argument("--limit", type=int, default=1000, help="the newest N (default 1000; 0: every one); the "
                         "rows left out are counted on stderr")
    rejects.add_argument("--format", choices=["table", "json", "csv"], default="table")
    rejects.set_defaults(handler="dispatcher.cli.ledger:rejects_command")
    report = commands.add_parser(
        "report", help="write the ledger's figures as one HTML page that opens offline (funnel, failures, rules, "
                       "cure rates, daily volume against the caps, opt-outs)")
    report.add_argument("--since", metavar="DATE", help="first day, ISO date in the schedule's zone (default: the "
                        "day of the ledger's first attempt)")
    report.add_argument("--until", metavar="DATE", help="last day, included (default: the day of the last attempt)")
    report.add_argument("--out", metavar="FILE", help="write the page there instead of stdout")
    report.set_defaults(handler="dispatcher.cli.report:report_command")
    purge = commands.add_parser("purge", help="delete ledger rows older than the retention period (reminder keys "
                                "and active opt-outs are kept, without personal data)")
    purge.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 3y, 1200d (at least the "
                       "configured retention, compliance.retention, default 3y)")
    purge.add_argument("--dry-run", action="store_true", help="count what would be deleted")
    purge.set_defaults(handler="dispatcher.cli.ledger:purge_command")
    db = commands.add_parser("db", help="ledger schema")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(handler="dispatcher.cli.ledger:db_command")


def _retry_commands(commands: Any) -> None:
    retry = commands.add_parser(
        "retry", help="send failed or unknown attempts again as new tries, when the rules allow it now",
        description="Choose the latest try of each reminder and channel with the given status, re-check it now "
                    "(account re-read, opt-outs, dead addresses, window, holidays, caps) and book the allowed ones "
                    "as new tries linked to it, delivered at once (or by the workers with a broker).")
    retry.add_argument("--status", choices=RETRYABLE, action="append",
                       help="which attempts (repeatable; default: failed)")
    retry.add_argument("--run", type=int, metavar="RUN_ID")
    retry.add_argument("--account", metavar="ID")
    retry.add_argument("--since", metavar="DATE", help="ISO date or time (read in the schedule's zone)")
    retry.add_argument("--limit", type=int, default=RETRY_LIMIT)
    retry.add_argument("--dry-run", action="store_true", help="say what would be sent and why the others are held")
    retry.set_defaults(handler="dispatcher.cli.retry:retry_command")


def _replies_commands(commands: Any) -> None:
    replies = commands.add_parser("replies", help="list inbound replies (STOP, START, anything else) with their "
                                  "decision; --unclear: the ones a person should read")
    replies.add_argument("--unclear", action="store_true", help="only replies that are neither clearly an opt-out "
                         "nor clearly something else")
    replies.add_argument("--unread", action="store_true", help="only replies nobody marked read")
    replies.add_argument("--mark-read", type=int, nargs="+", metavar="ID", help="mark these replies read")
    replies.add_argument("--format", choices=["table", "json", "csv"], default="table")
    replies.set_defaults(handler="dispatcher.cli.replies:replies_command")


def _handoff_commands(commands: Any) -> None:
    handoffs = commands.add_parser("handoffs", help="work items for people opened by hand-off steps: list, show, "
                                   "claim, close with an outcome")
    actions = handoffs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="work items, most urgent first (priority 1 first, then the oldest)")
    listing.add_argument("--queue", help="only this queue")
    listing.add_argument("--status", choices=HANDOFF_STATUSES)
    listing.add_argument("--account", metavar="ID")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--format", choices=["table", "json", "csv"], default="table")
    listing.add_argument("--utc", action="store_true", help=_UTC_HELP)
    listing.set_defaults(handler="dispatcher.cli.handoffs:list_command")
    show = actions.add_parser("show", help="one work item with every action on it: who did what, when")
    show.add_argument("id", type=int, metavar="ID")
    show.set_defaults(handler="dispatcher.cli.handoffs:show_command")
    claim = actions.add_parser("claim", help="take an open work item")
    claim.add_argument("id", type=int, metavar="ID")
    claim.add_argument("--agent", required=True, help="who takes it")
    claim.add_argument("--collector", action="append", default=[], metavar="NAME:STAFFID",
                       help="a visit item: each collector who visits (at least two); issues their authorisation")
    claim.add_argument("--valid-days", type=int, default=7, metavar="N",
                       help="a visit's authorisation holds from the claim day to N days later (default 7)")
    claim.set_defaults(handler="dispatcher.cli.handoffs:claim_command")
    letter = actions.add_parser("authorisation", help="the authorisation letter of a claimed visit item")
    letter.add_argument("id", type=int, metavar="ID")
    letter.add_argument("--format", choices=["text", "html"], default="text")
    letter.add_argument("--out", metavar="FILE", help="write it there instead of stdout")
    letter.set_defaults(handler="dispatcher.cli.visits:authorisation_command")
    close = actions.add_parser(
        "close", help="record the outcome of a work item (claimed or not)",
        description="promise_to_pay pauses the account's reminders until --until (inclusive); dispute pauses them "
                    "(until --until, else for this delinquency); wrong_number stops SMS to the number the work item "
                    "was opened with; contacted, promise_to_pay and visit_done count as contacts toward the caps; "
                    "visit_done needs at least two --agent; repayment_plan (with --instalment) pauses them "
                    "while the instalments are kept and resumes them on a missed one.")
    close.add_argument("id", type=int, metavar="ID")
    close.add_argument("--outcome", required=True, choices=HANDOFF_OUTCOMES)
    close.add_argument("--until", metavar="DATE", help="ISO date: the last day of a promise to pay (or a dispute)")
    close.add_argument("--agent", action="append", default=[], metavar="A",
                       help="who closes it (repeatable: every collector of a visit; default: who claimed it)")
    close.add_argument("--note", metavar="TEXT")
    close.add_argument("--place", metavar="TEXT", help="where a visit took place (stored masked like notes)")
    close.add_argument("--instalment", action="append", default=[], metavar="DATE:AMOUNT",
                       help="repayment_plan: an agreed instalment, e.g. 2026-12-15:500.00 (repeatable)")
    close.set_defaults(handler="dispatcher.cli.handoffs:close_command")


def _completion_command(commands: Any) -> None:
    completion = commands.add_parser("completion", help="print a shell completion script for bash or zsh")
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler="dispatcher.cli.completion:completion_command")
