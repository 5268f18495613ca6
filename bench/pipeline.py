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
the range processes', their start included). That run's helper processes are started and
wired before it is timed, as a daemon keeps them from one run to the next
(:class:`dispatcher.pipeline.parallel.Planners`); a second ``cold`` run starts its own, as a
one-off run or a daemon's first split run does, and its ratio follows. With ``--celery 1 2``
(the default when Redis answers at ``--redis-url``) the product runs again on copies of the
same seeded ledger with a broker and 1, then 2 Celery workers (``dispatcher worker
--concurrency 1`` each, as two machines would run them): the daemon splits the run into key
ranges (``DISPATCHER_PLAN_RANGES``, default 16) that the workers plan, book and deliver, and
the wall-clock ratio is printed as ``2 Celery workers / 1 Celery worker: N.NNx``. Run it with
the project's virtualenv:

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
from collections.abc import Sequence
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


def child_run(at: str, profile: str | None, clock: str = "wall", cold: bool = False) -> None:
    from dispatcher.app import build_app
    from dispatcher.pipeline.run import Runner
    from dispatcher.settings import Settings

    moment = datetime.fromisoformat(at)
    app = build_app(Settings.from_env(), clock=lambda: moment)
    if app.settings.plan_processes > 1 and not cold:  # as a daemon's runs after its first: its helpers are ready
        from dispatcher.pipeline.parallel import Planners

        app.share_version(app.pipeline.loaded)
        app.planners = Planners(app.settings.plan_processes - 1)
        app.planners.start(app.pipeline.loaded.version)
        app.planners.wait_ready()
    # wall (cProfile's default) charts waits for the GIL to whatever released it (file writes, SQLite calls);
    # thread-cpu charts only this thread's CPU
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
    if app.planners is not None:
        app.planners.close()  # their CPU (their start included) is counted once they ended
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
    """``source``'s ledger over ``target``'s (a journal left in ``target`` would be replayed onto the copy)."""
    for suffix in ("", "-wal", "-shm"):
        if (source / f"ledger.db{suffix}").exists():
            shutil.copy(source / f"ledger.db{suffix}", target / f"ledger.db{suffix}")
        else:
            (target / f"ledger.db{suffix}").unlink(missing_ok=True)


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


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def celery_run(seeded: Path, at: str, workers: int, redis_url: str, mismatched: bool = False) -> dict[str, float]:
    """The product's run on a copy of ``seeded``'s ledger with a broker and ``workers`` Celery workers of one pool
    process each; adds the workers' CPU seconds and the largest worker's peak RSS (main and pool process).

    ``mismatched``: the workers' schedules.yaml differs from the daemon's (the English brand renamed), so they run
    the daemon's version from the ledger's copy."""
    from delivery import _group_cpu, _group_hwm_mb, claimed_database, kill_workers, start_workers

    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-celery-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        shutil.copy(ROOT / "schedules.yaml", workdir / "schedules.yaml")
        shutil.copytree(ROOT / "templates", workdir / "templates")
        _copy_ledger(seeded, workdir)
        worker_schedules = workdir / "schedules.yaml"
        if mismatched:
            worker_schedules = workdir / "worker-schedules.yaml"
            text = (workdir / "schedules.yaml").read_text(encoding="utf-8")
            worker_schedules.write_text(text.replace("name: Xinyong Wallet", "name: Renamed Wallet"), "utf-8")
        with claimed_database(redis_url) as broker:
            env = {**_env(workdir), "DISPATCHER_BROKER_URL": broker}
            started = start_workers(workdir, {**env, "DISPATCHER_SCHEDULES": str(worker_schedules)}, workers,
                                    "bench-worker")
            cpu_before = sum(_group_cpu(w.pid) for w in started)
            result = _child(["--child-run", "--at", at], env, workdir)
            result["workers_cpu"] = sum(_group_cpu(w.pid) for w in started) - cpu_before
            result["workers_rss_mb"] = max(_group_hwm_mb(w.pid) for w in started)
            return result
    finally:
        kill_workers(started)
        shutil.rmtree(workdir, ignore_errors=True)


def measure(count: int, at: str, profile: str | None, floor: bool, clock: str = "wall", processes: int = 0,
            celery: Sequence[int] = (), redis_url: str = "", mismatch: bool = False) -> tuple[
                dict[str, float], dict[str, float] | None, dict[str, float] | None, dict[int, dict[str, float]]]:
    """The product's run in one process; with ``floor``, the floor's on the same seeded table (compared, warnings
    printed); with ``processes``, the product's again on that table planned in that many processes; with
    ``celery``, again with a broker and each of those numbers of Celery workers (with ``mismatch``, the most of
    them again with another schedules.yaml: keyed by minus that number)."""
    workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    floor_dir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-floor-"))
    split_dir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-split-"))
    seeded_dir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-seeded-"))
    try:
        for where in (workdir, floor_dir, split_dir):
            shutil.copy(ROOT / "schedules.yaml", where / "schedules.yaml")
            shutil.copytree(ROOT / "templates", where / "templates")
        env = _env(workdir)
        subprocess.run([sys.executable, __file__, "--child-seed", str(count)], env=env, check=True, cwd=workdir)
        _copy_ledger(workdir, floor_dir)
        _copy_ledger(workdir, split_dir)
        _copy_ledger(workdir, seeded_dir)  # as seeded, for the Celery runs
        profiling = ["--profile", profile, "--profile-clock", clock] if profile else []
        result = _child(["--child-run", "--at", at, *profiling], env, workdir)
        split = None
        if processes:  # with helpers kept from an earlier run (a daemon's), then with helpers the run starts
            split = _child(["--child-run", "--at", at], _env(split_dir, processes), split_dir)
            shutil.rmtree(split_dir / "outbox", ignore_errors=True)
            _copy_ledger(seeded_dir, split_dir)
            cold = _child(["--child-run", "--cold", "--at", at], _env(split_dir, processes), split_dir)
            split.update(cold_seconds=cold["seconds"], cold_cpu_seconds=cold["cpu_seconds"])
        if split is not None and split["sent"] != result["sent"]:
            print(f"WARNING: {processes} processes sent {split['sent']:.0f} messages, one process {result['sent']:.0f}")
        on_workers = {n: celery_run(seeded_dir, at, n, redis_url) for n in celery}
        if mismatch and celery:
            on_workers[-max(celery)] = celery_run(seeded_dir, at, max(celery), redis_url, mismatched=True)
        for n, run in on_workers.items():
            if run["sent"] != result["sent"]:
                print(f"WARNING: {abs(n)} Celery worker(s) sent {run['sent']:.0f} messages, one process "
                      f"{result['sent']:.0f}")
        if not floor:
            return result, None, split, on_workers
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
        return result, floor_result, split, on_workers
    finally:
        for where in (workdir, floor_dir, split_dir, seeded_dir):
            shutil.rmtree(where, ignore_errors=True)


def print_profile(path: str, top: int = 25) -> None:
    for order in ("cumulative", "tottime"):
        print(f"\n--- top {top} by {order} ({path}) ---")
        pstats.Stats(path).strip_dirs().sort_stats(order).print_stats(top)


def print_size(count: int, result: dict[str, float], floor: dict[str, float] | None, split: dict[str, float] | None,
               on_workers: dict[int, dict[str, float]], processes: int, profiled: bool) -> None:
    """One size's rows and ratios."""
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
        note = "  (the pipeline ran under cProfile: not comparable)" if profiled else ""
        print(f"pipeline / floor (accounts per CPU-second): {100 * floor['cpu_seconds'] / cpu:.0f} %{note}")
    if split is not None:
        print(f"{processes:>7}pr {split['seconds']:>8.1f} {count / split['seconds']:>11.0f} "
              f"{split['cpu_seconds']:>7.1f} {count / split['cpu_seconds']:>10.0f} {'':>9} {'':>11} "
              f"{split['peak_rss_mb']:>7.0f}MB (ranges: {split['range_peak_rss_mb']:.0f}MB each at most)")
        print(f"{'cold':>9} {split['cold_seconds']:>8.1f} {count / split['cold_seconds']:>11.0f} "
              f"{split['cold_cpu_seconds']:>7.1f} {count / split['cold_cpu_seconds']:>10.0f}   (the run starts its "
              f"helper processes, as a one-off run or a daemon's first split run does)")
        print(f"{processes} processes / 1 process: {seconds / split['seconds']:.2f}x (helpers kept between runs, as "
              f"a daemon's); {seconds / split['cold_seconds']:.2f}x when the run starts them")
    for n, run in on_workers.items():
        workers = f"{abs(n)} Celery worker{'s' if abs(n) > 1 else ''}" + (", their schedules.yaml differs" if n < 0
                                                                            else "")
        print(f"{n:>7}cw {run['seconds']:>8.1f} {count / run['seconds']:>11.0f} {run['workers_cpu']:>7.1f} "
              f"{count / run['workers_cpu']:>10.0f} {'':>9} {'':>11} {run['peak_rss_mb']:>7.0f}MB "
              f"({workers}: CPU s and acc/cpu-s of the workers; the largest worker's peak RSS "
              f"{run['workers_rss_mb']:.0f}MB, main and pool process)")
    if 1 in on_workers:
        one = on_workers[1]["seconds"]
        for n, run in on_workers.items():
            if n > 1:
                print(f"{n} Celery workers / 1 Celery worker: {one / run['seconds']:.2f}x")
    for n, run in on_workers.items():
        if n < 0 and -n in on_workers:
            print(f"{-n} Celery worker(s) whose schedules.yaml differs / the same: "
                  f"{on_workers[-n]['seconds'] / run['seconds']:.2f}x (speed; 1.00x: not slower)")


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
    parser.add_argument("--celery", type=int, nargs="*", metavar="N", default=None,
                        help="also run the product with a broker and N Celery workers, for each N (default: 1 2 "
                        "when Redis answers at --redis-url; --celery alone: none)")
    parser.add_argument("--celery-mismatch", action="store_true",
                        help="also run the most Celery workers again with a schedules.yaml of their own that differs "
                        "from the daemon's (they run its version from the ledger's copy) and print the ratio")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--child-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", metavar="VERDICTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_seed:
        child_seed(args.child_seed)
        return 0
    if args.child_run:
        child_run(args.at, args.profile, args.profile_clock, args.cold)
        return 0
    if args.child_floor:
        child_floor(args.at, args.child_floor)
        return 0
    celery = args.celery
    if celery is None:
        celery = [1, 2] if redis_answers(args.redis_url) else []
        if not celery:
            print(f"(no Redis answers at {args.redis_url}: the Celery runs are skipped)")
    print(f"{'accounts':>9} {'seconds':>8} {'accounts/s':>11} {'cpu s':>7} {'acc/cpu-s':>10} {'messages':>9} "
          f"{'messages/s':>11} {'peak RSS':>9}")
    for count in args.accounts:
        profile = None
        if args.profile:
            profile = args.profile if len(args.accounts) == 1 else f"{args.profile}.{count}"
        result, floor, split, on_workers = measure(count, args.at, profile, not args.no_floor, args.profile_clock,
                                                   0 if profile else args.processes, [] if profile else celery,
                                                   args.redis_url, args.celery_mismatch)
        print_size(count, result, floor, split, on_workers, args.processes, profile is not None)
        if profile:
            print_profile(profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
