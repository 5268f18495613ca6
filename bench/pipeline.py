#!/usr/bin/env python3
"""Benchmark one `run --once` on the embedded default (SQLite ledger, outbox channels), against its floor.

For each size it seeds a fresh demo table in a temporary directory (in its own
process), then times one run in a second process and reports accounts/s,
messages/s, CPU seconds (``time.process_time()`` around the run: every thread of
that process) and that process's peak RSS. Then the floor (``bench/floor.py``: the
same table, templates, outbox files and ledger rows, no rules) runs on a copy of the
same seeded ledger in a third process, the two runs' outboxes and ledgers are
compared (a WARNING line when they differ) and the ratio is printed as
``pipeline / floor (accounts per CPU-second): NN %``. Both are single processes
(``DISPATCHER_PLAN_PROCESSES=1``). Then the product runs again on a copy of the same
seeded ledger with ``--processes`` planning processes (default 2; 0 skips it) and the
wall-clock ratio is printed as ``2 processes / 1 process: N.NNx`` (its CPU seconds add
the range processes'). Run it with the project's virtualenv:

    .venv/bin/python bench/pipeline.py                 # 20,000 and 100,000 accounts
    .venv/bin/python bench/pipeline.py --accounts 5000
    .venv/bin/python bench/pipeline.py --accounts 20000 --profile /tmp/pipeline.prof   # the product under cProfile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(workdir: Path, processes: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_", "SMTP_", "FCM_"))}
    env.update(DISPATCHER_PLAN_PROCESSES=str(processes),
               DISPATCHER_DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}",
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


def child_run(at: str, profile: str | None, clock: str = "wall") -> None:
    from dispatcher.app import build_app
    from dispatcher.pipeline.run import Runner
    from dispatcher.settings import Settings

    moment = datetime.fromisoformat(at)
    app = build_app(Settings.from_env(), clock=lambda: moment)
    # wall (cProfile's default) charts waits for the GIL to whatever released it (file writes, SQLite calls);
    # thread-cpu charts only this thread's CPU (the outbox's file threads are in neither)
    profiler = None
    if profile:
        profiler = cProfile.Profile(time.thread_time) if clock == "thread-cpu" else cProfile.Profile()
    started_cpu = time.process_time()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    report = Runner(app).run("bench", app.clock())
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - started_cpu
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ranges = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run's range processes, when it had some
    counts = report.counts.as_dict()
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu + ranges.ru_utime + ranges.ru_stime,
                      "peak_rss_mb": usage.ru_maxrss / 1024, "range_peak_rss_mb": ranges.ru_maxrss / 1024,
                      **counts}))


def child_floor(at: str, verdicts_path: str) -> None:
    from floor import Floor, load_verdicts

    from dispatcher.app import build_app
    from dispatcher.settings import Settings

    moment = datetime.fromisoformat(at)
    app = build_app(Settings.from_env(), clock=lambda: moment)
    verdicts = load_verdicts(Path(verdicts_path))
    run_id = app.runs.start("bench", moment, app.pipeline.loaded.version, app.settings.daemon_id, moment)
    started_cpu = time.process_time()
    started = time.perf_counter()
    counts = Floor(app, verdicts, run_id).run(moment)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - started_cpu
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mb": usage.ru_maxrss / 1024,
                      "accounts": counts.accounts, "reminders": counts.reminders, "attempts": counts.attempts,
                      "sent": counts.sent}))


def _copy_ledger(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if (source / f"ledger.db{suffix}").exists():
            shutil.copy(source / f"ledger.db{suffix}", target / f"ledger.db{suffix}")


def _child(args: list[str], env: dict[str, str], workdir: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], env=env, check=True, cwd=workdir,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _compare(product_dir: Path, floor_dir: Path) -> tuple[int, int, list[str]]:
    """Outbox messages and attempt rows of the product, and what the floor wrote differently."""
    from floor import ledger_summary, outbox_messages
    from sqlalchemy import create_engine

    messages = (outbox_messages(product_dir / "outbox"), outbox_messages(floor_dir / "outbox"))
    summaries = []
    for workdir in (product_dir, floor_dir):
        engine = create_engine(f"sqlite:///{workdir / 'ledger.db'}")
        summaries.append(ledger_summary(engine))
        engine.dispose()
    product, floor = summaries
    differences = []
    if messages[0] != messages[1]:
        differences.append(f"outbox messages: pipeline {messages[0]}, floor {messages[1]}")
    for name in ("reminders", "attempts", "handoffs", "attempts_by_kind"):
        if product[name] != floor[name]:
            differences.append(f"{name}: pipeline {product[name]}, floor {floor[name]}")
    if product["content"] != floor["content"]:
        only = product["content"] ^ floor["content"]  # type: ignore[operator]
        differences.append(f"{len(only)} attempt(s) differ in reminder, channel, status, content hash or rule")
    return messages[0], int(product["attempts"]), differences  # type: ignore[call-overload]


def measure(count: int, at: str, profile: str | None, floor: bool, clock: str = "wall",
            processes: int = 0) -> tuple[dict[str, float], dict[str, float] | None, dict[str, float] | None]:
    """The product's run in one process; with ``floor``, the floor's on the same seeded table (compared, warnings
    printed); with ``processes``, the product's again on that table planned in that many processes."""
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    floor_dir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-floor-"))
    split_dir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-split-"))
    try:
        for where in (workdir, floor_dir, split_dir):
            shutil.copy(ROOT / "schedules.yaml", where / "schedules.yaml")
            shutil.copytree(ROOT / "templates", where / "templates")
        env = _env(workdir)
        subprocess.run([sys.executable, __file__, "--child-seed", str(count)], env=env, check=True, cwd=workdir)
        _copy_ledger(workdir, floor_dir)
        _copy_ledger(workdir, split_dir)
        profiling = ["--profile", profile, "--profile-clock", clock] if profile else []
        result = _child(["--child-run", "--at", at, *profiling], env, workdir)
        split = _child(["--child-run", "--at", at], _env(split_dir, processes), split_dir) if processes else None
        if split is not None and split["sent"] != result["sent"]:
            print(f"WARNING: {processes} processes sent {split['sent']:.0f} messages, one process {result['sent']:.0f}")
        if not floor:
            return result, None, split
        from floor import dump_verdicts, read_verdicts
        from sqlalchemy import create_engine

        engine = create_engine(f"sqlite:///{workdir / 'ledger.db'}")
        dump_verdicts(read_verdicts(engine), floor_dir / "verdicts.json")
        engine.dispose()
        floor_result = _child(["--child-floor", str(floor_dir / "verdicts.json"), "--at", at], _env(floor_dir),
                              floor_dir)
        messages, attempt_rows, differences = _compare(workdir, floor_dir)
        floor_result.update(messages=messages, attempt_rows=attempt_rows, same=not differences)
        for difference in differences:
            print(f"WARNING: the floor did not write what the pipeline wrote: {difference}")
        return result, floor_result, split
    finally:
        for where in (workdir, floor_dir, split_dir):
            shutil.rmtree(where, ignore_errors=True)


def print_profile(path: str, top: int = 25) -> None:
    for order in ("cumulative", "tottime"):
        print(f"\n--- top {top} by {order} ({path}) ---")
        pstats.Stats(path).strip_dirs().sort_stats(order).print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--at", default=datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
                        .isoformat(), help="the run's moment (default: today 10:00 in Shanghai, inside its window)")
    parser.add_argument("--profile", metavar="PATH", help="run the product under cProfile, write PATH (.prof; "
                        "with several sizes, PATH.<accounts>) and print the top 25 by cumulative and by tottime; "
                        "the ratio to the floor is then not comparable")
    parser.add_argument("--profile-clock", choices=("wall", "thread-cpu"), default="wall",
                        help="cProfile's timer: wall time (its default), or the main thread's CPU time")
    parser.add_argument("--no-floor", action="store_true", help="time the product only")
    parser.add_argument("--processes", type=int, default=2, metavar="N",
                        help="also run the product planned in N processes and print the speed-up (0: not)")
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", metavar="VERDICTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_seed:
        child_seed(args.child_seed)
        return 0
    if args.child_run:
        child_run(args.at, args.profile, args.profile_clock)
        return 0
    if args.child_floor:
        child_floor(args.at, args.child_floor)
        return 0
    print(f"{'accounts':>9} {'seconds':>8} {'accounts/s':>11} {'cpu s':>7} {'acc/cpu-s':>10} {'messages':>9} "
          f"{'messages/s':>11} {'peak RSS':>9}")
    for count in args.accounts:
        profile = None
        if args.profile:
            profile = args.profile if len(args.accounts) == 1 else f"{args.profile}.{count}"
        result, floor, split = measure(count, args.at, profile, not args.no_floor, args.profile_clock,
                                       0 if profile else args.processes)
        seconds = result["seconds"]
        messages = result["sent"] + result["suppressed"] + result["failed"]
        cpu = result["cpu_seconds"]
        print(f"{count:>9} {seconds:>8.1f} {count / seconds:>11.0f} {cpu:>7.1f} {count / cpu:>10.0f} "
              f"{messages:>9.0f} {messages / seconds:>11.0f} {result['peak_rss_mb']:>7.0f}MB")
        if floor is not None:
            print(f"{'floor':>9} {floor['seconds']:>8.1f} {count / floor['seconds']:>11.0f} "
                  f"{floor['cpu_seconds']:>7.1f} {count / floor['cpu_seconds']:>10.0f} {floor['attempts']:>9.0f} "
                  f"{floor['attempts'] / floor['seconds']:>11.0f} {floor['peak_rss_mb']:>7.0f}MB   "
                  f"(pipeline: {floor['messages']:.0f} outbox messages, {floor['attempt_rows']:.0f} attempt rows; "
                  f"{'the floor wrote the same' if floor['same'] else 'the floor differs: see the warnings'})")
            note = "  (the pipeline ran under cProfile: not comparable)" if profile else ""
            print(f"pipeline / floor (accounts per CPU-second): {100 * floor['cpu_seconds'] / cpu:.0f} %{note}")
        if split is not None:
            print(f"{args.processes:>7}pr {split['seconds']:>8.1f} {count / split['seconds']:>11.0f} "
                  f"{split['cpu_seconds']:>7.1f} {count / split['cpu_seconds']:>10.0f} {'':>9} {'':>11} "
                  f"{split['peak_rss_mb']:>7.0f}MB (ranges: {split['range_peak_rss_mb']:.0f}MB each at most)")
            print(f"{args.processes} processes / 1 process: {seconds / split['seconds']:.2f}x")
        if profile:
            print_profile(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
