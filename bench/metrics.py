#!/usr/bin/env python3
"""Benchmark computing ``/metrics`` on a SQLite ledger of many attempts (1,000,000 by default).

The ledger is built once per size in ``--dir`` (migrated, then filled by one
``INSERT ... SELECT`` over a recursive CTE: 4 channels, a realistic mix of
statuses, 8 % retries, provider times for the attempts that reached a provider,
spread over 90 days with the last hour busy) and reused by later invocations.
Each scrape computes the whole text as ``dispatcher web`` does (the collector
straight, without the 15 s cache) and the median of ``--repeat`` scrapes is
reported. Compare two trees by running it with each on ``PYTHONPATH``:

    .venv/bin/python bench/metrics.py                       # this tree, 1,000,000 attempts
    PYTHONPATH=/tmp/before .venv/bin/python bench/metrics.py --label before --dir /tmp/bench-before
    .venv/bin/python bench/metrics.py --rows 100000 --repeat 5
    .venv/bin/python bench/metrics.py --old-index           # on a copy with the index before migration 0014

(A tree of another schema needs its own ``--dir``.) ``--old-index`` measures this
code on the index the ledger had before migration 0014, ``ix_attempts_status
(status)`` in place of ``(status, channel, try_no)``, which lets the grouped
count read the index alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows),
r AS (SELECT i,
             CASE i % 4 WHEN 0 THEN 'sms' WHEN 1 THEN 'email' WHEN 2 THEN 'push' ELSE 'voice' END AS channel,
             CASE WHEN i % 100 < 55 THEN 'sent' WHEN i % 100 < 75 THEN 'delivered' WHEN i % 100 < 82 THEN 'failed'
                  WHEN i % 100 < 88 THEN 'suppressed' WHEN i % 100 < 94 THEN 'deferred'
                  WHEN i % 100 < 97 THEN 'undelivered' WHEN i % 100 < 99 THEN 'unknown' ELSE 'planned' END AS status,
             -- the last "recent" rows were written in the last hour, the others over 90 days before
             CASE WHEN i > :rows - :recent THEN (:rows - i) * 3600 / :recent
                  ELSE 3600 + (:rows - i) * 7776000 / :rows END AS age
      FROM n)
INSERT INTO attempts (reminder_key, account_id, step, occurrence, channel, try_no, status, address, provider,
                      duration_ms, created_at, updated_at)
SELECT 'L' || (i / 4) || '|2026-01-01|gentle|0', 'L' || (i / 4), 'gentle', 0, channel,
       CASE WHEN status = 'deferred' THEN 0 WHEN i % 25 = 1 THEN 2 ELSE 1 END,
       status, '+86138****' || substr('0000' || (i % 10000), -4),
       CASE channel WHEN 'email' THEN 'smtp' WHEN 'push' THEN 'fcm' ELSE 'twilio' END,
       CASE WHEN status IN ('sent', 'delivered', 'failed', 'undelivered', 'unknown') THEN 20 + (i * 7919) % 3000 END,
       strftime('%Y-%m-%d %H:%M:%S', :now, '-' || age || ' seconds') || '.000000',
       strftime('%Y-%m-%d %H:%M:%S', :now, '-' || age || ' seconds') || '.000000'
FROM r
"""
"""One row per attempt; ``i / 4`` makes the four channels of one reminder share its key."""


def _env(ledger: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_"))}
    env.update(DISPATCHER_DATABASE_URL=f"sqlite:///{ledger}", DISPATCHER_SCHEDULES=str(ROOT / "schedules.yaml"),
               DISPATCHER_OUTBOX_DIR=str(ledger.parent / "outbox"), DISPATCHER_LOG_LEVEL="WARNING")
    return env


def _ledger(directory: Path, rows: int, now: datetime) -> Path:
    """The ledger of ``rows`` attempts in ``directory``, built if missing."""
    from sqlalchemy import func, select, text

    from dispatcher.app import build_app
    from dispatcher.ledger.tables import attempts
    from dispatcher.settings import Settings

    path = directory / f"metrics-{rows}.db"
    app = build_app(Settings.from_env(_env(path)))
    try:
        with app.engine.begin() as connection:
            have = int(connection.execute(select(func.count()).select_from(attempts)).scalar_one())
            if have != rows:
                print(f"building a ledger of {rows:,} attempts in {path} ...", file=sys.stderr)
                started = time.perf_counter()
                connection.execute(attempts.delete())
                connection.execute(text(_FILL), {"rows": rows, "recent": max(1, rows // 200),
                                                 "now": now.strftime("%Y-%m-%d %H:%M:%S")})
                print(f"built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        app.engine.dispose()
    return path


def _old_index(ledger: Path) -> Path:
    """A copy of ``ledger`` with ``ix_attempts_status (status)`` in place of 0014's index, built if missing."""
    import shutil
    import sqlite3

    copy = ledger.with_name(ledger.stem + "-old-index.db")
    if not copy.exists() or copy.stat().st_mtime < ledger.stat().st_mtime:
        shutil.copyfile(ledger, copy)
        with sqlite3.connect(copy) as connection:
            connection.execute("CREATE INDEX IF NOT EXISTS ix_attempts_status ON attempts (status)")
            connection.execute("DROP INDEX IF EXISTS ix_attempts_status_channel_try")
            connection.execute("ANALYZE")
    return copy


def _scrapes(ledger: Path, repeat: int, now: datetime) -> list[float]:
    """Seconds each computation of the whole metrics text took."""
    from prometheus_client import CollectorRegistry, generate_latest

    from dispatcher.app import build_app
    from dispatcher.settings import Settings
    from dispatcher.web.metrics import LedgerCollector

    app = build_app(Settings.from_env(_env(ledger)), migrate=False, clock=lambda: now)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(app))
    times = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            body = generate_latest(registry)
            times.append(time.perf_counter() - started)
    finally:
        app.engine.dispose()
    import dispatcher

    print(f"{len(body):,} bytes of metrics text from {Path(dispatcher.__file__).parent}", file=sys.stderr)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="attempts in the ledger (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=7, help="scrapes timed (default 7; the median is reported)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "dispatcher-bench",
                        help="where the ledgers are kept between invocations")
    parser.add_argument("--label", default="this tree", help="the name of this measurement in the report")
    parser.add_argument("--old-index", action="store_true",
                        help="measure on a copy with the index the ledger had before migration 0014")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    ledger = _ledger(args.dir, args.rows, now)
    if args.old_index:
        ledger, args.label = _old_index(ledger), f"{args.label}, index before 0014"
    times = _scrapes(ledger, args.repeat, now)
    print(f"{args.label}: {args.rows:,} attempts, median scrape {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {len(times)} scrapes)")


if __name__ == "__main__":
    main()
