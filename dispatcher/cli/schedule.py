"""``dispatcher validate``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dispatcher.app import template_checks
from dispatcher.errors import ConfigError
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.report import format_problems, format_valid
from dispatcher.schedule.source_check import check_source


def register(commands: Any) -> None:
    validate = commands.add_parser("validate", help="check schedules.yaml, its templates and the "
                                                                 "source query's columns")
    validate.add_argument("path", nargs="?", help="the file (default: --schedules, $DISPATCHER_SCHEDULES, "
                                                   "./schedules.yaml)")
    validate.add_argument("--format", choices=["text", "json"], default="text")
    validate.set_defaults(handler=validate_command)


def validate_command(args: argparse.Namespace) -> int:
    path = Path(args.path or args.schedules or os.environ.get("DISPATCHER_SCHEDULES") or "schedules.yaml")
    try:
        loaded = load_schedule(path, os.environ, check_templates=template_checks)
    except ConfigError as exc:
        print(format_problems(exc.problems, args.format), file=sys.stdout if args.format == "json" else sys.stderr)
        return 1
    source = check_source(loaded, os.environ)
    if source.note:
        print(source.note, file=sys.stderr)
    if source.problems:
        print(format_problems(source.problems, args.format), file=sys.stdout if args.format == "json" else sys.stderr)
        return 1
    print(format_valid(loaded, args.format))
    return 0
