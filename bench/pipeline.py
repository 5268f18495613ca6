#!/usr/bin/env python3
"""Benchmark one `run --once` on the embedded default (SQLite ledger, outbox channels).

For each size it seeds a fresh demo table in a temporary directory (in its own
process), then times one run in a second process and reports accounts/s,
messages/s and that process's peak RSS. Run it with the project's virtualenv:

    .venv/bin/python bench/pipeline.py                 # 20,000 and 100,000 accounts
    .venv/bin/python bench/pipeline.py --accounts 5000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_"))}
    env.update(DISPATCHER_DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}",
               DISPATCHER_OUTBOX_DIR=str(workdir / "outbox"),
               DISPATCHER_SCHEDULES=str(workdir / "schedules.yaml"),
               DISPATCHER_LOG_LEVEL="WARNING")
    return env


def child_seed(count: int) -> None:
    from dispatcher.app import build_app
    from dispatcher.demo import seed_demo
    from dispatcher.settings import Settings

    app = build_app(Settings.from_env())
    seed_demo(app.engine, count, datetime.now(UTC).date(), replace=True)


def child_run(at: str) -> None:
    from dispatcher.app import build_app
    from dispatcher.runner import Runner
    from dispatcher.settings import Settings

    moment = datetime.fromisoformat(at)
    app = build_app(Settings.from_env(), clock=lambda: moment)
    started_cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = Runner(app).run("bench", app.clock())
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    counts = report.counts.as_dict()
    cpu = usage.ru_utime + usage.ru_stime - started_cpu.ru_utime - started_cpu.ru_stime
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu,
                      "peak_rss_mb": usage.ru_maxrss / 1024, **counts}))


def measure(count: int, at: str) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    try:
        shutil.copy(ROOT / "schedules.yaml", workdir / "schedules.yaml")
        shutil.copytree(ROOT / "templates", workdir / "templates")
        env = _env(workdir)
        subprocess.run([sys.executable, __file__, "--child-seed", str(count)], env=env, check=True, cwd=workdir)
        out = subprocess.run([sys.executable, __file__, "--child-run", "--at", at], env=env, check=True, cwd=workdir,
                             capture_output=True, text=True).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--at", default=datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
                        .isoformat(), help="the run's moment (default: today 10:00 in Shanghai, inside its window)")
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_seed:
        child_seed(args.child_seed)
        return 0
    if args.child_run:
        child_run(args.at)
        return 0
    print(f"{'accounts':>9} {'seconds':>8} {'accounts/s':>11} {'cpu s':>7} {'acc/cpu-s':>10} {'messages':>9} "
          f"{'messages/s':>11} {'peak RSS':>9}")
    for count in args.accounts:
        result = measure(count, args.at)
        seconds = result["seconds"]
        messages = result["sent"] + result["suppressed"] + result["failed"]
        cpu = result["cpu_seconds"]
        print(f"{count:>9} {seconds:>8.1f} {count / seconds:>11.0f} {cpu:>7.1f} {count / cpu:>10.0f} "
              f"{messages:>9.0f} {messages / seconds:>11.0f} {result['peak_rss_mb']:>7.0f}MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
