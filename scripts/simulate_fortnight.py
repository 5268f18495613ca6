"""Simulate a fortnight of runs on the embedded default, so the measures (and the report) have data.

    .venv/bin/python scripts/simulate_fortnight.py --accounts 1000 --out /tmp/fortnight

Seeds the demo table with N borrowers in a fresh SQLite ledger (outbox channels:
nothing leaves the machine), then carries out the schedule's runs at fixed clocks
(09:00 and 18:30 in the schedule's zone) over 14 days, exactly as ``dispatcher run
--once`` does at that moment. Between two runs some borrowers pay, drawn with a
fixed seed: a borrower reminded since the last run pays with ``--reminded-rate``,
any other with ``--base-rate``; a payer's row is deleted or its balance set to 0
(half each), and some others pay part of their balance. ``--lift`` makes the
borrowers of the non-control variants of an experiment pay more often (a relative
lift, 0 by default: the simulated borrowers do not care about wording).

At the end it prints the cure rates by step, channel, bucket and variant and the
variant comparisons; the ledger stays in ``--out`` (``ledger.db``) for the report.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, delete, select, update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dispatcher.app import App, build_app  # noqa: E402  (the repository on the path first)
from dispatcher.demo import demo_accounts, seed_demo  # noqa: E402
from dispatcher.ledger.tables import attempts  # noqa: E402
from dispatcher.outcomes.measures import compare_variants, cure_rates  # noqa: E402
from dispatcher.pipeline.run import Runner  # noqa: E402
from dispatcher.settings import Settings  # noqa: E402

RUN_TIMES = (("morning", clock_time(9, 0)), ("evening", clock_time(18, 30)))
"""When the simulated runs fire each day, in the schedule's zone (the shipped schedule's runs)."""


@dataclass
class FixedClock:
    """The simulation's clock: the app reads it, the loop moves it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000, help="demo borrowers to seed (default 1000)")
    parser.add_argument("--days", type=int, default=14, help="days to simulate (default 14)")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 3, 2),
                        help="the first day (default 2026-03-02)")
    parser.add_argument("--seed", type=int, default=7, help="seed of who pays (default 7)")
    parser.add_argument("--base-rate", type=float, default=0.02,
                        help="chance a borrower not reminded since the last run pays before the next (0.02)")
    parser.add_argument("--reminded-rate", type=float, default=0.08,
                        help="chance a borrower reminded since the last run pays before the next (0.08)")
    parser.add_argument("--lift", type=float, default=0.0,
                        help="relative lift of that chance for borrowers of a non-control variant (0)")
    parser.add_argument("--out", type=Path, default=Path("fortnight"),
                        help="directory for ledger.db and the outbox (default ./fortnight; emptied first)")
    parser.add_argument("--schedules", type=Path, default=REPO / "schedules.yaml",
                        help="schedules.yaml to run (its templates/ beside it)")
    parser.add_argument("--verbose", action="store_true", help="log every run")
    return parser.parse_args(argv)


def prepare(out: Path, schedules: Path) -> None:
    """A fresh ledger and outbox in ``out``; the environment the app reads points at them."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
        (out / name).unlink(missing_ok=True)
    os.environ.update({
        "DISPATCHER_DATABASE_URL": f"sqlite:///{(out / 'ledger.db').resolve()}",
        "DISPATCHER_OUTBOX_DIR": str((out / "outbox").resolve()),
        "DISPATCHER_SCHEDULES": str(schedules.resolve()),
    })
    for name in ("DISPATCHER_SOURCE_URL", "DISPATCHER_BROKER_URL", "TWILIO_ACCOUNT_SID", "SMTP_HOST",
                 "FCM_PROJECT_ID"):
        os.environ.pop(name, None)  # embedded source, outbox channels, in this process


def reminded_since(engine: Engine, since: datetime) -> set[str]:
    """Accounts with a message sent (or a work item opened) since ``since``."""
    query = select(attempts.c.account_id).where(attempts.c.status.in_(("sent", "delivered")),
                                                attempts.c.attempted_at >= since).distinct()
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def pay(app: App, rng: random.Random, since: datetime, args: argparse.Namespace) -> int:
    """Between two runs: some borrowers pay all (row deleted or balance 0) and some pay part. Returns payers."""
    reminded = reminded_since(app.engine, since)
    steps = {s.step: s for s in app.pipeline.loaded.schedule.ladder if s.variants}
    with app.engine.connect() as connection:
        rows = connection.execute(select(demo_accounts.c.account_id, demo_accounts.c.overdue_amount)
                                  .order_by(demo_accounts.c.account_id)).all()
    gone: list[str] = []
    zeroed: list[str] = []
    partial: list[dict[str, str]] = []
    for account_id, amount in rows:
        chance = args.reminded_rate if account_id in reminded else args.base_rate
        if args.lift and any(s.variant_for(account_id) not in (None, s.template_name) for s in steps.values()):
            chance *= 1 + args.lift
        draw = rng.random()
        if draw < chance:
            (gone if rng.random() < 0.5 else zeroed).append(account_id)
        elif draw < chance + 0.01:
            try:
                partial.append({"b_id": account_id, "b_amount": f"{float(amount) / 2:.2f}"})
            except (TypeError, ValueError):
                continue  # the demo's rows with bad data stay as they are
    with app.engine.begin() as connection:
        if gone:
            connection.execute(delete(demo_accounts).where(demo_accounts.c.account_id.in_(gone)))
        if zeroed:
            connection.execute(update(demo_accounts).where(demo_accounts.c.account_id.in_(zeroed))
                               .values(overdue_amount="0.00"))
        for row in partial:
            connection.execute(update(demo_accounts).where(demo_accounts.c.account_id == row["b_id"])
                               .values(overdue_amount=row["b_amount"]))
    return len(gone) + len(zeroed)


def simulate(args: argparse.Namespace) -> App:
    prepare(args.out, args.schedules)
    clock = FixedClock(datetime.combine(args.start, clock_time(0, 0), UTC))
    app = build_app(Settings.from_env(), clock=clock)
    zone = ZoneInfo(app.pipeline.loaded.schedule.timezone)
    seed_demo(app.engine, args.accounts, args.start, replace=True)
    rng = random.Random(args.seed)
    last = clock.now
    for day in range(args.days):
        today = args.start + timedelta(days=day)
        for name, at in RUN_TIMES:
            clock.now = datetime.combine(today, at, zone).astimezone(UTC)
            payers = pay(app, rng, last, args) if clock.now > last else 0
            report = Runner(app).run(name, clock.now)
            counts = report.counts
            print(f"{clock.now.astimezone(zone):%Y-%m-%d %H:%M} {name:8} {report.status}: "
                  f"accounts={counts.accounts} sent={counts.sent} deferred={counts.deferred} "
                  f"suppressed={counts.suppressed} (paid before it: {payers})", flush=True)
            last = clock.now
    return app


def print_measures(app: App, since: datetime, until: datetime) -> None:
    for by in ("step", "channel", "bucket", "variant"):
        print(f"\ncure rate within 7 days, by {by}:")
        for rate in cure_rates(app.engine, by, since, until):
            print(f"  {rate.key:22} {rate.cured:5} / {rate.reminded:<5} = {rate.rate:6.1%}  "
                  f"(95 % {rate.low:.1%}–{rate.high:.1%})")
    for found in compare_variants(app.engine, since, until):
        verdict = ("significant" if found.significant else "not significant") if found.enough_data \
            else "not enough data (< 30 a side)"
        print(f"\n{found.step}: {found.b.key} against {found.a.key}: z={found.z:.2f}, p={found.p_value:.3f}, "
              f"{verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    started = time.monotonic()
    app = simulate(args)
    since = datetime.combine(args.start, clock_time(0, 0), UTC) - timedelta(days=1)
    print_measures(app, since, app.clock() + timedelta(seconds=1))
    print(f"\n{args.days} days, {args.accounts} accounts in {time.monotonic() - started:.1f} s; "
          f"ledger: {os.environ['DISPATCHER_DATABASE_URL']}")
    app.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
