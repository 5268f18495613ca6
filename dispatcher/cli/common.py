"""Helpers shared by the commands: settings, the app, moments given on the command line."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, tzinfo

from dispatcher.app import App, build_app
from dispatcher.errors import ConfigError
from dispatcher.settings import Settings
from dispatcher.zones import zone


def settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(schedules=args.schedules)


def app(args: argparse.Namespace, *, migrate: bool = True) -> App:
    return build_app(settings(args), migrate=migrate)


def moment(text: str | None, app: App) -> datetime:
    """``--at``: an ISO time; without an offset it is read in the schedule's zone. Default: now."""
    if not text:
        return app.clock()
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--at {text!r} is not an ISO time like 2026-12-01T22:00+08:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone(app.pipeline.loaded.schedule.timezone))
    return value


def shown_zone(args: argparse.Namespace, app: App) -> tzinfo:
    """The zone a table shows times in: UTC with ``--utc``, else the schedule's."""
    return UTC if getattr(args, "utc", False) else zone(app.pipeline.loaded.schedule.timezone)
