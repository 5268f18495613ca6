#!/usr/bin/env python3
"""Benchmark one run of a large demo source on PostgreSQL with Celery workers planning its key ranges.

For each size (default 100,000 then 1,000,000 accounts) it creates a schema of its own in the PostgreSQL
database ``--database-url`` (the ledger and the demo table both live there), seeds the demo borrowers, starts
``--workers`` Celery workers (``dispatcher worker --concurrency 1`` each, as that many machines would run them) on
a Redis database claimed the tests' way, and times one run at 10:00 Shanghai (inside the contact window) on the
outbox channels. The daemon splits the run into key ranges (``DISPATCHER_PLAN_RANGES``, default 16) that the
workers plan, book and deliver. It prints the run's seconds and accounts/s, the daemon's peak RSS and every
worker process's (main and pool), and drops the schema afterwards. The outbox goes to a temporary directory
(about 1.5 KB of disk per account). Run it with the project's virtualenv, the machine otherwise idle:

    .venv/bin/python bench/million.py                          # 100,000 and 1,000,000 accounts, 2 workers
    .venv/bin/python bench/million.py --accounts 100000 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from delivery import _group_pids, claimed_database, kill_workers, start_workers
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _hwm_mb(pid_dir: Path) -> float:
    for line in (pid_dir / "status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _env(workdir: Path, database_url: str, broker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_"))}
    env.update(DISPATCHER_DATABASE_URL=database_url, DISPATCHER_BROKER_URL=broker,
               DISPATCHER_OUTBOX_DIR=str(workdir / "outbox"), DISPATCHER_SCHEDULES=str(workdir / "schedules.yaml"),
               DISPATCHER_LOG_LEVEL="WARNING", DISPATCHER_PROGRESS_INTERVAL="0")
    return env


def measure(count: int, database_url: str, redis_url: str, workers: int, at: str) -> dict[str, object]:
    schema = f"bench_million_{os.getpid()}_{count}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{database_url}?options=-csearch_path%3D{schema}"
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-million-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        shutil.copy(ROOT / "schedules.yaml", workdir / "schedules.yaml")
        shutil.copytree(ROOT / "templates", workdir / "templates")
        with claimed_database(redis_url) as broker:
            env = _env(workdir, url, broker)
            seeding = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dispatcher", "seed-demo", "--accounts", str(count), "--replace"],
                           env=env, cwd=workdir, check=True, capture_output=True)
            seeded = time.perf_counter() - seeding
            started = start_workers(workdir, env, workers, "million-worker")
            out = subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline.py"), "--child-run", "--at", at],
                                 env=env, cwd=workdir, check=True, capture_output=True, text=True).stdout
            result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
            result["seed_seconds"] = seeded
            result["workers_rss_mb"] = [[round(_hwm_mb(p)) for p in sorted(_group_pids(w.pid))] for w in started]
            return result
    finally:
        kill_workers(started)
        shutil.rmtree(workdir, ignore_errors=True)
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2, help="Celery workers of one pool process each (2)")
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"a PostgreSQL database ({DEFAULT_URL})")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--at", default=datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
                        .isoformat(), help="the run's moment (default: today 10:00 in Shanghai, inside its window)")
    args = parser.parse_args()
    print(f"{'accounts':>9} {'seed s':>7} {'run s':>7} {'accounts/s':>11} {'sent':>9} {'daemon RSS':>11}  "
          f"worker RSS (main, pool) MB")
    for count in args.accounts:
        result = measure(count, args.database_url, args.redis_url, args.workers, args.at)
        seconds = float(result["seconds"])  # type: ignore[arg-type]
        print(f"{count:>9} {result['seed_seconds']:>7.0f} {seconds:>7.0f} {count / seconds:>11.0f} "
              f"{result['sent']:>9} {result['peak_rss_mb']:>9.0f}MB  {result['workers_rss_mb']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
