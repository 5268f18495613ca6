"""``dispatcher run`` and ``dispatcher seed-demo``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType

from dispatcher.app import App
from dispatcher.cli import common
from dispatcher.cli.parser import DEMO_ACCOUNTS
from dispatcher.cli.progress import Progress
from dispatcher.daemon import Daemon
from dispatcher.demo import demo_count, seed_demo
from dispatcher.errors import ConfigError
from dispatcher.masking import mask_url
from dispatcher.pipeline.run import Runner, RunReport, summary

log = logging.getLogger(__name__)



def run_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    if args.demo and demo_count(app.engine) == 0:
        count = seed_demo(app.engine, DEMO_ACCOUNTS, app.clock().date())
        log.info("demo table was empty: seeded %d synthetic borrowers", count)
    for kind, text in app.providers.describe(app.settings.outbox_dir).items():
        log.info("%s: %s", kind.value, text)
    log.info("delivery: %s", f"Celery workers through {mask_url(app.settings.broker_url)}"
             if app.settings.broker_url else "in this process (no DISPATCHER_BROKER_URL)")
    if args.once:
        return run_once(app, args.name or "manual")
    daemon = Daemon(app)
    if args.run_now or args.demo:
        daemon.run_now(args.name or "startup")
    daemon.serve()
    return 0


def run_once(app: App, name: str) -> int:
    """One run now, stopped cleanly by SIGTERM or SIGINT like the daemon.

    A stop finishes the messages in flight, records them, leaves the rest ``planned``,
    marks the run ``interrupted`` and exits 143 (SIGTERM) or 130 (SIGINT); a second
    signal exits at once (the reconciler then settles what was in flight).
    """
    stopping = threading.Event()
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        if received:
            log.warning("second %s: exiting now; the next run reconciles what was in flight",
                        signal.Signals(signum).name)
            os._exit(128 + signum)
        received.append(signum)
        log.info("received %s: finishing the messages in flight, then stopping", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    outcome: list[RunReport] = []
    failure: list[BaseException] = []

    def carry_out() -> None:
        try:
            outcome.append(Runner(app, stopping).run(name, app.clock()))
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)

    worker = threading.Thread(target=carry_out, name="run-once")
    worker.start()
    try:
        with Progress(f"run {name}"):
            while worker.is_alive():
                worker.join(0.2)  # the main thread stays free to take signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]
    report = outcome[0]
    print(f"run {report.name} #{report.run_id}: {report.status}; {summary(report.counts)}")
    if received:
        return 128 + received[0]
    return 0 if report.status in ("completed", "skipped") else 1


def worker_command(args: argparse.Namespace) -> int:
    settings = common.settings(args)
    if not settings.broker_url:
        raise ConfigError("DISPATCHER_BROKER_URL is not set: without a broker, `dispatcher run` delivers in-process")
    # the worker builds its settings from the environment, in every process of its pool
    os.environ["DISPATCHER_SCHEDULES"] = str(settings.schedules_path.resolve())
    os.environ["DISPATCHER_LOG_LEVEL"] = args.log_level
    from dispatcher.worker import app as celery_app

    argv = ["worker", f"--loglevel={args.log_level}", f"--pool={args.pool}"]
    if not any(a.startswith(("-n", "--hostname")) for a in args.celery_args):
        argv.append(f"--hostname=dispatcher-{os.getpid()}@%h")  # two workers on one machine never share a name
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    celery_app.worker_main([*argv, *[a for a in args.celery_args if a != "--"]])
    return 0


def web_command(args: argparse.Namespace) -> int:
    from dispatcher.web.server import serve

    app = common.app(args)
    serve(app, args.host, args.port, lambda: log.info(
        "serving webhooks on http://%s:%d (public URL %s)", args.host, args.port,
        app.settings.public_url or "not set: Twilio signatures cannot be verified"))
    return 0


def seed_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    with Progress(f"seeding {args.accounts:,} demo borrowers"):
        count = seed_demo(app.engine, args.accounts, app.clock().date(), replace=args.replace)
    print(f"demo_accounts now holds {count} borrowers")
    return 0
