"""``dispatcher run`` and ``dispatcher seed-demo``."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from dispatcher.cli import common
from dispatcher.daemon import Daemon
from dispatcher.demo import demo_count, seed_demo
from dispatcher.errors import ConfigError
from dispatcher.masking import mask_url
from dispatcher.runner import Runner

log = logging.getLogger(__name__)

DEMO_ACCOUNTS = 1000
"""Borrowers seeded by ``run --demo`` when the demo table is empty."""


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="start the daemon (or do one run with --once)")
    run.add_argument("--once", action="store_true", help="do one run now and exit")
    run.add_argument("--run-now", action="store_true", help="do a first run at start, then follow the schedule")
    run.add_argument("--demo", action="store_true",
                     help=f"seed {DEMO_ACCOUNTS} demo borrowers if the demo table is empty; implies --run-now")
    run.add_argument("--name", default=None, help="the run's name in the ledger (default: manual / startup)")
    run.set_defaults(handler=run_command)
    seed = commands.add_parser("seed-demo", help="fill the demo account table with synthetic borrowers")
    seed.add_argument("--accounts", type=int, default=DEMO_ACCOUNTS, metavar="N")
    seed.add_argument("--replace", action="store_true", help="empty the demo table first")
    seed.set_defaults(handler=seed_command)
    worker = commands.add_parser(
        "worker", help="start a Celery worker for $DISPATCHER_BROKER_URL (extra options go to celery worker)")
    worker.add_argument("--pool", default="prefork", help="celery pool: prefork, threads, solo ...")
    worker.add_argument("--concurrency", type=int, help="worker processes (default: CPU count)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="more `celery worker` options")
    worker.set_defaults(handler=worker_command)
    web = commands.add_parser("web", help="serve webhooks (Twilio status, inbound STOP) and unsubscribe links")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=8080)
    web.set_defaults(handler=web_command)


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
        report = Runner(app).run(args.name or "manual", app.clock())
        print(f"run {report.name} #{report.run_id}: {report.status}; "
              + ", ".join(f"{k}={v}" for k, v in report.counts.as_dict().items()))
        return 0 if report.status in ("completed", "skipped") else 1
    daemon = Daemon(app)
    if args.run_now or args.demo:
        daemon.run_now(args.name or "startup")
    daemon.serve()
    return 0


def worker_command(args: argparse.Namespace) -> int:
    settings = common.settings(args)
    if not settings.broker_url:
        raise ConfigError("DISPATCHER_BROKER_URL is not set: without a broker, `dispatcher run` delivers in-process")
    # the worker builds its settings from the environment, in every process of its pool
    os.environ["DISPATCHER_SCHEDULES"] = str(settings.schedules_path.resolve())
    os.environ["DISPATCHER_LOG_LEVEL"] = args.log_level
    from dispatcher.worker import app as celery_app

    argv = ["worker", f"--loglevel={args.log_level}", f"--pool={args.pool}"]
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    celery_app.worker_main([*argv, *[a for a in args.celery_args if a != "--"]])
    return 0


def web_command(args: argparse.Namespace) -> int:
    from dispatcher.web.server import serve

    app = common.app(args)
    log.info("serving webhooks on http://%s:%d (public URL %s)", args.host, args.port,
             app.settings.public_url or "not set: Twilio signatures cannot be verified")
    serve(app, args.host, args.port)
    return 0


def seed_command(args: argparse.Namespace) -> int:
    app = common.app(args)
    count = seed_demo(app.engine, args.accounts, app.clock().date(), replace=args.replace)
    print(f"demo_accounts now holds {count} borrowers")
    return 0
