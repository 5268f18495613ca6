"""``dispatcher validate``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dispatcher.compose.layout import TemplateSet
from dispatcher.errors import ConfigError
from dispatcher.schedule.checks import TemplateIssue
from dispatcher.schedule.loader import load_schedule
from dispatcher.schedule.models import Schedule
from dispatcher.schedule.report import format_problems, format_valid


def validate_command(args: argparse.Namespace) -> int:
    path = Path(args.path or args.schedules or os.environ.get("DISPATCHER_SCHEDULES") or "schedules.yaml")
    try:
        loaded = load_schedule(path, os.environ, check_templates=_template_checks)
    except ConfigError as exc:
        print(format_problems(exc.problems, args.format), file=sys.stdout if args.format == "json" else sys.stderr)
        return 1
    from dispatcher.schedule.source_check import check_source  # SQLAlchemy: only for a file that parsed

    source = check_source(loaded, os.environ)
    if source.note:
        print(source.note, file=sys.stderr)
    if source.problems:
        print(format_problems(source.problems, args.format), file=sys.stdout if args.format == "json" else sys.stderr)
        return 1
    print(format_valid(loaded, args.format))
    return 0


def _template_checks(schedule: Schedule, templates: TemplateSet) -> Sequence[TemplateIssue]:
    """The content rules, imported (Jinja, Babel, the rules) only for a file that parsed: a file refused for its
    size or its aliases is refused at once."""
    from dispatcher.rules.content import template_checks

    return template_checks(schedule, templates)
