"""``dispatcher run`` and ``dispatcher seed-demo``."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from dispatcher.cli import common
from dispatcher.daemon import Daemon
from dispatcher.demo import demo_count, seed_demo
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
