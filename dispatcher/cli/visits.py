"""``dispatcher handoffs claim ... --collector`` and ``dispatcher handoffs authorisation``: field visits.

Claiming a ``visit`` work item needs at least two ``--collector "Name:STAFFID"``
(checked before anything is claimed) and issues their authorisation;
``authorisation ID`` prints its letter as text or HTML. Closing with
``repayment_plan`` reads the account's overdue amount from the source: the amount
the plan starts from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dispatcher.app import App
from dispatcher.cli import common
from dispatcher.handoffs.repayment_plans import Instalment, PlanError
from dispatcher.handoffs.visit_letter import Letter, letter_html, letter_text
from dispatcher.ledger.handoffs import InvalidHandoffAction
from dispatcher.ledger.visits import get_authorisation


def letter_of(app: App, handoff_id: int) -> Letter:
    found = get_authorisation(app.engine, handoff_id)
    schedule = app.pipeline.loaded.schedule
    return Letter(schedule.brand_for(schedule.locale), handoff_id, found["account_id"], tuple(found["collectors"]),
                  found["valid_from"], found["valid_until"], found["code"])


def authorisation_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    letter = letter_of(app, args.id)
    text = letter_html(letter) if args.format == "html" else letter_text(letter)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"authorisation letter of hand-off #{args.id} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def parse_instalments(given: Sequence[str]) -> tuple[Instalment, ...]:
    """``--instalment DATE:AMOUNT`` values; raises :class:`InvalidHandoffAction`."""
    try:
        return tuple(Instalment.parse(text) for text in given)
    except PlanError as exc:
        raise InvalidHandoffAction(str(exc)) from None


