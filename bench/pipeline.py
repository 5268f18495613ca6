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
the wall-clock ratio is printed as ``2 Celery workers / 1 Celery worker: N.NNx``.

The one-process run, the floor and the two-process run are each repeated ``--rounds`` times
(default 5: with 3, the medians of one sitting's invocations spread over up to 8 points), each
on a fresh copy of the seeded ledger, in turning order (product, floor, split; floor, split,
product; split, product, floor): on a shared machine the run that comes first after a pause has
been measured taking half as long again as the same run a minute later, which a single round
charged to whichever run came first. The table shows each kind's run of median CPU seconds; the
ratios are the medians of each round's ratio, every round's listed after it. Run it with the project's virtualenv:

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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _Trash:
    """Where the benchmark puts what it is done with (a run's outbox, a Celery run's directory) until it ends.

    On this machine's ext4 (no journal), a file created within a minute or more of many deletions makes the
    kernel skip every recently freed inode (``recently_deleted``): a run started right after the last run's 8,700
    email files were deleted spent 5.7 s of system time instead of 1.9 s. The benchmark's own clean-up was
    charged to whichever run came next, so it is moved aside, under the same directory, and deleted at the end."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.count = 0

    def put(self, path: Path) -> None:
        if not path.exists():
            return
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="dispatcher-bench-trash-"))
        self.count += 1
        path.rename(self.path / f"{self.count}-{path.name}")

    def empty(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


TRASH = _Trash()


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
        TRASH.put(workdir)


class _Rounds:
    """The product's, the floor's and the split runs of one size, each on a fresh copy of the seeded table."""

    def __init__(self, seeded: Path, at: str, profiling: list[str], processes: int) -> None:
        self.seeded, self.at, self.profiling, self.processes = seeded, at, profiling, processes
        self.dirs = {name: Path(tempfile.mkdtemp(prefix=f"dispatcher-bench-{name}-"))
                     for name in ("product", "floor", "split")}
        for where in self.dirs.values():
            shutil.copy(ROOT / "schedules.yaml", where / "schedules.yaml")
            shutil.copytree(ROOT / "templates", where / "templates")
        self.runs: dict[str, list[dict[str, Any]]] = {name: [] for name in self.dirs}
        self.compared: tuple[int, int, list[str]] | None = None

    def product(self) -> None:
        workdir = self._fresh("product")
        self.runs["product"].append(_child(["--child-run", "--at", self.at, *self.profiling], _env(workdir), workdir))

    def floor(self) -> None:
        verdicts = self.seeded / "verdicts.json"
        if not verdicts.exists():  # the verdicts the first product run's rules reached, replayed by every floor run
            from floor import dump_verdicts, read_verdicts
            from sqlalchemy import create_engine

            engine = create_engine(f"sqlite:///{self.dirs['product'] / 'ledger.db'}")
            dump_verdicts(read_verdicts(engine), verdicts)
            engine.dispose()
        workdir = self._fresh("floor")
        self.runs["floor"].append(_child(["--child-floor", str(verdicts), "--at", self.at], _env(workdir), workdir))
        if self.compared is None:  # the first round's product run is still in its directory
            self.compared = _compare(self.dirs["product"], workdir)

    def split(self) -> None:  # with helpers kept from an earlier run (a daemon's)
        workdir = self._fresh("split")
        self.runs["split"].append(_child(["--child-run", "--at", self.at], _env(workdir, self.processes), workdir))

    def cold(self) -> dict[str, float]:  # helpers the run starts itself
        workdir = self._fresh("split")
        return _child(["--child-run", "--cold", "--at", self.at], _env(workdir, self.processes), workdir)

    def run(self, rounds: int, floor: bool) -> None:
        """``rounds`` rounds in turning order (product, floor, split; floor, split, product; …); the first starts
        with the product, whose verdicts the floor replays."""
        steps = [self.product, *([self.floor] if floor else []), *([self.split] if self.processes else [])]
        for number in range(rounds):
            for step in steps[number % len(steps):] + steps[:number % len(steps)]:
                step()

    def close(self) -> None:
        for where in self.dirs.values():
            TRASH.put(where)

    def _fresh(self, name: str) -> Path:
        """The run's directory as seeded: the seeded ledger copied over its own, no outbox."""
        workdir = self.dirs[name]
        TRASH.put(workdir / "outbox")
        _copy_ledger(self.seeded, workdir)
        return workdir


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median CPU seconds (the lower middle one of an even count)."""
    return sorted(runs, key=lambda run: run["cpu_seconds"])[(len(runs) - 1) // 2]


def measure(count: int, at: str, profile: str | None, floor: bool, clock: str = "wall", processes: int = 0,
            celery: Sequence[int] = (), redis_url: str = "", mismatch: bool = False, rounds: int = 1) -> tuple[
                dict[str, Any], dict[str, Any] | None, dict[str, Any] | None, dict[int, dict[str, float]]]:
    """The product's run in one process; with ``floor``, the floor's on the same seeded table (compared, warnings
    printed); with ``processes``, the product's again on that table planned in that many processes; with
    ``celery``, again with a broker and each of those numbers of Celery workers (with ``mismatch``, the most of
    them again with another schedules.yaml: keyed by minus that number).

    The product's, the floor's and the split run are repeated ``rounds`` times, each on a fresh copy of the seeded
    table, in turning order (:meth:`_Rounds.run`): on a shared machine the run that comes first after a pause can
    take half as long again as the same run a minute later. What is returned for each is its run of median CPU
    seconds; the floor's also carries ``ratios``, each round's pipeline / floor, and the product's
    ``split_ratios``, each round's 1 process / N processes wall time."""
    seeded_dir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-seeded-"))
    shutil.copy(ROOT / "schedules.yaml", seeded_dir / "schedules.yaml")
    shutil.copytree(ROOT / "templates", seeded_dir / "templates")
    measured = _Rounds(seeded_dir, at, ["--profile", profile, "--profile-clock", clock] if profile else [], processes)
    try:
        subprocess.run([sys.executable, __file__, "--child-seed", str(count)], env=_env(seeded_dir), check=True,
                       cwd=seeded_dir)
        measured.run(rounds, floor)
        result = _median_run(measured.runs["product"])
        split = None
        if processes:
            cold = measured.cold()
            split = dict(_median_run(measured.runs["split"]), cold_seconds=cold["seconds"],
                         cold_cpu_seconds=cold["cpu_seconds"])
            result = dict(result, split_ratios=[p["seconds"] / s["seconds"] for p, s in
                                                zip(measured.runs["product"], measured.runs["split"], strict=True)])
            if split["sent"] != result["sent"]:
                print(f"WARNING: {processes} processes sent {split['sent']:.0f} messages, one process "
                      f"{result['sent']:.0f}")
        on_workers = _on_workers(seeded_dir, at, celery, redis_url, mismatch, result["sent"])
        if not floor or measured.compared is None:
            return result, None, split, on_workers
        messages, attempt_rows, differences = measured.compared
        for difference in differences:
            print(f"WARNING: the floor did not write what the pipeline wrote: {difference}")
        floor_result = dict(_median_run(measured.runs["floor"]), messages=messages, attempt_rows=attempt_rows,
                            same=not differences,
                            ratios=[f["cpu_seconds"] / p["cpu_seconds"] for p, f in
                                    zip(measured.runs["product"], measured.runs["floor"], strict=True)])
        return result, floor_result, split, on_workers
    finally:
        measured.close()
        TRASH.put(seeded_dir)


def _on_workers(seeded: Path, at: str, celery: Sequence[int], redis_url: str, mismatch: bool,
                sent: float) -> dict[int, dict[str, float]]:
    """The Celery runs (see :func:`measure`), each compared with the one-process run's ``sent``."""
    on_workers = {n: celery_run(seeded, at, n, redis_url) for n in celery}
    if mismatch and celery:
        on_workers[-max(celery)] = celery_run(seeded, at, max(celery), redis_url, mismatched=True)
    for n, run in on_workers.items():
        if run["sent"] != sent:
            print(f"WARNING: {abs(n)} Celery worker(s) sent {run['sent']:.0f} messages, one process {sent:.0f}")
    return on_workers


def print_profile(path: str, top: int = 25) -> None:
    for order in ("cumulative", "tottime"):
        print(f"\n--- top {top} by {order} ({path}) ---")
        pstats.Stats(path).strip_dirs().sort_stats(order).print_stats(top)


def _in_rounds(values: Sequence[float], shown: str, unit: str = "") -> tuple[float, str]:
    """The median of each round's figure (the lower middle one of an even count) and, with several rounds, the
    text listing them in order."""
    ordered = sorted(values)
    listed = ", ".join(shown.format(v) for v in ordered)
    text = f" (median of {len(ordered)} rounds: {listed}{unit})" if len(ordered) > 1 else ""
    return ordered[(len(ordered) - 1) // 2], text


def print_size(count: int, result: dict[str, Any], floor: dict[str, Any] | None, split: dict[str, Any] | None,
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
        median, rounds = _in_rounds([100 * r for r in floor["ratios"]], "{:.0f}", " %")
        print(f"pipeline / floor (accounts per CPU-second): {median:.0f} %{rounds}{note}")
    if split is not None:
        print(f"{processes:>7}pr {split['seconds']:>8.1f} {count / split['seconds']:>11.0f} "
              f"{split['cpu_seconds']:>7.1f} {count / split['cpu_seconds']:>10.0f} {'':>9} {'':>11} "
              f"{split['peak_rss_mb']:>7.0f}MB (ranges: {split['range_peak_rss_mb']:.0f}MB each at most)")
        print(f"{'cold':>9} {split['cold_seconds']:>8.1f} {count / split['cold_seconds']:>11.0f} "
              f"{split['cold_cpu_seconds']:>7.1f} {count / split['cold_cpu_seconds']:>10.0f}   (the run starts its "
              f"helper processes, as a one-off run or a daemon's first split run does)")
        median, rounds = _in_rounds(result["split_ratios"], "{:.2f}")
        print(f"{processes} processes / 1 process: {median:.2f}x{rounds} (helpers kept "
              f"between runs, as a daemon's); {seconds / split['cold_seconds']:.2f}x when the run starts them")
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
    parser.add_argument("--rounds", type=int, default=5, metavar="N",
                        help="run the product, the floor and the split run N times each, in turning order, and print "
                        "the median ratios (default 5; 1 with --profile)")
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
    try:
        for count in args.accounts:
            measure_size(args, count, celery)
    finally:
        TRASH.empty()
    return 0


def measure_size(args: argparse.Namespace, count: int, celery: list[int]) -> None:
    """Measure one size as the arguments ask and print its lines."""
    profile = None
    if args.profile:
        profile = args.profile if len(args.accounts) == 1 else f"{args.profile}.{count}"
    result, floor, split, on_workers = measure(count, args.at, profile, not args.no_floor, args.profile_clock,
                                               0 if profile else args.processes, [] if profile else celery,
                                               args.redis_url, args.celery_mismatch,
                                               1 if profile else max(1, args.rounds))
    print_size(count, result, floor, split, on_workers, args.processes, profile is not None)
    if profile:
        print_profile(profile)


if __name__ == "__main__":
    sys.exit(main())
