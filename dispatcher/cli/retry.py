"""``dispatcher retry``: send chosen failed or unknown attempts again, as new tries, when the rules allow it now."""

from __future__ import annotations

import argparse

from dispatcher.app import App
from dispatcher.cli import common
from dispatcher.cli.ledger import parse_since
from dispatcher.ledger.queries import attempt_statuses
from dispatcher.ledger.tally import job_outcomes
from dispatcher.pipeline import loops
from dispatcher.pipeline.jobs import RunCounts
from dispatcher.pipeline.retry import Retrier, RetryChoice, RetryLine
from dispatcher.pipeline.run import settle_counts, summary

RUN_NAME = "retry"
"""The name of the run that books and records operators' retries."""


def retry_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    pipeline, now = app.pipeline, app.clock()
    choice = RetryChoice(tuple(args.status or ("failed",)), args.run, args.account,
                         parse_since(args.since, pipeline.loaded.schedule.timezone), args.limit)
    run_id = None if args.dry_run else app.runs.start(RUN_NAME, now, pipeline.loaded.version,
                                                      app.settings.daemon_id, now)
    retrier = Retrier(app.engine, app.job_loader(pipeline), app.send_check(pipeline), run_id)
    rows = retrier.choose(choice)
    lines = retrier.retry(rows, now, dry_run=args.dry_run)
    booked = [line.new_id for line in lines if line.new_id is not None]
    if booked and run_id is not None:
        _deliver(app, run_id, booked)
    outcomes = attempt_statuses(app.engine, booked)
    for line in lines:
        print(_describe(line, outcomes))
    held = sum(line.action == "held" for line in lines)
    verb = "would send" if args.dry_run else "booked"
    print(f"{len(lines)} attempt(s) chosen: {len(lines) - held} {verb}, {held} held back")
    if run_id is not None:
        _finish(app, run_id, held, booked)
    return 0


def _deliver(app: App, run_id: int, booked: list[int]) -> None:
    async def go() -> None:
        executor = app.executor(app.pipeline, None, run_id)
        try:
            await executor.submit_ids(booked)
        finally:
            await executor.aclose()

    loops.run(go(), app.settings.event_loop)


def _finish(app: App, run_id: int, held: int, booked: list[int]) -> None:
    """Record the retry run: every booked try's outcome, and the attempts held back as suppressed at planning."""
    counts = RunCounts(planned=len(booked))
    settle_counts(counts, job_outcomes(app.engine, booked))
    counts.suppressed += held
    app.runs.finish(run_id, "completed", counts.as_dict(), app.clock(), app.settings.daemon_id)
    print(f"run {RUN_NAME} #{run_id}: {summary(counts)}")


def _describe(line: RetryLine, outcomes: dict[int, tuple[str, str | None]]) -> str:
    head = f"attempt {line.attempt_id} ({line.account_id}, {line.channel}, {line.status}" + (
        f" {line.error_code})" if line.error_code else ")")
    if line.new_id is not None and line.new_id in outcomes:
        status, code = outcomes[line.new_id]
        return f"{head}: {line.action} {line.reason}: {status}" + (f" ({code})" if code else "")
    return f"{head}: {line.action}: {line.reason}"
