"""The argument parser of every command."""

from __future__ import annotations

import argparse

from dispatcher.cli import inspect, ledger, replies, retry, run, schedule
from dispatcher.settings import LOG_LEVELS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher", description="Overdue-repayment reminder dispatcher (see README.md).")
    parser.add_argument("--schedules", metavar="PATH",
                        help="schedules.yaml to use (default: $DISPATCHER_SCHEDULES, else ./schedules.yaml)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                        help="default: $DISPATCHER_LOG_LEVEL, else INFO; DEBUG also prints the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(commands)
    schedule.register(commands)
    inspect.register(commands)
    ledger.register(commands)
    retry.register(commands)
    replies.register(commands)
    return parser
