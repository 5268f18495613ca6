"""``dispatcher validate``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dispatcher.errors import ConfigError
from dispatcher.rules.content import template_checks
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.report import format_problems, format_valid
from dispatcher.schedule.source_check import check_source


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
