"""The argument parser of every command."""

from __future__ import annotations

import argparse
import os

from dispatcher.cli import inspect, ledger, retry, run, schedule


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher", description="Overdue-repayment reminder dispatcher (see README.md).")
    parser.add_argument("--schedules", metavar="PATH",
                        help="schedules.yaml to use (default: $DISPATCHER_SCHEDULES, else ./schedules.yaml)")
    parser.add_argument("--log-level", default=os.environ.get("DISPATCHER_LOG_LEVEL", "INFO").upper(),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(commands)
    schedule.register(commands)
    inspect.register(commands)
    ledger.register(commands)
    retry.register(commands)
    return parser
