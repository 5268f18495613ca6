"""``dispatcher plan`` (a dry run at a moment) and ``dispatcher preview`` (rendered messages)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from dispatcher.accounts import Account
from dispatcher.app import App
from dispatcher.channel_kind import ChannelKind
from dispatcher.cli import common
from dispatcher.cli.progress import Progress
from dispatcher.compose.renderer import RenderContext
from dispatcher.decisions import Decision
from dispatcher.errors import DispatcherError
from dispatcher.ladder import days_overdue, local_date, occurrence_of
from dispatcher.masking import mask_address
from dispatcher.output import to_json, write_rows
from dispatcher.pipeline.dry_run import decisions_at
from dispatcher.pipeline.plan import address_for
from dispatcher.zones import home_zone

PLAN_COLUMNS = ("account_id", "zone", "day", "step", "bucket", "sms", "email", "push", "voice", "handoff",
                "reason", "detail")
_WIDTHS = {"account_id": 12, "zone": 19, "day": 4, "step": 8, "bucket": 6, "sms": 9, "email": 9, "push": 9,
           "voice": 9, "handoff": 9, "reason": 15, "detail": 60}


def _row(decision: Decision) -> dict[str, Any]:
    row: dict[str, Any] = {
        "account_id": decision.account_id, "zone": decision.zone, "day": decision.days_overdue,
        "local_date": decision.local_today, "step": decision.step.step if decision.step else None,
        "bucket": decision.step.bucket if decision.step else None,
        "variant": decision.step.variant_for(decision.account_id) if decision.step else None,
        "occurrence": decision.occurrence, "reminder_key": decision.reminder_key,
        "contacted": decision.reason is None, "reason": decision.reason or "", "detail": decision.detail,
    }
    for plan in decision.channels:
        row[plan.channel.value] = plan.verdict.value
    row["channels"] = [
        {"channel": p.channel.value, "verdict": p.verdict.value, "rule_id": p.rule_id, "detail": p.detail,
         "address": mask_address(p.channel.value, p.address) if p.address else None,
         "not_before": p.not_before}
        for p in decision.channels
    ]
    return row


def plan_command(args: argparse.Namespace) -> int:
    app = common.app(args, migrate=False)
    now = common.moment(args.at, app)
    app.pipeline.source.check_contract()  # a broken mapping is refused before any output
    tally: Counter[str] = Counter()
    decisions: Iterable[Decision] = decisions_at(app, now, args.account)
    if args.account:  # one account: read it before printing, so a missing one is an error with no output
        decisions = list(decisions)
        if not decisions:
            raise DispatcherError(f"account {args.account} is not in the source")

    def rows() -> Iterator[dict[str, Any]]:
        # a table on the terminal shows its own progress; into a file or a pipe, stderr shows it (on a terminal)
        with Progress("planning", unit=" accounts", enabled=not sys.stdout.isatty()) as bar:
            for decision in decisions:
                tally[decision.reason or "contacted"] += 1
                bar.advance()
                yield _row(decision)

    columns = (*PLAN_COLUMNS, "local_date", "occurrence", "reminder_key", "contacted", "channels", "variant")
    if args.format == "json":
        write_rows(sys.stdout, rows(), columns, "json")
    else:
        write_rows(sys.stdout, rows(), PLAN_COLUMNS, "table", widths=_WIDTHS)
    summary = ", ".join(f"{reason}={count}" for reason, count in tally.most_common())
    print(f"plan at {now.isoformat()}: {sum(tally.values())} accounts: {summary}", file=sys.stderr)
    return 0


def _find(app: App, account_id: str) -> Account:
    for batch in app.pipeline.source.batches():
        for account in batch.accounts:
            if account.account_id == account_id:
                return account
        for row in batch.rejects:
            if row.account_id == account_id:
                raise DispatcherError(f"account {account_id}: bad data in {row.field}: {row.reason}")
    raise DispatcherError(f"account {account_id} is not in the source")


def preview_command(args: argparse.Namespace) -> int:
    app = common.app(args, migrate=False)
    now = common.moment(args.at, app)
    schedule = app.pipeline.loaded.schedule
    account = _find(app, args.account_id)
    today = local_date(now, home_zone(account, schedule.timezone))
    days = days_overdue(account.due_date, today)
    due = next((s for s in schedule.ladder if occurrence_of(s, days) is not None), None)
    step = schedule.step_named(args.step) if args.step else due
    if args.step and step is None:
        raise DispatcherError(f"no step named {args.step!r} ({', '.join(s.step for s in schedule.ladder)})")
    if step is None:
        raise DispatcherError(f"no step is due on day {days}; name one with --step "
                              f"({', '.join(s.step for s in schedule.ladder)})")
    occurrence = occurrence_of(step, days) or 0
    deadline = account.deadline or today + timedelta(days=step.deadline_days)
    context = RenderContext(account, step, occurrence, days, deadline, today)
    print(f"account {account.account_id}: day {days} in {home_zone(account, schedule.timezone).key}, "
          f"step {step.step} (occurrence {occurrence}), deadline {deadline.isoformat()}")
    channels = [ChannelKind(args.channel)] if args.channel else step.channels
    for channel in channels:
        _print_rendered(app, context, channel, account)
    return 0


def _print_rendered(app: App, context: RenderContext, channel: ChannelKind, account: Account) -> None:
    rendered = app.pipeline.composer.render(context, channel)
    address = address_for(account, channel)
    shown = mask_address(channel.value, address) if address else "(no address)"
    print(f"\n=== {channel.value} to {shown}: template {rendered.template}/{rendered.locale} "
          f"version {rendered.template_version}")
    if rendered.segments is not None:
        seg = rendered.segments
        print(f"--- {seg.encoding}, {seg.units} characters, {seg.segments} segment(s)")
    if rendered.subject is not None:
        print(f"Subject: {rendered.subject}")
    if rendered.title is not None:
        print(f"{'Greeting' if channel is ChannelKind.VOICE else 'Title'}: {rendered.title}")
    print(rendered.body)
    if rendered.html is not None:
        print("--- html ---")
        print(rendered.html)
    if rendered.data and channel is not ChannelKind.VOICE:
        print("--- data for the app ---")
        print(to_json(rendered.data))
