"""The example every command's ``--help`` ends with, and the walk that puts it there.

:func:`add_examples` runs once the parser is built: each command (``handoffs list`` is
one) gets its ``Examples:`` as the epilog, laid out as written
(:class:`argparse.RawDescriptionHelpFormatter`), and its one-line help as description
when it has none.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from collections.abc import Iterator

EXAMPLES: dict[str, tuple[str, ...]] = {
    "run": ("dispatcher run", "dispatcher run --once --name catch-up", "dispatcher run --demo"),
    "seed-demo": ("dispatcher seed-demo --accounts 1000 --replace",),
    "worker": ("dispatcher worker --concurrency 4", "dispatcher worker --pool threads -- --loglevel INFO"),
    "web": ("dispatcher web --host 0.0.0.0 --port 8080",),
    "validate": ("dispatcher validate", "dispatcher validate edited.yaml --format json"),
    "plan": ("dispatcher plan", "dispatcher plan --at 2026-12-01T09:00 --account L00000002",
             "dispatcher plan --format json > plan.json"),
    "preview": ("dispatcher preview L00000002", "dispatcher preview L00000002 --step firm --channel sms"),
    "diff": ("dispatcher diff edited.yaml", "dispatcher diff schedules.yaml edited.yaml --at 2026-12-01T10:00",
             "dispatcher diff edited.yaml --format json > diff.json"),
    "attempts": ("dispatcher attempts --status failed --since 2026-12-01",
                 "dispatcher attempts --account L00000002 --utc", "dispatcher attempts --run 42 --format csv"),
    "runs": ("dispatcher runs --limit 5", "dispatcher runs --format json", "dispatcher runs --close 42"),
    "rejects": ("dispatcher rejects --run 42",),
    "report": ("dispatcher report --out report.html",
               "dispatcher report --since 2026-12-01 --until 2026-12-14 --out fortnight.html"),
    "purge": ("dispatcher purge --older-than 3y --dry-run", "dispatcher purge --older-than 1200d"),
    "db": ("dispatcher db upgrade", "dispatcher db current"),
    "retry": ("dispatcher retry --status failed --dry-run", "dispatcher retry --status unknown --run 42",
              "dispatcher retry --account L00000017 --since 2026-12-01"),
    "replies": ("dispatcher replies --unclear --unread", "dispatcher replies --mark-read 12 13"),
    "handoffs": ("dispatcher handoffs list --queue calls --status open",
                 "dispatcher handoffs close 7 --outcome promise_to_pay --until 2026-12-15"),
    "handoffs list": ("dispatcher handoffs list --queue calls --status open", "dispatcher handoffs list --utc"),
    "handoffs show": ("dispatcher handoffs show 7",),
    "handoffs claim": ("dispatcher handoffs claim 7 --agent alice",
                       "dispatcher handoffs claim 9 --agent alice --collector 'Li Lei:C-001' "
                       "--collector 'Han Mei:C-002'"),
    "handoffs authorisation": ("dispatcher handoffs authorisation 9 --format html --out letter.html",),
    "handoffs close": ("dispatcher handoffs close 7 --outcome promise_to_pay --until 2026-12-15",
                       "dispatcher handoffs close 9 --outcome visit_done --agent alice --agent bob"),
    "completion": ("dispatcher completion bash > ~/.local/share/bash-completion/completions/dispatcher",
                   "dispatcher completion zsh > ~/.zfunc/_dispatcher"),
}
"""Command (with its action, as typed after ``dispatcher``) → example command lines."""


def commands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """Every command below ``parser``: (its path like ``handoffs list``, its parser, its one-line help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                yield full, sub, helps.get(name, "")
                yield from commands(sub, full)


def add_examples(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every command of ``parser`` its examples (and a description when it has none); returns ``parser``."""
    for path, sub, help_text in commands(parser):
        lines = EXAMPLES.get(path)
        if lines:
            sub.epilog = "Examples:\n" + "\n".join(f"  {line}" for line in lines)
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
        if sub.description is None and help_text:
            sub.description = help_text[:1].upper() + help_text[1:] + "."
        if sub.description and "\n" not in sub.description:  # the raw layout does not wrap it any more
            sub.description = textwrap.fill(sub.description, _width())
    return parser


def _width() -> int:
    """The width argparse wraps help to: the terminal's, less a margin."""
    return max(shutil.get_terminal_size().columns - 2, 40)
